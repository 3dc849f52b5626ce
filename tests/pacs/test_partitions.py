"""Ingest partitions: one per top-level export folder, written alone, side by side, read as one table."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pandas as pd
import pytest

from radaudit.pacs import index as ix
from radaudit.pacs.cache import MANIFEST_SCHEMA, CacheParams
from radaudit.pacs.index import read_errors, read_index, read_manifest
from radaudit.pacs.ingest import IngestConfig, legacy_layout, run_ingest
from radaudit.pacs.layout import INDEX_DIR, LEGACY_TABLES, PARTITIONED_TABLES, partition_file
from radaudit.pacs.lock import DataDirBusy, data_dir_lock, partition_lock
from radaudit.pacs.partitions import (LEGACY_VANISHED, ROOT_PARTITION, export_partitions, folder_partition,
                                      stored_partitions)
from radaudit.pacs.pseudo import load_or_create_key

KEY = "a-site-key"
# Set by each run, so never equal between two runs.
WHEN = ["first_seen", "missing_since"]


def config(export: Path, data: Path) -> IngestConfig:
    return IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=32), workers=1, pseudonym_key=KEY)


def tables(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return read_index(data).drop(columns=WHEN), read_errors(data).drop(columns=WHEN), read_manifest(data)


def test_partitions_are_the_top_level_folders_named_by_keyed_hashes(messy_export):
    export, _ = messy_export
    parts = export_partitions(export, b"k")
    assert parts == {**{folder_partition(f, b"k"): f for f in ("PAT1", "PAT2", "PAT3", "PAT4")},
                     ROOT_PARTITION: None}  # DICOMDIR and README.txt lie in the root
    assert all(len(k) == 16 and "PAT" not in k for k in parts if k != ROOT_PARTITION)
    assert folder_partition("PAT1", b"other key") != folder_partition("PAT1", b"k")


def test_one_partition_alone_gives_the_same_rows_as_all_at_once(messy_export, tmp_path):
    export, expected = messy_export
    together, alone = tmp_path / "together", tmp_path / "alone"
    run_ingest(config(export, together))
    parts = sorted(export_partitions(export, load_or_create_key(together, KEY)))
    for p in parts:
        result = run_ingest(config(export, alone), partitions=[p])
        assert stored_partitions(alone) == sorted(parts[: parts.index(p) + 1])  # each run wrote its own files only
        assert result.stats["partitions"] == 1
    for a, b in zip(tables(together), tables(alone)):
        pd.testing.assert_frame_equal(a, b)
    for table in PARTITIONED_TABLES:  # and each partition's own file holds the same rows
        for p in parts:
            pd.testing.assert_frame_equal(pd.read_parquet(partition_file(together, table, p)).drop(columns=WHEN,
                                                                                                 errors="ignore"),
                                          pd.read_parquet(partition_file(alone, table, p)).drop(columns=WHEN,
                                                                                              errors="ignore"))
    assert len(read_index(alone)) + len(read_errors(alone)) == len(expected)


def _ingest_one(export: str, data: str, partition: str, barrier) -> None:
    barrier.wait(timeout=60)  # both processes start their ingest at once
    run_ingest(config(Path(export), Path(data)), partitions=[partition])


def test_two_partitions_ingested_by_two_processes_at_once_both_land(messy_export, tmp_path):
    export, _ = messy_export
    data, reference = tmp_path / "data", tmp_path / "reference"
    run_ingest(config(export, reference))
    key = load_or_create_key(reference, KEY)
    pat1, pat2 = folder_partition("PAT1", key), folder_partition("PAT2", key)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    procs = [context.Process(target=_ingest_one, args=(str(export), str(data), p, barrier)) for p in (pat1, pat2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert stored_partitions(data) == sorted([pat1, pat2])
    index = read_index(data)
    assert set(index["path"].str.split("/").str[0]) == {"PAT1", "PAT2"}
    wanted = read_index(reference).drop(columns=WHEN)
    wanted = wanted[wanted["path"].str.startswith(("PAT1/", "PAT2/"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(index.drop(columns=WHEN), wanted, check_dtype=False)  # int or, with nulls, float
    assert set(read_manifest(data)["sop_instance_uid"]) == set(index["sop_instance_uid"])


def test_each_partition_has_its_own_lock_and_ingests_share_the_data_dirs(tmp_path):
    context = multiprocessing.get_context("fork")
    held, done = context.Event(), context.Event()

    def hold() -> None:
        with data_dir_lock(tmp_path, what="ingest", shared=True), partition_lock(tmp_path, "aaaa", what="ingest"):
            held.set()
            done.wait(60)

    proc = context.Process(target=hold)
    proc.start()
    try:
        assert held.wait(60)
        with data_dir_lock(tmp_path, what="another ingest", shared=True), partition_lock(tmp_path, "bbbb", what="x"):
            pass  # another folder's ingest runs meanwhile
        with pytest.raises(DataDirBusy, match=r"partition aaaa of data dir .* is in use by pid \d+ \(ingest"):
            with partition_lock(tmp_path, "aaaa", what="the same folder again"):
                pass
        with pytest.raises(DataDirBusy, match="is in use by"):
            with data_dir_lock(tmp_path, what="radaudit audit"):  # every other step waits for the ingests
                pass
    finally:
        done.set()
        proc.join(60)
    with data_dir_lock(tmp_path, what="radaudit audit"):
        pass


def test_a_data_dir_of_an_earlier_version_is_split_by_folder_on_the_next_ingest(messy_export, tmp_path):
    export, _ = messy_export
    data = tmp_path / "data"
    run_ingest(config(export, data))
    index, errors, manifest = read_index(data), read_errors(data), read_manifest(data)
    # The single files of an earlier version, with one row of a file that has left the export since.
    gone = index.iloc[[0]].assign(path="OLD/gone.dcm", path_hash="0" * 64, present=False,
                                  missing_since=pd.Timestamp("2026-01-01", tz="UTC"))
    for table, frame, schema in ((INDEX_DIR, pd.concat([index, gone], ignore_index=True), ix.INDEX_SCHEMA),
                                 (PARTITIONED_TABLES[1], errors, ix.ERRORS_SCHEMA),
                                 (PARTITIONED_TABLES[2], manifest, MANIFEST_SCHEMA)):
        ix.io.write_parquet(ix.to_table(frame, schema), data / LEGACY_TABLES[table])
        shutil.rmtree(data / table)
    assert legacy_layout(data)
    assert len(read_index(data)) == len(index) + 1  # readers read the old file until it is split

    result = run_ingest(config(export, data))
    assert not legacy_layout(data) and not any((data / p).exists() for p in LEGACY_TABLES.values())
    assert result.stats["new"] == 0 and result.stats["cached"] == 0  # nothing read or decoded again
    assert stored_partitions(data) == sorted([*export_partitions(export, load_or_create_key(data, KEY)),
                                             LEGACY_VANISHED])
    split = read_index(data)
    pd.testing.assert_frame_equal(split[split["path"] != "OLD/gone.dcm"].reset_index(drop=True), index)
    assert pd.read_parquet(partition_file(data, INDEX_DIR, LEGACY_VANISHED))["path"].tolist() == ["OLD/gone.dcm"]
    pd.testing.assert_frame_equal(read_errors(data), errors)
    pd.testing.assert_frame_equal(read_manifest(data), manifest)
