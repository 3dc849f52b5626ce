from __future__ import annotations

import numpy as np
import pytest

from radaudit.models.probe import knn_accuracy, linear_probe_accuracy, plot_loss_curve, quick_probe_accuracy


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.eye(3, 8) * 10
    return centres[y] + rng.normal(size=(n, 8)), y


def test_separable_clusters_are_perfect() -> None:
    tx, ty = clusters(60, 0)
    vx, vy = clusters(30, 1)
    assert knn_accuracy(tx, ty, vx, vy, k=5) == 1.0
    assert linear_probe_accuracy(tx, ty, vx, vy) == 1.0
    assert quick_probe_accuracy(tx, ty, vx, vy) == 1.0


def test_random_labels_are_near_chance() -> None:
    rng = np.random.default_rng(2)
    tx, vx = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    ty, vy = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert knn_accuracy(tx, ty, vx, vy) < 0.5


def test_null_labels_are_left_out() -> None:
    tx, ty = clusters(60, 0)
    vx, vy = clusters(30, 1)
    ty_null, vy_null = ty.copy(), vy.copy()
    ty_null[:10], vy_null[:10] = -1, -1
    # wrong features on the null rows must not matter
    vx_bad = vx.copy()
    vx_bad[:10] = -vx_bad[:10]
    assert knn_accuracy(tx, ty_null, vx_bad, vy_null, k=5) == 1.0


def test_knn_matches_a_hand_written_reference() -> None:
    rng = np.random.default_rng(3)
    tx, vx = rng.normal(size=(50, 6)), rng.normal(size=(20, 6))
    ty, vy = rng.integers(0, 4, 50), rng.integers(0, 4, 20)
    tn = tx / np.linalg.norm(tx, axis=1, keepdims=True)
    vn = vx / np.linalg.norm(vx, axis=1, keepdims=True)
    sim = vn @ tn.T  # (20, 50)
    right = 0
    for i in range(20):
        top = np.argsort(-sim[i])[:7]
        votes = np.zeros(4)
        for j in top:
            votes[ty[j]] += np.exp(sim[i, j] / 0.07)
        right += int(votes.argmax() == vy[i])
    assert knn_accuracy(tx, ty, vx, vy, k=7) == right / 20


def test_quick_probe_tracks_the_converged_probe() -> None:
    """Overlapping classes (accuracy well below 1): a bounded L-BFGS budget lands near scikit-learn's optimum."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 32))
    ty, vy = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    tx, vx = centres[ty] + 2.5 * rng.normal(size=(400, 32)), centres[vy] + 2.5 * rng.normal(size=(400, 32))
    reference = linear_probe_accuracy(tx, ty, vx, vy)
    assert 0.4 < reference < 0.95
    assert abs(quick_probe_accuracy(tx, ty, vx, vy, steps=100) - reference) <= 0.02
    assert quick_probe_accuracy(tx, np.zeros(400, int), vx, vy) == float((vy == 0).mean())  # one class
    with pytest.raises(ValueError, match="steps"):
        quick_probe_accuracy(tx, ty, vx, vy, steps=0)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((4, 2)), np.zeros(3, int), np.zeros((4, 2)), np.zeros(4, int)), "one entry per image"),
    ((np.zeros((4, 2)), np.zeros(4, int), np.zeros((4, 3)), np.zeros(4, int)), "different widths"),
    ((np.zeros((4, 2)), -np.ones(4, int), np.zeros((4, 2)), np.zeros(4, int)), "no non-null label"),
    ((np.zeros((4, 2)), np.full(4, 0.5), np.zeros((4, 2)), np.zeros(4, int)), "integer"),
    ((np.full((4, 2), np.nan), np.zeros(4, int), np.zeros((4, 2)), np.zeros(4, int)), "NaN"),
])
def test_validation(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        knn_accuracy(*args)


@pytest.mark.parametrize("history", [[3.2, 2.5, 2.1, 2.0], [1.0], [], [2.0, float("nan"), 1.0]])
def test_loss_curve_png(history: list[float]) -> None:
    png = plot_loss_curve(history)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
