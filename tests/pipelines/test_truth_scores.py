"""score_issues' figures on a hand-made issues table and truth, with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from radaudit.pipelines import stages
from radaudit.pipelines.stages import TrainingSet

VOCAB = ("chest", "hand", "knee")
C, H, K = 0, 1, 2
# uid, device, true region (None: out of domain), recorded label, reported issue, rank, label quality,
# probability of the recorded label, reported duplicate_of, true duplicate_of.
ROWS = [
    ("a", "dr_room", "chest", C, None, 7, 0.90, 0.90, None, None),
    ("b", "dr_room", "chest", H, "mislabel", 3, 0.05, 0.10, "c", None),  # wrong, flagged
    ("c", "dr_room", "hand", H, "near_duplicate", 6, 0.80, 0.80, "e", None),
    ("d", "dr_room", "hand", K, None, 8, 0.10, 0.05, None, None),  # wrong, not flagged
    ("e", "dr_room", "knee", K, None, 9, 0.60, 0.60, None, None),
    ("f", "dr_room", "knee", K, "out_of_domain", 2, np.nan, 0.70, None, None),  # in domain: a false positive
    ("g", "dr_room", None, C, "out_of_domain", 1, np.nan, 0.30, None, None),  # out of domain, found
    ("h", "dr_room", "chest", C, "near_duplicate", 10, 0.70, 0.70, "a", "a"),
    ("i", "bedside", "chest", C, "mislabel", 4, 0.50, 0.20, None, None),  # right label, flagged
    ("j", "bedside", "hand", H, "mislabel", 5, 0.45, 0.15, None, None),  # right label, flagged
    ("k", "bedside", "knee", C, None, 11, 0.55, 0.12, None, "i"),  # wrong, not flagged
    ("l", "bedside", None, -1, None, 12, np.nan, 0.50, "g", None),  # out of domain, missed
]


def _inputs(with_device: bool = True) -> tuple[pd.DataFrame, TrainingSet, pd.DataFrame, np.ndarray]:
    uids = [r[0] for r in ROWS]
    labels = np.array([r[3] for r in ROWS], dtype=np.int64)
    ts = TrainingSet(uids, labels, np.array([None] * len(uids), dtype=object), VOCAB, pd.DataFrame())
    truth = pd.DataFrame({
        "sop_instance_uid": uids, "true_region": [r[2] for r in ROWS], "is_ood": [r[2] is None for r in ROWS],
        "duplicate_of": [r[9] for r in ROWS], "duplicate_kind": ["copy" if r[9] else None for r in ROWS],
    }).set_index("sop_instance_uid")
    if with_device:
        truth["device"] = [r[1] for r in ROWS]
    issues = pd.DataFrame({
        "sop_instance_uid": uids, "issue": pd.Series([r[4] for r in ROWS], dtype=object),
        "rank": [r[5] for r in ROWS], "label_quality": [r[6] for r in ROWS],
        "suggested_region": labels.clip(0), "ood_score": [0.9 if r[4] == "out_of_domain" else 0.1 for r in ROWS],
        "duplicate_of": pd.Series([r[8] for r in ROWS], dtype=object),
    })
    # The recorded label gets the given probability; the rest is spread over the other two regions.
    own = np.array([r[7] for r in ROWS])
    probs = np.repeat(((1 - own) / 2)[:, None], 3, axis=1)
    probs[np.arange(len(ROWS)), labels.clip(0)] = own
    return issues, ts, truth, probs


def test_the_three_label_error_orders_are_scored_at_k_equal_to_the_number_truly_wrong() -> None:
    issues, ts, truth, probs = _inputs()
    scores = stages.score_issues(issues, ts, truth, probs=probs)
    assert scores["truly_mislabelled"] == 3  # b, d, k
    # Label quality, reported out of domain left out: b .05, d .10, j .45 -> b and d wrong.
    assert scores["mislabel_precision_at_k"] == pytest.approx(2 / 3)
    # The report: the mislabel flags by rank (b, i, j) before the rest -> only b.
    assert scores["report_precision_at_k"] == pytest.approx(1 / 3)
    # Probability of the recorded label: d .05, b .10, k .12 -> all three.
    assert scores["self_confidence_precision_at_k"] == pytest.approx(1.0)
    assert "self_confidence_precision_at_k" not in stages.score_issues(issues, ts, truth)


def test_flags_out_of_domain_and_duplicate_pairs_against_the_truth() -> None:
    issues, ts, truth, probs = _inputs()
    scores = stages.score_issues(issues, ts, truth, probs=probs)
    assert scores["flagged_mislabel"] == 3
    assert scores["mislabel_precision"] == pytest.approx(1 / 3) and scores["mislabel_recall"] == pytest.approx(1 / 3)
    # Reported out of domain: f (in domain) and g; out of domain: g and l.
    assert (scores["ood_precision"], scores["ood_recall"], scores["ood_f1"]) == pytest.approx((0.5, 0.5, 0.5))
    # Reported groups over the in-domain images: {b, c, e} (a chain) and {a, h}: 4 pairs, 1 right
    # (l -> g joins two out-of-domain images: not counted). True pairs: (a, h) and (i, k).
    assert scores["duplicate_pair_pairs"] == 2 and scores["duplicate_pair_pairs_reported"] == 4
    assert scores["duplicate_pair_precision"] == pytest.approx(0.25)
    assert scores["duplicate_pair_recall"] == pytest.approx(0.5)
    assert scores["duplicate_pair_f1"] == pytest.approx(1 / 3)


def test_per_device_figures_and_a_device_over_the_false_flag_limit() -> None:
    issues, ts, truth, probs = _inputs()
    scores = stages.score_issues(issues, ts, truth, probs=probs)
    # i and j are flagged with right labels; 10 labelled in-domain images in all.
    assert scores["false_flags"] == 2 and scores["false_flag_rate"] == pytest.approx(0.2)
    assert scores["false_flag_limit"] == pytest.approx(1.5 * 0.2 + 0.01)
    assert list(scores["per_device"]) == ["dr_room", "bedside"]  # most images first
    dr, bed = scores["per_device"]["dr_room"], scores["per_device"]["bedside"]
    assert dr == {
        "images": 8, "in_domain": 7, "labelled_in_domain": 7, "truly_mislabelled": 2,
        "precision_at_k": 1.0,  # b .05, d .10
        "false_flags": 0, "false_flag_rate": 0.0, "ood_false_positives": 1, "ood_fp_share": pytest.approx(1 / 7),
        "out_of_domain": 1, "ood_recall": 1.0, "ood_fp_ok": False, "false_flags_ok": True,
    }
    assert bed["images"] == 4 and bed["in_domain"] == 3 and bed["truly_mislabelled"] == 1
    assert bed["precision_at_k"] == 0.0  # j .45 comes before k .55
    assert bed["false_flags"] == 2 and bed["false_flag_rate"] == pytest.approx(2 / 3)
    assert bed["false_flags_ok"] is False  # 0.667 > 0.31
    assert bed["ood_false_positives"] == 0 and bed["ood_fp_ok"] is True and bed["ood_recall"] == 0.0


def test_without_a_device_column_the_export_is_one_device() -> None:
    issues, ts, truth, probs = _inputs(with_device=False)
    scores = stages.score_issues(issues, ts, truth, probs=probs)
    (name, only), = scores["per_device"].items()
    assert name == "all" and only["images"] == 12 and only["truly_mislabelled"] == 3
    assert only["precision_at_k"] == scores["mislabel_precision_at_k"]
    assert only["false_flag_rate"] == scores["false_flag_rate"] and only["false_flags_ok"] is True
    assert only["ood_recall"] == scores["ood_recall"] and only["ood_false_positives"] == 1


def test_report_order_puts_the_flags_first_by_rank_then_label_quality_with_nan_last() -> None:
    issues = pd.DataFrame({"issue": pd.Series([None, "mislabel", None, "out_of_domain", "mislabel", None],
                                              dtype=object),
                           "rank": [6, 2, 5, 1, 3, 4], "label_quality": [0.3, 0.9, np.nan, np.nan, 0.2, 0.1]})
    labels = np.array([0, 1, 1, 0, 2, -1])
    assert stages.report_order(issues, labels).tolist() == [1, 4, 0, 2]
    # A list shorter than k counts its missing places as misses.
    assert stages.precision_at_k(np.array([1]), np.array([False, True, True])) == 0.5
    assert math.isnan(stages.precision_at_k(np.array([0]), np.zeros(3, dtype=bool)))


def test_device_table_shows_one_line_per_device_with_the_limits() -> None:
    issues, ts, truth, probs = _inputs()
    lines = stages.device_table(stages.score_issues(issues, ts, truth, probs=probs))
    assert lines[0] == ("precision@k of wrong labels (k = 3): label quality 0.667  report order 0.333  "
                        "plain self-confidence 1.000")
    assert "false-flag rate <= 1.5 x 0.200 + 0.01 = 0.310" in lines[1] and "<= 2% of in-domain" in lines[1]
    assert len(lines) == 5
    dr, bed = lines[3].split(), lines[4].split()
    assert dr[:4] == ["dr_room", "8", "2", "1.000"]
    assert dr[4:10] == ["0", "(0.000)", "ok", "1", "(0.143)", "OVER"] and dr[10] == "1.000"
    assert bed[:4] == ["bedside", "4", "1", "0.000"]
    assert bed[4:10] == ["2", "(0.667)", "OVER", "0", "(0.000)", "ok"] and bed[10] == "0.000"


def test_a_null_label_outside_the_vocabulary_is_no_missed_suggestion() -> None:
    """A lower leg (not in the vocabulary) with a null label: not out of domain, and no right suggestion exists."""
    uids = ["m1", "m2", "leg", "x"]
    labels = np.array([-1, -1, -1, C], dtype=np.int64)
    ts = TrainingSet(uids, labels, np.array([None] * 4, dtype=object), VOCAB, pd.DataFrame())
    truth = pd.DataFrame({"sop_instance_uid": uids, "true_region": ["hand", "knee", None, "chest"],
                          "is_ood": [False] * 4}).set_index("sop_instance_uid")
    issues = pd.DataFrame({"sop_instance_uid": uids, "issue": ["missing_label"] * 3 + [None],
                           "rank": [1, 2, 3, 4], "label_quality": [np.nan] * 3 + [0.9],
                           "suggested_region": [H, C, K, C], "ood_score": [0.1] * 4,
                           "duplicate_of": pd.Series([None] * 4, dtype=object)})
    scores = stages.score_issues(issues, ts, truth)
    assert scores["missing_labels"] == 3 and scores["missing_outside_vocabulary"] == 1
    assert scores["missing_suggestion_accuracy"] == pytest.approx(1 / 2)  # m1 right, m2 wrong; the leg not counted
    assert scores["truly_mislabelled"] == 0 and scores["flagged_out_of_domain"] == 0
