"""The whole asset graph on a tiny synthetic export: every stage writes what the next one reads."""

import base64
import io
import re
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.pipelines import stages
from radaudit.pacs.synth import generate_export
from radaudit.pipelines.definitions import defs
from radaudit.pipelines.jobs import all_folders_tags

METHODS = ("simclr", "byol", "supcon")


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, Path, dg.ExecuteInProcessResult]:
    root = tmp_path_factory.mktemp("graph")
    export, data, truth = root / "export", root / "data", root / "truth.parquet"
    generate_export(export, truth, n=72, seed=3, size=64, noise=0.1, missing=0.1, ood=0.05, duplicates=0.1)
    resources = {
        "radaudit": RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=32, workers=2),
        "audit": AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0, n_splits=3,
                             truth_path=str(truth), max_flag_fraction=1.0, report_thumbnail=16),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(list(defs.assets), resources=resources, instance=instance,
                            tags=all_folders_tags(instance, resources["radaudit"]))
    return data, truth, result


def test_every_stage_writes_its_files(audited):
    data, _, result = audited
    assert result.success
    n = len(stages.load_training_set(data).uids)
    for m in ("simclr", "byol"):
        assert (data / "models" / m / "checkpoints" / "latest.json").exists()
    # SupCon trains on the recorded labels: two backbones, each blind to one half of them.
    folds = pd.read_parquet(data / "models" / "supcon" / "label_folds.parquet")
    assert sorted(folds["fold"].unique()) == [-1, 0, 1]
    for f in (0, 1):
        assert (data / "models" / "supcon" / f"fold{f}" / "checkpoints" / "latest.json").exists()
        assert np.load(data / "embeddings" / f"supcon.fold{f}.npy").shape == (n, 512)
    assert not (data / "models" / "supcon" / "checkpoints").exists()
    for m in METHODS:
        assert np.load(data / "embeddings" / f"{m}.npy").shape == (n, 512)
        probs = np.load(data / "probabilities" / f"{m}.npy")
        assert probs.shape == (n, 14) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert np.load(data / "probabilities" / "ensemble.npy").shape == (n, 14)
    issues = pd.read_parquet(data / "audit" / "label_issues.parquet")
    assert len(issues) == n and set(issues["issue"].dropna()) <= {"mislabel", "out_of_domain", "missing_label",
                                                                  "near_duplicate"}


def test_copies_are_grouped_and_reported_with_their_original(audited):
    data, truth_path, result = audited
    truth = pd.read_parquet(truth_path).set_index("sop_instance_uid")
    groups = pd.read_parquet(data / "audit" / "near_duplicates.parquet")
    root = dict(zip(groups["sop_instance_uid"], groups["duplicate_of"].fillna(groups["sop_instance_uid"])))
    copies = truth[truth["duplicate_of"].notna()]
    assert len(copies) == 7
    # A re-exposure of a 64 px export is at the edge of what a 32 px cache resolves; the other kinds are certain.
    certain = copies[copies["duplicate_kind"] != "shifted"]
    assert all(u in root and root[u] == root.get(o) for u, o in certain["duplicate_of"].items())
    (mat,) = result.asset_materializations_for_node("near_duplicates")
    assert mat.metadata["copies"].value == int(groups["duplicate_of"].notna().sum()) >= len(certain)
    csv = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig", keep_default_na=False)
    reported = csv[csv["duplicate_of"] != ""]
    assert set(reported["sop_instance_uid"]) == set(groups.loc[groups["duplicate_of"].notna(), "sop_instance_uid"])
    under_other = set(groups.loc[groups["other_patient"], "sop_instance_uid"])
    assert under_other and csv.iloc[0]["issue"] == "near_duplicate"
    assert csv.iloc[0]["sop_instance_uid"] in under_other  # a copy under another patient heads the list


def test_backbone_metadata_shows_device_evaluation_and_loss_curve(audited):
    _, _, result = audited
    for m in METHODS:
        (mat,) = result.asset_materializations_for_node(f"backbone__{m}")
        meta = mat.metadata
        assert meta["device"].value == "cpu" and meta["epochs"].value == 1
        assert 0.0 <= meta["eval/knn_accuracy"].value <= 1.0
        assert 0.0 <= meta["eval/linear_probe_accuracy"].value <= 1.0
        assert meta["eval_labels"].value == "synthetic truth"
        assert meta["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")


def test_report_is_ranked_and_checked(audited):
    data, _, result = audited
    csv = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig")
    assert (data / "reports" / "mislabel_report.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert csv["rank"].tolist() == list(range(1, len(csv) + 1))
    assert {"sop_instance_uid", "accession_number", "recorded_region", "suggested_region", "issue"} <= set(csv.columns)
    html = (data / "reports" / "mislabel_report.html").read_text(encoding="utf-8")
    assert '<table id="report">' in html and html.count("<tr data-issue=") == len(csv)
    # report_thumbnail reaches the report: 16 px thumbnails inlined, the large view at the cache's 32 px.
    first = re.search(r'data-large="([^"]+)" src="data:image/jpeg;base64,([^"]+)"', html)
    assert max(Image.open(io.BytesIO(base64.b64decode(first.group(2)))).size) == 16
    assert max(Image.open(data / "reports" / first.group(1)).size) == 32
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["schema"] and checks["ranks_sorted"] and checks["flag_fraction"]
    (mat,) = result.asset_materializations_for_node("mislabel_report")
    assert mat.metadata["csv"].value == str((data / "reports" / "mislabel_report.csv").resolve())  # absolute
    assert mat.metadata["html"].value == (data / "reports" / "mislabel_report.html").resolve().as_uri()
    top = mat.metadata["top_flags"].value.splitlines()
    assert [c.strip() for c in top[0].strip("|").split("|")][:2] == ["rank", "image"]
    assert top[2].count("![](data:image/png;base64,") == 1  # the first flag's small thumbnail


def test_evaluation_against_truth_counts_what_the_audit_sees(audited):
    data, truth, _ = audited
    scores = stages.evaluate_against_truth(data, truth)
    t = pd.read_parquet(truth)
    assert scores["images"] == len(t)
    assert scores["out_of_domain"] == int(t["is_ood"].sum())
    assert 0 < scores["truly_mislabelled"] <= int((t["corruption"].isin(["swap", "confusion"])).sum())
    assert 0.0 <= scores["ood_auroc"] <= 1.0
    per_method = stages.evaluate_methods(data, truth, METHODS)
    assert set(per_method) == {*METHODS, "ensemble"}
    assert pd.Series(per_method["ensemble"]).equals(pd.Series(scores))  # NaN-aware
    for m in METHODS:  # the same images and truth; each method's own flags
        assert per_method[m]["truly_mislabelled"] == scores["truly_mislabelled"]
        assert 0 <= per_method[m]["flagged_mislabel"] <= scores["images"]


def test_label_fraction_accuracies_are_reported(audited):
    data, truth, result = audited
    scores = stages.evaluate_label_fractions(data, truth, METHODS)
    assert set(scores) == {*METHODS, "ensemble"}
    for by_fraction in scores.values():
        assert set(by_fraction) == {0.01, 0.1, 1.0}
        assert all(0.0 <= a <= 1.0 for a in by_fraction.values())
    mats = result.asset_materializations_for_node("ensemble_probabilities")
    meta = mats[0].metadata
    assert "linear_eval/ensemble@100%" in meta and "confusion_matrix" in meta
    assert meta["confusion_matrix_clean_test"].value.startswith("![confusion matrix on the true regions")


def test_identical_inputs_and_seeds_give_identical_outputs(audited, tmp_path):
    """A steward re-running everything from scratch gets the same numbers and the same report."""
    data, truth, _ = audited
    again = tmp_path / "data"
    (again / "secrets").mkdir(parents=True)
    shutil.copy2(data / "secrets" / "pseudonym.key", again / "secrets" / "pseudonym.key")  # same key: same pseudonyms
    resources = {
        "radaudit": RadauditConfig(export_dir=str(data.parent / "export"), data_dir=str(again), cache_size=32,
                                   workers=2),
        "audit": AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0, n_splits=3,
                             truth_path=str(truth), max_flag_fraction=1.0),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(list(defs.assets), resources=resources, instance=instance,
                          tags=all_folders_tags(instance, resources["radaudit"])).success
    for m in METHODS:
        np.testing.assert_array_equal(np.load(again / "embeddings" / f"{m}.npy"), np.load(data / "embeddings" / f"{m}.npy"))
    np.testing.assert_array_equal(np.load(again / "probabilities" / "ensemble.npy"),
                                  np.load(data / "probabilities" / "ensemble.npy"))
    first = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig").drop(columns=["thumbnail"])
    second = pd.read_csv(again / "reports" / "mislabel_report.csv", encoding="utf-8-sig").drop(columns=["thumbnail"])
    pd.testing.assert_frame_equal(first, second)


def test_a_backbone_resumes_unless_asked_to_start_from_scratch(audited, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(audited[0], data)  # training from scratch must not change the shared fixture's weights
    config = AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0).pretrain_config("simclr")
    kept = stages.train_backbone(data, "simclr", config)
    assert kept.resumed_from_epoch == 1 and kept.steps_this_run == 0
    fresh = stages.train_backbone(data, "simclr", config, from_scratch=True)
    assert fresh.resumed_from_epoch == 0 and fresh.steps_this_run > 0
    # A retry of one request to start from scratch resumes what its first attempt trained.
    first = stages.train_backbone(data, "simclr", config, from_scratch=True, scratch_token="run-1")
    assert first.resumed_from_epoch == 0 and first.steps_this_run > 0
    retry = stages.train_backbone(data, "simclr", config, from_scratch=True, scratch_token="run-1")
    assert retry.resumed_from_epoch == 1 and retry.steps_this_run == 0
    later = stages.train_backbone(data, "simclr", config, from_scratch=True, scratch_token="run-2")
    assert later.resumed_from_epoch == 0 and later.steps_this_run > 0


def test_cross_fitted_heads_score_each_image_with_the_backbone_blind_to_its_label(audited, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(audited[0], data)
    ts = stages.load_training_set(data)
    folds = stages.cross_fit_folds(data, "supcon").set_index("sop_instance_uid")["fold"].loc[ts.uids].to_numpy()
    assert set(folds[ts.labels >= 0]) == {0, 1} and (folds[ts.labels < 0] == -1).all()
    # Backbone 0 "knows" every recorded label, backbone 1 sees every image alike: only fold 0's
    # images may be scored by backbone 0, so only they come out right.
    onehot = np.eye(len(ts.vocabulary), dtype=np.float32)[np.maximum(ts.labels, 0)] * 10
    stages.save_embeddings(data, "supcon.fold0", onehot, ts.uids)
    stages.save_embeddings(data, "supcon.fold1", np.ones_like(onehot), ts.uids)
    result = stages.compute_oof(data, "supcon", n_splits=2)
    hit = result.probabilities.argmax(1) == ts.labels
    assert hit[folds == 0].mean() > 0.9 and hit[folds == 1].mean() < 0.5
    assert not result.out_of_fold[ts.labels < 0].any()
    # Training it again without from_scratch keeps the split the backbones were trained with.
    config = AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0).pretrain_config("supcon")
    kept = stages.train_backbone(data, "supcon", config, cross_fit=2)
    assert kept.steps_this_run == 0
    again = stages.cross_fit_folds(data, "supcon").set_index("sop_instance_uid")["fold"].loc[ts.uids].to_numpy()
    np.testing.assert_array_equal(again, folds)
    with pytest.raises(ValueError, match="cross-fitted"):
        stages.train_backbone(data, "supcon", config, cross_fit=1)


def test_nightly_audit_embeds_the_new_files_of_the_night(audited, tmp_path):
    """The nightly job caches new files before it embeds them with the current backbones."""
    data, truth, _ = audited
    export, night = tmp_path / "export", tmp_path / "data"
    shutil.copytree(data.parent / "export", export)
    shutil.copytree(data, night)
    before = len(stages.load_training_set(night).uids)
    generate_export(export / "night-2", tmp_path / "night.parquet", n=12, seed=9, size=64, noise=0, missing=0, ood=0)
    job = defs.resolve_job_def("nightly_audit")
    paths = {"export_dir": str(export), "data_dir": str(night)}
    config = {"resources": {"radaudit": {"config": {**paths, "cache_size": 32, "workers": 1}},
                            "audit": {"config": {"n_splits": 3, "max_flag_fraction": 1.0}}}}
    with dg.instance_for_test() as instance:
        tags = all_folders_tags(instance, RadauditConfig(**paths))
        result = job.execute_in_process(run_config=config, instance=instance, tags=tags)
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success
    backbones = {"simclr": "simclr/checkpoints", "byol": "byol/checkpoints",
                 "supcon.fold0": "supcon/fold0/checkpoints", "supcon.fold1": "supcon/fold1/checkpoints"}
    for name in backbones:
        assert f"{name} embeddings: 12 images embedded, {before} kept from the last run" in messages
    uids = stages.load_training_set(night).uids
    assert len(uids) == before + 12
    for name, checkpoints in backbones.items():
        assert np.load(night / "embeddings" / f"{name}.npy").shape[0] == len(uids)
        assert (night / "models" / checkpoints / "latest.json").read_bytes() == \
            (data / "models" / checkpoints / "latest.json").read_bytes()
    issues = pd.read_parquet(night / "audit" / "label_issues.parquet")
    assert set(pd.read_parquet(tmp_path / "night.parquet")["sop_instance_uid"]) <= set(issues["sop_instance_uid"])
    # Only the night's images were embedded; the others kept their rows, and a re-run embeds none.
    old = stages.load_training_set(data).uids
    np.testing.assert_array_equal(stages.load_embeddings(night, "byol", old), stages.load_embeddings(data, "byol", old))
    lines: list[str] = []
    stages.compute_embeddings(night, "byol", log=lines.append)
    assert lines == [f"byol embeddings: 0 images embedded, {len(uids)} kept from the last run"]
    # Ten-crop features are other features: the first run with a crop embeds everything again, the next none.
    lines.clear()
    stages.compute_embeddings(night, "byol", crop=0.875, log=lines.append)
    stages.compute_embeddings(night, "byol", crop=0.875, log=lines.append)
    assert lines == [f"byol embeddings: {len(uids)} images embedded, 0 kept from the last run",
                     f"byol embeddings: 0 images embedded, {len(uids)} kept from the last run"]


def _rematerialize(data: Path, truth: Path, selection: list[dg.AssetKey]) -> dg.ExecuteInProcessResult:
    export = data.parent / "export"
    resources = {
        "radaudit": RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=32, workers=2),
        "audit": AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0, n_splits=3,
                             max_flag_fraction=1.0),
    }
    return dg.materialize(list(defs.assets), resources=resources, selection=selection, raise_on_error=False)


def test_reviewers_verdicts_are_applied_on_the_next_run(audited, tmp_path):
    """On a copy of the shared data dir (and its export), so that no other test depends on the order."""
    shared, truth, _ = audited
    data = tmp_path / "data"
    shutil.copytree(shared, data)
    shutil.copytree(shared.parent / "export", tmp_path / "export")
    selection = [dg.AssetKey("label_overrides"), *(dg.AssetKey(["oof_probabilities", m]) for m in METHODS),
                 dg.AssetKey("ensemble_probabilities"), dg.AssetKey("label_issues"), dg.AssetKey("mislabel_report")]
    report = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig", dtype=str)
    assert len(report) >= 2
    # Confirm the first mislabel (a region suggestion), and call another row out of domain.
    first_mislabel = int((report["issue"] == "mislabel").to_numpy().argmax())
    assert report.loc[first_mislabel, "issue"] == "mislabel"
    review = report.loc[[first_mislabel, 1 if first_mislabel == 0 else 0]].reset_index(drop=True).assign(verdict="")
    review.loc[0, "verdict"] = "confirm"
    review.loc[1, "verdict"] = "out_of_domain"
    (data / "review").mkdir()
    review.to_csv(data / "review" / "returned.csv", index=False, encoding="utf-8-sig")
    assert _rematerialize(data, truth, selection).success

    overrides = pd.read_parquet(data / "labels" / "label_overrides.parquet")
    assert sorted(overrides["verdict"]) == ["confirm", "out_of_domain"]
    after = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig", dtype=str)
    resolved = set(review.loc[:1, "sop_instance_uid"])
    assert resolved.isdisjoint(after["sop_instance_uid"])
    rows = stages.load_probabilities(data, "ensemble")[1].set_index("sop_instance_uid")
    confirmed = review.loc[0]
    assert rows.loc[confirmed["sop_instance_uid"], "label"] == list(stages.load_training_set(data).vocabulary).index(
        confirmed["suggested_region"])
    assert rows.loc[review.loc[1, "sop_instance_uid"], "label"] == -1

    stamp = (data / "labels" / "label_overrides.parquet").stat().st_mtime_ns
    (data / "review" / "broken.csv").write_text("sop_instance_uid,verdict\n1.2.3,perhaps\n", encoding="utf-8")
    failed = _rematerialize(data, truth, [dg.AssetKey("label_overrides")])
    assert not failed.success
    (event,) = [e for e in failed.all_events if e.is_step_failure]
    message = event.step_failure_data.error.cause.message if event.step_failure_data.error.cause else \
        event.step_failure_data.error.message
    assert "broken.csv" in message and "column" in message
    assert (data / "labels" / "label_overrides.parquet").stat().st_mtime_ns == stamp
