"""Tests of radaudit.models.audit.find_issues: flips found, outliers out of domain, flags as a prefix of the
label-quality order, ranking, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radaudit.models.audit import combine_embeddings, estimate_wrong_labels, find_issues, flag_fraction
from radaudit.models.heads import oof_probabilities

K = 5


@pytest.fixture(scope="module")
def audited() -> dict[str, object]:
    rng = np.random.default_rng(0)
    n, d = 1500, 32
    y = rng.integers(0, K, n)
    x = (rng.standard_normal((K, d))[y] * 5 + rng.standard_normal((n, d))).astype(np.float32)
    x[-1] = rng.standard_normal(d) * 5 + 40.0  # an outlier far from every cluster
    labels = y.copy()
    flipped = rng.choice(n - 1, size=int(0.1 * n), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, K, flipped.size)) % K
    missing = np.setdiff1d(rng.choice(n - 1, size=60, replace=False), flipped)
    labels[missing] = -1
    groups = [f"p{i}" for i in rng.integers(0, 600, n)]
    oof = oof_probabilities(x, labels, groups, n_classes=K)
    uids = [f"1.2.3.{i}" for i in range(n)]
    df = find_issues(oof.probabilities, labels, x, sop_instance_uids=uids, out_of_fold=oof.out_of_fold)
    return {"df": df, "y": y, "labels": labels, "flipped": flipped, "missing": missing, "x": x,
            "probs": oof.probabilities}


def test_recovers_flipped_labels(audited: dict) -> None:
    df, flipped = audited["df"], audited["flipped"]
    is_flip = np.zeros(len(df), bool)
    is_flip[flipped] = True
    flagged = (df["issue"] == "mislabel").to_numpy()
    precision = is_flip[flagged].mean()
    recall = flagged[is_flip].mean()
    assert precision > 0.8 and recall > 0.8, (precision, recall)
    # The suggestion of a found flip is the true region.
    hit = flagged & is_flip
    assert (df["suggested_region"].to_numpy()[hit] == audited["y"][hit]).mean() > 0.95


def test_outlier_is_out_of_domain_and_ranked_first(audited: dict) -> None:
    df = audited["df"]
    last = df.iloc[-1]
    assert last["issue"] == "out_of_domain"
    assert last["rank"] == 1
    assert last["ood_score"] == df["ood_score"].max()
    assert (df["issue"] == "out_of_domain").sum() <= 5  # the in-domain clusters stay in domain
    assert "embedding" in last["ood_reason"]
    assert (df.loc[df["issue"] != "out_of_domain", "ood_reason"] == "").all()


def test_missing_labels_get_a_suggestion(audited: dict) -> None:
    df, missing = audited["df"], audited["missing"]
    rows = df.iloc[missing]
    assert (rows["issue"] == "missing_label").all()
    assert rows["label_quality"].isna().all()
    assert (rows["suggested_region"].to_numpy() == audited["y"][missing]).mean() > 0.95
    assert (rows["suggested_probability"] > 0.5).all()


def test_one_ranking_tiers_then_scores(audited: dict) -> None:
    df = audited["df"].sort_values("rank")
    assert df["rank"].tolist() == list(range(1, len(df) + 1))
    assert df["suspicion"].is_monotonic_decreasing
    tier = df["issue"].map({"out_of_domain": 3, "mislabel": 2, "missing_label": 1}).fillna(0).to_numpy()
    assert (np.diff(tier) <= 0).all()
    mis = df[df["issue"] == "mislabel"]
    assert mis["label_quality"].is_monotonic_increasing
    miss = df[df["issue"] == "missing_label"]
    assert miss["suggested_probability"].is_monotonic_decreasing
    assert df.columns[0] == "sop_instance_uid"
    assert df.attrs["ood_threshold"] == 0.5


def test_flag_fraction(audited: dict) -> None:
    df = audited["df"]
    assert flag_fraction(df) == pytest.approx(df["issue"].notna().mean())
    assert flag_fraction(df, kinds=("mislabel",)) == pytest.approx((df["issue"] == "mislabel").mean())
    assert flag_fraction(df.iloc[:0]) == 0.0
    with pytest.raises(ValueError, match="choose from"):
        flag_fraction(df, kinds=("typo",))
    with pytest.raises(ValueError, match="find_issues"):
        flag_fraction(pd.DataFrame({"x": [1]}))


def test_fixed_threshold_and_deterministic(audited: dict) -> None:
    a = find_issues(audited["probs"], audited["labels"], audited["x"], ood_threshold=0.99)
    b = find_issues(audited["probs"], audited["labels"], audited["x"], ood_threshold=0.99)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["ood_threshold"] == 0.99


def test_combine_embeddings_is_mean_cosine() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 9))
    c = combine_embeddings({"a": a, "b": b})
    assert c.shape == (4, 15)
    cos = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T  # noqa: E731
    np.testing.assert_allclose(c @ c.T / 2, (cos(a) + cos(b)) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="align every method"):
        combine_embeddings({"a": a, "b": b[:3]})


def test_bad_inputs_name_the_fix(audited: dict) -> None:
    p, y, x = audited["probs"], audited["labels"], audited["x"]
    with pytest.raises(ValueError, match="sum to 1"):
        find_issues(p * 1.5, y, x)
    with pytest.raises(ValueError, match="logits"):
        find_issues(p - 0.5, y, x)
    with pytest.raises(ValueError, match="one entry per image"):
        find_issues(p, y[:-1], x)
    with pytest.raises(ValueError, match="embeddings has"):
        find_issues(p, y, x[:-1])
    with pytest.raises(ValueError, match="choose one of"):
        find_issues(p, y, x, filter_by="vibes")
    with pytest.raises(ValueError, match="ood_threshold"):
        find_issues(p, y, x, ood_threshold=2.0)
    with pytest.raises(ValueError, match="sop_instance_uids"):
        find_issues(p, y, x, sop_instance_uids=["a"])
    with pytest.raises(ValueError, match="max_mislabel_fraction"):
        find_issues(p, y, x, max_mislabel_fraction=0.0)
    with pytest.raises(ValueError, match="header_reasons"):
        find_issues(p, y, x, header_reasons=["x"])
    with pytest.raises(ValueError, match="member_probs"):
        find_issues(p, y, x, member_probs={"a": p[:-1]})


def _noisy(n: int, k: int, noise: float, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of a classifier that is right with softmax margin ``signal``, labels with ``noise`` flips."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + signal * np.eye(k)[y]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = y.copy()
    flip = rng.random(n) < noise
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    return p, labels, y


def test_weak_features_bound_the_flags_and_warn() -> None:
    # Near-random probabilities: cleanlab's count of wrong labels is most images; the cap holds it.
    p, labels, _ = _noisy(600, 6, 0.1, 0.3, seed=4)
    x = np.random.default_rng(5).standard_normal((600, 8)).astype(np.float32)
    df = find_issues(p, labels, x, max_mislabel_fraction=0.2)
    assert df.attrs["estimated_wrong_labels"] > 0.2 * 600
    in_domain = (df["label"] >= 0) & ~df["is_out_of_domain"]
    cap = int(np.floor(0.2 * in_domain.sum()))
    listed = df[in_domain].nsmallest(cap, "label_quality")
    # The list is the cap's prefix of the label-quality order, less rows the heads agree with.
    assert set(df.index[df["issue"] == "mislabel"]) == set(listed.index[listed["suggested_region"] != listed["label"]])
    assert df.attrs["heads_agreement"] < 0.5
    (warning,) = df.attrs["warnings"]
    assert "too weak" in warning and f"{df.attrs['heads_agreement']:.1%}" in warning


def test_strong_features_do_not_warn() -> None:
    p, labels, y = _noisy(600, 6, 0.1, 6.0, seed=6)
    x = np.random.default_rng(7).standard_normal((600, 8)).astype(np.float32)
    df = find_issues(p, labels, x)
    assert df.attrs["warnings"] == [] and df.attrs["heads_agreement"] > 0.85
    flagged = (df["issue"] == "mislabel").to_numpy()
    assert (labels[flagged] != y[flagged]).mean() > 0.9


def test_members_agree_is_reported_not_a_filter() -> None:
    p, labels, _ = _noisy(400, 4, 0.1, 6.0, seed=8)
    x = np.random.default_rng(9).standard_normal((400, 8)).astype(np.float32)
    alone = find_issues(p, labels, x)
    rolled = np.roll(p, 1, axis=1)  # a member that always suggests another region
    mixed = find_issues(p, labels, x, member_probs={"a": p, "b": rolled, "c": rolled})
    assert alone["members_agree"].isna().all()
    np.testing.assert_allclose(mixed["members_agree"], 1 / 3)
    assert (alone["issue"] == "mislabel").sum() > 10
    pd.testing.assert_series_equal(alone["issue"], mixed["issue"])


def test_header_and_pixel_evidence_make_out_of_domain_with_reason() -> None:
    from radaudit.models.ood import PIXEL_COLUMNS

    p, labels, _ = _noisy(300, 4, 0.0, 6.0, seed=10)
    x = np.random.default_rng(11).standard_normal((300, 8)).astype(np.float32)
    rng = np.random.default_rng(12)
    feats = pd.DataFrame({"peak_share": rng.normal(0.05, 0.01, 300), "edge_share": rng.normal(0.01, 0.002, 300),
                          "flatness": rng.uniform(1.0, 20.0, 300)})
    feats.loc[7, "flatness"] = 0.05  # a blank exposure
    header = [""] * 300
    header[3] = "header: modality CT"
    df = find_issues(p, labels, x, header_reasons=header, pixel_feats=feats[list(PIXEL_COLUMNS)])
    assert df.loc[3, "issue"] == "out_of_domain" and df.loc[3, "ood_reason"].startswith("header: modality CT")
    assert df.loc[3, "ood_score"] >= 0.99 and np.isnan(df.loc[3, "label_quality"])
    assert df.loc[7, "issue"] == "out_of_domain" and "blank or nearly blank exposure" in df.loc[7, "ood_reason"]
    assert set(df.loc[df["issue"] == "out_of_domain"].index) == {3, 7}
    assert set(df.sort_values("rank").head(2).index) == {3, 7}


def test_the_list_is_a_prefix_of_label_quality_and_keeps_uncertain_suggestions() -> None:
    """Six labels the heads doubt, at label quality 0.01-0.06; three suggest another region only weakly."""
    k, n = 3, 90
    p = np.full((n, k), 0.25)
    y = np.arange(n) % k
    p[np.arange(n), y] = 0.5  # per-class thresholds of confident learning: 0.5
    doubted = [0, 3, 6, 9, 12, 15]  # all recorded as class 0
    for i, row in enumerate(doubted):
        q = 0.01 * (i + 1)
        weak = i % 2 == 1  # an uncertain suggestion: 1 and 2 nearly tied
        p[row] = [q, (1 - q) / 2 + (0.02 if weak else 0.4), (1 - q) / 2 - (0.02 if weak else 0.4)]
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    df = find_issues(p, y, x, flag_count="off_diagonal")
    flagged = list(df.index[df["issue"] == "mislabel"])
    # Confident learning counts five: the sixth's best alternative (0.49) is below its class's threshold (0.5).
    assert df.attrs["estimated_wrong_labels"] == estimate_wrong_labels(p, y, method="off_diagonal") == 5
    assert flagged == doubted[:5]  # the five lowest label qualities, uncertain suggestions included
    assert df.loc[flagged, "rank"].tolist() == sorted(df.loc[flagged, "rank"])  # in label-quality order
    weak = df.loc[[3, 9]]
    assert (weak["suggested_region"] == 1).all() and (weak["second_region"] == 2).all()
    assert (weak["suggested_probability"] <= 0.51).all() and (weak["second_probability"] >= 0.455).all()
    # A shorter count flags a shorter prefix: the three lowest.
    capped = find_issues(p, y, x, max_mislabel_fraction=3.5 / n, flag_count="off_diagonal")
    assert list(capped.index[capped["issue"] == "mislabel"]) == doubted[:3]
    with pytest.raises(ValueError, match="flag_count"):
        find_issues(p, y, x, flag_count="guess")


def test_estimate_wrong_labels_counts_confident_off_diagonals() -> None:
    p, labels, y = _noisy(1000, 5, 0.1, 6.0, seed=13)
    truly = int((labels != y).sum())
    est = estimate_wrong_labels(p, labels, method="off_diagonal")
    assert abs(est - truly) <= 0.1 * truly, (est, truly)
    for method in ("off_diagonal", "mixture_proportion"):
        assert estimate_wrong_labels(p[:0], labels[:0], method=method) == 0
        assert estimate_wrong_labels(p[labels == 0], labels[labels == 0], method=method) == 0  # one class
    # A class the columns hold but no row records (an archive without skulls) does not break the count.
    assert estimate_wrong_labels(p[labels != 4], labels[labels != 4], method="off_diagonal") > 0


@pytest.mark.parametrize("signal", [1.5, 3.0, 6.0])
def test_mixture_proportion_count_holds_for_weak_and_strong_heads(signal: float) -> None:
    """Uniform swaps at 10%: the count is near the truth whether the heads are weak or strong."""
    p, labels, y = _noisy(3000, 8, 0.1, signal, seed=14)
    truly = int((labels != y).sum())
    est = estimate_wrong_labels(p, labels, confusable_share=0.0)
    assert 0.8 * truly <= est <= 1.25 * truly, (signal, est, truly)
    # Confident learning's count grows as the heads weaken; the mixture estimate does not.
    if signal == 1.5:
        assert estimate_wrong_labels(p, labels, method="off_diagonal") > 2 * truly
    # Clean labels: a small count (weak heads doubt a few right labels).
    assert estimate_wrong_labels(p, y, confusable_share=0.0) <= 0.4 * truly
    with pytest.raises(ValueError, match="confusable_share"):
        estimate_wrong_labels(p, labels, confusable_share=1.5)


def test_mixture_count_on_few_images_falls_back_to_confident_learning_and_bad_input_is_refused() -> None:
    """Under 40 labelled images no cut holds 20 qualities: cleanlab's count, not every image."""
    p, labels, y = _noisy(30, 3, 0.0, 6.0, seed=15)
    assert (labels == y).all()
    assert estimate_wrong_labels(p, labels) == estimate_wrong_labels(p, labels, method="off_diagonal") <= 1
    p, labels, _ = _noisy(200, 5, 0.1, 6.0, seed=16)
    with pytest.raises(ValueError, match="class indices"):
        estimate_wrong_labels(p, np.where(np.arange(200) == 3, -1, labels))
    with pytest.raises(ValueError):
        estimate_wrong_labels(p[:150], labels)


def test_copies_under_another_patient_rank_first_and_same_patient_copies_last(audited: dict) -> None:
    df0 = audited["df"]
    n = len(df0)
    labels = audited["labels"]
    plain = np.flatnonzero((df0["issue"].isna()).to_numpy())
    mislabel = np.flatnonzero((df0["issue"] == "mislabel").to_numpy())
    cross, same, flagged_too, ood = plain[0], plain[1], mislabel[0], n - 1
    dup = pd.DataFrame({"duplicate_of": [None] * n, "similarity": np.nan, "other_patient": False})
    for row, orig, sim, other in ((cross, plain[5], 0.99, True), (same, plain[6], 0.97, False),
                                  (flagged_too, plain[7], 0.98, False), (ood, plain[8], 1.0, True)):
        dup.loc[row, ["duplicate_of", "similarity", "other_patient"]] = [f"1.2.3.{orig}", sim, other]
    df = find_issues(audited["probs"], labels, audited["x"], sop_instance_uids=[f"1.2.3.{i}" for i in range(n)],
                     duplicates=dup)
    assert df.loc[cross, "issue"] == "near_duplicate" and df.loc[cross, "rank"] == 1
    assert df.loc[cross, "duplicate_of"] == f"1.2.3.{plain[5]}"
    assert df.loc[ood, "issue"] == "out_of_domain" and df.loc[ood, "duplicate_of"] == f"1.2.3.{plain[8]}"
    assert df.loc[flagged_too, "issue"] == "mislabel"  # a same-patient copy keeps its label finding
    assert df.loc[same, "issue"] == "near_duplicate"
    below = df[df["issue"].isin(["mislabel", "missing_label", "out_of_domain"])]["rank"].max()
    above = df[df["issue"].isna()]["rank"].min()
    assert below < df.loc[same, "rank"] < above
    # A near-perfect copy still ranks after an unsure missing label, and a copy without a similarity stays flagged.
    unsure = np.full_like(audited["probs"], 1.0 / K)
    labels2 = labels.copy()
    labels2[plain[2]] = -1
    dup2 = dup.copy()
    dup2.loc[same, "similarity"] = 1.0
    dup2.loc[plain[3], ["duplicate_of", "similarity", "other_patient"]] = [f"1.2.3.{plain[9]}", np.nan, False]
    probs2 = audited["probs"].copy()
    probs2[plain[2]] = unsure[plain[2]]
    df2 = find_issues(probs2, labels2, audited["x"], duplicates=dup2)
    assert df2.loc[plain[2], "issue"] == "missing_label" and df2.loc[plain[2], "suggested_probability"] < 0.3
    assert df2.loc[plain[2], "rank"] < df2.loc[same, "rank"]
    assert df2.loc[plain[3], "issue"] == "near_duplicate" and df2.loc[plain[3], "rank"] < df2[df2["issue"].isna()]["rank"].min()
    assert df["duplicate_of"].notna().sum() == 4
    with pytest.raises(ValueError, match="duplicates"):
        find_issues(audited["probs"], labels, audited["x"], duplicates=dup.iloc[:5])
