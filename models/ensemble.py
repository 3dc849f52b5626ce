"""Combine the class probabilities of several methods' heads into one ensemble.

The ensemble is a weighted mean of probability vectors (a linear opinion pool); it stays on the
simplex, and averaging the out-of-fold probabilities of heads on differently pretrained
backbones reduces the variance of the confident-learning estimates (Northcutt et al., 2021,
use the same out-of-sample probabilities, whatever model produced them).

Weights (``weights=``):

- ``"equal"``: every method 1 / M.
- ``"accuracy"``: proportional to the method's accuracy on the labelled rows.
- ``"log_loss"``: proportional to ``exp(-mean log loss)`` on the labelled rows, i.e. the
  geometric mean of the probability it gives the recorded label.

Both weighted variants score the *recorded* labels, which contain the errors the audit looks
for; with out-of-fold probabilities they are still held-out scores, and every method suffers the
same noise, so the ranking of methods holds.

``drop_below``: a member whose out-of-fold accuracy on the labelled rows lies more than this
below the best member's gets weight 0 (needs labels): averaging in a clearly weaker member
pulls the ensemble below its best member, which is what an ensemble must not do.

Run the tests with::

    python -m pytest tests/models/test_ensemble.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from radaudit.models.validation import check_labels, check_probabilities

__all__ = ["WEIGHTINGS", "ensemble_probabilities", "ensemble_weights"]

_EPS = 1e-12


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float((p.argmax(axis=1) == y).mean())


def _log_loss_weight(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.exp(np.log(np.clip(p[np.arange(y.size), y], _EPS, 1.0)).mean()))


# Weighting name -> score of one method on the labelled rows (None: equal weights).
WEIGHTINGS: dict[str, Callable[[np.ndarray, np.ndarray], float] | None] = {
    "equal": None,
    "accuracy": _accuracy,
    "log_loss": _log_loss_weight,
}


def _validate(probs_by_method: Mapping[str, np.ndarray], weights: str,
              labels: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if not isinstance(probs_by_method, Mapping) or not probs_by_method:
        raise ValueError("probs_by_method must be a non-empty mapping {method name: probabilities (N, K)}")
    if not isinstance(weights, str) or weights not in WEIGHTINGS:
        raise ValueError(f"unknown weights={weights!r}; choose one of {sorted(WEIGHTINGS)}")
    checked: dict[str, np.ndarray] = {}
    shape = None
    for name, p in probs_by_method.items():
        p = check_probabilities(p, name=f"probs_by_method[{name!r}]")
        if shape is not None and p.shape != shape:
            raise ValueError(f"probs_by_method[{name!r}] has shape {p.shape} but the first method has {shape}; "
                             "every method must predict the same images (rows) and classes (columns)")
        shape = p.shape
        checked[name] = p
    assert shape is not None
    y = None
    if labels is not None:
        y = check_labels(labels, shape[0], shape[1])
    if WEIGHTINGS[weights] is not None:
        if y is None:
            raise ValueError(f"weights={weights!r} scores each method on the labelled rows: pass labels=")
        if not (y >= 0).any():
            raise ValueError(f"weights={weights!r} needs labelled rows but every label is -1; use weights='equal'")
    return checked, y


def ensemble_weights(probs_by_method: Mapping[str, np.ndarray], *, weights: str = "equal",
                     labels: np.ndarray | None = None, drop_below: float | None = None) -> dict[str, float]:
    """The weight of each method (they sum to 1); see the module docstring for the rules.

    Args:
        probs_by_method: {method: Shape: (N, K) probabilities}, rows aligned across methods.
        weights: One of ``WEIGHTINGS``.
        labels: Shape: (N,), recorded labels, -1 = null; required unless ``weights="equal"``
            and ``drop_below`` is None.
        drop_below: Drop members whose accuracy is more than this below the best one's.

    Returns:
        {method: weight}; dropped members have weight 0.
    """
    checked, y = _validate(probs_by_method, weights, labels)
    if drop_below is not None and (isinstance(drop_below, bool) or not isinstance(drop_below, (int, float))
                                   or not 0 <= drop_below < 1):
        raise ValueError(f"drop_below must be in [0, 1) (an accuracy gap, e.g. 0.05) or None, got {drop_below!r}")
    if drop_below is not None and (y is None or not (y >= 0).any()):
        raise ValueError("drop_below compares the members' accuracy on the labelled rows: pass labels=")
    score = WEIGHTINGS[weights]
    lab = y >= 0 if y is not None else None
    if score is None:
        raw = {m: 1.0 for m in checked}
    else:
        assert lab is not None
        raw = {m: max(score(p[lab], y[lab]), 0.0) for m, p in checked.items()}
    if drop_below is not None:
        assert lab is not None
        accuracy = {m: _accuracy(p[lab], y[lab]) for m, p in checked.items()}
        best = max(accuracy.values())
        raw = {m: (v if accuracy[m] >= best - drop_below else 0.0) for m, v in raw.items()}
    total = sum(raw.values())
    if total <= 0:  # every method scored 0 (e.g. accuracy 0): no basis to prefer one
        return {m: 1.0 / len(raw) for m in raw}
    return {m: v / total for m, v in raw.items()}


def ensemble_probabilities(probs_by_method: Mapping[str, np.ndarray], *, weights: str = "equal",
                           labels: np.ndarray | None = None, drop_below: float | None = None) -> np.ndarray:
    """Weighted mean of the methods' class probabilities.

    Args:
        probs_by_method: {method: Shape: (N, K) probabilities}, rows aligned across methods
            (out-of-fold probabilities from :func:`radaudit.models.heads.oof_probabilities`).
        weights: ``"equal"``, ``"accuracy"`` or ``"log_loss"``.
        labels: Shape: (N,), recorded labels (-1 = null); needed for the weighted variants.
        drop_below: See :func:`ensemble_weights`.

    Returns:
        Shape: (N, K), float64, rows sum to 1.

    Raises:
        ValueError: Unknown ``weights``, shapes that differ, rows that are not probabilities,
            missing labels for a weighted variant.
    """
    w = ensemble_weights(probs_by_method, weights=weights, labels=labels, drop_below=drop_below)
    out = None
    for name, p in probs_by_method.items():
        if w[name] == 0.0:
            continue
        term = w[name] * np.asarray(p, dtype=np.float64)
        out = term if out is None else out + term
    assert out is not None
    return out / out.sum(axis=1, keepdims=True)
