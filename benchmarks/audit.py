"""Audit stage: speed against a baseline in the same run, and quality on synthetic embeddings.

    python benchmarks/audit.py [--n 50000] [--dim 512] [--baseline sklearn|none]

Synthetic embeddings: 14 Gaussian clusters (one per region) in a 64-D latent space, seen by
three "methods" through different random linear maps to ``--dim`` dimensions plus independent
noise; 8% of the images get a wrong recorded label (uniform over the other regions), 5% a null
label, and 2% are out of domain (latent points far from every cluster, half of them with a
random recorded label); they form 5 look-alike batches, each as tight as a region's cluster,
the hard case for a neighbour-based score. Patients hold 2.5 images on average.

(1) Speed: the audit stage as the pipeline runs it: ``oof_probabilities`` (10 folds, 3 fold
    splits averaged, + the full head: ``--n-splits``, ``--repeats``) for each of the 3 methods, ``ensemble_probabilities``, ``find_issues`` (cleanlab
    label issues and quality, OOD score). Baseline, same run: scikit-learn's
    ``LogisticRegression`` (lbfgs, default C) with 5-fold ``cross_val_predict`` on ONE method,
    the usual way to get cleanlab's out-of-sample probabilities.
(2) Quality: precision@k (k = number of flipped labels, ranking by label quality) and recall
    of cleanlab's flags for the flipped labels, per method and for the ensemble; AUROC of
    ``ood_score`` for the out-of-domain images.
(3) With ``--data DIR --truth FILE``: the same quality figures, and the 1/10/100 % label-fraction
    accuracies, on a real pipeline run over a synthetic export (``radaudit demo`` leaves one in
    ``demo/``; on a GPU, ``radaudit synth`` + ``radaudit audit`` at full settings)::

        python benchmarks/audit.py --data demo/data --truth demo/truth.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radaudit.models.audit import combine_embeddings, find_issues  # noqa: E402
from radaudit.models.ensemble import ensemble_probabilities  # noqa: E402
from radaudit.models.heads import oof_probabilities  # noqa: E402
from radaudit.models.methods import DEFAULT_METHODS  # noqa: E402
K = 14


def make_embeddings(n: int, dim: int, *, flip: float = 0.08, missing: float = 0.05, ood: float = 0.02,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic embeddings and labels with known defects (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_ood = round(ood * n)
    n_in = n - n_ood
    y_true = rng.integers(0, K, n_in)
    centres = rng.standard_normal((K, 64)) * 1.2
    # Out of domain: 5 look-alike batches (like blank exposures, photos, scanned forms), as tight
    # as a region's cluster, away from every region.
    ood_centres = rng.standard_normal((5, 64)) * 1.2
    ood_kind = np.arange(n_ood) % 5
    latent = np.concatenate([centres[y_true] + rng.standard_normal((n_in, 64)),
                             ood_centres[ood_kind] + rng.standard_normal((n_ood, 64))])
    embs = {}
    for m in DEFAULT_METHODS:
        proj = rng.standard_normal((64, dim)) / 8
        embs[m] = (latent @ proj + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    labels = np.concatenate([y_true, np.full(n_ood, -1)])
    order = rng.permutation(n_in)
    n_flip, n_miss = round(flip * n), round(missing * n)
    flipped, missed = order[:n_flip], order[n_flip:n_flip + n_miss]
    labels[flipped] = (labels[flipped] + rng.integers(1, K, n_flip)) % K
    labels[missed] = -1
    labels[n_in:] = np.where(rng.random(n_ood) < 0.5, rng.integers(0, K, n_ood), -1)
    is_flip = np.zeros(n, bool)
    is_flip[flipped] = True
    is_ood = np.zeros(n, bool)
    is_ood[n_in:] = True
    groups = rng.integers(0, int(n / 2.5), n).astype(str).astype(object)
    return {"embs": embs, "labels": labels, "groups": groups, "is_flip": is_flip, "is_ood": is_ood,
            "y_true": np.concatenate([y_true, np.full(n_ood, -1)])}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def flip_quality(issues, is_flip: np.ndarray, is_ood: np.ndarray) -> tuple[float, float, float]:
    """precision@k by label quality, and precision and recall of the mislabel flags, on in-domain rows.

    Out-of-domain images with a random label are left out: they are the OOD score's to find.
    """
    issues, is_flip = issues[~is_ood], is_flip[~is_ood]
    k = int(is_flip.sum())
    q = issues["label_quality"].to_numpy()
    top = np.argsort(np.nan_to_num(q, nan=np.inf), kind="stable")[:k]
    p_at_k = float(is_flip[top].mean())
    flagged = (issues["issue"] == "mislabel").to_numpy()
    prec = float(is_flip[flagged].mean()) if flagged.any() else 0.0
    return p_at_k, prec, float(flagged[is_flip].mean())


def score_pipeline_run(data_dir: Path, truth: Path) -> None:
    """(3) The issue's quality figures on a real pipeline run over a synthetic export.

    Per method (each method's own out-of-fold probabilities and embeddings through the same
    cleanlab scoring) and for the ensemble the pipeline wrote, against the truth file; then the
    label-fraction linear evaluation on true regions. Baseline: the issue's targets.
    """
    from radaudit.pipelines.stages import evaluate_label_fractions, evaluate_methods

    print(f"(3) pipeline run in {data_dir}, truth {truth}")
    scores = evaluate_methods(data_dir, truth, DEFAULT_METHODS)
    first = scores["ensemble"]
    print(f"    {first['images']} images: {first['truly_mislabelled']} recorded labels truly wrong, "
          f"{first['out_of_domain']} out of domain, {first['missing_labels']} missing")
    print("    source    precision@k  flag precision  flag recall  OOD AUROC  missing-label suggestion acc")
    for name, sc in scores.items():
        print(f"    {name:8s}  {sc['mislabel_precision_at_k']:11.3f}  {sc['mislabel_precision']:14.3f}  "
              f"{sc['mislabel_recall']:11.3f}  {sc['ood_auroc']:9.3f}  {sc['missing_suggestion_accuracy']:.3f}")
    print("    targets:  precision@k >= 0.9, recall >= 0.9, OOD AUROC >= 0.95")
    print("    linear-eval accuracy on true regions (held-out, patient-grouped), by share of labels:")
    for name, by in evaluate_label_fractions(data_dir, truth, DEFAULT_METHODS).items():
        print(f"    {name:8s}  " + "  ".join(f"{int(f * 100):3d}%: {a:.3f}" for f, a in by.items()))
    print("    targets (ensemble): >= 0.98 with 100 %, >= 0.93 with 1 %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--baseline", choices=("sklearn", "none"), default="sklearn")
    ap.add_argument("--n-splits", type=int, default=10, help="heads' folds (the pipeline's default)")
    ap.add_argument("--repeats", type=int, default=3, help="fold splits averaged (the pipeline's default)")
    ap.add_argument("--data", type=Path, help="score a pipeline run instead: its data dir (e.g. demo/data) ...")
    ap.add_argument("--truth", type=Path, help="... and the synthetic export's truth file (e.g. demo/truth.parquet)")
    args = ap.parse_args()
    if args.data or args.truth:
        if not (args.data and args.truth):
            ap.error("--data and --truth go together")
        score_pipeline_run(args.data, args.truth)
        return
    import torch

    print(f"audit benchmark: n={args.n} dim={args.dim} methods={len(DEFAULT_METHODS)} torch threads={torch.get_num_threads()} "
          f"load average={os.getloadavg()[0]:.1f}")
    data = make_embeddings(args.n, args.dim)
    import cleanlab.filter  # noqa: F401  (import once, outside the timing, as a running pipeline would)
    labels, groups = data["labels"], data["groups"]

    t0 = time.perf_counter()
    oof = {}
    times = {}
    for m in DEFAULT_METHODS:
        t = time.perf_counter()
        oof[m] = oof_probabilities(data["embs"][m], labels, groups, n_classes=K, seed=0, n_splits=args.n_splits,
                                   repeats=args.repeats)
        times[m] = time.perf_counter() - t
    t = time.perf_counter()
    ens = ensemble_probabilities({m: r.probabilities for m, r in oof.items()}, weights="log_loss", labels=labels)
    t_ens = time.perf_counter() - t
    t = time.perf_counter()
    combined = combine_embeddings(data["embs"])
    issues = find_issues(ens, labels, combined, seed=0)
    t_issues = time.perf_counter() - t
    total = time.perf_counter() - t0
    print("(1) speed, seconds")
    for m in DEFAULT_METHODS:
        print(f"    heads {m:7s} ({args.n_splits} folds x {args.repeats} splits + full head): {times[m]:6.1f}")
    print(f"    ensemble:                          {t_ens:6.1f}")
    print(f"    find_issues (cleanlab + OOD):      {t_issues:6.1f}")
    print(f"    audit stage total, 3 methods:      {total:6.1f}   (goal < 60)")
    if args.baseline == "sklearn":
        import warnings

        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        lab = labels >= 0
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=100)),
                              data["embs"]["simclr"][lab], labels[lab], cv=5, method="predict_proba")
        base = time.perf_counter() - t
        t = time.perf_counter()
        oof_probabilities(data["embs"]["simclr"], labels, groups, n_classes=K, seed=0, n_splits=5, repeats=1)
        one_split = time.perf_counter() - t
        print(f"    heads simclr, one 5-fold split (before repeated cross-fitting): {one_split:6.1f}  "
              f"(the pipeline's setting costs {times['simclr'] / one_split:.1f}x)")
        print(f"    baseline sklearn LogisticRegression 5-fold, ONE method: {base:6.1f}  "
              f"(ours per method: {np.mean(list(times.values())):.1f}, {base / np.mean(list(times.values())):.1f}x faster)")

    print("(2) quality on synthetic embeddings "
          f"({int(data['is_flip'].sum())} flipped, {int((labels < 0).sum())} null, {int(data['is_ood'].sum())} OOD)")
    print("    source    precision@k  flag precision  flag recall  acc(clean labels)")
    in_domain = data["y_true"] >= 0
    for m in DEFAULT_METHODS:
        per = find_issues(oof[m].probabilities, labels, data["embs"][m], seed=0)
        pk, pr, rc = flip_quality(per, data["is_flip"], data["is_ood"])
        acc = float((oof[m].probabilities.argmax(1)[in_domain] == data["y_true"][in_domain]).mean())
        print(f"    {m:8s}  {pk:11.3f}  {pr:14.3f}  {rc:11.3f}  {acc:.4f}")
    pk, pr, rc = flip_quality(issues, data["is_flip"], data["is_ood"])
    acc = float((ens.argmax(1)[in_domain] == data["y_true"][in_domain]).mean())
    print(f"    ensemble  {pk:11.3f}  {pr:14.3f}  {rc:11.3f}  {acc:.4f}")
    ood_flag = (issues["issue"] == "out_of_domain").to_numpy()
    print(f"    OOD AUROC (ensemble run, combined embeddings): {auroc(issues['ood_score'].to_numpy(), data['is_ood']):.4f}; "
          f"flagged out_of_domain: {int(ood_flag.sum())}, of them truly OOD: {int(data['is_ood'][ood_flag].sum())}")


if __name__ == "__main__":
    main()
