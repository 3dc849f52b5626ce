"""Ingest partitions: one per top-level folder of the export, so that folders are ingested alone or side by side.

An export grows by folders (a day's export, a study, a patient), and the ingest writes one file
per table per folder (:func:`radaudit.pacs.layout.partition_file`). A partition is named by a keyed
hash of its folder's name, since folder names are often patients' names: the keys appear in
the Dagster UI and in file names. The files directly in the export's root form the partition
:data:`ROOT_PARTITION`. ``radaudit folders`` prints which folder each key stands for, on the
steward's terminal only.

    from radaudit.pacs.partitions import export_partitions
    export_partitions("export", key)   # {"3f9c0a1b2c3d4e5f": "2026-11-30", "top-level-files": None}
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from radaudit.pacs.discover import FoundFile, walk
from radaudit.pacs.layout import INDEX_DIR, PARTITIONED_TABLES, partition_file
from radaudit.pacs.pseudo import path_key

__all__ = ["LEGACY_VANISHED", "ROOT_PARTITION", "export_partitions", "folder_partition", "is_ingested", "partition_of",
           "stored_partitions", "walk_partition"]

# The partition of the files that lie directly in the export's root, outside any folder.
ROOT_PARTITION = "top-level-files"
# Rows of files that had vanished from the export before a data dir of an earlier version was split
# by folder (:func:`radaudit.pacs.ingest.migrate_legacy_layout`): their folder cannot be told any more.
LEGACY_VANISHED = "vanished-before-partitions"
_KEY = re.compile(r"[0-9a-f]{16}")


def partition_of(path: str, key: bytes) -> str:
    """The partition of a file, from its path relative to the export root (no slash: a file of the root)."""
    top, slash, _ = path.partition("/")
    return folder_partition(top, key) if slash else ROOT_PARTITION


def folder_partition(folder: str, key: bytes) -> str:
    """The partition key of one top-level folder: 16 hex digits of a keyed hash of its name."""
    return path_key(folder, key)[:16]


def export_partitions(export_dir: str | os.PathLike[str], key: bytes) -> dict[str, str | None]:
    """The export's partitions now: key -> its top-level folder (real name, never to be written), and
    :data:`ROOT_PARTITION` -> None when the root holds anything but folders, or nothing at all (so that
    an empty export still has a partition whose ingest says it is empty).

    Raises:
        OSError: If the root cannot be listed (:func:`radaudit.pacs.checks.check_export` says it in one line).
    """
    parts: dict[str, str | None] = {}
    loose = False
    with os.scandir(export_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder:
                parts[folder_partition(entry.name, key)] = entry.name
            else:
                loose = True
    if loose or not parts:
        parts[ROOT_PARTITION] = None
    return parts


def stored_partitions(data_dir: str | os.PathLike[str]) -> list[str]:
    """The partitions that have a file of any ingest table under the data dir, sorted."""
    found: set[str] = set()
    for table in PARTITIONED_TABLES:
        folder = Path(data_dir) / table
        if folder.is_dir():
            found |= {p.stem for p in folder.glob("*.parquet") if _is_partition(p.stem)}
    return sorted(found)


def _is_partition(name: str) -> bool:
    return name == ROOT_PARTITION or bool(_KEY.fullmatch(name)) or name == LEGACY_VANISHED


def walk_partition(export_dir: str | os.PathLike[str], partition: str,
                   folder: str | None) -> Iterator[FoundFile | tuple[str, str]]:
    """:func:`radaudit.pacs.discover.walk` over one partition: the root's own entries for
    :data:`ROOT_PARTITION`, the tree under ``folder`` otherwise, nothing for a folder that is gone
    (``folder`` None: its rows are then marked vanished)."""
    if partition == ROOT_PARTITION:
        yield from walk(export_dir, subfolders=False)
    elif folder is not None:
        yield from walk(export_dir, folder=folder)


def is_ingested(data_dir: str | os.PathLike[str], partition: str) -> bool:
    """Whether a partition has been ingested into this data dir (its index file exists)."""
    return partition_file(data_dir, INDEX_DIR, partition).exists()
