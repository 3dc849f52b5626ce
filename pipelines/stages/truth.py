"""Scoring the audit against a synthetic export's ground truth (the truth file of
:func:`radaudit.pacs.synth.generate_export`): what ``radaudit demo`` and the benchmarks print."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radaudit.pacs.layout import ISSUES_PATH
from radaudit.pipelines.stages.data import TrainingSet, issue_inputs, load_training_set
from radaudit.pipelines.stages.store import load_embeddings, load_probabilities

__all__ = ["LabelFractionScores", "duplicate_scores", "evaluate_against_truth", "evaluate_label_fractions",
           "evaluate_method", "evaluate_methods", "read_truth", "score_issues", "truth_labels"]

LabelFractionScores = dict[str, dict[float, float]]  # {method or "ensemble": {share of labels: accuracy}}


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


def evaluate_against_truth(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str]) -> dict[str, float]:
    """Score the audit against a synthetic export's ground truth.

    A label counts as truly wrong when the pipeline's recorded label (after mapping) is not null,
    the image is in domain, and the label differs from the true region: what the audit can see.

    Returns:
        ``mislabel_precision``, ``mislabel_recall`` (of the ``mislabel`` flags),
        ``mislabel_precision_at_k`` (k = number truly wrong, ranked by label quality),
        ``ood_auroc``, ``ood_precision``, ``ood_recall``, ``missing_suggestion_accuracy``,
        and the counts behind them.
    """
    data_dir = Path(data_dir)
    return score_issues(pd.read_parquet(data_dir / ISSUES_PATH), load_training_set(data_dir), truth_path)


def evaluate_method(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], method: str, *,
                    evidence: dict[str, Any] | None = None, **options: Any) -> dict[str, float]:
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
    return score_issues(issues, ts, truth_path)


def evaluate_methods(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], methods: Sequence[str],
                     **options: Any) -> dict[str, dict[str, float]]:
    """:func:`evaluate_method` for each method and :func:`evaluate_against_truth` for the ensemble."""
    data_dir = Path(data_dir)
    evidence = issue_inputs(data_dir, load_training_set(data_dir).uids)
    scores = {m: evaluate_method(data_dir, truth_path, m, evidence=evidence, **options) for m in methods}
    scores["ensemble"] = evaluate_against_truth(data_dir, truth_path)
    return scores


def score_issues(issues: pd.DataFrame, ts: TrainingSet, truth_path: str | os.PathLike[str], *,
                 top: int = 20) -> dict[str, float]:
    """The figures of :func:`evaluate_against_truth` for one label-issues table.

    ``mislabel_precision_at_k``: of the k labelled images not reported out of domain with the
    lowest label quality (k = the number truly wrong), the share truly wrong: the mislabel list
    a radiologist reads. ``top_precision``: of the ``top`` highest-ranked flags, the share whose
    kind is true (an out-of-domain image flagged ``out_of_domain``, a wrong label ``mislabel``, a
    null label of an in-domain image ``missing_label``, a copy ``near_duplicate``).

    When the truth has ``duplicate_of`` (:func:`duplicate_scores`), the duplicate figures too.
    """
    from sklearn.metrics import roc_auc_score

    truth = read_truth(truth_path)
    issues = issues.set_index("sop_instance_uid").loc[ts.uids]
    true_idx = truth_labels(ts, truth)
    is_ood = pd.Series(ts.uids).map(truth["is_ood"]).fillna(False).to_numpy(dtype=bool)
    labelled = (ts.labels >= 0) & ~is_ood
    wrong = labelled & (ts.labels != true_idx)
    kind = issues["issue"].to_numpy(dtype=object)
    flagged = kind == "mislabel"
    ood_flag = kind == "out_of_domain"
    k = int(wrong.sum())
    quality = np.where((ts.labels >= 0) & ~ood_flag, issues["label_quality"].to_numpy(dtype=float), np.inf)
    top_k = np.argsort(np.nan_to_num(quality, nan=np.inf), kind="stable")[:k]
    missing = (ts.labels < 0) & ~is_ood
    suggested = issues["suggested_region"].to_numpy()  # class index
    dup = duplicate_scores(issues, truth, ts.uids) if "duplicate_of" in truth.columns else {}
    copy_right = dup.pop("_right", np.zeros(len(ts.uids), dtype=bool))
    real = np.where(kind == "out_of_domain", is_ood,
                    np.where(kind == "mislabel", wrong, np.where(kind == "missing_label", missing,
                                                                 (kind == "near_duplicate") & copy_right)))
    flags = np.flatnonzero(pd.notna(kind))
    ranked = flags[np.argsort(issues["rank"].to_numpy()[flags], kind="stable")][:top]

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    return {
        "images": len(ts.uids), "truly_mislabelled": k, "flagged_mislabel": int(flagged.sum()),
        "mislabel_precision": ratio(int((flagged & wrong).sum()), int(flagged.sum())),
        "mislabel_recall": ratio(int((flagged & wrong).sum()), k),
        "mislabel_precision_at_k": ratio(int(wrong[top_k].sum()), k),
        f"top{top}_precision": ratio(int(real[ranked].sum()), int(ranked.size)),
        "out_of_domain": int(is_ood.sum()), "flagged_out_of_domain": int(ood_flag.sum()),
        "ood_auroc": float(roc_auc_score(is_ood, issues["ood_score"])) if 0 < is_ood.sum() < len(is_ood) else float("nan"),
        "ood_precision": ratio(int((ood_flag & is_ood).sum()), int(ood_flag.sum())),
        "ood_recall": ratio(int((ood_flag & is_ood).sum()), int(is_ood.sum())),
        "ood_flagged_as_mislabel": int((flagged & is_ood).sum()),
        "missing_labels": int(missing.sum()),
        "missing_suggestion_accuracy": ratio(int((suggested[missing] == true_idx[missing]).sum()), int(missing.sum())),
        **dup,
    }


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
