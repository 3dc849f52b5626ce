"""The ingest assets materialized in-process on a temporary export, as a steward would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from radaudit.assets.ingest import ingest
from radaudit.assets.labels import label_overrides, region_labels
from radaudit.pacs.layout import LABELS_PATH
from radaudit.assets.resources import RadauditConfig
from radaudit.pacs import cache
from radaudit.pacs.pseudo import load_or_create_key, path_key
from radaudit.pacs.layout import ERRORS_PATH, INDEX_PATH

REPO = Path(__file__).resolve().parents[2]


def _materialize(export: Path, data: Path) -> dg.ExecuteInProcessResult:
    resource = RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=40, workers=2)
    return dg.materialize([ingest, region_labels, label_overrides], resources={"radaudit": resource})


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mats = result.asset_materializations_for_node("ingest") + result.asset_materializations_for_node(key)
    (mat,) = [m for m in mats if m.asset_key.to_user_string() == key]
    return {k: v.value for k, v in mat.metadata.items()}


def test_ingest_assets_write_index_errors_cache_and_labels(messy_export, tmp_path):
    export, expected = messy_export
    data = tmp_path / "data"
    result = _materialize(export, data)
    assert result.success

    index = pd.read_parquet(data / INDEX_PATH)
    errors = pd.read_parquet(data / ERRORS_PATH)
    assert sorted(index["path"]) == sorted(p for p, o in expected.items() if o == "index")
    key = load_or_create_key(data)
    real = {path_key(p, key): p for p in expected}  # a never-read file's name may show hashed
    assert sorted(errors["path_hash"].map(real)) == sorted(p for p, o in expected.items() if o != "index")
    for uid in index["sop_instance_uid"]:
        img = cache.read(data, uid)
        assert img.shape == (40, 40) and img.dtype == np.uint8

    labels = pd.read_parquet(data / LABELS_PATH)
    assert list(labels.columns[:4]) == ["sop_instance_uid", "recorded_region", "recorded_raw", "recorded_tag"]
    assert set(labels["sop_instance_uid"]) == set(index["sop_instance_uid"])

    meta = _metadata(result, "dicom_index")
    assert meta["dagster/row_count"] == len(index) and meta["new_files"] == len(expected)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed

    again = _materialize(export, data)
    meta2 = _metadata(again, "dicom_index")
    assert meta2["new_files"] == 0 and meta2["written"] is False
    assert _metadata(again, "image_cache")["cached_this_run"] == 0


def test_cli_select_works_with_the_installed_antlr(messy_export, tmp_path):
    """`dagster asset materialize --select` parses selections (antlr >= 4.10, see README)."""
    export, _ = messy_export
    data = tmp_path / "data"
    env = {**os.environ, "RADAUDIT_EXPORT_DIR": str(export), "RADAUDIT_DATA_DIR": str(data),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    Path(env["DAGSTER_HOME"]).mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    for selection in ("group:ingest", "region_labels"):
        proc = subprocess.run(
            [str(dagster), "asset", "materialize", "-m", "radaudit.pipelines.definitions", "--select", selection],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / LABELS_PATH).exists() and (data / INDEX_PATH).exists()
