"""Tests of models.audit.find_issues: flips found, outliers out of domain, ranking, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.audit import combine_embeddings, find_issues, flag_fraction, knn_distances
from models.heads import oof_probabilities

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
    assert df.attrs["ood_threshold"] > 0.63


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


def test_knn_distances_match_brute_force() -> None:
    rng = np.random.default_rng(2)
    q, r = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((30, 8)).astype(np.float32)
    d = np.linalg.norm(q[:, None] - r[None], axis=2)
    expected = np.sort(d, axis=1)[:, :3].mean(axis=1)
    np.testing.assert_allclose(knn_distances(q, r, k=3, chunk=7), expected, rtol=1e-4)
    # Excluding the query itself when it is in the reference.
    ex = np.full(30, -1)
    ex[:30] = np.arange(30)
    dr = np.linalg.norm(r[:, None] - r[None], axis=2)
    np.fill_diagonal(dr, np.inf)
    np.testing.assert_allclose(knn_distances(r, r, k=2, exclude=ex), np.sort(dr, 1)[:, :2].mean(1), rtol=1e-4)


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
