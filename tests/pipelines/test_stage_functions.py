"""Each public stage function on its own, without Dagster: what it returns and which files it writes.

One tiny synthetic export (60 images, 32 px) is ingested once; every test works on its own copy
of the data dir, so no test depends on another having run first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radaudit.models.train import PretrainConfig
from radaudit.pacs import layout
from radaudit.pipelines import stages

N_CLASSES = 14


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data dir after ingest and label mapping, and the export's truth file."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    root = tmp_path_factory.mktemp("stages")
    generate_export(root / "export", root / "truth.parquet", n=60, seed=5, size=64, noise=0.15, missing=0.1,
                    ood=0.05, duplicates=0.05)
    run_ingest(IngestConfig(export_dir=root / "export", data_dir=root / "data", cache=CacheParams(size=32), workers=1))
    return root / "data", root / "truth.parquet"


@pytest.fixture(scope="module")
def embedded(ingested: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of ``ingested`` with labels, near duplicates, one SimCLR backbone (1 epoch) and its embeddings."""
    data = tmp_path_factory.mktemp("embedded") / "data"
    shutil.copytree(ingested[0], data)
    stages.map_labels(data)
    stages.find_near_duplicates(data)
    stages.train_backbone(data, "simclr", _tiny("simclr"))
    stages.compute_embeddings(data, "simclr")
    return data, ingested[1]


def _tiny(method: str) -> PretrainConfig:
    return PretrainConfig(method=method, epochs=1, batch_size=16, size=32, warmup_epochs=0, num_workers=0,
                          on_cpu="as_is", progress_bar=False)


def _copy(source: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(source, data)
    return data


def test_map_labels_writes_one_label_per_live_image_and_the_vocabulary(ingested, tmp_path):
    data = _copy(ingested[0], tmp_path)
    labels = stages.map_labels(data)
    live = stages.live_index(data)
    assert sorted(labels["sop_instance_uid"]) == sorted(live["sop_instance_uid"])
    assert {"recorded_region", "recorded_raw", "recorded_tag"} <= set(labels.columns)
    assert pd.read_parquet(data / layout.LABELS_PATH).shape[0] == len(live)
    vocabulary = stages.read_vocabulary(data)
    assert len(vocabulary) == N_CLASSES and json.loads((data / layout.VOCABULARY_PATH).read_text()) == list(vocabulary)
    assert set(labels["recorded_region"].dropna()) <= set(vocabulary)


def test_load_training_set_orders_the_cached_live_images_with_their_labels(embedded):
    data, truth = embedded
    ts = stages.load_training_set(data)
    assert ts.uids == sorted(ts.uids) and len(ts.uids) == len(set(ts.uids)) > 50
    assert ts.labels.shape == ts.groups.shape == (len(ts.uids),)
    assert ts.labels.min() >= -1 and ts.labels.max() < len(ts.vocabulary)
    assert (ts.labels == -1).any()  # the export has missing labels
    assert ts.meta["sop_instance_uid"].tolist() == ts.uids
    recorded = ts.meta["recorded_region"]
    np.testing.assert_array_equal(ts.labels >= 0, recorded.notna().to_numpy())
    # Against the truth file: the true region of a labelled in-domain image is in the vocabulary.
    true = stages.truth_labels(ts, truth)
    assert true.shape == ts.labels.shape and (true >= 0).sum() > 0.8 * len(ts.uids)


def test_train_backbone_writes_resumable_checkpoints_and_embeddings_are_reused(embedded, tmp_path):
    data = _copy(embedded[0], tmp_path)
    assert (layout.checkpoint_dir(data, "simclr") / "latest.json").is_file()
    again = stages.train_backbone(data, "simclr", _tiny("simclr"))
    assert again.resumed_from_epoch == 1 and again.steps_this_run == 0  # finished: kept as it is
    n = len(stages.load_training_set(data).uids)
    messages: list[str] = []
    features = stages.compute_embeddings(data, "simclr", log=messages.append)
    assert features.shape == (n, 512) and np.isfinite(features).all()
    assert messages == [f"simclr embeddings: 0 images embedded, {n} kept from the last run"]
    np.testing.assert_array_equal(stages.load_embeddings(data, "simclr", stages.load_training_set(data).uids), features)


def test_compute_oof_writes_held_out_probabilities_and_the_chosen_l2(embedded, tmp_path):
    data = _copy(embedded[0], tmp_path)
    ts = stages.load_training_set(data)
    result = stages.compute_oof(data, "simclr", n_splits=3, repeats=2)
    assert result.probabilities.shape == (len(ts.uids), N_CLASSES)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-5)
    assert not result.out_of_fold[ts.labels < 0].any() and result.out_of_fold[ts.labels >= 0].mean() > 0.5
    probs, rows = stages.load_probabilities(data, "simclr")
    assert rows["sop_instance_uid"].tolist() == ts.uids and rows["label"].tolist() == ts.labels.tolist()
    np.testing.assert_allclose(probs, result.probabilities, atol=1e-6)
    settings = stages.head_settings(data, "simclr")
    assert settings["l2"] > 0 and f"{settings['l2']:g}" in settings["log_loss_by_l2"]


def test_compute_oof_keeps_the_last_fit_and_scores_new_images_with_its_full_head(embedded, tmp_path):
    from safetensors.numpy import load_file

    from radaudit.models.heads import LinearHead

    data = _copy(embedded[0], tmp_path)
    ts = stages.load_training_set(data)
    log: list[str] = []
    first = stages.compute_oof(data, "simclr", n_splits=3, repeats=1, log=log.append)
    assert log[-1].startswith("simclr heads: fit on")
    stored, rows = stages.load_probabilities(data, "simclr")
    assert stages.compute_oof(data, "simclr", n_splits=3, repeats=1, log=log.append).probabilities.shape == stored.shape
    assert log[-1] == "simclr heads: the last fit kept, 0 images scored by its full head"
    np.testing.assert_array_equal(stages.load_probabilities(data, "simclr")[0], stored)

    # Two images the last fit never saw (one labelled, one not), as on a nightly run.
    new = [int(np.flatnonzero(ts.labels >= 0)[0]), int(np.flatnonzero(ts.labels < 0)[0])]
    keep = np.setdiff1d(np.arange(len(rows)), new)
    stages.save_rows(stored[keep], data / layout.PROB_DIR / "simclr.npy", rows.iloc[keep].reset_index(drop=True),
                     data / layout.PROB_DIR / "simclr.rows.parquet")
    nightly = stages.compute_oof(data, "simclr", n_splits=3, repeats=1, log=log.append)
    assert log[-1] == "simclr heads: the last fit kept, 2 images scored by its full head"
    head = LinearHead.from_state_dict(load_file(str(data / layout.PROB_DIR / "simclr.head.safetensors")))
    x = stages.load_embeddings(data, "simclr", [ts.uids[i] for i in new])
    np.testing.assert_allclose(nightly.probabilities[new], head.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(nightly.probabilities[keep], stored[keep], atol=0)
    assert nightly.fold[new].tolist() == [-1, -1] and nightly.out_of_fold[new].tolist() == [True, False]
    np.testing.assert_allclose(first.probabilities[keep], stored[keep], atol=1e-6)

    # A changed label (a verdict) or other settings: the heads are fit again.
    changed = rows.copy()
    i = int(np.flatnonzero(changed["label"] >= 0)[1])
    changed.loc[i, "label"] = (changed.loc[i, "label"] + 1) % N_CLASSES
    stages.save_rows(stored, data / layout.PROB_DIR / "simclr.npy", changed,
                     data / layout.PROB_DIR / "simclr.rows.parquet")
    stages.compute_oof(data, "simclr", n_splits=3, repeats=1, log=log.append)
    assert log[-1].startswith("simclr heads: fit on")
    stages.compute_oof(data, "simclr", n_splits=3, repeats=2, log=log.append)
    assert log[-1].startswith("simclr heads: fit on")
    again = stages.compute_oof(data, "simclr", n_splits=3, repeats=2, reuse=False, log=log.append)
    assert log[-1].startswith("simclr heads: fit on") and again.probabilities.shape == stored.shape


def test_combine_weights_the_members_and_writes_the_ensemble(embedded, tmp_path):
    data = _copy(embedded[0], tmp_path)
    ts = stages.load_training_set(data)
    stages.compute_oof(data, "simclr", n_splits=3, repeats=1)
    # A second member that knows nothing: constant features; the ensemble must not trust it more.
    stages.save_embeddings(data, "blank", np.ones((len(ts.uids), 4), np.float32), ts.uids)
    stages.compute_oof(data, "blank", n_splits=3, repeats=1, l2=1.0)
    probs, weights = stages.combine(data, ["simclr", "blank"])
    assert set(weights) == {"simclr", "blank"} and weights["simclr"] >= weights["blank"]
    assert probs.shape == (len(ts.uids), N_CLASSES)
    assert json.loads((data / layout.WEIGHTS_PATH).read_text()) == weights
    stored, rows = stages.load_probabilities(data, "ensemble")
    np.testing.assert_allclose(stored, probs, atol=1e-6)


def test_audit_report_and_truth_scores(embedded, tmp_path):
    data, truth = _copy(embedded[0], tmp_path), embedded[1]
    ts = stages.load_training_set(data)
    stages.compute_oof(data, "simclr", n_splits=3, repeats=1)
    stages.combine(data, ["simclr"])
    issues = stages.audit(data, ["simclr"])
    assert sorted(issues["sop_instance_uid"]) == ts.uids
    assert (data / layout.ISSUES_PATH).is_file()
    summary = stages.load_audit_summary(data)
    assert summary == json.loads((data / layout.SUMMARY_PATH).read_text()) and "warnings" in summary
    flagged = issues[issues["issue"].notna()].sort_values("rank")
    assert flagged["rank"].tolist() == list(range(1, len(flagged) + 1))

    files = stages.report(data)
    assert files.csv_path == data / layout.REPORT_CSV and files.html_path == data / layout.REPORT_HTML
    csv = pd.read_csv(files.csv_path, encoding="utf-8-sig")
    assert csv["sop_instance_uid"].tolist() == flagged["sop_instance_uid"].tolist() and files.n_csv_rows == len(csv)
    assert all((data / layout.REPORT_DIR / t).is_file() for t in csv["thumbnail"].dropna())

    scores = stages.evaluate_against_truth(data, truth)
    assert scores["images"] == len(ts.uids) and scores["truly_mislabelled"] > 0
    assert scores["flagged_mislabel"] == int((issues["issue"] == "mislabel").sum())
    for key in ("mislabel_precision_at_k", "ood_recall", "top20_precision", "report_precision_at_k",
                "self_confidence_precision_at_k"):
        assert 0.0 <= scores[key] <= 1.0
    assert list(scores["per_device"]) == ["legacy"] and scores["per_device"]["legacy"]["images"] == len(ts.uids)
    probs, rows = stages.load_probabilities(data, "ensemble")
    assert rows["sop_instance_uid"].tolist() == ts.uids
    again = stages.score_issues(pd.read_parquet(data / layout.ISSUES_PATH), ts, truth, probs=probs)
    assert scores.keys() == again.keys()
    np.testing.assert_equal(scores, again)  # NaN equals NaN (e.g. mislabel_precision when nothing is flagged)


def test_evaluate_label_fractions_scores_the_features_on_true_labels(embedded):
    data, truth = embedded
    scores = stages.evaluate_label_fractions(data, truth, ["simclr"], fractions=(0.5, 1.0))
    assert set(scores) == {"simclr", "ensemble"} and set(scores["simclr"]) == {0.5, 1.0}
    assert all(0.0 <= a <= 1.0 for by in scores.values() for a in by.values())
    assert scores["ensemble"] == scores["simclr"]  # one member: the ensemble is that member


def test_read_truth_names_a_file_that_is_not_a_truth_file(tmp_path):
    pd.DataFrame({"sop_instance_uid": ["1.2"], "region": ["hand"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="not a synthetic export's truth file: no column true_region"):
        stages.read_truth(tmp_path / "t.csv")
    pd.DataFrame({"sop_instance_uid": ["1.2"], "true_region": ["hand"]}).to_parquet(tmp_path / "t.parquet")
    assert stages.read_truth(tmp_path / "t.parquet").loc["1.2", "true_region"] == "hand"
