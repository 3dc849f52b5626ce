"""Pixel evidence on a nightly run: stored by cache key, read again only for new or changed images."""

from pathlib import Path

import pandas as pd

from radaudit.models.ood import PIXEL_COLUMNS, pixel_features as features_of
from radaudit.pacs import cache
from radaudit.pacs.cache import CacheParams
from radaudit.pacs.ingest import IngestConfig, run_ingest
from radaudit.pacs.index import read_manifest
from radaudit.pacs.layout import PIXEL_FEATURES_PATH
from radaudit.pacs.synth import generate_export
from radaudit.pipelines import stages


def test_pixel_evidence_is_kept_by_cache_key(tmp_path: Path) -> None:
    generate_export(tmp_path / "export", tmp_path / "truth.parquet", n=16, seed=2, size=64)
    data = tmp_path / "data"
    run_ingest(IngestConfig(export_dir=tmp_path / "export", data_dir=data, cache=CacheParams(size=32), workers=1))
    uids = stages.duplicate_inputs(data)[0]
    log: list[str] = []
    first = stages.pixel_features(data, uids, log=log.append)
    assert log == [f"pixel evidence: {len(uids)} images read, 0 kept from the last run"]
    boxes = read_manifest(data).set_index("sop_instance_uid")
    expected = features_of(cache.read(data, uids[3]), content=(int(boxes.loc[uids[3], "content_height"]),
                                                               int(boxes.loc[uids[3], "content_width"])))
    assert first.loc[3].to_dict() == expected and list(first.columns) == list(PIXEL_COLUMNS)

    log.clear()
    again = stages.pixel_features(data, uids[::-1], log=log.append)  # another order: rows follow it
    assert log == [f"pixel evidence: 0 images read, {len(uids)} kept from the last run"]
    pd.testing.assert_frame_equal(again, first.iloc[::-1].reset_index(drop=True))

    stored = pd.read_parquet(data / PIXEL_FEATURES_PATH)
    stored.loc[stored["id"].str.startswith(uids[0] + "|"), "id"] = uids[0] + "|an older cache key"
    stored.to_parquet(data / PIXEL_FEATURES_PATH)
    log.clear()
    pd.testing.assert_frame_equal(stages.pixel_features(data, uids, log=log.append), first)
    assert log == [f"pixel evidence: 1 images read, {len(uids) - 1} kept from the last run"]
