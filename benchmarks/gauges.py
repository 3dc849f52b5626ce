"""Does gauge insertion in pretraining remove the cue "calibration gauge => hip or pelvis"?

The paper inserts calibration gauges into the training views so that the backbone cannot learn that
a gauge means a hip or a pelvis film. Here the export puts gauges where they would teach that cue
(:data:`GAUGE_RATES`: 90% of hip and pelvis films, half of the knees, no other region), and SimCLR
is pretrained twice on it with the same seed and settings: with the gauge insertion of
:mod:`radaudit.augment.pipeline` (0, 1 or 2 gauges a view) and without it (``gauge_count_probs``
``(1.0,)``). The figure: the share of gauge-bearing knees that the heads call hip or pelvis, beside
the same share of knees without a gauge (the baseline), with the mean probability the heads give
hip and pelvis (less noisy than the share at some 15 gauge-bearing knees a seed).

Two kinds of heads, both out of fold (no image is predicted by a head that saw it):

- ``recorded``: :func:`radaudit.pipelines.stages.compute_oof` on the recorded labels, the audit's
  own probabilities. The headline: a gauge-bearing knee called hip or pelvis is a correct label the
  audit would put on its mislabel list (``flagged``: the share of correctly labelled knees in the
  list of :func:`benchmarks._runs.mislabel_list`).
- ``true``: the same folds of heads on the true regions: the features alone, without label noise.

And a diagnostic of the features themselves (``gauge probe``): the AUROC with which out-of-fold
linear heads on the embeddings tell gauge-bearing knees from the other knees (0.5: the features do
not show the gauge; 1: they show it plainly), with and without gauge insertion.

Each figure is printed per seed as it is measured and written to the JSON file; at the end, the
mean over the seeds and the knees pooled over them.

Run from the repository root::

    python benchmarks/gauges.py                     # 420 images, 20 epochs, seeds 0 1 2: 10.5 min on 2 idle cores
    python benchmarks/gauges.py --seeds 3 4 5
    python benchmarks/gauges.py --gpu               # 1,500 images, 128 px, 20 epochs (about 3 min on one H100)
    python benchmarks/gauges.py --n 100 --epochs 2 --seeds 0   # a smoke test

The JSON goes to ``--json``, else ``$OUT/gauges.json`` where ``OUT`` is set, else
``benchmarks/out/gauges.json``.

The CPU time was measured on 2 idle cores on 2026-12-07 (10 min 24 s; about 0.8 s a step of 64
views of 32 px). The GPU time is an estimate from ``benchmarks/quality.py --gpu``, not yet timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._figures import default_json_path  # noqa: E402
from benchmarks._runs import (Trained, accuracy, add_run_options, ingest, mislabel_list, precision_at_k,  # noqa: E402
                              train, truth_frame, work_dir)
from benchmarks.quality import Recorder, make_export  # noqa: E402
from radaudit.models.presets import PRESETS, AuditPreset  # noqa: E402
from radaudit.pipelines import stages  # noqa: E402

# Gauge-bearing share per true region (generate_export's gauge_rates; regions left out: none).
GAUGE_RATES: dict[str, float] = {"hip": 0.9, "pelvis": 0.9, "knee": 0.5}
CUE = ("hip", "pelvis")
PROBE = "knee"
METHOD = "simclr"
ARMS: dict[str, dict[str, Any]] = {"gauges": {}, "no gauges": {"augment": (("gauge_count_probs", (1.0,)),)}}


def settings(gpu: bool, n: int | None = None, epochs: int | None = None) -> AuditPreset:
    """The run's settings, from the CPU demo's or the GPU audit's preset.

    CPU: 420 images (about 29 knees a seed) and 20 epochs, the demo's 32 px views of a 64 px cache
    and ten-crop embeddings: six pretrainings in 10.5 minutes. GPU: 1,500 images, 20 epochs of
    128 px views at batch 256, whole-image embeddings.
    """
    base = (dataclasses.replace(PRESETS["gpu"], n=1500, epochs=20, batch_size=256) if gpu
            else dataclasses.replace(PRESETS["cpu-demo"], n=420, epochs=20))
    changes = {k: v for k, v in (("n", n), ("epochs", epochs)) if v is not None}
    return dataclasses.replace(base, methods=(METHOD,), duplicates=0.0, **changes)


def true_label_probabilities(data: Path, truth: Path, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of heads on the true regions, with the folds, L2 weight and
    repeats :func:`radaudit.pipelines.stages.compute_oof` used for the recorded labels."""
    from radaudit.models.heads import oof_probabilities
    from radaudit.models.validation import check_groups

    ts = stages.load_training_set(data)
    y = stages.truth_labels(ts, truth)
    x = stages.load_embeddings(data, METHOD, ts.uids)
    patients = int(np.unique(check_groups(ts.groups[y >= 0], int((y >= 0).sum()))).size)
    return oof_probabilities(x, y, ts.groups, n_splits=max(2, min(10, patients)), n_classes=len(ts.vocabulary),
                             seed=seed, l2=stages.head_settings(data, METHOD)["l2"], repeats=3).probabilities


def gauge_probe_auroc(data: Path, rows: np.ndarray, has_gauge: np.ndarray, seed: int) -> float:
    """How well the features tell gauge-bearing knees from the others: AUROC of out-of-fold linear
    heads (5 patient-grouped folds, L2 chosen by out-of-fold log loss) predicting ``has_gauge`` from
    the embeddings of ``rows``. Knees only, so that the region cannot stand in for the gauge."""
    from sklearn.metrics import roc_auc_score

    from radaudit.models.heads import choose_l2, oof_probabilities

    y = has_gauge[rows].astype(np.int64)
    if y.min() == y.max():
        return float("nan")
    ts = stages.load_training_set(data)
    x = stages.load_embeddings(data, METHOD, [ts.uids[i] for i in rows])
    groups = ts.groups[rows]
    splits = min(5, int(min(y.sum(), (1 - y).sum())))
    if splits < 2:
        return float("nan")
    l2, _ = choose_l2(x, y, groups, n_splits=splits, n_classes=2, seed=seed)
    probs = oof_probabilities(x, y, groups, n_splits=splits, n_classes=2, seed=seed, l2=l2, repeats=3).probabilities
    return float(roc_auc_score(y, probs[:, 1]))


def cue_figures(probs: np.ndarray, recorded: np.ndarray, true: np.ndarray, has_gauge: np.ndarray,
                vocabulary: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, precision@k, and for knees with and without a gauge: how many, the share called hip
    or pelvis, the mean probability of hip or pelvis, and the share of the correctly labelled ones
    on the mislabel list.

    Args:
        probs: Shape: (N, K). recorded, true: Shape: (N,), class or -1. has_gauge: Shape: (N,), bool.
    """
    cue = [vocabulary.index(r) for r in CUE]
    probe = vocabulary.index(PROBE)
    prec, k = precision_at_k(probs, recorded, true)
    listed = mislabel_list(probs, recorded, true)
    out: dict[str, Any] = {"accuracy": accuracy(probs, true), "precision_at_k": prec, "k": k}
    for name, rows in (("gauge", (true == probe) & has_gauge), ("plain", (true == probe) & ~has_gauge)):
        right = rows & (recorded == true)
        out[f"{name}_knees"] = int(rows.sum())
        out[f"{name}_called_cue"] = float(np.isin(probs[rows].argmax(1), cue).mean()) if rows.any() else float("nan")
        out[f"{name}_p_cue"] = float(probs[rows][:, cue].sum(1).mean()) if rows.any() else float("nan")
        out[f"{name}_flagged"] = float(listed[right].mean()) if right.any() else float("nan")
    return out


def run_seed(rec: Recorder, preset: AuditPreset, seed: int, work: Path, shards: int = 2, ingest_workers: int = 0,
             verbose: bool = False) -> None:
    """One export and its two pretrainings, with and without gauge insertion."""
    log = (lambda line: print("    " + line, flush=True)) if verbose else None
    t = time.perf_counter()
    truth = make_export(work, preset.n, seed, preset.export_size, shards, 0.0, preset.devices,
                        preset.device_correlation, gauge_rates=GAUGE_RATES)
    data = work / "data"
    images = ingest(work / "export", data, preset.cache_size, ingest_workers)
    ts = stages.load_training_set(data)
    frame = truth_frame(truth, ts.uids)
    true = stages.truth_labels(ts, frame)
    has_gauge = frame["has_gauge"].fillna(False).to_numpy(dtype=bool)
    share = frame[true >= 0].groupby("true_region")["has_gauge"].mean()
    rec.add(seed, "export and ingest", seconds=round(time.perf_counter() - t, 1), images=images,
            gauge_knees=int(((true == ts.vocabulary.index(PROBE)) & has_gauge).sum()),
            plain_knees=int(((true == ts.vocabulary.index(PROBE)) & ~has_gauge).sum()),
            **{f"gauges_{r}": float(share.get(r, 0.0)) for r in (*CUE, PROBE)},
            gauges_elsewhere=float(frame.loc[(true >= 0) & ~frame["true_region"].isin([*CUE, PROBE]),
                                             "has_gauge"].mean()))
    for arm, config in ARMS.items():
        tr: Trained = train(data, truth, preset, METHOD, seed, log=log, **config)
        rec.add(seed, f"{arm}: pretrain", seconds=round(tr.pretrain_s, 1), heads_seconds=round(tr.heads_s, 1),
                epochs=tr.epochs, steps=tr.steps, **{f"monitor_{k}": v for k, v in tr.monitor.items()})
        if tr.uids != ts.uids:
            raise RuntimeError("the heads' rows are not the training set's: the data dir changed under the run")
        for heads, probs in (("recorded", tr.oof.probabilities), ("true", true_label_probabilities(data, truth, seed))):
            rec.add(seed, f"{arm}: {heads} heads", **cue_figures(probs, ts.labels, true, has_gauge, ts.vocabulary))
        knees = np.flatnonzero(true == ts.vocabulary.index(PROBE))
        rec.add(seed, f"{arm}: gauge probe", knees=int(knees.size),
                auroc=gauge_probe_auroc(data, knees, has_gauge, seed))


def summarize(rec: Recorder) -> None:
    """Mean over the seeds of each arm's figures, and the knees pooled over the seeds."""
    df = pd.DataFrame(rec.doc["records"])
    arms = df[df["step"].str.endswith(" heads")] if "step" in df else df.iloc[:0]
    if arms.empty:
        return
    summary: dict[str, dict[str, float]] = {}
    print(f"\nover seeds {sorted(arms['seed'].unique().tolist())} (mean; knees pooled):")
    for step, rows in arms.groupby("step", sort=False):
        figures = {f"{c}_mean": float(rows[c].mean()) for c in ("accuracy", "precision_at_k", "gauge_called_cue",
                                                                 "plain_called_cue", "gauge_p_cue", "plain_p_cue",
                                                                 "gauge_flagged", "plain_flagged")}
        for name in ("gauge", "plain"):
            n = rows[f"{name}_knees"]
            figures[f"{name}_knees"] = int(n.sum())
            figures[f"{name}_called_cue_pooled"] = int(round(float((rows[f"{name}_called_cue"] * n).sum())))
        summary[str(step)] = figures
        print(f"  {step:26s} accuracy {figures['accuracy_mean']:.3f}  precision@k {figures['precision_at_k_mean']:.3f}"
              f"  knees called hip/pelvis: with a gauge {figures['gauge_called_cue_mean']:.3f} "
              f"({figures['gauge_called_cue_pooled']}/{figures['gauge_knees']}), without "
              f"{figures['plain_called_cue_mean']:.3f} ({figures['plain_called_cue_pooled']}/{figures['plain_knees']})"
              f"  p(hip or pelvis) {figures['gauge_p_cue_mean']:.3f} vs {figures['plain_p_cue_mean']:.3f}"
              f"  on the mislabel list {figures['gauge_flagged_mean']:.3f} vs {figures['plain_flagged_mean']:.3f}")
    probes = df[df["step"].str.endswith(": gauge probe")]
    for step, rows in probes.groupby("step", sort=False):
        summary[str(step)] = {"auroc_mean": float(rows["auroc"].mean())}
        print(f"  {step:26s} AUROC of has_gauge among knees {summary[str(step)]['auroc_mean']:.3f} "
              f"(per seed {', '.join(f'{v:.3f}' for v in rows['auroc'])})")
    rec.doc["summary"] = summary
    rec.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU settings (1,500 images, 128 px, 20 epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, help="images in each export (default: 420; --gpu 1,500)")
    ap.add_argument("--epochs", type=int, help="epochs of each pretraining (default: 20; --gpu 20)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    preset = settings(args.gpu, args.n, args.epochs)
    out = args.json or default_json_path("gauges")
    rec = Recorder(out, {**dataclasses.asdict(preset), "seeds": args.seeds, "gauge_rates": GAUGE_RATES,
                         "method": METHOD, "arms": {k: dict(v) for k, v in ARMS.items()},
                         "argv": sys.argv[1:] if argv is None else argv})
    print(f"{preset.n} images, gauges {GAUGE_RATES} (other regions none), {METHOD} {preset.epochs} epochs at "
          f"{preset.image_size} px with and without gauge insertion, seeds {args.seeds}; figures -> {out}", flush=True)
    t0 = time.perf_counter()
    with work_dir(args.workdir, "radaudit-gauges-") as work:
        for seed in args.seeds:
            run_seed(rec, preset, seed, work / f"seed{seed}", args.shards, args.ingest_workers, args.verbose)
            rec.add(seed, "total", seconds=round(time.perf_counter() - t0, 1))
    summarize(rec)


if __name__ == "__main__":
    main()
