"""Scoring the audit against a synthetic export's ground truth (the truth file of
:func:`radaudit.pacs.synth.generate_export`): what ``radaudit demo`` and the benchmarks print."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radaudit.pacs.layout import ISSUES_PATH, PROB_DIR
from radaudit.pipelines.stages.data import TrainingSet, issue_inputs, load_training_set
from radaudit.pipelines.stages.store import load_embeddings, load_probabilities

__all__ = ["FALSE_FLAG_FACTOR", "FALSE_FLAG_SLACK", "LabelFractionScores", "OOD_FP_LIMIT", "aligned_probabilities",
           "copy_links", "device_table", "duplicate_groups", "duplicate_scores", "evaluate_against_truth",
           "evaluate_label_fractions", "evaluate_method", "evaluate_methods", "f1_score", "pair_scores",
           "precision_at_k", "read_truth", "report_order", "score_issues", "truth_labels", "truth_status"]

LabelFractionScores = dict[str, dict[float, float]]  # {method or "ensemble": {share of labels: accuracy}}

# The acceptance limits per acquisition device: at most 2% of a device's in-domain images reported
# out of domain, and a false-flag rate at most 1.5 times the export-wide rate plus one point.
OOD_FP_LIMIT = 0.02
FALSE_FLAG_FACTOR = 1.5
FALSE_FLAG_SLACK = 0.01


def read_truth(truth_path: str | os.PathLike[str]) -> pd.DataFrame:
    """A synthetic export's truth file (parquet, or CSV), indexed by ``sop_instance_uid``.

    Raises:
        ValueError: If it has no ``sop_instance_uid`` or ``true_region`` column.
    """
    path = Path(truth_path)
    truth = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"sop_instance_uid", "true_region"} - set(truth.columns)
    if missing:
        raise ValueError(f"{path} is not a synthetic export's truth file: no column {', '.join(sorted(missing))}")
    return truth.set_index("sop_instance_uid")


def truth_labels(ts: TrainingSet, truth: str | os.PathLike[str] | pd.DataFrame | None) -> np.ndarray | None:
    """True region per instance from a synthetic export's truth file, or the :func:`read_truth`
    frame already read (-1 for out-of-domain), or None without one."""
    if truth is None or (not isinstance(truth, pd.DataFrame) and not truth):
        return None
    frame = truth if isinstance(truth, pd.DataFrame) else read_truth(truth)
    region = pd.Series(ts.uids).map(frame["true_region"])
    lookup = {name: i for i, name in enumerate(ts.vocabulary)}
    return np.array([lookup.get(r, -1) if isinstance(r, str) else -1 for r in region], dtype=np.int64)


def truth_status(ts: TrainingSet, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``ts``, from a :func:`read_truth` frame: out of domain, and recorded label truly
    wrong (not null, the image in domain, not its true region). Shape: (N,) each."""
    is_ood = pd.Series(ts.uids).map(truth["is_ood"]).fillna(False).to_numpy(dtype=bool)
    return is_ood, (ts.labels >= 0) & ~is_ood & (ts.labels != truth_labels(ts, truth))


def evaluate_against_truth(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Score the audit against a synthetic export's ground truth.

    A label counts as truly wrong when the pipeline's recorded label (after mapping) is not null,
    the image is in domain, and the label differs from the true region: what the audit can see.

    Returns:
        The figures of :func:`score_issues`, with ``self_confidence_precision_at_k`` from
        ``probabilities/ensemble.npy`` when the data dir has it.
    """
    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    probs = aligned_probabilities(data_dir, "ensemble", ts.uids) if (data_dir / PROB_DIR / "ensemble.npy").exists() \
        else None
    return score_issues(pd.read_parquet(data_dir / ISSUES_PATH), ts, truth_path, probs=probs)


def aligned_probabilities(data_dir: str | os.PathLike[str], name: str, uids: Sequence[str]) -> np.ndarray:
    """``probabilities/<name>`` as float64, its rows in ``uids`` order.

    Raises:
        ValueError: If some UID has no row (the probabilities are older than the image cache).
    """
    probs, rows = load_probabilities(data_dir, name)
    where = pd.Series(np.arange(len(rows)), index=rows["sop_instance_uid"].to_numpy()).reindex(list(uids))
    if where.isna().any():
        raise ValueError(f"probabilities/{name} lacks {int(where.isna().sum())} cached images: re-materialize it")
    return np.asarray(probs, dtype=np.float64)[where.to_numpy(dtype=np.int64)]


def evaluate_method(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], method: str, *,
                    evidence: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """:func:`evaluate_against_truth` of one method's own audit (its probabilities and embeddings alone).

    Args:
        evidence: :func:`issue_inputs` for the cached images (computed when None).
        options: For :func:`radaudit.models.audit.find_issues`; nothing is written.
    """
    from radaudit.models.audit import find_issues

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    probs, rows = load_probabilities(data_dir, method)
    uids = rows["sop_instance_uid"].tolist()
    if uids != ts.uids:
        raise ValueError(f"oof_probabilities/{method} covers other images than the image cache: re-materialize it")
    evidence = issue_inputs(data_dir, uids) if evidence is None else evidence
    issues = find_issues(probs.astype(np.float64), rows["label"].to_numpy(), load_embeddings(data_dir, method, uids),
                         sop_instance_uids=uids, out_of_fold=rows["out_of_fold"].to_numpy(), **evidence, **options)
    return score_issues(issues, ts, truth_path, probs=probs)


def evaluate_methods(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], methods: Sequence[str],
                     **options: Any) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_method` for each method and :func:`evaluate_against_truth` for the ensemble."""
    data_dir = Path(data_dir)
    evidence = issue_inputs(data_dir, load_training_set(data_dir).uids)
    scores = {m: evaluate_method(data_dir, truth_path, m, evidence=evidence, **options) for m in methods}
    scores["ensemble"] = evaluate_against_truth(data_dir, truth_path)
    return scores


def score_issues(issues: pd.DataFrame, ts: TrainingSet, truth: str | os.PathLike[str] | pd.DataFrame, *,
                 probs: np.ndarray | None = None, top: int = 20) -> dict[str, Any]:
    """The figures of :func:`evaluate_against_truth` for one label-issues table.

    ``truth``: the truth file, or the frame :func:`read_truth` returns. ``k`` is the number of
    labels truly wrong (see :func:`evaluate_against_truth`); every precision@k divides by k.

    - ``mislabel_precision_at_k``: of the k labelled images not reported out of domain with the
      lowest label quality, the share truly wrong: the mislabel list a radiologist reads.
    - ``report_precision_at_k``: the same over the report's order (:func:`report_order`):
      ``mislabel`` flags first by rank, then the other labelled images by label quality.
    - ``self_confidence_precision_at_k`` (only with ``probs``, Shape: (N, K) in ``ts.uids``
      order): the same over the probability of the recorded label, ascending, computed from
      ``probs`` themselves: the plain order the audit's flags are measured against.
    - ``top<top>_precision``: of the ``top`` highest-ranked flags, the share whose kind is true
      (an out-of-domain image flagged ``out_of_domain``, a wrong label ``mislabel``, a null label
      of an in-domain image ``missing_label``, a copy ``near_duplicate``).
    - ``ood_precision``, ``ood_recall``, ``ood_f1``: the ``out_of_domain`` flags against ``is_ood``.
    - ``false_flags``, ``false_flag_rate``: ``mislabel`` flags of right labels, and their share of
      the labelled in-domain images; ``false_flag_limit`` what each device may reach.
    - ``per_device``: {device: figures} (:func:`device_table` names them), by the truth's
      ``device`` column (one device ``all`` without it).

    When the truth has ``duplicate_of`` (:func:`duplicate_scores`), the duplicate figures too, and
    ``duplicate_pair_precision``/``_recall``/``_f1`` (:func:`pair_scores`) over the in-domain images:
    the groups of the reported ``duplicate_of`` links against those of the truth's.
    """
    from sklearn.metrics import roc_auc_score

    truth = truth if isinstance(truth, pd.DataFrame) else read_truth(truth)
    issues = issues.set_index("sop_instance_uid").loc[ts.uids]
    n = len(ts.uids)
    true_idx = truth_labels(ts, truth)
    is_ood, wrong = truth_status(ts, truth)
    labelled = (ts.labels >= 0) & ~is_ood
    kind = issues["issue"].to_numpy(dtype=object)
    flagged = kind == "mislabel"
    ood_flag = kind == "out_of_domain"
    k = int(wrong.sum())
    quality = np.where((ts.labels >= 0) & ~ood_flag, issues["label_quality"].to_numpy(dtype=float), np.inf)
    by_quality = np.argsort(np.nan_to_num(quality, nan=np.inf), kind="stable")
    missing = (ts.labels < 0) & ~is_ood
    suggested = issues["suggested_region"].to_numpy()  # class index
    dup = duplicate_scores(issues, truth, ts.uids) if "duplicate_of" in truth.columns else {}
    copy_right = dup.pop("_right", np.zeros(n, dtype=bool))
    real = np.where(kind == "out_of_domain", is_ood,
                    np.where(kind == "mislabel", wrong, np.where(kind == "missing_label", missing,
                                                                 (kind == "near_duplicate") & copy_right)))
    flags = np.flatnonzero(pd.notna(kind))
    ranked = flags[np.argsort(issues["rank"].to_numpy()[flags], kind="stable")][:top]
    ood_precision = _ratio(int((ood_flag & is_ood).sum()), int(ood_flag.sum()))
    ood_recall = _ratio(int((ood_flag & is_ood).sum()), int(is_ood.sum()))

    out: dict[str, Any] = {
        "images": n, "truly_mislabelled": k, "flagged_mislabel": int(flagged.sum()),
        "mislabel_precision": _ratio(int((flagged & wrong).sum()), int(flagged.sum())),
        "mislabel_recall": _ratio(int((flagged & wrong).sum()), k),
        "mislabel_precision_at_k": precision_at_k(by_quality, wrong),
        f"top{top}_precision": _ratio(int(real[ranked].sum()), int(ranked.size)),
        "out_of_domain": int(is_ood.sum()), "flagged_out_of_domain": int(ood_flag.sum()),
        "ood_auroc": float(roc_auc_score(is_ood, issues["ood_score"])) if 0 < is_ood.sum() < n else float("nan"),
        "ood_precision": ood_precision,
        "ood_recall": ood_recall,
        "ood_flagged_as_mislabel": int((flagged & is_ood).sum()),
        "missing_labels": int(missing.sum()),
        # A null label whose true region is outside the vocabulary (a lower leg) has no right suggestion.
        "missing_outside_vocabulary": int((missing & (true_idx < 0)).sum()),
        "missing_suggestion_accuracy": _ratio(int((suggested[missing & (true_idx >= 0)]
                                                   == true_idx[missing & (true_idx >= 0)]).sum()),
                                              int((missing & (true_idx >= 0)).sum())),
        **dup,
        "report_precision_at_k": precision_at_k(report_order(issues, ts.labels), wrong),
    }
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != n or p.shape[1] != len(ts.vocabulary):
            raise ValueError(f"probs must have Shape: ({n}, {len(ts.vocabulary)}) in ts.uids order, got {p.shape}")
        listed = np.flatnonzero((ts.labels >= 0) & ~ood_flag)
        own = p[listed, ts.labels[listed]]
        out["self_confidence_precision_at_k"] = precision_at_k(listed[np.argsort(own, kind="stable")], wrong)
    out["ood_f1"] = f1_score(ood_precision, ood_recall)
    if "duplicate_of" in truth.columns:
        inside = [u for u, o in zip(ts.uids, is_ood) if not o]
        pairs = pair_scores(duplicate_groups(ts.uids, copy_links(dict(zip(ts.uids, issues["duplicate_of"])))),
                            duplicate_groups(ts.uids, copy_links(truth["duplicate_of"].to_dict())), inside)
        out.update({f"duplicate_pair_{key}": value for key, value in pairs.items()})
    device = (pd.Series(ts.uids).map(truth["device"]).fillna("unknown").astype(str).to_numpy(dtype=object)
              if "device" in truth.columns else np.full(n, "all", dtype=object))
    false_flag = flagged & labelled & ~wrong
    rate = _ratio(int(false_flag.sum()), int(labelled.sum()))
    limit = FALSE_FLAG_FACTOR * np.nan_to_num(rate, nan=0.0) + FALSE_FLAG_SLACK
    out.update(false_flags=int(false_flag.sum()), false_flag_rate=rate, false_flag_limit=float(limit),
               per_device=_device_scores(device, ts.labels, is_ood, wrong, false_flag, ood_flag, quality, limit))
    return out


def _ratio(a: int, b: int) -> float:
    return float(a / b) if b else float("nan")


def f1_score(precision: float, recall: float) -> float:
    """The harmonic mean of a precision and a recall (NaN if either is; 0 if both are 0)."""
    if np.isnan(precision) or np.isnan(recall):
        return float("nan")
    return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0


def precision_at_k(order: np.ndarray, wrong: np.ndarray, k: int | None = None) -> float:
    """The share of truly wrong rows among the first ``k`` of ``order`` (row indices, most suspect
    first); ``k`` defaults to the number of rows truly wrong. A list shorter than ``k`` counts
    its missing places as misses; NaN when k is 0."""
    k = int(np.sum(wrong)) if k is None else int(k)
    return _ratio(int(np.asarray(wrong, dtype=bool)[np.asarray(order, dtype=np.int64)[:k]].sum()), k)


def report_order(issues: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """The report's label-error list as row indices: the labelled rows (``labels`` >= 0) not
    reported ``out_of_domain``, the ``mislabel`` flags first by ``rank``, then the others by
    ascending ``label_quality`` (NaN last); ties keep the row order."""
    kind = issues["issue"].to_numpy(dtype=object)
    rows = np.flatnonzero((np.asarray(labels) >= 0) & (kind != "out_of_domain"))
    flag = kind[rows] == "mislabel"
    within = np.where(flag, issues["rank"].to_numpy(dtype=float)[rows],
                      np.nan_to_num(issues["label_quality"].to_numpy(dtype=float)[rows], nan=np.inf))
    return rows[np.lexsort((within, ~flag))]


def duplicate_groups(uids: Sequence[str], links: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each UID's group: the connected components of the ``links`` (pairs of UIDs: a copy and
    its original, or two near duplicates), so a chain a -> b -> c is one group. UIDs of links
    that are not among ``uids`` join in."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pos = {u: i for i, u in enumerate(uids)}
    edges = [(pos.setdefault(a, len(pos)), pos.setdefault(b, len(pos))) for a, b in links]
    src = np.array([a for a, _ in edges], dtype=np.int64)
    dst = np.array([b for _, b in edges], dtype=np.int64)
    graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(len(pos), len(pos)))
    comp = connected_components(graph, directed=False)[1]
    return {u: int(comp[i]) for u, i in pos.items()}


def copy_links(duplicate_of: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (copy, original) pairs of a ``duplicate_of`` mapping (None or NaN: no original)."""
    return [(u, d) for u, d in duplicate_of.items() if isinstance(d, str) and d and d != u]


def pair_scores(reported: Mapping[str, int], true: Mapping[str, int], uids: Sequence[str]) -> dict[str, Any]:
    """Near-duplicate groups scored as unordered pairs of images among ``uids``.

    A pair is two images in one group; a reported pair is right when the two are in one true
    group. UIDs missing from a mapping are groups of their own.

    Returns:
        ``precision``, ``recall``, ``f1``, and the counts ``pairs`` (true), ``pairs_reported``.
    """
    rep = pd.Series([reported.get(u, f"self:{u}") for u in uids], dtype=object).astype(str)
    tru = pd.Series([true.get(u, f"self:{u}") for u in uids], dtype=object).astype(str)

    def n_pairs(sizes: pd.Series) -> int:
        return int((sizes * (sizes - 1) // 2).sum())

    found = n_pairs(pd.DataFrame({"r": rep, "t": tru}).value_counts())
    n_rep, n_true = n_pairs(rep.value_counts()), n_pairs(tru.value_counts())
    precision, recall = _ratio(found, n_rep), _ratio(found, n_true)
    return {"precision": precision, "recall": recall, "f1": f1_score(precision, recall),
            "pairs": n_true, "pairs_reported": n_rep}


def _device_scores(device: np.ndarray, labels: np.ndarray, is_ood: np.ndarray, wrong: np.ndarray,
                   false_flag: np.ndarray, ood_flag: np.ndarray, quality: np.ndarray,
                   limit: float) -> dict[str, dict[str, Any]]:
    """:func:`score_issues`'s ``per_device``; ``quality``: label quality, inf where unlisted."""
    out: dict[str, dict[str, Any]] = {}
    names = pd.Series(device).value_counts()
    for name in sorted(names.index, key=lambda d: (-names[d], d)):
        rows = np.flatnonzero(device == name)
        inside = ~is_ood[rows]
        labelled = inside & (labels[rows] >= 0)
        fp = int((ood_flag[rows] & inside).sum())
        rate = _ratio(int(false_flag[rows].sum()), int(labelled.sum()))
        share = _ratio(fp, int(inside.sum()))
        order = np.argsort(np.nan_to_num(quality[rows], nan=np.inf), kind="stable")
        out[str(name)] = {
            "images": int(rows.size), "in_domain": int(inside.sum()), "labelled_in_domain": int(labelled.sum()),
            "truly_mislabelled": int(wrong[rows].sum()), "precision_at_k": precision_at_k(order, wrong[rows]),
            "false_flags": int(false_flag[rows].sum()), "false_flag_rate": rate,
            "ood_false_positives": fp, "ood_fp_share": share,
            "out_of_domain": int((~inside).sum()),
            "ood_recall": _ratio(int((ood_flag[rows] & ~inside).sum()), int((~inside).sum())),
            "ood_fp_ok": bool(fp == 0 or share <= OOD_FP_LIMIT),
            "false_flags_ok": bool(np.isnan(rate) or rate <= limit),
        }
    return out


def device_table(scores: Mapping[str, Any]) -> list[str]:
    """The per-device lines of :func:`score_issues`'s figures, one per device, with the limits."""
    sc = "  plain self-confidence {:.3f}".format(scores["self_confidence_precision_at_k"]) \
        if "self_confidence_precision_at_k" in scores else ""
    lines = [f"precision@k of wrong labels (k = {scores['truly_mislabelled']}): label quality "
             f"{scores['mislabel_precision_at_k']:.3f}  report order {scores['report_precision_at_k']:.3f}{sc}",
             f"per device (limits: false-flag rate <= {FALSE_FLAG_FACTOR:g} x {scores['false_flag_rate']:.3f} + "
             f"{FALSE_FLAG_SLACK:g} = {scores['false_flag_limit']:.3f}; out-of-domain false positives <= "
             f"{OOD_FP_LIMIT:.0%} of in-domain images):",
             f"  {'device':16s} {'images':>6s} {'wrong':>5s} {'p@k':>5s}  {'false flags (rate)':20s} "
             f"{'OOD false pos. (share)':24s} {'OOD recall':>10s}"]
    for name, d in scores["per_device"].items():
        ff = f"{d['false_flags']} ({d['false_flag_rate']:.3f}) {'ok' if d['false_flags_ok'] else 'OVER'}"
        fp = f"{d['ood_false_positives']} ({d['ood_fp_share']:.3f}) {'ok' if d['ood_fp_ok'] else 'OVER'}"
        lines.append(f"  {name:16s} {d['images']:6d} {d['truly_mislabelled']:5d} {d['precision_at_k']:5.3f}  "
                     f"{ff:20s} {fp:24s} {d['ood_recall']:10.3f}")
    return lines


def duplicate_scores(issues: pd.DataFrame, truth: pd.DataFrame, uids: Sequence[str]) -> dict[str, Any]:
    """The near-duplicate figures of an issues table (indexed by UID) against the synthetic truth.

    A reported copy (``duplicate_of`` set) is right when it and its reported original are one
    radiograph in the truth (the same ``duplicate_of`` root). A true copy is found when it and
    its true original end up in one reported group. A hard negative (``hard_negative_of``) is
    wrongly grouped when it lands in its look-alike's group.

    Returns:
        ``duplicates``, ``duplicates_reported``, ``duplicate_precision`` (in-domain rows),
        ``duplicate_recall``, ``duplicate_recall_<kind>``, ``hard_negatives``,
        ``hard_negatives_grouped``, ``duplicates_reported_out_of_domain`` (copies among
        out-of-domain images, e.g. identical test patterns), and ``_right`` (per UID).
    """
    truth_root = {u: (d if isinstance(d, str) else u) for u, d in truth["duplicate_of"].items()}
    reported = issues.reindex(list(uids))["duplicate_of"] if "duplicate_of" in issues else pd.Series(None, index=uids)
    root = {u: (d if isinstance(d, str) else u) for u, d in zip(uids, reported)}
    is_ood = pd.Series(list(uids)).map(truth["is_ood"]).fillna(False).to_numpy(dtype=bool)
    has = np.array([isinstance(d, str) for d in reported], dtype=bool)
    right = np.array([h and truth_root.get(u) is not None and truth_root.get(u) == truth_root.get(d)
                      for u, d, h in zip(uids, reported, has)], dtype=bool)
    live = set(uids)
    copies = truth[truth["duplicate_of"].notna() & truth.index.isin(live) & truth["duplicate_of"].isin(live)]
    found = {u: root.get(u) == root.get(d) for u, d in copies["duplicate_of"].items()}
    out: dict[str, Any] = {
        "duplicates": len(copies), "duplicates_reported": int((has & ~is_ood).sum()),
        "duplicate_precision": float(right[has & ~is_ood].mean()) if (has & ~is_ood).any() else float("nan"),
        "duplicate_recall": float(np.mean(list(found.values()))) if found else float("nan"),
    }
    for kind, rows in copies.groupby("duplicate_kind"):
        out[f"duplicate_recall_{kind}"] = float(np.mean([found[u] for u in rows.index]))
    if "hard_negative_of" in truth.columns:
        negs = truth[truth["hard_negative_of"].notna() & truth.index.isin(live) & truth["hard_negative_of"].isin(live)]
        out["hard_negatives"] = len(negs)
        out["hard_negatives_grouped"] = int(sum(root.get(u) == root.get(d) for u, d in negs["hard_negative_of"].items()))
    out["duplicates_reported_out_of_domain"] = int((has & is_ood).sum())
    out["_right"] = right
    return out


def evaluate_label_fractions(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str],
                             methods: Sequence[str], *, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                             test_share: float = 0.3, seed: int = 0,
                             with_predictions: bool = False) -> LabelFractionScores | tuple[
                                 LabelFractionScores, tuple[np.ndarray, np.ndarray]]:
    """Linear-eval accuracy with a fraction of the labels, per method and for the ensemble (the paper's protocol).

    Heads are trained on the *true* regions of a patient-grouped training split of the synthetic
    export's in-domain images and scored on the rest: this measures the features, not the noise.

    Returns:
        ``{method or "ensemble": {fraction: accuracy}}``; with ``with_predictions``, also the test
        split's true classes and the ensemble's predictions with the largest fraction, as
        ``(scores, (y_true, y_pred))`` (for a confusion matrix on clean labels).
    """
    from radaudit.models.heads import group_stratified_folds, label_fraction_probabilities
    from radaudit.models.validation import check_groups

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    y = truth_labels(ts, truth_path)
    usable = np.flatnonzero(y >= 0)
    n_folds = max(2, round(1 / test_share))
    groups = check_groups(ts.groups[usable], usable.size)
    fold = group_stratified_folds(y[usable], groups, n_splits=n_folds, seed=seed)
    train, test = usable[fold != 0], usable[fold == 0]
    per_method = {}
    for m in methods:
        x = load_embeddings(data_dir, m, ts.uids)
        per_method[m] = label_fraction_probabilities(x[train], y[train], x[test], fractions=fractions,
                                                     n_classes=len(ts.vocabulary), seed=seed)
    scores: dict[str, dict[float, float]] = {
        m: {f: float((p.argmax(1) == y[test]).mean()) for f, p in probs.items()} for m, probs in per_method.items()
    }
    ensemble = {f: np.mean([per_method[m][f] for m in methods], axis=0).argmax(1) for f in fractions}
    scores["ensemble"] = {f: float((pred == y[test]).mean()) for f, pred in ensemble.items()}
    return (scores, (y[test], ensemble[max(fractions)])) if with_predictions else scores
