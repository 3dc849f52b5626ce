"""Atomic writes: every output appears whole or not at all (temp file in the same folder, then rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write a Parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_parquet_frame(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame as Parquet atomically (no pandas index column)."""
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), path)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of radaudit's temporary names (``.<target>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and len(name) > 5


def remove_stale_temps(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders a killed writer left under ``root``; return them.

    Only safe while holding the data dir's lock (:mod:`radaudit.pacs.lock`): then no writer is alive to
    own them. A process killed between writing a temp file and renaming it leaves one behind.
    """
    removed = []
    for folder, dirs, files in os.walk(root):
        if Path(folder) == Path(root) and "dagster" in dirs:
            dirs.remove("dagster")  # the Dagster instance's own files
        for name in [d for d in dirs if is_temp_name(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            removed.append(Path(folder) / name)
            dirs.remove(name)
        for name in files:
            if is_temp_name(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed.append(Path(folder) / name)
    return removed
