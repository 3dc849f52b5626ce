"""benchmarks/quality.py --score: an existing data dir's audit scored against its truth, beside cleanlab's Datalab.

The audit runs on 8x8 pixel thumbnails as features (no backbone to train): the figures are weak,
but every one must be there, on the same rows for both tools, and agree with the stages' own.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from radaudit.pacs import cache
from radaudit.pipelines import stages

REPO = Path(__file__).resolve().parents[2]


def _quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data dir audited on thumbnail features (method ``pixels``), and its truth file."""
    import torch

    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    root = tmp_path_factory.mktemp("quality")
    data, truth = root / "data", root / "truth.parquet"
    generate_export(root / "export", truth, n=90, seed=4, size=64, noise=0.15, missing=0.1, ood=0.05,
                    duplicates=0.1)
    run_ingest(IngestConfig(export_dir=root / "export", data_dir=data, cache=CacheParams(size=32), workers=1))
    stages.map_labels(data)
    stages.find_near_duplicates(data)
    ts = stages.load_training_set(data)
    thumbs = [torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(cache.read(data, u)).float()[None], 8)
              for u in ts.uids]
    stages.save_embeddings(data, "pixels", torch.stack(thumbs).flatten(1).numpy() / 255.0, ts.uids)
    stages.compute_oof(data, "pixels", n_splits=3, repeats=1)
    stages.combine(data, ["pixels"])
    stages.audit(data, ["pixels"])
    return data, truth


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_score_mode_records_radaudit_the_devices_and_datalab_on_the_same_rows(audited, tmp_path, capsys):
    pytest.importorskip("datasets", reason="cleanlab[datalab] (pip install -e '.[bench]')")
    data, truth = audited
    out = tmp_path / "score.json"
    _quality().main(["--score", str(data), "--truth", str(truth), "--json", str(out)])
    printed = capsys.readouterr().out
    records = {r["step"]: r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {"audit/ensemble", "devices", "peer/datalab"}
    scores = stages.evaluate_against_truth(data, truth)
    ens, devices, peer = records["audit/ensemble"], records["devices"], records["peer/datalab"]
    assert ens["methods"] == ["pixels"]
    for key in ("mislabel_precision_at_k", "report_precision_at_k", "self_confidence_precision_at_k", "ood_f1",
                "duplicate_pair_f1"):
        assert _same(ens[key], scores[key])
    assert list(devices["per_device"]) == ["legacy"] and devices["per_device"]["legacy"]["images"] == scores["images"]

    ts = stages.load_training_set(data)
    assert peer["images"] == len(ts.uids) and peer["labelled"] == int((ts.labels >= 0).sum())
    assert peer["k"] == scores["truly_mislabelled"]
    assert peer["radaudit_label_flags"] == scores["flagged_mislabel"]
    assert _same(peer["radaudit_label_flag_precision"], scores["mislabel_precision"])
    # On all images, radaudit's side is the stages' own figures.
    assert _same(peer["radaudit_ood_recall_all"], scores["ood_recall"])
    assert _same(peer["radaudit_ood_precision_all"], scores["ood_precision"])
    assert peer["pairs_all"] == scores["duplicate_pair_pairs"] > 0
    assert _same(peer["radaudit_pair_recall_all"], scores["duplicate_pair_recall"])
    # Datalab flags only among the labelled rows it saw.
    assert peer["datalab_label_flags"] == peer["datalab_issues"]["label"] <= peer["labelled"]
    assert 0.0 <= peer["datalab_precision_at_k"] <= 1.0
    assert peer["datalab_ood_flags_labelled"] <= peer["labelled"]
    assert peer["datalab_ood_flags_all"] == peer["datalab_issues_all_images"]["outlier"]
    assert "vs cleanlab's Datalab on the same probabilities" in printed and "near-dup. pairs R/P/F1" in printed


def test_the_methods_are_read_from_the_data_dir(audited, tmp_path):
    data, _ = audited
    quality = _quality()
    assert quality.data_dir_methods(data) == ["pixels"]  # from the ensemble's weights
    bare = tmp_path / "bare"
    for folder in ("embeddings", "probabilities"):
        (bare / folder).mkdir(parents=True)
    for name in ("embeddings/byol.npy", "embeddings/simclr.npy", "probabilities/simclr.npy",
                 "probabilities/ensemble.npy"):
        np.save(bare / name, np.zeros((1, 1)))
    assert quality.data_dir_methods(bare) == ["simclr"]  # both an embedding and probabilities
    with pytest.raises(SystemExit, match="no audited methods"):
        quality.data_dir_methods(tmp_path)


def test_without_datalab_one_line_says_how_to_install_it_and_radaudit_is_still_scored(audited, tmp_path, capsys,
                                                                                      monkeypatch):
    data, truth = audited
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets -> ImportError
    out = tmp_path / "score.json"
    _quality().main(["--score", str(data), "--truth", str(truth), "--json", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("cleanlab's Datalab is not installed, so the comparison with it is skipped: pip install "
                          "'cleanlab[datalab]>=2.6' (radaudit's extra: pip install -e '.[bench]'); --no-peer skips "
                          "it on purpose")
    assert [r["step"] for r in json.loads(out.read_text())["records"]] == ["audit/ensemble", "devices"]


def test_real_figures_count_the_real_radiographs_and_check_their_groups(tmp_path: Path) -> None:
    import pandas as pd

    paths = [f"real_cr/REAL0/RG1_{e}.dcm" for e in ("UNCR", "J2KR", "J2KI", "UNCI")] + \
        [f"real_cr/REAL1/RG3_{e}.dcm" for e in ("UNCR", "J2KR", "J2KI", "UNCI")] + ["P1/x", "P2/y"]
    uids = ["c0", "c1", "c2", "c3", "l0", "l1", "l2", "l3", "s1", "s2"]
    truth = pd.DataFrame({"sop_instance_uid": uids, "path": paths,
                          "duplicate_of": [None, "c0", "c0", "c0", None, "l0", "l0", "l0", None, None]})
    truth.to_parquet(tmp_path / "truth.parquet")
    issues = pd.DataFrame({"sop_instance_uid": uids,
                           "issue": ["mislabel", "near_duplicate", "mislabel", None, "missing_label",
                                     "near_duplicate", "near_duplicate", "out_of_domain", None, None],
                           # The chest's encodings grouped (a chain), the leg's lossy copy grouped with s1 instead.
                           "duplicate_of": [None, "c0", "c1", "c0", None, "l0", "s1", "l0", None, None]})
    quality = _quality()
    f = quality.real_figures(issues, tmp_path / "truth.parquet")
    assert f["real_out_of_domain"] == "1/8" and f["real_mislabel"] == "2/8"
    assert f["real_issue"]["RG3_UNCI.dcm"] == "out_of_domain" and f["real_issue"]["RG1_UNCI.dcm"] == ""
    assert f["real_grouped_right"] is False
    issues.loc[6, "duplicate_of"] = "l1"  # now each image's four encodings and nothing else
    assert quality.real_figures(issues, tmp_path / "truth.parquet")["real_grouped_right"] is True
    truth.iloc[8:].to_parquet(tmp_path / "synthetic.parquet")  # no real radiographs: no figures
    assert quality.real_figures(issues, tmp_path / "synthetic.parquet") == {}
