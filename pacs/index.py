"""The instance index: one row per DICOM instance, updated incrementally, one file per export folder.

A re-run reads only files that are new or changed (path, size, mtime); unchanged files keep
their rows, vanished files are marked ``present=False`` with ``missing_since``, never dropped.
Every discovered file ends in exactly one table: the index, or the errors with a stage and reason.
Each partition (a top-level folder, :mod:`radaudit.pacs.partitions`) is updated and written alone;
:func:`read_index`, :func:`read_errors` and :func:`read_manifest` read all of them as one table.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pebble import ProcessExpired, ProcessPool

from radaudit.pacs import io
from radaudit.pacs.cache import MANIFEST_SCHEMA
from radaudit.pacs.discover import FoundFile, display_path, walk
from radaudit.pacs.header import HEADER_TAGS, IDENTIFIERS, INT_COLUMNS, HeaderError, read_header
from radaudit.pacs.layout import ERRORS_DIR, INDEX_DIR, LEGACY_TABLES, MANIFEST_DIR, partition_file
from radaudit.pacs.partitions import ROOT_PARTITION, export_partitions, walk_partition
from radaudit.pacs.pseudo import Redactor, path_key


STAGES = ("discover", "header", "pixels")
# Headers read per worker job: one job per file costs more in scheduling and IPC than the reading.
HEADER_CHUNK = 32

_FILE_FIELDS = [
    # Relative path with any folder or file name holding a patient's name or ID redacted.
    pa.field("path", pa.string()),
    # Keyed hash of the real relative path: the file's identity across runs.
    pa.field("path_hash", pa.string()),
    pa.field("file_size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("present", pa.bool_()),
    pa.field("first_seen", pa.timestamp("us", tz="UTC")),
    pa.field("missing_since", pa.timestamp("us", tz="UTC")),
]
INDEX_SCHEMA = pa.schema(
    _FILE_FIELDS
    + [pa.field(c, pa.int64() if c in INT_COLUMNS else pa.string()) for c in HEADER_TAGS]
    + [
        pa.field("transfer_syntax_uid", pa.string()),
        # Comma-joined keywords of radaudit.pacs.header.OTHER_MODALITY_ATTRIBUTES the file carries.
        pa.field("other_modality_attributes", pa.string()),
        pa.field("patient_key", pa.string()),
        pa.field("duplicate_of", pa.string()),
        # Filled by the pixel stage: how the image was decoded.
        pa.field("frames_in_file", pa.int64()),
        pa.field("was_color", pa.bool_()),
        pa.field("window_source", pa.string()),
    ]
)
ERRORS_SCHEMA = pa.schema(
    _FILE_FIELDS
    + [
        pa.field("stage", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("sop_instance_uid", pa.string()),
    ]
)


_EMPTY_FRAMES: dict[pa.Schema, pd.DataFrame] = {}


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    """An empty DataFrame with the schema's columns and dtypes."""
    empty = _EMPTY_FRAMES.get(schema)
    if empty is None:
        empty = _EMPTY_FRAMES[schema] = schema.empty_table().to_pandas()
    return empty.copy()


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert with the fixed schema, so empty or all-null columns keep their types."""
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def read_table(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a table written by this module, or an empty frame when it does not exist yet.

    A column the schema gained since the table was written is added empty (its files are not
    read again until they change, or with a full rebuild).
    """
    if not path.exists():
        return empty_frame(schema)
    df = pd.read_parquet(path)
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        nulls = pa.table({name: pa.nulls(len(df), schema.field(name).type) for name in missing}).to_pandas()
        df = df.assign(**{name: nulls[name].set_axis(df.index) for name in missing})
    return df


def read_partitioned(data_dir: str | os.PathLike[str], table: Path, schema: pa.Schema, *,
                     partitions: Collection[str] | None = None) -> pd.DataFrame:
    """All partitions' files of one ingest table as one frame, partitions in sorted order.

    A data dir of an earlier version, not yet split by folder, holds one file for the whole table
    (``LEGACY_TABLES``): that file is read. Columns the schema gained since a file was written are
    added empty (:func:`read_table`).

    Args:
        table: ``INDEX_DIR``, ``ERRORS_DIR`` or ``MANIFEST_DIR``.
        partitions: Only these partitions; None: all.
    """
    return read_partitions(data_dir, table, schema, partitions=partitions)[0]


def read_partitions(data_dir: str | os.PathLike[str], table: Path, schema: pa.Schema, *,
                    partitions: Collection[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`read_partitioned`, and the partition of each row. Shape: (N,), object."""
    data_dir = Path(data_dir)
    legacy = data_dir / LEGACY_TABLES[table]
    if legacy.exists():
        frame = read_table(legacy, schema)
        return frame, np.full(len(frame), None, dtype=object)
    folder = data_dir / table
    names = sorted(p.stem for p in folder.glob("*.parquet") if not io.is_temp_name(p.name)) if folder.is_dir() else []
    if partitions is not None:
        wanted = set(partitions)
        names = [n for n in names if n in wanted]
    # One Arrow table per file (the schema fills the columns an older file lacks), one conversion to pandas.
    tables = [pq.read_table(folder / f"{n}.parquet", schema=schema) for n in names]
    if not tables:
        return empty_frame(schema), np.empty(0, dtype=object)
    labels = np.repeat(np.array(names, dtype=object), [t.num_rows for t in tables])
    return pa.concat_tables(tables).to_pandas(), labels


def read_index(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The whole instance index: every partition's rows, sorted by path, ``duplicate_of`` marked across
    partitions (an instance exported into two folders is one image, whichever folder came first)."""
    return mark_duplicates(read_partitioned(data_dir, INDEX_DIR, INDEX_SCHEMA).sort_values("path", ignore_index=True))


def read_errors(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The whole ingest error table, sorted by path and stage."""
    return read_partitioned(data_dir, ERRORS_DIR, ERRORS_SCHEMA).sort_values(["path", "stage"], ignore_index=True)


def read_manifest(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The whole cache manifest, one row per cached instance, sorted by UID (an instance cached from two
    folders keeps the row of the last partition in sorted order, whose ingest wrote it too)."""
    manifest = read_partitioned(data_dir, MANIFEST_DIR, MANIFEST_SCHEMA)
    return manifest.drop_duplicates("sop_instance_uid", keep="last").sort_values(
        "sop_instance_uid", kind="stable", ignore_index=True)


@dataclass
class IndexUpdate:
    """The index and errors after a scan, plus what changed."""

    index: pd.DataFrame
    errors: pd.DataFrame
    stats: dict[str, int] = field(default_factory=dict)
    # path_hash -> real relative path of every file found in this run (surrogate escapes for bytes that
    # are not UTF-8: open with it, never write it); kept in memory only.
    real_paths: dict[str, str] = field(default_factory=dict)
    # path_hash -> the partition its row belongs to (where the file is now, or was last seen).
    partition_of: dict[str, str] = field(default_factory=dict)
    # The partitions whose rows changed (new, changed, vanished or reappeared files, new errors).
    touched: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        """Whether anything differs from the previous run."""
        return any(self.stats.get(k, 0) for k in ("new", "changed", "vanished", "reappeared", "errors_new"))


def update_index(
    export_root: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    key: bytes,
    partitions: Mapping[str, str | None] | None = None,
    full_rebuild: bool = False,
    retry_errors: bool = False,
    workers: int = 1,
    file_timeout_s: float = 60.0,
    now: pd.Timestamp | None = None,
    worker_memory_mb: int | None = None,
    isolated: bool = True,
) -> IndexUpdate:
    """Scan partitions of the export and bring their index and error rows up to date (in memory; see ``write``).

    Args:
        export_root: Root of the DICOM export.
        data_dir: Where the previous index and errors live.
        key: Pseudonymization key.
        partitions: Partition -> the real name of its top-level folder (:mod:`radaudit.pacs.partitions`;
            None for the root's own files, or for a folder that is gone: its rows are marked
            vanished). None: the whole export as :func:`radaudit.pacs.partitions.export_partitions` lists it.
        full_rebuild: Ignore the previous tables and read every file again.
        retry_errors: Read again files that failed before even if they did not change.
        workers: Worker processes for header reading.
        file_timeout_s: Wall-time limit for reading one header.
        now: Timestamp for first_seen / missing_since (default: the current time).
        worker_memory_mb: Address space a header worker process may add (``run_isolated``); None: no limit.
        isolated: False reads the headers in this process, under neither limit (see ``read_headers``).
    """
    root = Path(export_root)
    if not root.is_dir():
        raise FileNotFoundError(f"export root {root} does not exist or is not a folder")
    now = now if now is not None else pd.Timestamp.now(tz="UTC").floor("us")
    data_dir = Path(data_dir)
    parts = dict(export_partitions(root, key) if partitions is None else partitions)
    if full_rebuild:
        prev_index, index_parts = empty_frame(INDEX_SCHEMA), np.empty(0, dtype=object)
        prev_errors, error_parts = empty_frame(ERRORS_SCHEMA), np.empty(0, dtype=object)
    else:
        prev_index, index_parts = read_partitions(data_dir, INDEX_DIR, INDEX_SCHEMA, partitions=parts)
        prev_errors, error_parts = read_partitions(data_dir, ERRORS_DIR, ERRORS_SCHEMA, partitions=parts)
    if retry_errors:
        prev_errors, error_parts = prev_errors.iloc[0:0], error_parts[:0]
    partition_of = dict(zip(prev_errors["path_hash"].tolist(), error_parts))
    partition_of.update(zip(prev_index["path_hash"].tolist(), index_parts))

    found: list[FoundFile] = []
    walk_errors: list[tuple[str, str, str]] = []  # (path, reason, partition)
    found_in: dict[str, str] = {}
    # The export's own walk order (the root's files, then the folders by name), whatever the partitions' keys.
    for partition, folder in sorted(parts.items(), key=lambda pf: (pf[0] != ROOT_PARTITION, pf[1] is None,
                                                                   pf[1] or "")):
        for item in walk_partition(root, partition, folder):
            if isinstance(item, FoundFile):
                found.append(item)
                found_in[item.path] = partition
            else:
                walk_errors.append((*item, partition))
    hashes = {f.path: path_key(f.path, key) for f in found}
    real_paths = {h: p for p, h in hashes.items()}
    # A file belongs where it is now: a row kept in another partition moves with the file.
    partition_of.update((hashes[p], partition) for p, partition in found_in.items())

    previous: dict[str, tuple[int, int]] = {}
    for table in (prev_index, prev_errors):
        for h, size, mtime in zip(table["path_hash"], table["file_size"], table["mtime_ns"]):
            previous[h] = (int(size) if pd.notna(size) else -1, int(mtime) if pd.notna(mtime) else -1)

    todo: list[FoundFile] = []
    touched: set[str] = set()
    stats = {"discovered": len(found), "new": 0, "changed": 0, "unchanged": 0, "vanished": 0, "reappeared": 0}
    for f in found:
        prev = previous.get(hashes[f.path])
        if prev is None:
            stats["new"] += 1
            todo.append(f)
        elif prev != (f.size, f.mtime_ns):
            stats["changed"] += 1
            todo.append(f)
        else:
            stats["unchanged"] += 1
    touched |= {found_in[f.path] for f in todo}

    redo = {hashes[f.path] for f in todo}
    keep_index = ~_isin(prev_index["path_hash"], redo).to_numpy()
    # Rows without a size came from the walk itself (unreadable entries): the walk reports them afresh.
    walked = prev_errors["file_size"].isna().to_numpy()
    keep_errors = ~_isin(prev_errors["path_hash"], redo).to_numpy() & ~walked
    touched |= set(error_parts[walked])
    kept_index, kept_errors = prev_index[keep_index].copy(), prev_errors[keep_errors].copy()
    for kept, was_in in ((kept_index, index_parts[keep_index]), (kept_errors, error_parts[keep_errors])):
        present = _isin(kept["path_hash"], real_paths)
        before = kept["present"].astype(bool)
        stats["vanished"] += int((~present & before).sum())
        stats["reappeared"] += int((present & ~before).sum())
        now_in = np.array([partition_of[h] for h in kept["path_hash"]], dtype=object)
        moved = now_in != was_in  # a file of a partition of an earlier index, found in its folder's partition
        touched |= set(was_in[(present != before).to_numpy() | moved]) | set(now_in[moved])
        kept.loc[~present & kept["missing_since"].isna(), "missing_since"] = now
        kept.loc[present, "missing_since"] = pd.NaT
        kept["present"] = present

    rows, header_errors = read_headers(root, todo, key=key, workers=workers, now=now, timeout_s=file_timeout_s,
                                       path_hashes=hashes, memory_limit_mb=worker_memory_mb, isolated=isolated)
    errors_now = []
    for p, reason, partition in walk_errors:
        errors_now.append(error_row(p, None, None, "discover", reason, now, path_hash=path_key(p, key)))
        partition_of[errors_now[-1]["path_hash"]] = partition
        touched.add(partition)
    _redact(rows, header_errors + errors_now, kept_index=kept_index, kept_errors=kept_errors, real_paths=real_paths,
            key=key)
    index = pd.concat([kept_index, frame(rows, INDEX_SCHEMA)], ignore_index=True).sort_values("path", ignore_index=True)
    errors = pd.concat(
        [kept_errors, frame(errors_now, ERRORS_SCHEMA), frame(header_errors, ERRORS_SCHEMA)], ignore_index=True
    )
    index = mark_duplicates(index, within=index["path_hash"].map(partition_of).to_numpy(dtype=object))
    errors = errors.sort_values(["path", "stage"], ignore_index=True)
    stats["indexed"] = len(rows)
    stats["errors_new"] = len(header_errors) + len(errors_now)
    return IndexUpdate(index=index, errors=errors, stats=stats, real_paths=real_paths, partition_of=partition_of,
                       touched=touched)


def locate(export_root: str | os.PathLike[str], key: bytes, hashes: Collection[str]) -> dict[str, str]:
    """The paths under ``export_root`` (relative, shown as valid UTF-8) whose ``path_hash`` is in ``hashes``.

    Index and error rows show redacted paths; this finds the real file for a steward's terminal.
    """
    wanted, found = set(hashes), {}
    for item in walk(export_root):
        path = item.path if isinstance(item, FoundFile) else item[0]
        h = path_key(path, key)
        if h in wanted:
            found[h] = display_path(path)
            if len(found) == len(wanted):
                break
    return found


def _isin(column: pd.Series, values: Collection[str]) -> pd.Series:
    """``column.isin(values)`` for a set or dict of strings, by lookups of the column's values.

    pandas converts every element of ``values`` to an Arrow scalar (microseconds each: seconds for
    a large archive's paths).
    """
    return pd.Series(np.fromiter((v in values for v in column.tolist()), dtype=bool, count=len(column)),
                     index=column.index)


def _folder_map(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Real folder -> its redacted form, from (real path, redacted path) pairs of indexed files."""
    known: dict[str, str] = {}
    for real, redacted in pairs:
        if real == redacted:
            continue
        real_parts, red_parts = real.split("/")[:-1], redacted.split("/")[:-1]
        for depth in range(1, len(real_parts) + 1):
            known.setdefault("/".join(real_parts[:depth]), "/".join(red_parts[:depth]))
    return known


# Extensions shown on a hidden file name: what exports and media hold, never part of a name.
_SHOWN_EXTENSIONS = frozenset({"dcm", "dicom", "dic", "ima", "img", "pdf", "txt", "xml", "json", "csv", "jpg",
                               "jpeg", "png", "bmp", "tif", "tiff", "zip", "htm", "html", "ini", "inf", "db", "exe"})


# Names that exports and media give their files, which cannot carry a patient's name: a short
# prefix and a number ("IM000001", "I1000000", "00000001", a UID), or a well-known file. A short
# name without a digit ("Lee.dcm", "KIM") may be a name.
_PLAIN_NAME = re.compile(r"[a-z]{0,3}\d[\d._-]*")
_WELL_KNOWN_NAMES = frozenset({"dicomdir", "readme", "lockfile", "version", "autorun", "index", "thumbs",
                               "desktop", ".ds_store", "manifest", "license", "viewer", "setup"})


def _plain_name(name: str) -> bool:
    """Whether a file name is one exports give (see :data:`_PLAIN_NAME`), not possibly a patient's."""
    stem = name.lower()
    stem = stem.rpartition(".")[0] if stem.rpartition(".")[2] in _SHOWN_EXTENSIONS else stem
    return bool(_PLAIN_NAME.fullmatch(stem)) or stem in _WELL_KNOWN_NAMES


def _hide_unknown_folders(path: str, safe: Collection[str], key: bytes, *, folder: bool = False) -> str:
    """``path`` with each folder that holds no indexed file shown as ``folder-<keyed hash>``, and the
    file name as ``file-<keyed hash>.<ext>`` unless it is a plain export name (``IM000001``,
    ``DICOMDIR``): a name nobody has read may be a patient's, even beside indexed images.
    ``folder``: the path itself may be a folder (an entry the walk could not read)."""
    if folder:
        return "/".join(f if f in safe else f"folder-{path_key(f, key)[:8]}" for f in path.split("/"))
    *folders, name = path.split("/")
    if all(f in safe for f in folders) and _plain_name(name):
        return path
    ext = name.rpartition(".")[2] if "." in name else ""
    name = f"file-{path_key(name, key)[:8]}" + (f".{ext}" if ext.lower() in _SHOWN_EXTENSIONS else "")
    return "/".join([*(f if f in safe else f"folder-{path_key(f, key)[:8]}" for f in folders), name])


def _redact(rows: list[dict[str, Any]], error_rows: list[dict[str, Any]], *, kept_index: pd.DataFrame,
            kept_errors: pd.DataFrame, real_paths: Mapping[str, str], key: bytes) -> None:
    """Replace the parts of paths (and error reasons) that carry a patient's name, ID or birth date.

    Viewer exports often name folders after the patient. Tokens come from every header read in
    this run (error rows carry the tokens of files that were read but refused), and a folder
    redacted for an indexed file, in this run or an earlier one, is redacted the same way in the
    error rows. A file whose patient is unknown (not DICOM, unreadable, it hung or crashed the
    reader) may sit in a folder named after a patient nobody has read, or carry such a name
    itself: folders that hold no indexed file show as ``folder-<keyed hash>``, and its name as
    ``file-<keyed hash>.dcm`` unless it is a plain export name (``IM000001``, ``DICOMDIR``);
    ``radaudit locate`` finds the real file from its ``path_hash``. Error rows kept from earlier
    runs with their real path get the same treatment.
    """
    tokens: set[str] = set()
    for r in rows:
        tokens |= r.pop(IDENTIFIERS, None) or set()
    unread: list[bool] = []
    for r in error_rows:
        found = r.pop(IDENTIFIERS, None) or set()
        tokens |= found
        unread.append(not found)
    redactor = Redactor(tokens)
    real_rows = [r["path"] for r in rows]
    for r in rows:
        r["path"] = redactor.redact(r["path"], f"patient-{(r.get('patient_key') or 'unknown')[:8]}")
    earlier = ((display_path(real_paths[h]), red) for h, red in zip(kept_index["path_hash"], kept_index["path"])
               if h in real_paths)
    known = _folder_map([*earlier, *zip(real_rows, (r["path"] for r in rows))])
    # Folder names that hold indexed files, as written in the index: they passed redaction.
    safe = {part for p in [*kept_index["path"], *(r["path"] for r in rows)] for part in p.split("/")[:-1]}
    for r, never_read in zip(error_rows, unread):
        real = r["path"]
        parts = real.split("/")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:depth])
            if prefix in known:
                r["path"] = "/".join([known[prefix], *parts[depth:]])
                break
        r["path"] = redactor.redact(r["path"], "patient-redacted")
        if never_read:
            r["path"] = _hide_unknown_folders(r["path"], safe, key, folder=r["file_size"] is None)
        # Reasons may quote the path (an OSError does).
        r["reason"] = redactor.redact(r["reason"].replace(real, r["path"]), "patient-redacted")
    if len(kept_errors):
        # Rows of an earlier version that showed the real path of a file nobody could read.
        real = [display_path(real_paths[h]) if h in real_paths else None for h in kept_errors["path_hash"]]
        plain = np.array([shown == r for shown, r in zip(kept_errors["path"], real)], dtype=bool)
        hidden = [_hide_unknown_folders(p, safe, key) for p in kept_errors.loc[plain, "path"]]
        reasons = [why.replace(p, h) for why, p, h in zip(kept_errors.loc[plain, "reason"],
                                                          kept_errors.loc[plain, "path"], hidden)]
        kept_errors.loc[plain, "path"] = hidden
        kept_errors.loc[plain, "reason"] = reasons


def read_headers(
    root: Path, files: Sequence[FoundFile], *, key: bytes, workers: int, now: pd.Timestamp, timeout_s: float = 60.0,
    path_hashes: Mapping[str, str] | None = None, memory_limit_mb: int | None = None, isolated: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the headers of ``files``; return (index rows, error rows).

    Headers are read in worker processes, ``HEADER_CHUNK`` files per job, each file under
    ``timeout_s`` and ``memory_limit_mb`` (``run_isolated``), whatever the number of files: a file
    that hangs the reader, kills its worker or needs more memory than the limit is one error row.
    A run of a few files uses one worker, which costs a fork (about 10 ms), not the pool's
    scaling. The reader also bounds a deflated dataset's inflation by the limit
    (:func:`radaudit.pacs.header.read_header`).

    Args:
        path_hashes: ``path_key(f.path, key)`` of the files where the caller has it already.
        memory_limit_mb: Address space each worker process may add (see ``run_isolated``); None: no limit.
        isolated: False reads in this process, under neither limit: for a debugger or a profiler,
            and the baseline of ``benchmarks/ingest.py``.
    """
    jobs = [(str(root / f.path), key, memory_limit_mb) for f in files]
    results: list[dict[str, Any] | HeaderError | JobFailure]
    if isolated:
        results = run_isolated(_read_one, jobs, workers=workers, timeout_s=timeout_s,
                               action="reading the header", actor="header reader", chunk_size=HEADER_CHUNK,
                               memory_limit_mb=memory_limit_mb)
    else:
        results = [_read_one(job) for job in jobs]
    rows, errors = [], []
    for f, res in zip(files, results):
        path_hash = path_hashes[f.path] if path_hashes is not None else path_key(f.path, key)
        if isinstance(res, JobFailure):
            res = HeaderError(res.reason)
        if isinstance(res, HeaderError):
            row = error_row(f.path, f.size, f.mtime_ns, res.stage, str(res), now, severity=res.severity,
                            path_hash=path_hash)
            row[IDENTIFIERS] = res.identifiers
            errors.append(row)
        else:
            res.update(path=display_path(f.path), path_hash=path_hash, file_size=f.size,
                       mtime_ns=f.mtime_ns, present=True, first_seen=now)
            rows.append(res)
    return rows, errors


def _read_one(job: tuple[str, bytes, int | None]) -> dict[str, Any] | HeaderError:
    """Worker entry point: one file's index row, or the error saying why it has none.

    A MemoryError propagates: ``run_isolated`` turns it into a reason that names the limit.
    """
    path, key, memory_limit_mb = job
    try:
        return read_header(path, key=key, memory_limit_mb=memory_limit_mb)
    except HeaderError as exc:
        return exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file must become a row, whatever pydicom raises
        return HeaderError(f"unexpected {type(exc).__name__} while reading the header: {exc}")


_STOPPING: list[threading.Thread] = []  # pools of finished run_isolated calls, stopping in the background


@dataclass(frozen=True)
class JobFailure:
    """Why one job of ``run_isolated`` gave no result."""

    reason: str


def run_isolated(
    fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int, timeout_s: float, action: str, actor: str,
    progress: Callable[[int, int], None] | None = None, chunk_size: int = 1, memory_limit_mb: int | None = None,
) -> list[Any]:
    """``[fn(job) for job in jobs]``, in worker processes under a wall-time limit per job.

    A job that runs too long, kills its worker (a segfault in a decoder, the OOM killer) or raises
    gets a ``JobFailure`` with a readable reason in its place; the pool replaces the worker and
    the other jobs go on, so one damaged file never costs the run. Workers are forked: ``fn``
    sees the parent's module state.

    Jobs go to the workers ``chunk_size`` at a time, under ``timeout_s`` times the chunk's length,
    which saves the scheduling and IPC of one task per job where jobs are short. A chunk that fails
    as a whole (too slow, its worker died, an exception) is run again one job per task, so each job
    gets the result or the reason it would have had alone.

    Args:
        fn: A module-level function of one job.
        jobs: Picklable arguments, one per call.
        workers: Worker processes (at most one per chunk).
        timeout_s: Wall-time limit of one job.
        action: What a job does, for a timeout: "decoding" -> "decoding took longer than 60 s".
        actor: What runs it, for a crash: "decoder" -> "decoder crashed (exit code -11: killed by SIGSEGV)".
        progress: Called as ``progress(done, total)`` after each job or chunk.
        chunk_size: Jobs per worker task (1: each job alone).
        memory_limit_mb: Address space each worker may map beyond what it inherits (``RLIMIT_AS``,
            see :func:`limit_address_space`): a decoder that tries to allocate more fails in that
            worker (``MemoryError``: "decoding needs more than the 256 MiB memory limit"; or the
            worker dies), which becomes the job's reason. None: no limit.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if memory_limit_mb is not None and memory_limit_mb < 1:
        raise ValueError(f"memory_limit_mb must be a positive number of MiB or None, got {memory_limit_mb}")
    if not jobs:
        return []
    chunks = [list(jobs[i : i + chunk_size]) for i in range(0, len(jobs), chunk_size)]
    results: list[Any] = []
    pool = ProcessPool(max_workers=max(1, min(workers, len(chunks))),
                       initializer=limit_address_space if memory_limit_mb else None, initargs=(memory_limit_mb,))
    try:
        futures = [
            pool.schedule(fn, args=(chunk[0],), timeout=timeout_s) if len(chunk) == 1
            else pool.schedule(_run_chunk, args=(fn, chunk), timeout=timeout_s * len(chunk))
            for chunk in chunks
        ]
        for chunk, future in zip(chunks, futures):
            if len(chunk) == 1:
                results.append(_result(future, timeout_s, action, actor, memory_limit_mb))
            else:
                outcome = _result(future, timeout_s * len(chunk), action, actor, memory_limit_mb)
                if isinstance(outcome, JobFailure):
                    alone = [pool.schedule(fn, args=(job,), timeout=timeout_s) for job in chunk]
                    outcome = [_result(f, timeout_s, action, actor, memory_limit_mb) for f in alone]
                results.extend(outcome)
            if progress:
                progress(len(results), len(jobs))
    finally:
        pool.stop()
        # pebble's join waits out its manager threads' 0.1 s polling; every result is in and the
        # workers are idle, so they are stopped in the background (a non-daemon thread: the
        # interpreter waits for it at exit; so does ``wait_for_workers``).
        stopping = threading.Thread(target=pool.join, name="run_isolated-join")
        stopping.start()
        _STOPPING[:] = [t for t in _STOPPING if t.is_alive()] + [stopping]
    return results


def limit_address_space(extra_mb: int) -> None:
    """Let this process map at most ``extra_mb`` MiB of address space beyond what it maps now (``RLIMIT_AS``).

    Run in each worker at its start. Relative to the inherited size, because a forked worker maps
    all of its parent (a process with CUDA libraries loaded maps tens of GB it never touches). A
    damaged file whose decoder asks for gigabytes then gets ``MemoryError`` (or its worker dies)
    instead of pushing the machine into the out-of-memory killer. A no-op where ``/proc`` is absent.
    """
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + (extra_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def wait_for_workers() -> None:
    """Wait until the worker processes of finished ``run_isolated`` calls have exited."""
    while _STOPPING:
        _STOPPING.pop().join()


def _run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(job) for job in chunk]


def _result(future: Any, timeout_s: float, action: str, actor: str, memory_limit_mb: int | None) -> Any:
    """The future's result, or a ``JobFailure`` saying why there is none."""
    try:
        return future.result()
    except FutureTimeout:
        return JobFailure(f"{action} took longer than {timeout_s:g} s")
    except ProcessExpired as exc:
        return JobFailure(f"{actor} crashed (exit code {exc.exitcode}{_signal_note(exc.exitcode)})")
    except MemoryError:
        if memory_limit_mb:
            return JobFailure(f"{action} needs more than the {memory_limit_mb} MiB memory limit")
        return JobFailure(f"{actor} ran out of memory")
    except Exception as exc:  # noqa: BLE001 - any failure of one job becomes that job's reason
        return JobFailure(f"{type(exc).__name__}: {exc}")


def _signal_note(exitcode: int | None) -> str:
    """": killed by SIGSEGV" and the like for a negative exit code, else ""."""
    if exitcode is None or exitcode >= 0:
        return ""
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        return f": killed by signal {-exitcode}"
    return f": killed by {name}" + (", e.g. by the out-of-memory killer" if name == "SIGKILL" else "")


def live_rows(index: pd.DataFrame) -> pd.DataFrame:
    """The index rows the pipeline works on: files still present, not a second export of an instance.

    The one live-instance filter: the ingest caches these, the stages train and audit on them.
    """
    return index[index["present"].astype(bool) & index["duplicate_of"].isna()]


def mark_duplicates(index: pd.DataFrame, *, within: np.ndarray | None = None) -> pd.DataFrame:
    """Fill ``duplicate_of``: among present rows sharing a SOP Instance UID, all but the first path.

    Args:
        index: Index rows, in the order that decides which row is the first (by path).
        within: Per row, its partition: duplicates are then marked within each partition only, as
            the partition's own ingest marks them (:func:`read_index` marks them across all).
    """
    index = index.copy()
    live = np.flatnonzero(index["present"].astype(bool).to_numpy())
    uids = index["sop_instance_uid"].to_numpy(dtype=object)[live]
    if within is not None:
        uids = np.array([f"{p}\x00{u}" for p, u in zip(within[live], uids)], dtype=object)
    codes, _ = pd.factorize(uids, use_na_sentinel=False)
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    original = live[first[inverse]]  # per live row: the first live row with its UID
    dup = original != live
    duplicate_of = np.full(len(index), None, dtype=object)
    duplicate_of[live[dup]] = index["path"].to_numpy(dtype=object)[original[dup]]
    index["duplicate_of"] = pd.Series(duplicate_of, index=index.index, dtype=object)
    return index


def write_partitions(df: pd.DataFrame, schema: pa.Schema, data_dir: str | os.PathLike[str], table: Path,
                     partition_of: Mapping[str, str], partitions: Collection[str]) -> None:
    """Write the rows of each of ``partitions`` to its own file of ``table`` (empty where it has none), atomically.

    Args:
        df: Rows of any partitions, with ``path_hash``.
        partition_of: path_hash -> partition.
    """
    arrow = to_table(df, schema)
    labels = pd.Series(df["path_hash"].map(partition_of).to_numpy(dtype=object))
    rows = labels.groupby(labels, sort=False).indices if len(labels) else {}
    for partition in sorted(partitions):
        taken = arrow.take(pa.array(rows.get(partition, np.empty(0, dtype=np.int64))))
        io.write_parquet(taken, partition_file(data_dir, table, partition))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


def error_row(
    path: str, file_size: int | None, mtime_ns: int | None, stage: str, reason: str, now: pd.Timestamp, *,
    sop_instance_uid: str | None = None, severity: str = "error", path_hash: str | None = None,
) -> dict[str, Any]:
    """An ingest_errors row for a file that failed at ``stage`` (path and reason made valid UTF-8; a
    decoder's message that names an object's memory address loses the address, which differs from run
    to run)."""
    return {
        "path": display_path(path), "path_hash": path_hash, "file_size": file_size, "mtime_ns": mtime_ns,
        "present": True, "first_seen": now, "missing_since": None, "stage": stage, "severity": severity,
        "reason": _ADDRESS.sub(">", display_path(reason)),
        "sop_instance_uid": sop_instance_uid,
    }


def frame(rows: list[dict[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    """Rows to a DataFrame with the schema's dtypes."""
    if not rows:
        return empty_frame(schema)
    return pa.Table.from_pylist(rows, schema=schema).to_pandas()
