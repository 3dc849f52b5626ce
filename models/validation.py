"""Input validation of the audit's arrays, in one place (after cleanlab's ``internal/validation.py``).

Every public function of :mod:`radaudit.models` that takes embeddings, labels, probabilities,
patient keys or a numeric option checks it here, so a caller gets the same clear ``ValueError``
(what is wrong and how to fix it) wherever the bad value enters. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["check_embeddings", "check_groups", "check_int", "check_labels", "check_non_negative",
           "check_positive_number", "check_probabilities", "check_share"]

PROB_ATOL = 1e-3


def check_embeddings(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return ``x`` as a float32 (N, D) array, or raise ValueError saying what to fix."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, Shape: (n_images, dim); got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; re-run the embedding step (a diverged backbone gives NaN)")
    return x


def check_labels(labels: np.ndarray, n: int, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as int64 (N,) with values in [-1, n_classes), or raise ValueError."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have one entry per image, Shape: ({n},); got shape {y.shape} "
                         "(are the labels aligned with the embedding/probability rows?)")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer region indices with -1 for a null label, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < -1).any():
        raise ValueError(f"{name} contains {int(y.min())}: use -1 for a null label and 0..K-1 for regions")
    if n_classes is not None and (y >= n_classes).any():
        raise ValueError(f"{name} contains {int(y.max())} but there are only {n_classes} classes; "
                         f"pass n_classes=len(vocabulary) or fix the label indices")
    return y


def check_probabilities(probs: np.ndarray, n: int | None = None, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as float64 (N, K) rows on the simplex, or raise ValueError."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D array of class probabilities, Shape: (n_images, n_classes >= 2); "
                         f"got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but there are {n} images; align the rows before calling")
    p = p.astype(np.float64)
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and non-negative (probabilities, not logits: apply softmax first)")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_ATOL)
    if bad.size:
        raise ValueError(f"{name} rows must sum to 1 (row {int(bad[0])} sums to {sums[bad[0]]:.4g}, "
                         f"{bad.size} rows off); pass probabilities, e.g. softmax(logits), not scores")
    return p / sums[:, None]


def check_groups(groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
    """Return integer group ids (N,); each None/NaN key becomes a group of its own."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = list(groups)
    if len(g) != n:
        raise ValueError(f"groups must have one patient key per image ({n}), got {len(g)}")
    ids: dict[object, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, key in enumerate(g):
        if key is None or (isinstance(key, float) and math.isnan(key)):
            out[i] = -1 - i  # its own group
        else:
            out[i] = ids.setdefault(key, len(ids))
    solo = out < 0
    out[solo] = len(ids) + np.arange(int(solo.sum()))
    return out


def check_int(value: object, name: str, low: int) -> int:
    """Return ``value`` as an int, or raise ValueError unless it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_non_negative(value: object, name: str) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive_number(value: object, name: str, example: str, upper: float | None = None) -> float:
    """Return ``value`` as a float, or raise ValueError (with ``example``) unless it is in (0, ``upper``)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            or (upper is not None and value >= upper)):
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be a number > 0{bound}, e.g. {example}; got {value!r}")
    return float(value)


def check_share(value: object, name: str, example: str) -> float:
    """Return ``value`` as a float, or raise ValueError (with ``example``) unless it is in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a share in (0, 1], e.g. {example}; got {value!r}")
    return float(value)
