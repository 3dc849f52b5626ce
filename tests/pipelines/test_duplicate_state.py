"""Near duplicates on a nightly run: the night's images alone are fingerprinted, searched and verified,
and the groups equal those of a run from nothing."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radaudit.pacs.cache import CacheParams
from radaudit.pacs.ingest import IngestConfig, run_ingest
from radaudit.pacs.layout import DUPLICATE_STATE_DIR, DUPLICATES_PATH
from radaudit.pacs.synth import generate_export
from radaudit.pipelines import stages


def _ingest(export: Path, data: Path) -> None:
    run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=48), workers=1))
    stages.map_labels(data)


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An archive whose copies arrive on the second night, after their originals were audited."""
    root = tmp_path_factory.mktemp("nights")
    export, data, held = root / "export", root / "data", root / "held"
    generate_export(export, root / "truth.parquet", n=60, seed=3, size=96, duplicates=0.1)
    truth = pd.read_parquet(root / "truth.parquet").set_index("sop_instance_uid")
    copies = truth.index[truth["duplicate_of"].notna()]
    moved = []
    for uid in copies:
        src = export / truth.loc[uid, "path"]
        dst = held / truth.loc[uid, "path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
        moved.append((dst, src))
    logs: list[list[str]] = [[], []]
    _ingest(export, data)
    first = stages.find_near_duplicates(data, log=logs[0].append)
    for dst, src in moved:
        shutil.move(dst, src)
    _ingest(export, data)
    nightly = stages.find_near_duplicates(data, log=logs[1].append)
    return {"data": data, "truth": truth, "copies": list(copies), "first": first, "nightly": nightly,
            "logs": logs}


def test_a_nightly_run_fingerprints_only_the_new_images_and_finds_their_copies(two_nights: dict) -> None:
    copies, truth = two_nights["copies"], two_nights["truth"]
    assert len(copies) == 6
    assert not set(copies) & set(two_nights["first"]["sop_instance_uid"])
    assert any("0 kept from the last run" in line for line in two_nights["logs"][0])
    assert any(f"{len(copies)} images fingerprinted" in line and "kept from the last run" in line
               for line in two_nights["logs"][1]), two_nights["logs"][1]
    nightly = two_nights["nightly"].set_index("sop_instance_uid")
    root = nightly["duplicate_of"].where(nightly["duplicate_of"].notna(), nightly.index.to_series())
    for uid in copies:  # every late copy joins its original's group
        assert uid in root.index and root[uid] == root.get(truth.loc[uid, "duplicate_of"])


def test_a_nightly_run_gives_the_groups_of_a_run_from_nothing(two_nights: dict) -> None:
    data = two_nights["data"]
    written = pd.read_parquet(data / DUPLICATES_PATH)
    rebuilt = stages.find_near_duplicates(data, full_rebuild=True)
    assert len(rebuilt) >= 12
    pd.testing.assert_frame_equal(two_nights["nightly"], rebuilt)
    pd.testing.assert_frame_equal(written, pd.read_parquet(data / DUPLICATES_PATH))


def test_changed_settings_or_a_torn_state_start_again_from_nothing(two_nights: dict) -> None:
    data = two_nights["data"]
    expected = two_nights["nightly"]
    n = len(stages.duplicate_inputs(data)[0])
    log: list[str] = []
    stages.find_near_duplicates(data, log=log.append, k=6)
    assert any(f"{n} images fingerprinted, 0 kept" in line for line in log)
    log.clear()
    stages.find_near_duplicates(data, log=log.append)  # back to k=8: the k=6 rows do not hold either
    assert any(f"{n} images fingerprinted, 0 kept" in line for line in log)
    (data / DUPLICATE_STATE_DIR / "nearest.npy").write_bytes(b"torn")
    log.clear()
    again = stages.find_near_duplicates(data, log=log.append)
    assert any(f"{n} images fingerprinted, 0 kept" in line for line in log)
    pd.testing.assert_frame_equal(again, expected)
    parts = sorted(p.name for p in (data / DUPLICATE_STATE_DIR).glob("part-*.npy"))
    assert parts == ["part-000000.fps.npy", "part-000000.vec.npy"]  # the older runs' parts are gone
    with pytest.raises(ValueError, match="unknown near-duplicate option"):
        stages.find_near_duplicates(data, treshold=0.9)
    assert np.load(data / DUPLICATE_STATE_DIR / "part-000000.fps.npy", mmap_mode="r").shape == (n, 64, 64)
