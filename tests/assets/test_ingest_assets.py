"""The ingest assets materialized in-process on a temporary export, as a steward would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from radaudit.assets.ingest import EXPORT_FOLDERS, ingest
from radaudit.assets.labels import label_overrides, region_labels
from radaudit.assets.resources import RadauditConfig
from radaudit.pacs import cache
from radaudit.pacs.index import read_errors, read_index
from radaudit.pacs.layout import ERRORS_DIR, INDEX_DIR, LABELS_PATH, MANIFEST_DIR, partition_file
from radaudit.pacs.partitions import ROOT_PARTITION, folder_partition
from radaudit.pacs.pseudo import load_or_create_key, path_key
from radaudit.pipelines.jobs import all_folders_tags

REPO = Path(__file__).resolve().parents[2]


def _resource(export: Path, data: Path) -> RadauditConfig:
    return RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=40, workers=2)


def _materialize(export: Path, data: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Every export folder, as the nightly job and the CLI ingest them: one run over all partitions."""
    resource = _resource(export, data)
    return dg.materialize([ingest, region_labels, label_overrides], resources={"radaudit": resource},
                          instance=instance, tags=all_folders_tags(instance, resource))


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mats = result.asset_materializations_for_node("ingest") + result.asset_materializations_for_node(key)
    # A run over several partitions records one materialization per partition, all with the run's figures.
    (meta,) = {repr(m.metadata): {k: v.value for k, v in m.metadata.items()}
               for m in mats if m.asset_key.to_user_string() == key}.values()
    return meta


def test_ingest_assets_write_index_errors_cache_and_labels(messy_export, tmp_path):
    export, expected = messy_export
    data = tmp_path / "data"
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(export, data, instance)
    assert result.success

    index = read_index(data)
    errors = read_errors(data)
    assert sorted(index["path"]) == sorted(p for p, o in expected.items() if o == "index")
    key = load_or_create_key(data)
    real = {path_key(p, key): p for p in expected}  # a never-read file's name may show hashed
    assert sorted(errors["path_hash"].map(real)) == sorted(p for p, o in expected.items() if o != "index")
    for uid in index["sop_instance_uid"]:
        img = cache.read(data, uid)
        assert img.shape == (40, 40) and img.dtype == np.uint8
    # One partition per top-level folder (PAT1..PAT4) and one for the files in the export's root.
    partitions = {folder_partition(f, key) for f in ("PAT1", "PAT2", "PAT3", "PAT4")} | {ROOT_PARTITION}
    assert set(instance.get_dynamic_partitions(EXPORT_FOLDERS.name)) == partitions
    assert {p.stem for p in (data / INDEX_DIR).glob("*.parquet")} == partitions
    assert "PAT" not in " ".join(p.name for p in (data / "index").rglob("*"))  # folder names may be patients'

    labels = pd.read_parquet(data / LABELS_PATH)
    assert list(labels.columns[:4]) == ["sop_instance_uid", "recorded_region", "recorded_raw", "recorded_tag"]
    assert set(labels["sop_instance_uid"]) == set(index["sop_instance_uid"])  # every partition's rows

    meta = _metadata(result, "dicom_index")
    assert meta["dagster/row_count"] == len(index) and meta["new_files"] == len(expected)
    assert {c.passed for c in result.get_asset_check_evaluations()} == {True}

    again = _materialize(export, data, instance)
    meta2 = _metadata(again, "dicom_index")
    assert meta2["new_files"] == 0 and meta2["written"] is False
    assert _metadata(again, "image_cache")["cached_this_run"] == 0


def test_one_folder_rematerialized_alone_changes_only_its_partition(messy_export, tmp_path):
    """A steward re-materializes one export folder (one partition): only that folder's files are
    read and only its partition's files are rewritten; the labels downstream still see every folder."""
    export, expected = messy_export
    data = tmp_path / "data"
    instance = dg.DagsterInstance.ephemeral()
    assert _materialize(export, data, instance).success
    key = load_or_create_key(data)
    files = sorted(p for table in (INDEX_DIR, ERRORS_DIR, MANIFEST_DIR) for p in (data / table).glob("*.parquet"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    changed = export / "PAT3" / "rle.dcm"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    pat3 = folder_partition("PAT3", key)
    result = dg.materialize([ingest, region_labels], resources={"radaudit": _resource(export, data)},
                            instance=instance, partition_key=pat3)
    assert result.success
    meta = _metadata(result, "dicom_index")
    assert meta["changed_files"] == 1 and meta["unchanged_files"] == sum(p.startswith("PAT3/") for p in expected) - 1
    rewritten = {p for p in files if (p.read_bytes(), p.stat().st_mtime_ns) != before[p]}
    assert rewritten == {partition_file(data, table, pat3) for table in (INDEX_DIR, ERRORS_DIR, MANIFEST_DIR)}
    # The row of the changed file got its new mtime, and the bytes of every other partition are as they were.
    index = read_index(data).set_index("path")
    assert index.loc["PAT3/rle.dcm", "mtime_ns"] == changed.stat().st_mtime_ns
    assert len(index) == sum(o == "index" for o in expected.values())
    labels = pd.read_parquet(data / LABELS_PATH)
    assert set(labels["sop_instance_uid"]) == set(index["sop_instance_uid"])


def test_cli_select_works_with_the_installed_antlr(messy_export, tmp_path):
    """`dagster asset materialize --select` parses selections (antlr >= 4.10, see README), here on one
    export folder's partition that `radaudit folders` registered."""
    export, _ = messy_export
    data = tmp_path / "data"
    env = {**os.environ, "RADAUDIT_EXPORT_DIR": str(export), "RADAUDIT_DATA_DIR": str(data),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    Path(env["DAGSTER_HOME"]).mkdir()
    folders = subprocess.run([str(Path(sys.executable).with_name("radaudit")), "folders"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert folders.returncode == 0, folders.stderr[-3000:]
    lines = dict(line.split("\t")[::2] for line in folders.stdout.splitlines())
    assert lines[folder_partition("PAT1", load_or_create_key(data))] == "PAT1"
    pat1 = folder_partition("PAT1", load_or_create_key(data))
    dagster = Path(sys.executable).with_name("dagster")
    for selection, partition in (("group:ingest", ["--partition", pat1]), ("region_labels", [])):
        proc = subprocess.run(
            [str(dagster), "asset", "materialize", "-m", "radaudit.pipelines.definitions", "--select", selection,
             *partition], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / LABELS_PATH).exists() and partition_file(data, INDEX_DIR, pat1).exists()
    assert set(read_index(data)["path"].str.split("/").str[0]) == {"PAT1"}
