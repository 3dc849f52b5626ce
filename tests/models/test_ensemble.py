"""Tests of radaudit.models.ensemble against hand-computed weights."""

from __future__ import annotations

import numpy as np
import pytest

from radaudit.models.ensemble import ensemble_probabilities, ensemble_weights

A = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # right on both labelled rows
B = np.array([[0.4, 0.6], [0.5, 0.5], [0.5, 0.5]])  # wrong on the first
LABELS = np.array([0, 1, -1])


def test_equal_is_the_mean() -> None:
    out = ensemble_probabilities({"a": A, "b": B})
    np.testing.assert_allclose(out, (A + B) / 2)


def test_accuracy_weights() -> None:
    w = ensemble_weights({"a": A, "b": B}, weights="accuracy", labels=LABELS)
    # a: 2/2 right; b: row 1 ties 0.5/0.5 and argmax picks class 0, so 0/2 right.
    assert w == pytest.approx({"a": 1.0, "b": 0.0})
    out = ensemble_probabilities({"a": A, "b": B}, weights="accuracy", labels=LABELS)
    np.testing.assert_allclose(out, A)


def test_log_loss_weights_are_geometric_mean_probability_of_the_label() -> None:
    w = ensemble_weights({"a": A, "b": B}, weights="log_loss", labels=LABELS)
    ga, gb = np.sqrt(0.9 * 0.8), np.sqrt(0.4 * 0.5)
    assert w["a"] == pytest.approx(ga / (ga + gb))
    out = ensemble_probabilities({"a": A, "b": B}, weights="log_loss", labels=LABELS)
    np.testing.assert_allclose(out, w["a"] * A + w["b"] * B)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"choose one of \['accuracy', 'equal', 'log_loss'\]"):
        ensemble_probabilities({"a": A}, weights="median")
    with pytest.raises(ValueError, match="pass labels="):
        ensemble_probabilities({"a": A}, weights="accuracy")
    with pytest.raises(ValueError, match="sum to 1"):
        ensemble_probabilities({"a": A * 2})
    with pytest.raises(ValueError, match="same images"):
        ensemble_probabilities({"a": A, "b": B[:2]})
    with pytest.raises(ValueError, match="non-empty mapping"):
        ensemble_probabilities({})
    with pytest.raises(ValueError, match="one entry per image"):
        ensemble_probabilities({"a": A}, weights="accuracy", labels=LABELS[:2])
    with pytest.raises(ValueError, match="every label is -1"):
        ensemble_probabilities({"a": A}, weights="log_loss", labels=np.full(3, -1))


def test_drop_below_removes_a_weak_member() -> None:
    C = np.array([[0.55, 0.45], [0.45, 0.55], [0.5, 0.5]])  # right on both rows, like A
    w = ensemble_weights({"a": A, "b": B, "c": C}, weights="log_loss", labels=LABELS, drop_below=0.05)
    # b's accuracy (0) lies 1.0 below the best (1.0): dropped; a and c keep their log-loss weights.
    ga, gc = np.sqrt(0.9 * 0.8), np.sqrt(0.55 * 0.55)
    assert w == pytest.approx({"a": ga / (ga + gc), "b": 0.0, "c": gc / (ga + gc)})
    out = ensemble_probabilities({"a": A, "b": B, "c": C}, weights="log_loss", labels=LABELS, drop_below=0.05)
    np.testing.assert_allclose(out, w["a"] * A + w["c"] * C)
    # Even a tolerance of 0.99 drops a member that is right on no row when another is right on all.
    assert ensemble_weights({"a": A, "b": B}, labels=LABELS, drop_below=0.99)["b"] == 0.0
    with pytest.raises(ValueError, match="drop_below"):
        ensemble_weights({"a": A, "b": B}, labels=LABELS, drop_below=1.5)
    with pytest.raises(ValueError, match="pass labels="):
        ensemble_weights({"a": A, "b": B}, drop_below=0.05)
