"""Ingest: export folder -> instance index, ingest errors and image cache, in one incremental pass per partition.

Headers are read first (cheap); then the pixels of new or changed instances are decoded in a pool
of worker processes, each file under a time and a memory limit (``radaudit.pacs.index.run_isolated``,
which header reading uses too, however few the files), so a damaged file that hangs or crashes a
decoder, or needs more memory than the limit, costs one error row, not the run.
A file whose pixels fail moves from the index to the errors with stage ``pixels``: every file ends
in exactly one of the two tables.

Run from a notebook::

    from radaudit.pacs.ingest import IngestConfig, run_ingest
    result = run_ingest(IngestConfig(export_dir="export", data_dir="data"))   # every top-level folder
    run_ingest(IngestConfig(export_dir="export", data_dir="data"), partitions=["3f9c0a1b2c3d4e5f"])  # one
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radaudit.pacs import index as ix
from radaudit.pacs import io
from radaudit.pacs.cache import MANIFEST_SCHEMA, CacheParams, cache_one, cached_uids
from radaudit.pacs.discover import FoundFile, walk
from radaudit.pacs.layout import ERRORS_DIR, INDEX_DIR, LEGACY_TABLES, MANIFEST_DIR, partition_file
from radaudit.pacs.lock import data_dir_lock, partition_lock
from radaudit.pacs.partitions import LEGACY_VANISHED, export_partitions, partition_of, stored_partitions
from radaudit.pacs.pseudo import KEY_ENV, load_or_create_key, path_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Everything ingest depends on.

    Attributes:
        export_dir: Root of the PACS export (read only).
        data_dir: Where the index, errors and cache are written.
        cache: Image cache parameters.
        workers: Decode worker processes (0 = all cores).
        file_timeout_s: Wall-time limit for reading the header of or decoding one file.
        full_rebuild: Forget the previous index and cache and process every file again.
        retry_errors: Try again files that failed in an earlier run although they did not change.
        pseudonym_key: Key for the patient pseudonym; None = generated once under the data dir.
        worker_memory_mb: Address space a header or decode worker process may add beyond what it
            inherits (MiB): a damaged file whose reader or decoder asks for more, or a deflated
            dataset that inflates past half of it, becomes an error row instead of exhausting the
            machine's memory. None: no limit.
        lock_wait_s: How long to wait for another ingest of the same partition (or, to split the
            index of an earlier version, for every other run on the data dir).
    """

    export_dir: str | os.PathLike[str]
    data_dir: str | os.PathLike[str]
    cache: CacheParams = field(default_factory=CacheParams)
    workers: int = 0
    file_timeout_s: float = 60.0
    full_rebuild: bool = False
    retry_errors: bool = False
    pseudonym_key: str | None = None
    worker_memory_mb: int | None = 4096
    lock_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if self.file_timeout_s <= 0:
            raise ValueError(f"file_timeout_s must be positive, got {self.file_timeout_s}")
        if self.lock_wait_s < 0:
            raise ValueError(f"lock_wait_s must be >= 0, got {self.lock_wait_s}")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 256:
            raise ValueError(f"worker_memory_mb must be at least 256 (MiB) or None for no limit, "
                             f"got {self.worker_memory_mb}")

    @property
    def n_workers(self) -> int:
        """Worker processes to use."""
        return self.workers or os.cpu_count() or 1


@dataclass
class IngestResult:
    """What one ingest run produced."""

    index: pd.DataFrame
    errors: pd.DataFrame
    manifest: pd.DataFrame
    stats: dict[str, int]
    found_hashes: frozenset[str] = frozenset()  # path hashes of the files found in this run


# Partitions ingested together: their decoding shares one pool of workers, and their locks are held
# at once (one open file each).
BATCH_PARTITIONS = 256


def run_ingest(config: IngestConfig, *, partitions: Sequence[str] | None = None,
               progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Update the index, the errors and the image cache for ``config.export_dir``, partition by partition.

    Each partition (a top-level folder, :mod:`radaudit.pacs.partitions`) is ingested under its own
    lock (:func:`radaudit.pacs.lock.partition_lock`, waiting up to ``config.lock_wait_s``) and
    written to its own files, so other processes may ingest other partitions meanwhile. Up to
    :data:`BATCH_PARTITIONS` partitions are ingested together (one pool of decoders, one pass over
    their tables), which gives each partition's files the same content as ingesting it alone. A
    data dir of an earlier version (one index file for the whole export) is split by folder first
    (:func:`migrate_legacy_layout`).

    Args:
        config: Ingest settings.
        partitions: The partitions to ingest; None: every folder of the export and every partition
            the data dir holds (a folder that is gone has its rows marked vanished).
        progress: Called as ``progress(done, total)`` while decoding, per batch.

    Returns:
        The tables of the ingested partitions (with None: the whole tables, as :func:`radaudit.pacs.index.read_index`
        and the like read them).
    """
    data_dir = Path(config.data_dir)
    if not Path(config.export_dir).is_dir():
        raise FileNotFoundError(f"export root {config.export_dir} does not exist or is not a folder")
    key = load_or_create_key(data_dir, config.pseudonym_key or os.environ.get(KEY_ENV))
    if legacy_layout(data_dir):
        migrate_legacy_layout(config)
    folders = export_partitions(config.export_dir, key)
    chosen = sorted(set(folders) | set(stored_partitions(data_dir))) if partitions is None \
        else sorted(set(partitions))
    now = pd.Timestamp.now(tz="UTC").floor("us")
    cached = cached_uids(data_dir)
    results = []
    for first in range(0, len(chosen), BATCH_PARTITIONS):
        batch = chosen[first : first + BATCH_PARTITIONS]
        with contextlib.ExitStack() as locks:
            for partition in batch:  # sorted: two runs lock in the same order, never each waiting for the other
                locks.enter_context(partition_lock(data_dir, partition, what=f"ingest of partition {partition}",
                                                   wait_s=config.lock_wait_s, on_wait=log.warning))
            results.append(_ingest_batch(config, key, {p: folders.get(p) for p in batch}, now, cached, progress))
    return _combine(results)


def _ingest_batch(config: IngestConfig, key: bytes, partitions: dict[str, str | None], now: pd.Timestamp,
                  cached: set[str], progress: Callable[[int, int], None] | None) -> IngestResult:
    """Ingest some partitions (partition -> folder) and write the files of those whose rows changed;
    ``cached``: the UIDs with a cached image, updated with the ones cached here."""
    data_dir = Path(config.data_dir)
    update = ix.update_index(
        config.export_dir, data_dir, key=key, partitions=partitions, full_rebuild=config.full_rebuild,
        retry_errors=config.retry_errors, workers=config.n_workers, file_timeout_s=config.file_timeout_s, now=now,
        worker_memory_mb=config.worker_memory_mb,
    )
    where = update.partition_of
    if config.full_rebuild:
        prev_manifest = ix.empty_frame(MANIFEST_SCHEMA)
    else:
        prev_manifest, manifest_parts = ix.read_partitions(data_dir, MANIFEST_DIR, MANIFEST_SCHEMA,
                                                           partitions=partitions)
        # A row keeps the partition it was cached for, unless its file's index row lives elsewhere now.
        where = {**dict(zip(prev_manifest["path_hash"], manifest_parts)), **where}
    fingerprint = config.cache.fingerprint()
    live = ix.live_rows(update.index)
    # Each partition caches its own live rows: an instance exported into two folders is cached by both.
    todo = _to_cache(live, prev_manifest, fingerprint, cached, where)
    rows, failures = _decode_all(todo, update.real_paths, config, progress)
    cached.update(r["sop_instance_uid"] for r in rows)

    reasons = {f["path_hash"]: f["reason"] for f in failures}
    index = update.index
    moved = index[index["path_hash"].isin(reasons)]
    index = index[~index["path_hash"].isin(reasons)]
    errors = pd.concat(
        [update.errors, ix.frame([
            ix.error_row(r.path, r.file_size, r.mtime_ns, "pixels", reasons[r.path_hash], now,
                         sop_instance_uid=r.sop_instance_uid, path_hash=r.path_hash)
            for r in moved.itertuples()
        ], ix.ERRORS_SCHEMA)],
        ignore_index=True,
    ).sort_values(["path", "stage"], ignore_index=True)

    # The manifest row of a (partition, instance) that was cached again, or is no longer in that partition's index.
    def pair(frame: pd.DataFrame) -> pd.Series:
        return frame["path_hash"].map(where).astype(str) + "\x00" + frame["sop_instance_uid"].astype(str)

    done = set(pair(ix.frame(rows, MANIFEST_SCHEMA)))
    kept = prev_manifest[~pair(prev_manifest).isin(done) & pair(prev_manifest).isin(set(pair(index)))]
    manifest = pd.concat([kept, ix.frame(rows, MANIFEST_SCHEMA)], ignore_index=True).sort_values(
        "sop_instance_uid", ignore_index=True
    )
    index = _with_decode_facts(index, manifest, pair)

    touched = update.touched | {where[h] for h in [*(r["path_hash"] for r in rows), *reasons]}
    touched |= {p for p in partitions if not partition_file(data_dir, INDEX_DIR, p).exists()}
    stats = dict(update.stats)
    stats.update(cached=len(rows), pixel_errors=len(failures), index_rows=len(index), error_rows=len(errors),
                 cache_rows=len(manifest), partitions=len(partitions), written=len(touched))
    ix.write_partitions(index, ix.INDEX_SCHEMA, data_dir, INDEX_DIR, where, touched)
    ix.write_partitions(errors, ix.ERRORS_SCHEMA, data_dir, ERRORS_DIR, where, touched)
    ix.write_partitions(manifest, MANIFEST_SCHEMA, data_dir, MANIFEST_DIR, where, touched)
    return IngestResult(index=index, errors=errors, manifest=manifest, stats=stats,
                        found_hashes=frozenset(update.real_paths))


def _combine(results: Sequence[IngestResult]) -> IngestResult:
    """The batches' results as one: tables as the readers read them, counts summed."""
    stats: dict[str, int] = {}
    for r in results:
        for name, value in r.stats.items():
            stats[name] = stats.get(name, 0) + value
    index = pd.concat([r.index for r in results], ignore_index=True) if results else ix.empty_frame(ix.INDEX_SCHEMA)
    errors = pd.concat([r.errors for r in results], ignore_index=True) if results else ix.empty_frame(ix.ERRORS_SCHEMA)
    manifest = pd.concat([r.manifest for r in results], ignore_index=True) if results \
        else ix.empty_frame(MANIFEST_SCHEMA)
    return IngestResult(
        index=ix.mark_duplicates(index.sort_values("path", ignore_index=True)),
        errors=errors.sort_values(["path", "stage"], ignore_index=True),
        manifest=manifest.drop_duplicates("sop_instance_uid", keep="last").sort_values(
            "sop_instance_uid", kind="stable", ignore_index=True),
        stats=stats, found_hashes=frozenset().union(*(r.found_hashes for r in results)),
    )


def legacy_layout(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the data dir holds the single-file tables of an earlier version (``LEGACY_TABLES``)."""
    return any((Path(data_dir) / legacy).exists() for legacy in LEGACY_TABLES.values())


def migrate_legacy_layout(config: IngestConfig) -> dict[str, int]:
    """Split the single-file index, errors and manifest of an earlier version into one file per partition.

    Each row goes to the partition of its file, found by walking the export (paths in the tables
    may be redacted; their keyed hashes are not). Rows of files that are no longer in the export
    go to :data:`radaudit.pacs.partitions.LEGACY_VANISHED`. The new files are written first and the
    old ones removed last, so an interrupted migration is simply done again. Holds the data dir's
    lock exclusively, waiting up to ``config.lock_wait_s`` (the caller must not hold it shared: then
    it would not wait for the other holders).

    Returns:
        Rows per partition (of the index); empty when there was nothing to migrate.
    """
    data_dir = Path(config.data_dir)
    with data_dir_lock(data_dir, what="radaudit: splitting the index by export folder", wait_s=config.lock_wait_s,
                       on_wait=log.warning):
        if not legacy_layout(data_dir):
            return {}
        key = load_or_create_key(data_dir, config.pseudonym_key or os.environ.get(KEY_ENV))
        where: dict[str, str] = {}
        for item in walk(config.export_dir):
            rel = item.path if isinstance(item, FoundFile) else item[0]
            where[path_key(rel, key)] = partition_of(rel, key)
        rows: dict[str, int] = {}
        for table, schema in ((INDEX_DIR, ix.INDEX_SCHEMA), (ERRORS_DIR, ix.ERRORS_SCHEMA),
                              (MANIFEST_DIR, MANIFEST_SCHEMA)):
            frame = ix.read_table(data_dir / LEGACY_TABLES[table], schema)
            parts = pd.Series([where.get(h, LEGACY_VANISHED) for h in frame["path_hash"]], index=frame.index,
                              dtype=object)
            for partition, part in frame.groupby(parts, sort=True):
                if table == INDEX_DIR:
                    part = ix.mark_duplicates(part.reset_index(drop=True))
                    rows[str(partition)] = len(part)
                io.write_parquet(ix.to_table(part, schema), partition_file(data_dir, table, str(partition)))
        # Every partition gets all three files, as an ingest writes them.
        for partition in stored_partitions(data_dir):
            for table, schema in ((INDEX_DIR, ix.INDEX_SCHEMA), (ERRORS_DIR, ix.ERRORS_SCHEMA),
                                  (MANIFEST_DIR, MANIFEST_SCHEMA)):
                path = partition_file(data_dir, table, partition)
                if not path.exists():
                    io.write_parquet(ix.to_table(ix.empty_frame(schema), schema), path)
        for legacy in LEGACY_TABLES.values():
            (data_dir / legacy).unlink(missing_ok=True)
        log.info("split the index of an earlier version into %d partitions (one per export folder)",
                 len(stored_partitions(data_dir)))
        return rows


def _to_cache(live: pd.DataFrame, manifest: pd.DataFrame, fingerprint: str, cached: set[str],
              partition_of: dict[str, str]) -> pd.DataFrame:
    """Live index rows whose cached image is missing, stale or made with other parameters, judged by the
    manifest rows of their own partition.

    Args:
        cached: The UIDs with a cached image file (:func:`radaudit.pacs.cache.cached_uids`).
        partition_of: path_hash -> partition, of the index and manifest rows.
    """
    current = manifest[["sop_instance_uid", "path_hash", "file_size", "mtime_ns", "params"]].rename(
        columns={"path_hash": "path_hash_cached", "file_size": "file_size_cached", "mtime_ns": "mtime_ns_cached"}
    )
    current = current.assign(partition=current["path_hash_cached"].map(partition_of))
    merged = live.assign(partition=live["path_hash"].map(partition_of)).merge(
        current, on=["partition", "sop_instance_uid"], how="left")
    stale = (
        merged["params"].ne(fingerprint)
        | merged["path_hash_cached"].ne(merged["path_hash"])
        | merged["file_size_cached"].ne(merged["file_size"])
        | merged["mtime_ns_cached"].ne(merged["mtime_ns"])
    ).to_numpy(dtype=bool, na_value=True)
    # Plain bool arrays: mapping an empty str column gives a str Series, which pandas will not "or".
    missing_file = np.array([u not in cached for u in merged["sop_instance_uid"]], dtype=bool)
    return live[stale | missing_file]


def _decode_all(
    todo: pd.DataFrame, real_paths: dict[str, str], config: IngestConfig,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Cache every row of ``todo`` in worker processes; return (manifest rows, failures)."""
    if todo.empty:
        return [], []
    root = Path(config.export_dir)
    params = asdict(config.cache)
    jobs = [
        {
            "abs_path": str(root / real_paths[r.path_hash]), "path": r.path, "path_hash": r.path_hash,
            "file_size": int(r.file_size), "mtime_ns": int(r.mtime_ns),
            "sop_instance_uid": r.sop_instance_uid,
            "patient_orientation": r.patient_orientation if isinstance(r.patient_orientation, str) else None,
            "params": params, "data_dir": str(config.data_dir),
        }
        for r in todo.itertuples()
    ]
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    results = ix.run_isolated(cache_one, jobs, workers=config.n_workers, timeout_s=config.file_timeout_s,
                              action="decoding", actor="decoder", progress=progress,
                              memory_limit_mb=config.worker_memory_mb)
    for job, res in zip(jobs, results):
        if isinstance(res, ix.JobFailure):
            failures.append({**_who(job), "reason": res.reason.replace(job["abs_path"], job["path"])})
        else:
            rows.append(res)
    for f in failures:
        log.warning("pixels failed for %s: %s", f["path"], f["reason"])
    return rows, failures


def _who(job: dict[str, Any]) -> dict[str, str]:
    return {"path": job["path"], "path_hash": job["path_hash"]}


def _with_decode_facts(index: pd.DataFrame, manifest: pd.DataFrame, pair: Callable[[pd.DataFrame], pd.Series]
                       ) -> pd.DataFrame:
    """Copy how each image was decoded (frames, colour, window) from the manifest into the index, each
    row from its own partition's manifest row; ``pair``: a row's (partition, UID) key."""
    columns = ["frames_in_file", "was_color", "window_source"]
    if index.empty or manifest.empty:
        return index.assign(**{c: None for c in columns})
    facts = manifest[columns].set_axis(pair(manifest))
    return index.drop(columns=columns).join(facts, on=pair(index))
