"""Ingest: export folder -> instance index, ingest errors and image cache, in one incremental pass.

Headers are read first (cheap); then the pixels of new or changed instances are decoded in a pool
of worker processes, each file under a time and a memory limit (``radaudit.pacs.index.run_isolated``,
which header reading uses too, however few the files), so a damaged file that hangs or crashes a
decoder, or needs more memory than the limit, costs one error row, not the run.
A file whose pixels fail moves from the index to the errors with stage ``pixels``: every file ends
in exactly one of the two tables.

Run from a notebook::

    from radaudit.pacs.ingest import IngestConfig, run_ingest
    result = run_ingest(IngestConfig(export_dir="export", data_dir="data"))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radaudit.pacs import index as ix
from radaudit.pacs import io
from radaudit.pacs.cache import MANIFEST_SCHEMA, CacheParams, cache_one, cached_uids
from radaudit.pacs.layout import MANIFEST_PATH
from radaudit.pacs.pseudo import KEY_ENV, load_or_create_key

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

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if self.file_timeout_s <= 0:
            raise ValueError(f"file_timeout_s must be positive, got {self.file_timeout_s}")
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


def run_ingest(config: IngestConfig, *, progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Update the index, the errors and the image cache for ``config.export_dir``.

    Args:
        config: Ingest settings.
        progress: Called as ``progress(done, total)`` while decoding.
    """
    data_dir = Path(config.data_dir)
    key = load_or_create_key(data_dir, config.pseudonym_key or os.environ.get(KEY_ENV))
    now = pd.Timestamp.now(tz="UTC").floor("us")
    update = ix.update_index(
        config.export_dir, data_dir, key=key, full_rebuild=config.full_rebuild,
        retry_errors=config.retry_errors, workers=config.n_workers, file_timeout_s=config.file_timeout_s, now=now,
        worker_memory_mb=config.worker_memory_mb,
    )
    prev_manifest = (
        ix.empty_frame(MANIFEST_SCHEMA) if config.full_rebuild else ix.read_table(data_dir / MANIFEST_PATH, MANIFEST_SCHEMA)
    )
    fingerprint = config.cache.fingerprint()
    todo = _to_cache(update.index, prev_manifest, fingerprint, data_dir)
    rows, failures = _decode_all(todo, update.real_paths, config, progress)

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

    done_uids = {r["sop_instance_uid"] for r in rows}
    manifest = prev_manifest[
        ~prev_manifest["sop_instance_uid"].isin(done_uids) & prev_manifest["sop_instance_uid"].isin(index["sop_instance_uid"])
    ]
    manifest = pd.concat([manifest, ix.frame(rows, MANIFEST_SCHEMA)], ignore_index=True).sort_values(
        "sop_instance_uid", ignore_index=True
    )
    index = _with_decode_facts(index, manifest)

    stats = dict(update.stats)
    stats.update(cached=len(rows), pixel_errors=len(failures), index_rows=len(index), error_rows=len(errors),
                 cache_rows=len(manifest))
    if update.changed or rows or failures or not (data_dir / ix.INDEX_PATH).exists():
        ix.write(ix.IndexUpdate(index=index, errors=errors), data_dir)
        io.write_parquet(ix.to_table(manifest, MANIFEST_SCHEMA), data_dir / MANIFEST_PATH)
        stats["written"] = 1
    else:
        stats["written"] = 0
    return IngestResult(index=index, errors=errors, manifest=manifest, stats=stats,
                        found_hashes=frozenset(update.real_paths))


def _to_cache(index: pd.DataFrame, manifest: pd.DataFrame, fingerprint: str, data_dir: Path) -> pd.DataFrame:
    """Index rows whose cached image is missing, stale or made with other parameters."""
    live = ix.live_rows(index)
    current = manifest[["sop_instance_uid", "path_hash", "file_size", "mtime_ns", "params"]].rename(
        columns={"path_hash": "path_hash_cached", "file_size": "file_size_cached", "mtime_ns": "mtime_ns_cached"}
    )
    merged = live.merge(current, on="sop_instance_uid", how="left")
    stale = (
        merged["params"].ne(fingerprint)
        | merged["path_hash_cached"].ne(merged["path_hash"])
        | merged["file_size_cached"].ne(merged["file_size"])
        | merged["mtime_ns_cached"].ne(merged["mtime_ns"])
    ).to_numpy(dtype=bool, na_value=True)
    # Plain bool arrays: mapping an empty str column gives a str Series, which pandas will not "or".
    cached = cached_uids(data_dir)
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


def _with_decode_facts(index: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Copy how each image was decoded (frames, colour, window) from the manifest into the index."""
    columns = ["frames_in_file", "was_color", "window_source"]
    if index.empty or manifest.empty:
        return index.assign(**{c: None for c in columns})
    facts = manifest.set_index("sop_instance_uid")[columns]
    return index.drop(columns=columns).join(facts, on="sop_instance_uid")
