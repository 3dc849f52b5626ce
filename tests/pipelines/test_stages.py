"""The files between stages: an array and the table of its rows stay a matched pair."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radaudit.pipelines import stages
from radaudit.pacs.layout import DUPLICATES_PATH, EMBED_DIR
from radaudit.pipelines.stages import store


def test_an_array_written_without_its_rows_is_detected(tmp_path: Path) -> None:
    """A crash between the two renames leaves a new array beside the old rows: same length, wrong images."""
    npy, rows = tmp_path / "simclr.npy", tmp_path / "simclr.uids.parquet"
    first = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.save_rows(first, npy, pd.DataFrame({"sop_instance_uid": ["1.1", "1.2", "1.3"]}), rows)
    array, table = store.load_rows(npy, rows)
    np.testing.assert_array_equal(array, first)
    assert table.columns.tolist() == ["sop_instance_uid"]

    store.save_array(first[::-1].copy(), npy)  # the next run's array landed, its rows did not
    with pytest.raises(ValueError, match="different runs"):
        store.load_rows(npy, rows)


def test_reuse_of_embeddings_falls_back_to_embedding_everything_on_a_torn_pair(tmp_path: Path) -> None:
    embed_dir = tmp_path / EMBED_DIR
    old = np.ones((2, 4), np.float32)
    store.save_rows(old, embed_dir / "byol.npy",
                      pd.DataFrame({"sop_instance_uid": ["1.1", "1.2"], "cache_key": ["a", "b"], "model_key": "m"}),
                      embed_dir / "byol.uids.parquet")
    kept = store.previous_rows(tmp_path, "byol", "m", ["1.2", "1.3"], ["b", "c"])
    np.testing.assert_array_equal(kept[0], old[1])
    assert np.isnan(kept[1]).all()
    store.save_array(np.zeros((2, 4), np.float32), embed_dir / "byol.npy")
    assert store.previous_rows(tmp_path, "byol", "m", ["1.2", "1.3"], ["b", "c"]) is None


def test_fold_groups_tie_the_patients_of_a_copy_together() -> None:
    uids = ["u0", "u1", "u2", "u3", "u4", "u5", "u6"]
    patients = np.array(["a", "a", "b", "c", None, None, "b"], dtype=object)
    dups = pd.DataFrame({"group": [1, 1, 2, 2, 3], "sop_instance_uid": ["u1", "u2", "u4", "u5", "gone"]})
    out = stages.fold_groups(uids, patients, dups)
    assert out[0] == out[1] == out[2] == out[6] and out[0].startswith("dup-")  # a's and b's images: one group
    assert out[3] == "c"
    assert out[4] == out[5] and out[4] != out[0]  # two images without a patient key, copies of each other
    assert stages.fold_groups(uids, patients, dups.iloc[4:]) is patients  # nothing of this archive
    # One image shared by many patients (a test pattern) ties nobody.
    shared = pd.DataFrame({"group": [1] * 4, "sop_instance_uid": ["u0", "u2", "u3", "u6"]})
    many = stages.fold_groups(uids + ["u7"], np.append(patients, "d"), pd.concat(
        [shared, pd.DataFrame({"group": [1], "sop_instance_uid": ["u7"]})]))
    assert list(many) == ["a", "a", "b", "c", None, None, "b", "d"]


def test_a_copy_whose_original_left_the_cache_is_not_reported(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    pd.DataFrame({"group": [1, 1, 2, 2], "sop_instance_uid": ["a", "b", "c", "d"],
                  "duplicate_of": [None, "a", None, "c"], "similarity": [1.0, 0.97, 1.0, 1.0],
                  "cross_patient": [False, False, True, True], "other_patient": [False, False, False, True]}
                 ).to_parquet(tmp_path / DUPLICATES_PATH)
    rows = stages.load_near_duplicates(tmp_path, ["b", "d", "c", "x"])
    assert rows["duplicate_of"].tolist() == [None, "c", None, None]  # "a" is gone: "b" is no copy now
    assert rows["other_patient"].tolist() == [False, True, False, False]


def test_near_duplicates_of_a_synthetic_export_are_found_and_kept_on_one_side_of_every_fold(tmp_path: Path) -> None:
    from radaudit.models.heads import oof_probabilities
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    generate_export(tmp_path / "export", tmp_path / "truth.parquet", n=60, seed=3, size=96, duplicates=0.1)
    data = tmp_path / "data"
    run_ingest(IngestConfig(export_dir=tmp_path / "export", data_dir=data, cache=CacheParams(size=48), workers=1))
    stages.map_labels(data)
    groups = stages.find_near_duplicates(data)
    assert (data / DUPLICATES_PATH).is_file()
    truth = pd.read_parquet(tmp_path / "truth.parquet").set_index("sop_instance_uid")
    root = dict(zip(groups["sop_instance_uid"], groups["duplicate_of"].where(groups["duplicate_of"].notna(),
                                                                             groups["sop_instance_uid"])))
    copies = truth[truth["duplicate_of"].notna()]
    assert len(copies) == 6
    for uid, row in copies.iterrows():  # every copy lands in its original's group
        assert uid in root and root[uid] == root.get(row["duplicate_of"]), row["duplicate_kind"]
    for uid, row in truth[truth["hard_negative_of"].notna()].iterrows():  # look-alikes do not
        assert uid not in root or root[uid] != root.get(row["hard_negative_of"]), row["hard_negative_kind"]
    by_uid = groups.set_index("sop_instance_uid")
    for uid, row in copies[copies["duplicate_kind"] == "other_patient"].iterrows():
        pair = by_uid.loc[[uid, row["duplicate_of"]]]
        assert pair["cross_patient"].all() and pair["other_patient"].sum() == 1  # the one that is not the original

    ts = stages.load_training_set(data)
    key = dict(zip(ts.uids, ts.groups))
    for uid, row in copies.iterrows():
        assert key[uid] == key[row["duplicate_of"]]
    labels = np.where(ts.labels >= 0, ts.labels, 0)
    fold = oof_probabilities(np.random.default_rng(0).standard_normal((len(ts.uids), 8)).astype(np.float32), labels,
                             ts.groups, n_splits=3, n_classes=len(ts.vocabulary)).fold
    fold_of = dict(zip(ts.uids, fold))
    assert all(fold_of[u] == fold_of[r] for u, r in copies["duplicate_of"].items())
