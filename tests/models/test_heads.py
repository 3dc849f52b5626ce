"""Tests of radaudit.models.heads: out-of-fold probabilities, folds, label fractions, confusion matrix."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from radaudit.models.heads import (
    LinearHead,
    confusion_matrix_png,
    fit_linear_head,
    group_stratified_folds,
    label_fraction_accuracy,
    oof_probabilities,
)
from radaudit.models.validation import check_groups

K = 4


def clusters(n: int = 400, k: int = K, d: int = 16, seed: int = 0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.standard_normal((k, d)) * 4
    x = (centres[y] + spread * rng.standard_normal((n, d))).astype(np.float32)
    groups = [f"p{i}" for i in rng.integers(0, n // 3, n)]
    return x, y, groups


def test_oof_shapes_rows_sum_to_one_and_unlabelled_rows_from_full_head() -> None:
    x, y, g = clusters()
    labels = y.copy()
    labels[:20] = -1
    r = oof_probabilities(x, labels, g, n_splits=4, n_classes=K)
    assert r.probabilities.shape == (400, K)
    np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert (r.fold[:20] == -1).all() and (r.fold[20:] >= 0).all()
    assert not r.out_of_fold[:20].any() and r.out_of_fold[20:].all()
    np.testing.assert_allclose(r.probabilities[:20], r.head.predict_proba(x[:20]), atol=1e-5)
    assert (r.probabilities[:20].argmax(1) == y[:20]).mean() > 0.95
    assert (r.probabilities[20:].argmax(1) == y[20:]).mean() > 0.95


def test_out_of_fold_rows_differ_from_full_head_on_a_flipped_label() -> None:
    # A held-out head never saw the flipped label, so it keeps the true class; that is the point.
    x, y, g = clusters(seed=3)
    labels = y.copy()
    labels[7] = (y[7] + 1) % K
    r = oof_probabilities(x, labels, g, n_splits=5, n_classes=K)
    assert r.probabilities[7].argmax() == y[7]
    assert r.probabilities[7, labels[7]] < 0.2


def test_no_patient_on_both_sides_of_a_fold_and_folds_are_stratified() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    y = rng.integers(0, 6, n)
    y[rng.random(n) < 0.05] = -1
    groups = check_groups([f"p{i}" for i in rng.integers(0, 900, n)], n)
    fold = group_stratified_folds(y, groups, n_splits=5, seed=0)
    assert ((fold == -1) == (y == -1)).all()
    lab = y >= 0
    for gid in np.unique(groups[lab]):
        assert np.unique(fold[lab & (groups == gid)]).size == 1
    for c in range(6):
        share = np.bincount(fold[y == c], minlength=5) / (y == c).sum()
        assert np.abs(share - 0.2).max() < 0.05


def test_none_patient_keys_are_groups_of_their_own() -> None:
    ids = check_groups(["a", None, "a", None, float("nan"), "b"], 6)
    assert ids[0] == ids[2]
    assert len({ids[1], ids[3], ids[4], ids[0], ids[5]}) == 5


def test_oof_folds_respect_patients() -> None:
    x, y, g = clusters(n=300)
    r = oof_probabilities(x, y, g, n_splits=5, n_classes=K)
    keys = np.array(g)
    for key in np.unique(keys):
        assert np.unique(r.fold[keys == key]).size == 1


def test_deterministic_under_a_seed() -> None:
    x, y, g = clusters()
    a = oof_probabilities(x, y, g, n_classes=K, seed=3)
    b = oof_probabilities(x, y, g, n_classes=K, seed=3)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.fold, b.fold)
    c = oof_probabilities(x, y, g, n_classes=K, seed=4)
    assert not np.array_equal(a.fold, c.fold)


def test_repeated_splits_average_out_the_luck_of_one_split() -> None:
    # Overlapping clusters: which patients share a fold moves a row's held-out probability.
    x, y, g = clusters(spread=3.0, seed=5)
    labels = y.copy()
    labels[7] = (y[7] + 1) % K
    single = [oof_probabilities(x, labels, g, n_classes=K, seed=s) for s in range(4)]
    repeated = [oof_probabilities(x, labels, g, n_classes=K, seed=s, repeats=3) for s in range(4)]
    spread_single = np.stack([r.probabilities for r in single]).std(axis=0).mean()
    spread_repeated = np.stack([r.probabilities for r in repeated]).std(axis=0).mean()
    assert spread_repeated < 0.75 * spread_single
    for r, one in zip(repeated, single):
        np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_array_equal(r.fold, one.fold)  # the first split's folds
        assert r.out_of_fold.all()
        assert r.probabilities[7, labels[7]] < 0.2  # no split's held-out head saw the flipped label
    with pytest.raises(ValueError, match="repeats"):
        oof_probabilities(x, y, g, n_classes=K, repeats=0)


def test_rare_class_gets_in_sample_probabilities_and_a_warning() -> None:
    x, y, g = clusters(n=200)
    y = y.copy()
    y[y == 3] = 2
    y[0] = 3  # one image of class 3: its fold's head never sees the class
    with pytest.warns(UserWarning, match=r"classes \[3\]"):
        r = oof_probabilities(x, y, g, n_splits=4, n_classes=5)
    assert r.rare_classes == (3,)
    assert not r.out_of_fold[0]
    assert r.out_of_fold[1:].all()
    assert r.probabilities.shape == (200, 5)  # class 4 has no row but keeps a column


def test_bad_inputs_name_the_fix() -> None:
    x, y, g = clusters(n=60)
    with pytest.raises(ValueError, match="one entry per image"):
        oof_probabilities(x, y[:-1], g)
    with pytest.raises(ValueError, match="one patient key per image"):
        oof_probabilities(x, y, g[:-1])
    with pytest.raises(ValueError, match="lower n_splits"):
        oof_probabilities(x, y, ["same"] * 60, n_splits=5)
    with pytest.raises(ValueError, match="n_classes"):
        oof_probabilities(x, y, g, n_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        oof_probabilities(np.full_like(x, np.nan), y, g)
    with pytest.raises(ValueError, match="-1 for a null label"):
        oof_probabilities(x, np.full(60, -3), g)
    with pytest.raises(ValueError, match="n_splits"):
        oof_probabilities(x, y, g, n_splits=1)


def test_head_state_dict_round_trip() -> None:
    x, y, _ = clusters(n=120)
    head = fit_linear_head(x, y, n_classes=K)
    again = LinearHead.from_state_dict(head.state_dict())
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x))
    assert (head.predict(x) == y).mean() > 0.95


def test_label_fraction_accuracy_keeps_every_class() -> None:
    x, y, _ = clusters(n=1200, spread=2.0)
    acc = label_fraction_accuracy(x[:800], y[:800], x[800:], y[800:], fractions=(0.001, 0.1, 1.0))
    assert set(acc) == {0.001, 0.1, 1.0}
    assert acc[1.0] > 0.9
    assert acc[0.001] > 0.5  # one image per class still beats chance (0.25)
    with pytest.raises(ValueError, match="fractions"):
        label_fraction_accuracy(x[:800], y[:800], x[800:], y[800:], fractions=(0.0,))


def test_confusion_matrix_png() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, -1])
    p = np.array([0, 1, 1, 1, 2, 0, 2])
    png = confusion_matrix_png(y, p, ["skull", "cervical_spine", "knee"])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 150 and img.height > 150
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        confusion_matrix_png(y, p, ["a", "b", "c"])


def test_choose_l2_penalises_noise_and_spares_signal() -> None:
    """Labels unrelated to the features: the strongest penalty (near-uniform probabilities) has the
    lowest held-out log loss. Well-separated classes: a weak one (confident probabilities)."""
    from radaudit.models.heads import choose_l2

    rng = np.random.default_rng(0)
    n, d, k = 240, 64, 4
    groups = np.arange(n) // 2
    x = rng.standard_normal((n, d)).astype(np.float32)
    noise = rng.integers(0, k, n)
    best, losses = choose_l2(x, noise, groups, grid=(1e-3, 0.1, 3.0), n_splits=3)
    assert best == 3.0 and losses[3.0] < losses[0.1] < losses[1e-3]
    signal = rng.integers(0, k, n)
    clean = x + 6.0 * np.eye(d, dtype=np.float32)[signal]  # class c shifts feature c far out
    best, losses = choose_l2(clean, signal, groups, grid=(1e-3, 0.1, 3.0), n_splits=3)
    assert best != 3.0 and losses[best] < 0.5 * losses[3.0]
    # A subsample of labelled rows decides (seeded): the same losses as choosing on those rows alone.
    _, sub = choose_l2(clean, signal, groups, grid=(0.1,), n_splits=3, max_rows=120, seed=5)
    rows = np.sort(np.random.default_rng(5).choice(n, size=120, replace=False))
    _, alone = choose_l2(clean[rows], signal[rows], groups[rows], grid=(0.1,), n_splits=3, seed=5)
    assert sub == alone
    with pytest.raises(ValueError, match="grid is empty"):
        choose_l2(x, noise, groups, grid=())
