"""Label audit: suspected mislabels, out-of-domain images and missing labels, in one ranking.

:func:`find_issues` takes out-of-sample class probabilities (the ensemble of
:mod:`radaudit.models.ensemble`, and optionally each member's), the recorded labels, embeddings, and the
header and pixel facts of :mod:`radaudit.models.ood`, and returns one row per image:

- ``ood_score`` / ``is_out_of_domain`` / ``ood_reason``: :func:`radaudit.models.ood.combine_evidence`
  over the header (modality, SOP class, colour), the pixels (blank, few grey levels, text-like)
  and the embeddings (class-conditional Mahalanobis distance to *trusted* images: labelled,
  not suspected by cleanlab, no header or pixel evidence). ``ood_score`` > 0.5 (or
  ``ood_threshold``) is out of domain. Look-alike batches cannot vouch for themselves: nothing
  here asks an image's neighbours among all images.
- ``label_quality``: cleanlab's ``get_label_quality_scores`` (self-confidence by default: the
  probability of the recorded label; low = suspect); NaN for null labels and out-of-domain images.
- ``is_label_issue``: cleanlab's ``filter.find_label_issues`` on the labelled rows without
  header or pixel evidence of being out of domain (Northcutt, Jiang and Chuang, 2021,
  "Confident Learning", JAIR 70). It only decides which rows are *trusted* references of the
  embedding evidence; it does not decide the mislabel flags.
- ``issue == "mislabel"``: the list is a *prefix of the label-quality order*: of the labelled
  in-domain images (copies under another patient are reported as such), the ``n`` with the
  lowest ``label_quality``, where ``n`` is an estimate of how many labels are wrong
  (:func:`estimate_wrong_labels`), at most ``max_mislabel_fraction`` of them. The list therefore ranks
  exactly as the plain self-confidence order of the probabilities; earlier rules that dropped
  rows from it (a 0.5 floor on the suggestion's probability, cleanlab's filter, a vote of the
  ensemble's members) cost precision@k of the wrong labels on held-out seeds and are gone: a
  row whose suggestion is uncertain is still flagged, and shows its two most likely regions.
- ``members_agree``: share of the ensemble's members whose own most likely region is the
  ensemble's suggestion (NaN without members): shown to reviewers, never a filter.
- ``suggested_region`` / ``suggested_probability``: the argmax of the probabilities;
  ``second_region`` / ``second_probability``: the next most likely region.
- ``duplicate_of``: the SOP Instance UID of the image this one is a copy of (``duplicates``,
  from :mod:`radaudit.pacs.duplicates`), else None.
- ``issue``: ``"out_of_domain"``; else ``"near_duplicate"`` for a copy under another patient;
  else ``"mislabel"``; else ``"missing_label"`` (null label: it needs the suggested region);
  else ``"near_duplicate"`` for a copy under the same patient; else None.
- ``suspicion`` and ``rank``: one ranking, most suspect first. Tiers first, then a score
  within the tier: copies under another patient (an integrity error) by descending
  similarity; out-of-domain images by descending ``ood_score``; then mislabels by ascending
  ``label_quality``; then missing labels by descending ``suggested_probability``; then copies
  under the same patient by descending similarity; then the unflagged rows by ascending
  ``label_quality``.

``df.attrs`` carries ``ood_threshold``, ``cleanlab_issues`` (rows cleanlab's filter flags),
``estimated_wrong_labels`` (the flag count before the cap), ``heads_agreement`` (share of
labelled in-domain images whose out-of-fold prediction equals the recorded label) and ``warnings``: when that agreement is below
``min_agreement`` the features are too weak to audit, and every caller (run log, report header,
Dagster metadata) shows the warning with the figure.

Run the tests with::

    python -m pytest tests/models/test_audit.py -q
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from radaudit.models.validation import check_embeddings, check_labels, check_positive_number, check_probabilities

__all__ = [
    "FILTER_BY",
    "FLAG_COUNTS",
    "ISSUE_KINDS",
    "QUALITY_METHODS",
    "CONFUSABLE_SHARE",
    "combine_embeddings",
    "estimate_wrong_labels",
    "find_issues",
    "flag_fraction",
]

ISSUE_KINDS: tuple[str, ...] = ("out_of_domain", "mislabel", "missing_label", "near_duplicate")
# Whole-number tiers: the score within a tier stays in [0, 0.999], so tiers never overlap.
_TIER = {"out_of_domain": 4, "mislabel": 3, "missing_label": 2, "near_duplicate": 1, None: 0}
_CROSS_PATIENT_TIER = 5  # a copy under another patient outranks everything: an integrity error

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

# How many labels are wrong, hence how long the mislabel list is: a mixture-proportion estimate
# (see estimate_wrong_labels), or cleanlab.count.num_label_issues(estimation_method=...).
FLAG_COUNTS: dict[str, str] = {
    "mixture_proportion": "mixture_proportion",
    "off_diagonal": "off_diagonal",
    "off_diagonal_calibrated": "off_diagonal_calibrated",
}
# The noise model of the mixture-proportion count: a wrong label is a region the image resembles
# (drawn in proportion to the heads' probabilities) this often, else any other region.
CONFUSABLE_SHARE = 0.25

COLUMNS: tuple[str, ...] = (
    "label", "label_quality", "is_label_issue", "suggested_region", "suggested_probability",
    "second_region", "second_probability", "members_agree", "ood_score", "is_out_of_domain", "ood_reason", "out_of_fold", "duplicate_of", "issue", "suspicion", "rank",
)
DUPLICATE_COLUMNS: tuple[str, ...] = ("duplicate_of", "similarity", "other_patient")


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


def _members_agree(suggested: np.ndarray, member_probs: Mapping[str, np.ndarray] | None, n: int,
                   k: int) -> np.ndarray:
    """Per row, the share of members whose own argmax is the ensemble's suggestion (NaN without members)."""
    if not member_probs:
        return np.full(n, np.nan)
    votes = np.zeros(n, dtype=np.int64)
    for name, p in member_probs.items():
        p = check_probabilities(p, n, name=f"member_probs[{name!r}]")
        if p.shape[1] != k:
            raise ValueError(f"member_probs[{name!r}] has {p.shape[1]} classes, probs {k}")
        votes += p.argmax(axis=1) == suggested
    return votes / len(member_probs)


def estimate_wrong_labels(probs: np.ndarray, labels: np.ndarray, *, method: str = "mixture_proportion",
                          confusable_share: float = CONFUSABLE_SHARE) -> int:
    """How many of ``labels`` are wrong, from out-of-sample probabilities alone.

    ``mixture_proportion``: the label qualities ``q_i = p_i[y_i]`` are a mixture of right labels'
    and wrong labels' qualities, and the wrong ones' distribution can be sampled on every row:
    the probability the heads give a region the image was *not* recorded as is what a wrong
    label of that region would score (out of fold, the heads never saw it as a label). The share
    of wrong labels is then ``min_t F_obs(t) / F_wrong(t)`` over low cuts ``t`` (Blanchard, Lee
    and Scott, 2010; Scott, 2015, "A Rate of Convergence for Mixture Proportion Estimation"):
    right labels rarely score that low, wrong ones do. Weak heads widen both distributions alike,
    so the estimate stays near the truth where confident learning's count grows (CPU demos of
    seed 13, and of seeds 30 and 32 on multi-device exports: 82 for 71, 72 for 66 and 71 for 68
    wrong labels, against cleanlab's 101, 123 and 103). A wrong label is drawn among the regions
    the heads find likely ``confusable_share`` of the time, else uniformly (0: 67, 58, 56; 0.5:
    101, 95, 95 on the same three).

    The estimate is an upper bound (right labels below a cut count as wrong), and a cut needs 20
    label qualities below it, so even clean labels get a count of about 20 (see
    :func:`_mixture_proportion`). Where no cut has that many (under 40 labelled images), the
    count is cleanlab's ``off_diagonal`` instead.

    ``off_diagonal``, ``off_diagonal_calibrated``: cleanlab's ``count.num_label_issues``.

    Args:
        probs: Shape: (N, K), out-of-sample probabilities of the rows to count over.
        labels: Shape: (N,), their recorded labels (all >= 0).
        method: One of :data:`FLAG_COUNTS`.
        confusable_share: The mixture-proportion noise model, in [0, 1].

    Returns:
        An integer in [0, N]; 0 when fewer than two classes are recorded.

    Raises:
        ValueError: For probabilities and labels of different lengths, a label outside the
            columns, or an unknown ``method``.
    """
    method = _lookup(FLAG_COUNTS, method, "flag_count")
    if not 0.0 <= confusable_share <= 1.0:
        raise ValueError(f"confusable_share must be in [0, 1], e.g. {CONFUSABLE_SHARE}; got {confusable_share!r}")
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        return 0
    p = check_probabilities(probs, y.size, name="probs")
    if y.ndim != 1 or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]}), one per row of probs "
                         "(leave out the rows without a label)")
    if np.unique(y).size < 2:
        return 0
    if method == "mixture_proportion":
        share = _mixture_proportion(p, y, confusable_share)
        if share is not None:
            return int(round(share * y.size))
        method = "off_diagonal"
    from cleanlab.count import num_label_issues

    # cleanlab wants every class of the columns recorded at least once; count over the classes present.
    present = np.unique(y)
    sub = p[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    return int(min(y.size, num_label_issues(np.searchsorted(present, y), sub, estimation_method=method)))


def _mixture_proportion(p: np.ndarray, y: np.ndarray, confusable_share: float, *, min_rows: int = 20,
                        cuts: int = 50) -> float | None:
    """``min_t F_obs(t) / F_wrong(t)`` (see :func:`estimate_wrong_labels`), capped at 1; None
    when no cut qualifies.

    Only cuts with at least ``min_rows`` label qualities below them count: at the very lowest
    cuts the ratio is the noise of a handful of images (on a demo-sized export the 1% cut, 7
    images, gave 0.06 for a true share of 0.086; cuts of 20 images and more, 0.09-0.11). Hence
    a floor of about ``min_rows / N`` on clean labels.
    """
    n, k = p.shape
    rows = np.arange(n)
    quality = p[rows, y]
    alt = p.copy()
    alt[rows, y] = 0.0
    uniform = np.full((n, k), 1.0 / (k - 1))
    uniform[rows, y] = 0.0
    likely = alt / np.maximum(alt.sum(axis=1, keepdims=True), 1e-12)
    weight = (1.0 - confusable_share) * uniform + confusable_share * likely  # rows sum to 1
    order = np.argsort(alt, axis=None, kind="stable")
    alt_sorted = alt.ravel()[order]
    weight_cum = np.cumsum(weight.ravel()[order]) / n  # F_wrong at each sorted alternative's value
    lowest = min(0.5, max(0.01, min_rows / n))
    best: float | None = None
    for t in np.unique(np.quantile(quality, np.linspace(lowest, 0.5, cuts))):
        at = np.searchsorted(alt_sorted, t, side="right")
        f_wrong = float(weight_cum[at - 1]) if at else 0.0
        below = int((quality <= t).sum())
        if below >= min_rows and f_wrong > 0.0:
            best = min(1.0 if best is None else best, below / n / f_wrong)
    return best


def find_issues(probs: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, *,
                sop_instance_uids: Sequence[str] | None = None,
                out_of_fold: np.ndarray | None = None,
                member_probs: Mapping[str, np.ndarray] | None = None,
                header_reasons: Sequence[str] | None = None,
                pixel_feats: pd.DataFrame | None = None,
                filter_by: str = "prune_by_noise_rate",
                quality_method: str = "self_confidence",
                ood_threshold: float | None = None,
                ood_z: float = 6.0,
                pixel_z: float = 7.0,
                ood_dim: int = 32,
                max_mislabel_fraction: float = 0.25,
                flag_count: str = "mixture_proportion",
                min_agreement: float = 0.75,
                duplicates: pd.DataFrame | None = None,
                seed: int = 0) -> pd.DataFrame:
    """Score every image's recorded label, domain and (for null labels) suggested region.

    Args:
        probs: Shape: (N, K), out-of-sample class probabilities (rows sum to 1).
        labels: Shape: (N,), recorded region index, -1 = null.
        embeddings: Shape: (N, D), features for the OOD score; for several methods pass
            :func:`combine_embeddings`.
        sop_instance_uids: N identifiers; added as column ``sop_instance_uid`` when given.
        out_of_fold: Shape: (N,) bool from :class:`radaudit.models.heads.OOFResult`; rows marked False
            (in-sample probabilities) are kept in the column ``out_of_fold`` so a reviewer can
            discount them. Default: all True.
        member_probs: {method: Shape: (N, K)}, each ensemble member's own probabilities; the
            column ``members_agree`` says how many of them suggest the ensemble's region.
        header_reasons: N strings from :func:`radaudit.models.ood.header_evidence` ("" = none).
        pixel_feats: N rows of :func:`radaudit.models.ood.pixel_features` (columns ``PIXEL_COLUMNS``;
            without ``flatness`` the blank-exposure evidence is off).
        filter_by: cleanlab ``find_label_issues`` method, one of ``FILTER_BY``.
        quality_method: cleanlab ``get_label_quality_scores`` method, one of ``QUALITY_METHODS``.
        ood_threshold: ``ood_score`` above which an image is out of domain, in (0, 1); default 0.5
            (where a soft source's z equals its threshold).
        ood_z: Robust z-score of the embedding evidence that flags an image.
        pixel_z: The same for the pixel evidence (see :func:`radaudit.models.ood.combine_evidence`).
        ood_dim: Principal axes of the Mahalanobis evidence.
        max_mislabel_fraction: Most labelled images flagged ``mislabel``, in (0, 1): a guard
            against a count estimate gone wild on very weak features.
        flag_count: How the length of the mislabel list is estimated, one of :data:`FLAG_COUNTS`.
        min_agreement: Heads' agreement with the recorded labels below which the run warns that
            the features are too weak to audit.
        duplicates: N rows, columns ``DUPLICATE_COLUMNS``: the original's UID (None: no
            duplicate), the similarity in [0, 1] and whether the copy is under another patient
            (:func:`radaudit.pipelines.stages.load_near_duplicates`).
        seed: Fold split of the Mahalanobis reference.

    Returns:
        One row per image, in input order, columns ``COLUMNS`` (plus ``sop_instance_uid``
        first when given): see the module docstring. ``rank`` is 1 for the most suspect image.

    Raises:
        ValueError: Mismatched lengths, probabilities that are not probabilities, bad options.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from radaudit.models.ood import blank_ratio, combine_evidence, mahalanobis_evidence, pixel_evidence

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
    header = [""] * n if header_reasons is None else [str(h) for h in header_reasons]
    if len(header) != n:
        raise ValueError(f"header_reasons has {len(header)} entries for {n} images")
    if pixel_feats is not None and len(pixel_feats) != n:
        raise ValueError(f"pixel_feats has {len(pixel_feats)} rows for {n} images")
    dup_of, dup_sim, dup_other = _check_duplicates(duplicates, n)
    filter_by = _lookup(FILTER_BY, filter_by, "filter_by")
    quality_method = _lookup(QUALITY_METHODS, quality_method, "quality_method")
    threshold = 0.5 if ood_threshold is None else check_positive_number(ood_threshold, "ood_threshold", "0.5", 1.0)
    ood_z = check_positive_number(ood_z, "ood_z", "6.0")
    pixel_z = check_positive_number(pixel_z, "pixel_z", "7.0")
    max_mislabel_fraction = check_positive_number(max_mislabel_fraction, "max_mislabel_fraction", "0.25", 1.0)
    flag_count = _lookup(FLAG_COUNTS, flag_count, "flag_count")
    if isinstance(ood_dim, bool) or not isinstance(ood_dim, (int, np.integer)) or ood_dim < 1:
        raise ValueError(f"ood_dim must be a positive integer, e.g. 32; got {ood_dim!r}")
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    suggested, second = top2[:, 0], top2[:, min(1, k - 1)]
    suggested_p, second_p = p[np.arange(n), suggested], p[np.arange(n), second]

    # 1. Evidence that needs no label: the header, then the pixels against the rows the header clears.
    has_header = np.array([bool(h) for h in header])
    cleared = np.flatnonzero(~has_header)
    pixel_z_of_row, pixel_which = np.zeros(n), np.zeros(n, dtype=np.int64)
    if pixel_feats is not None and cleared.size >= 2:
        pixel_z_of_row, pixel_which = pixel_evidence(pixel_feats, cleared)
    flat = pixel_feats["flatness"].to_numpy(dtype=np.float64) \
        if pixel_feats is not None and "flatness" in pixel_feats else None
    early_ood = has_header | (pixel_z_of_row > pixel_z) | (blank_ratio(flat, n) > 1.0)

    # 2. Confident learning on the labelled rows that look in domain so far.
    lab = np.flatnonzero((y >= 0) & ~early_ood)
    quality = np.full(n, np.nan)
    issue_mask = np.zeros(n, dtype=bool)
    if lab.size:
        pl, yl = p[lab], y[lab]
        quality[lab] = get_label_quality_scores(yl, pl, method=quality_method)
        if np.unique(yl).size >= 2:
            issue_mask[lab] = find_label_issues(yl, pl, filter_by=filter_by, n_jobs=1, verbose=False)

    # 3. The embeddings, against the trusted rows' class means.
    trusted = lab[~issue_mask[lab]]
    emb_z = np.zeros(n)
    if trusted.size >= 8 and np.unique(y[trusted]).size >= 2:
        dist = mahalanobis_evidence(emb, y, trusted, dim=int(ood_dim), seed=seed)
        ref = dist[trusted]
        med = float(np.median(ref))
        mad = 1.4826 * float(np.median(np.abs(ref - med)))
        emb_z = np.maximum((dist - med) / max(mad, 1e-6 * max(med, 1.0)), 0.0)
    evidence = combine_evidence(header, pixel_z_of_row, pixel_which, emb_z, z_threshold=ood_z,
                                pixel_threshold=pixel_z, flat=flat)
    ood = evidence.score
    is_ood = ood > threshold
    quality[is_ood] = np.nan

    # 4. Mislabels: a prefix of the label-quality order, as long as the estimated count of wrong labels;
    # a row of it whose most likely region is its own label has nothing to suggest and is not flagged.
    is_copy = np.array([d is not None for d in dup_of], dtype=bool)
    labelled_in = np.flatnonzero((y >= 0) & ~is_ood)
    estimated = estimate_wrong_labels(p[labelled_in], y[labelled_in], method=flag_count)
    cap = int(math.floor(max_mislabel_fraction * labelled_in.size))
    # A copy under another patient is reported as such, outside the list.
    listed = labelled_in[~(is_copy & dup_other)[labelled_in]]
    listed = listed[np.argsort(quality[listed], kind="stable")][:min(estimated, cap)]
    mislabel = np.zeros(n, dtype=bool)
    mislabel[listed[suggested[listed] != y[listed]]] = True

    issue = np.full(n, None, dtype=object)
    issue[is_copy] = "near_duplicate"
    issue[(y < 0)] = "missing_label"
    issue[mislabel] = "mislabel"
    issue[is_copy & dup_other] = "near_duplicate"
    issue[is_ood] = "out_of_domain"
    tier = np.array([_TIER[i] for i in issue], dtype=np.float64)
    tier[(issue == "near_duplicate") & dup_other] = _CROSS_PATIENT_TIER
    within = np.where(issue == "out_of_domain", ood,
                      np.where(issue == "missing_label", suggested_p,
                               np.where(issue == "near_duplicate", np.nan_to_num(dup_sim, nan=0.0),
                                        1.0 - np.nan_to_num(quality, nan=0.0))))
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
        "second_region": second.astype(np.int64),
        "second_probability": second_p,
        "members_agree": _members_agree(suggested, member_probs, n, k),
        "ood_score": ood,
        "is_out_of_domain": is_ood,
        "ood_reason": [r if f else "" for r, f in zip(evidence.reason, is_ood)],
        "out_of_fold": oof,
        "duplicate_of": pd.Series(dup_of, dtype=object),
        "issue": pd.Series(issue, dtype=object),
        "suspicion": suspicion,
        "rank": rank,
    })
    if uids is not None:
        df.insert(0, "sop_instance_uid", uids)
    in_lab = (y >= 0) & ~is_ood
    agreement = float((suggested[in_lab] == y[in_lab]).mean()) if in_lab.any() else float("nan")
    warnings_: list[str] = []
    if in_lab.any() and agreement < min_agreement:
        warnings_.append(
            f"features too weak to audit: the heads' held-out predictions agree with only {agreement:.1%} of the "
            f"recorded labels (expected >= {min_agreement:.0%} where most labels are right); treat the mislabel "
            "flags as a worklist, not findings, and train the backbones longer or on a GPU")
    df.attrs.update(ood_threshold=threshold, heads_agreement=agreement, warnings=warnings_,
                    cleanlab_issues=int(issue_mask.sum()), estimated_wrong_labels=int(estimated))
    return df


def _check_duplicates(duplicates: pd.DataFrame | None, n: int) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    """``duplicates`` as (original UID or None, similarity, under another patient), or empty ones."""
    if duplicates is None:
        return [None] * n, np.zeros(n), np.zeros(n, dtype=bool)
    if not isinstance(duplicates, pd.DataFrame) or any(c not in duplicates.columns for c in DUPLICATE_COLUMNS):
        raise ValueError(f"duplicates must be a DataFrame with columns {list(DUPLICATE_COLUMNS)}")
    if len(duplicates) != n:
        raise ValueError(f"duplicates has {len(duplicates)} rows for {n} images")
    of = [str(d) if isinstance(d, str) and d else None for d in duplicates["duplicate_of"]]
    sim = pd.to_numeric(duplicates["similarity"], errors="coerce").to_numpy(dtype=float)
    other = duplicates["other_patient"].fillna(False).to_numpy(dtype=bool)
    return of, sim, other & np.array([d is not None for d in of], dtype=bool)


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
