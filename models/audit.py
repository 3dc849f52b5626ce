"""Label audit: suspected mislabels, out-of-domain images and missing labels, in one ranking.

:func:`find_issues` takes out-of-sample class probabilities (the ensemble of
:mod:`models.ensemble`), the recorded labels and embeddings, and returns one row per image:

- ``label_quality``: cleanlab's ``get_label_quality_scores`` (self-confidence by default: the
  probability of the recorded label; low = suspect); NaN for null labels.
- ``is_label_issue``: cleanlab's ``filter.find_label_issues`` on the labelled rows, i.e.
  confident learning (Northcutt, Jiang and Chuang, 2021, "Confident Learning: Estimating
  Uncertainty in Dataset Labels", JAIR 70): the confident joint estimates how many images of
  each recorded class really belong to each other class, and the least likely ones are pruned.
- ``suggested_region`` / ``suggested_probability``: the argmax of the probabilities.
- ``ood_score``: how far an image lies from the in-domain data, in [0, 1), **higher = more out
  of domain**. It is ``1 - s`` with ``s`` cleanlab's feature-based ``OutOfDistribution`` score
  (Kuan and Mueller, 2022, "Back to the Basics: Revisiting Out-of-Distribution Detection
  Baselines"): ``s = exp(-d / median_d)``, ``d`` the mean distance to the ``k`` nearest
  neighbours in a reference set and ``median_d`` its median over the reference rows (each
  scored without itself). So ``ood_score = 1 - exp(-d / median_d)``: a typical in-domain image
  scores about 0.63, one whose neighbours are twice as far 0.86. The reference set is the
  labelled images that confident learning keeps (no label issue): out-of-domain images often
  come in look-alike batches (blank exposures, scanned forms), and with them in the reference
  their own look-alikes would vouch for them. Distances are cosine geometry (rows scaled to
  unit length, as cleanlab does for D > 3) in the reference's top ``ood_dim`` principal axes,
  with an exact search in torch: cleanlab's scikit-learn search took 41 s for 50,000 queries x
  10,000 references x 512 features here. The reference is a seeded, class-stratified
  subsample of ``ood_reference_size`` rows.
- ``issue``: ``"out_of_domain"`` (``ood_score`` above the threshold, whatever the label),
  else ``"mislabel"`` (cleanlab flags the recorded label), else ``"missing_label"`` (null
  label: it needs the suggested region), else None.
- ``suspicion`` and ``rank``: one ranking, most suspect first. Tiers first, then a score
  within the tier: out-of-domain images by descending ``ood_score``; then mislabels by
  ascending ``label_quality``; then missing labels by descending ``suggested_probability`` (the
  confident suggestions first, so a reviewer can confirm them quickly); then the unflagged rows
  by ascending ``label_quality``. ``suspicion = tier + within-tier score`` with tiers 3, 2, 1, 0,
  so sorting by ``suspicion`` descending gives ``rank`` 1, 2, ...

The OOD threshold is ``ood_threshold`` when given, else a robust z-score on the reference
rows: with ``r = d / median_d`` (so ``ood_score = 1 - exp(-r)``), an image is out of domain when
``r > 1 + ood_z * 1.4826 * MAD(r_reference)``. In high dimensions neighbour distances
concentrate (on the benchmark's embeddings out-of-domain images lie only 1.1-1.3 times further
than typical, yet rank with AUROC 0.999), so a fixed ratio would not carry over between
backbones; the z-score does. The threshold used is in ``df.attrs["ood_threshold"]``.

Run the tests with::

    python -m pytest tests/models/test_audit.py -q
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from models.heads import check_embeddings, check_labels, check_probabilities, torch_threads

__all__ = [
    "FILTER_BY",
    "ISSUE_KINDS",
    "QUALITY_METHODS",
    "combine_embeddings",
    "find_issues",
    "flag_fraction",
    "knn_distances",
]

ISSUE_KINDS: tuple[str, ...] = ("out_of_domain", "mislabel", "missing_label")
_TIER = {"out_of_domain": 3, "mislabel": 2, "missing_label": 1, None: 0}

# cleanlab.filter.find_label_issues(filter_by=...) options.
FILTER_BY: dict[str, str] = {
    "prune_by_noise_rate": "prune_by_noise_rate",
    "prune_by_class": "prune_by_class",
    "both": "both",
    "confident_learning": "confident_learning",
    "predicted_neq_given": "predicted_neq_given",
}
# cleanlab.rank.get_label_quality_scores(method=...) options.
QUALITY_METHODS: dict[str, str] = {
    "self_confidence": "self_confidence",
    "normalized_margin": "normalized_margin",
    "confidence_weighted_entropy": "confidence_weighted_entropy",
}

COLUMNS: tuple[str, ...] = (
    "label", "label_quality", "is_label_issue", "suggested_region", "suggested_probability",
    "ood_score", "is_out_of_domain", "out_of_fold", "issue", "suspicion", "rank",
)


def _lookup(table: Mapping[str, str], value: object, name: str) -> str:
    if not isinstance(value, str) or value not in table:
        raise ValueError(f"unknown {name}={value!r}; choose one of {sorted(table)}")
    return table[value]


def combine_embeddings(embeddings_by_method: Mapping[str, np.ndarray]) -> np.ndarray:
    """L2-normalize each method's embeddings and concatenate them, for the OOD neighbour search.

    The cosine similarity of two concatenated rows is the mean of the methods' cosine
    similarities, so the OOD score then listens to every backbone equally.

    Args:
        embeddings_by_method: {method: Shape: (N, D_m)}, rows aligned.

    Returns:
        Shape: (N, sum D_m), float32.
    """
    if not isinstance(embeddings_by_method, Mapping) or not embeddings_by_method:
        raise ValueError("embeddings_by_method must be a non-empty mapping {method: (N, D) array}")
    parts = []
    for name, x in embeddings_by_method.items():
        x = check_embeddings(x, f"embeddings_by_method[{name!r}]")
        if parts and x.shape[0] != parts[0].shape[0]:
            raise ValueError(f"embeddings_by_method[{name!r}] has {x.shape[0]} rows, the first method "
                             f"{parts[0].shape[0]}; align every method to the same images")
        parts.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def knn_distances(queries: np.ndarray, reference: np.ndarray, *, k: int = 10,
                  exclude: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """Mean Euclidean distance of each query row to its ``k`` nearest reference rows (exact search).

    Args:
        queries: Shape: (Q, D).
        reference: Shape: (R, D).
        k: Neighbours (capped at the reference size, minus one where a row is excluded).
        exclude: Shape: (Q,), index into ``reference`` of a row to skip for each query (the
            query itself when it belongs to the reference), -1 for none.
        chunk: Query rows per distance block (bounds memory at ``chunk * R`` floats).

    Returns:
        Shape: (Q,), float64.
    """
    q = torch.from_numpy(check_embeddings(queries, "queries"))
    r = torch.from_numpy(check_embeddings(reference, "reference"))
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features, reference {r.shape[1]}")
    kk = max(1, min(k, r.shape[0] - (1 if exclude is not None else 0)))
    r_sq = (r * r).sum(dim=1)  # (R,)
    out = np.empty(q.shape[0], dtype=np.float64)
    ex = None if exclude is None else torch.from_numpy(np.asarray(exclude, dtype=np.int64))
    with torch.no_grad():
        for i in range(0, q.shape[0], chunk):
            qb = q[i:i + chunk]
            # Negative squared distance up to the query's own |q|^2, which topk does not need.
            score = torch.addmm(r_sq, qb, r.T, beta=-1.0, alpha=2.0)  # (chunk, R)
            if ex is not None:
                e = ex[i:i + chunk]
                rows = torch.nonzero(e >= 0).squeeze(1)
                score[rows, e[rows]] = -torch.inf
            top = score.topk(kk, dim=1, sorted=False).values  # (chunk, k)
            d2 = ((qb * qb).sum(dim=1, keepdim=True) - top).double().clamp_(min=0.0)
            out[i:i + chunk] = d2.sqrt_().mean(dim=1).numpy()
    return out


def _reference_rows(labels: np.ndarray, candidates: np.ndarray, size: int | None, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Class-stratified subsample of ``candidates``; every class keeps at least ``3 k`` rows where it has them."""
    if size is None or candidates.size <= size:
        return candidates
    keep = []
    share = size / candidates.size
    for c in np.unique(labels[candidates]):
        rows = candidates[labels[candidates] == c]
        m = min(rows.size, max(int(round(share * rows.size)), 3 * k))
        keep.append(rng.choice(rows, size=m, replace=False))
    return np.sort(np.concatenate(keep))


def _ood_features(emb: np.ndarray, reference: np.ndarray, dim: int | None) -> np.ndarray:
    """Unit-length rows, projected on the reference's top ``dim`` principal axes when D > dim.

    On unit vectors the Euclidean distance is ``sqrt(2 - 2 cos)``: the neighbours are the
    cosine neighbours. The projection keeps the directions in which the in-domain data varies
    and cuts the search cost by D / dim.
    """
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if dim is None or x.shape[1] <= dim:
        return np.ascontiguousarray(x, dtype=np.float32)
    ref = torch.from_numpy(x[reference])
    mean = ref.mean(dim=0)
    centred = ref - mean
    cov = (centred.T @ centred).double()  # (D, D)
    _, vecs = torch.linalg.eigh(cov)
    axes = vecs[:, -dim:].to(torch.float32)  # (D, dim), top principal axes
    with torch.no_grad():
        proj = (torch.from_numpy(x) - mean) @ axes  # (N, dim)
    return proj.numpy()


def _ood_scores(emb: np.ndarray, reference: np.ndarray, k: int, dim: int | None) -> np.ndarray:
    """``1 - cleanlab OOD score`` of every row against the reference rows (see module docstring)."""
    from cleanlab.internal.outlier import transform_distances_to_scores

    n = emb.shape[0]
    feats = _ood_features(emb, reference, dim)
    pos = np.full(n, -1, dtype=np.int64)
    pos[reference] = np.arange(reference.size)
    dist = knn_distances(feats, feats[reference], k=k, exclude=pos)
    scale = float(max(np.median(dist[reference]), 100 * np.finfo(np.float64).eps))
    return 1.0 - transform_distances_to_scores(dist, 1, scale)


def find_issues(probs: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, *,
                sop_instance_uids: Sequence[str] | None = None,
                out_of_fold: np.ndarray | None = None,
                filter_by: str = "prune_by_noise_rate",
                quality_method: str = "self_confidence",
                ood_threshold: float | None = None,
                ood_z: float = 4.0,
                ood_k: int = 10,
                ood_reference_size: int | None = 5_000,
                ood_dim: int | None = 128,
                seed: int = 0,
                threads: int | None = 1) -> pd.DataFrame:
    """Score every image's recorded label, domain and (for null labels) suggested region.

    Args:
        probs: Shape: (N, K), out-of-sample class probabilities (rows sum to 1).
        labels: Shape: (N,), recorded region index, -1 = null.
        embeddings: Shape: (N, D), features for the OOD score; for several methods pass
            :func:`combine_embeddings`.
        sop_instance_uids: N identifiers; added as column ``sop_instance_uid`` when given.
        out_of_fold: Shape: (N,) bool from :class:`models.heads.OOFResult`; rows marked False
            (in-sample probabilities) are kept in the column ``out_of_fold`` so a reviewer can
            discount them. Default: all True.
        filter_by: cleanlab ``find_label_issues`` method, one of ``FILTER_BY``.
        quality_method: cleanlab ``get_label_quality_scores`` method, one of ``QUALITY_METHODS``.
        ood_threshold: Fixed ``ood_score`` above which an image is out of domain, in (0, 1).
        ood_z: Used when ``ood_threshold`` is None: robust z-score of the neighbour distance
            above which an image is out of domain (see the module docstring).
        ood_k: Neighbours of the OOD score.
        ood_reference_size: Reference rows for the OOD search (None = all clean labelled rows);
            cost grows with N times this.
        ood_dim: Principal axes of the reference kept for the search (None = all features).
        seed: Reference subsample.
        threads: torch CPU threads for the neighbour search (see :func:`models.heads.torch_threads`).

    Returns:
        One row per image, in input order, columns ``COLUMNS`` (plus ``sop_instance_uid``
        first when given): see the module docstring. ``rank`` is 1 for the most suspect image.

    Raises:
        ValueError: Mismatched lengths, probabilities that are not probabilities, bad options.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p = check_probabilities(probs)
    n, k = p.shape
    y = check_labels(labels, n, k)
    emb = check_embeddings(embeddings)
    if emb.shape[0] != n:
        raise ValueError(f"embeddings has {emb.shape[0]} rows but probs has {n}; pass the same images in the same order")
    uids = None
    if sop_instance_uids is not None:
        uids = [str(u) for u in sop_instance_uids]
        if len(uids) != n:
            raise ValueError(f"sop_instance_uids has {len(uids)} entries for {n} images")
    oof = np.ones(n, dtype=bool) if out_of_fold is None else np.asarray(out_of_fold, dtype=bool)
    if oof.shape != (n,):
        raise ValueError(f"out_of_fold must have Shape: ({n},), got {oof.shape}")
    filter_by = _lookup(FILTER_BY, filter_by, "filter_by")
    quality_method = _lookup(QUALITY_METHODS, quality_method, "quality_method")
    if ood_threshold is not None and (isinstance(ood_threshold, bool) or not isinstance(ood_threshold, (int, float))
                                      or not 0 < ood_threshold < 1):
        raise ValueError(f"ood_threshold must lie in (0, 1) (ood_score is in [0, 1)), got {ood_threshold!r}")
    if isinstance(ood_z, bool) or not isinstance(ood_z, (int, float)) or not math.isfinite(ood_z) or ood_z <= 0:
        raise ValueError(f"ood_z must be a positive number, e.g. 4.0; got {ood_z!r}")
    if isinstance(ood_k, bool) or not isinstance(ood_k, (int, np.integer)) or ood_k < 1:
        raise ValueError(f"ood_k must be a positive integer, e.g. 10; got {ood_k!r}")
    if ood_reference_size is not None and (isinstance(ood_reference_size, bool)
                                           or not isinstance(ood_reference_size, (int, np.integer))
                                           or ood_reference_size < 2):
        raise ValueError(f"ood_reference_size must be an integer >= 2 or None (all rows), got {ood_reference_size!r}")
    if ood_dim is not None and (isinstance(ood_dim, bool) or not isinstance(ood_dim, (int, np.integer)) or ood_dim < 1):
        raise ValueError(f"ood_dim must be a positive integer or None (no projection), got {ood_dim!r}")

    lab = np.flatnonzero(y >= 0)
    quality = np.full(n, np.nan)
    issue_mask = np.zeros(n, dtype=bool)
    if lab.size:
        pl, yl = p[lab], y[lab]
        quality[lab] = get_label_quality_scores(yl, pl, method=quality_method)
        if np.unique(yl).size >= 2:
            issue_mask[lab] = find_label_issues(yl, pl, filter_by=filter_by, n_jobs=1, verbose=False)
    suggested = p.argmax(axis=1)
    suggested_p = p[np.arange(n), suggested]

    clean = lab[~issue_mask[lab]]
    if clean.size < 2:  # nothing trustworthy to compare with: every row is its own reference
        clean = np.arange(n)
    reference = _reference_rows(y, clean, ood_reference_size, int(ood_k), np.random.default_rng(seed))
    with torch_threads(threads):
        ood = _ood_scores(emb, reference, int(ood_k), ood_dim)
    if ood_threshold is not None:
        threshold = float(ood_threshold)
    else:
        ratio = -np.log1p(-ood[reference])  # d / median_d of the reference rows; median 1
        spread = 1.4826 * float(np.median(np.abs(ratio - np.median(ratio))))
        threshold = 1.0 - math.exp(-(float(np.median(ratio)) + float(ood_z) * max(spread, 1e-6)))
    is_ood = ood > threshold

    issue = np.full(n, None, dtype=object)
    issue[(y < 0)] = "missing_label"
    issue[issue_mask] = "mislabel"
    issue[is_ood] = "out_of_domain"
    tier = np.array([_TIER[i] for i in issue], dtype=np.float64)
    within = np.where(issue == "out_of_domain", ood,
                      np.where(issue == "missing_label", suggested_p, 1.0 - np.nan_to_num(quality, nan=0.0)))
    suspicion = tier + np.clip(within, 0.0, 1.0) * 0.999
    order = np.lexsort((np.arange(n), -suspicion))  # ties keep input order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)

    df = pd.DataFrame({
        "label": y,
        "label_quality": quality,
        "is_label_issue": issue_mask,
        "suggested_region": suggested.astype(np.int64),
        "suggested_probability": suggested_p,
        "ood_score": ood,
        "is_out_of_domain": is_ood,
        "out_of_fold": oof,
        "issue": pd.Series(issue, dtype=object),
        "suspicion": suspicion,
        "rank": rank,
    })
    if uids is not None:
        df.insert(0, "sop_instance_uid", uids)
    df.attrs["ood_threshold"] = threshold
    return df


def flag_fraction(issues: pd.DataFrame, *, kinds: Sequence[str] = ISSUE_KINDS) -> float:
    """Share of images flagged with one of ``kinds`` (the report's asset check bounds this).

    Args:
        issues: The frame from :func:`find_issues` (column ``issue``).
        kinds: Issue kinds that count, e.g. ``("mislabel",)``.

    Returns:
        A number in [0, 1]; 0 for an empty frame.
    """
    if not isinstance(issues, pd.DataFrame) or "issue" not in issues.columns:
        raise ValueError("issues must be the DataFrame returned by find_issues (it has an 'issue' column)")
    unknown = set(kinds) - set(ISSUE_KINDS)
    if unknown:
        raise ValueError(f"unknown issue kinds {sorted(unknown)}; choose from {list(ISSUE_KINDS)}")
    if len(issues) == 0:
        return 0.0
    return float(issues["issue"].isin(list(kinds)).mean())
