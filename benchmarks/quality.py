"""Audit quality end to end on a synthetic export, through the library stages (no Dagster).

Synthetic export (parallel shards) -> ingest -> region labels -> per method: pretraining,
embeddings, out-of-fold heads, that method's own audit -> ensemble -> audit -> figures against
the export's truth. Baseline in the same run: a randomly initialized ResNet18's features through
the same heads and audit (what the pretraining adds).

Figures, per method, for the baseline and for the ensemble, each printed and appended to the
JSON file as soon as its step finishes (a run cut short keeps what it measured):
precision@k of the corrupted labels, mislabel flags against the true count, precision of the
top 20 flags, OOD AUROC / recall / precision, missing-label suggestion accuracy, linear-eval
accuracy with 1%, 10% and 100% of the (true) labels, and each step's seconds.

Run from the repository root::

    python benchmarks/quality.py                         # the CPU demo's settings, seed 0 (about 10 min on 2 cores)
    python benchmarks/quality.py --seeds 0 1 2           # three seeds; never tune on one
    python benchmarks/quality.py --gpu                   # 10,000 images, three methods: about 9 min on one H200
    python benchmarks/quality.py --n 200 --epochs 1 --methods simclr   # a smoke test
    python benchmarks/quality.py --json out.json --save-embeddings emb/
    python benchmarks/quality.py --foreign               # plus real CT/MR/US/NM/colour files, also relabelled as DX

The JSON goes to ``--json``, else ``$OUT/quality.json`` where ``OUT`` is set, else
``benchmarks/out/quality.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from radaudit.pipelines import stages  # noqa: E402
from radaudit.models.presets import PRESETS, AuditPreset  # noqa: E402
from radaudit.pacs.io import write_text  # noqa: E402
from radaudit.pacs.layout import EMBED_DIR  # noqa: E402

FIGURES = ("mislabel_precision_at_k", "flagged_mislabel", "truly_mislabelled", "top20_precision", "ood_auroc",
           "ood_recall", "ood_precision", "flagged_out_of_domain", "out_of_domain", "missing_suggestion_accuracy",
           "duplicate_precision", "duplicate_recall", "hard_negatives_grouped")


class Recorder:
    """Prints each figure and rewrites the JSON file (atomically) after every one."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"settings": settings, "records": []}
        self.flush()

    def flush(self) -> None:
        write_text(self.path, json.dumps(self.doc, indent=1, default=float))

    def add(self, seed: int | str, step: str, **figures: Any) -> None:
        self.doc["records"].append({"seed": seed, "step": step, **figures})
        self.flush()
        shown = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"[seed {seed}] {step:24s} {shown}", flush=True)


# out dir, truth file, images, seed, size, duplicates, devices, device correlation, gauge rates
ShardJob = tuple[str, str, int, int, int, float, str | Mapping[str, float] | None, float, Mapping[str, float] | None]


def _export_shard(job: ShardJob) -> str:
    from radaudit.pacs.synth import generate_export

    out, truth, n, seed, size, duplicates, devices, correlation, gauge_rates = job
    generate_export(out, truth, n=n, seed=seed, size=size, force=True, duplicates=duplicates, devices=devices,
                    device_correlation=correlation, gauge_rates=gauge_rates)
    return truth


def make_export(root: Path, n: int, seed: int, size: int, shards: int, duplicates: float = 0.0,
                devices: str | Mapping[str, float] | None = None, device_correlation: float = 0.6,
                gauge_rates: Mapping[str, float] | None = None) -> Path:
    """A synthetic export in ``shards`` parallel processes (distinct seeds give distinct UIDs); one truth file.

    Shard ``i`` has seed ``seed * 1000 + i``; ``devices``, ``device_correlation`` and ``gauge_rates``
    go to :func:`radaudit.pacs.synth.generate_export`.
    """
    shards = max(1, min(shards, n // 50 or 1))
    sizes = [n // shards + (i < n % shards) for i in range(shards)]
    jobs: list[ShardJob] = [(str(root / "export" / f"shard{i:02d}"), str(root / f"truth{i:02d}.parquet"), k,
                             seed * 1000 + i, size, duplicates, devices, device_correlation, gauge_rates)
                            for i, k in enumerate(sizes)]
    if shards == 1:
        truths = [_export_shard(jobs[0])]
    else:
        with ProcessPoolExecutor(shards) as pool:
            truths = list(pool.map(_export_shard, jobs))
    truth = root / "truth.parquet"
    pd.concat([pd.read_parquet(t) for t in truths], ignore_index=True).to_parquet(truth)
    return truth


# Real foreign DICOM files shipped with pydicom and pydicom-data: CT, MR, US, NM, secondary captures, colour.
FOREIGN_FILES = ("CT_small.dcm", "693_UNCR.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "US1_UNCR.dcm",
                 "examples_palette.dcm", "color-pl.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG2000_UNC.dcm",
                 "SC_rgb.dcm", "SC_rgb_rle.dcm")


def add_foreign_files(root: Path, truth: Path) -> None:
    """The foreign files twice: as stored, and relabelled as DX knee radiographs (only pixels can tell)."""
    from pydicom.data import get_testdata_file

    from radaudit.pacs.synth.foreign import add_foreign

    files = [get_testdata_file(name) for name in FOREIGN_FILES]
    missing = [n for n, f in zip(FOREIGN_FILES, files) if f is None]
    if missing:
        raise SystemExit(f"--foreign needs pydicom-data (pip install pydicom-data): {missing} not found")
    add_foreign(root / "export", truth, files, tag="foreign")
    add_foreign(root / "export", truth, files, tag="relabelled", relabel_as="knee")


def foreign_figures(issues: pd.DataFrame, truth: Path) -> dict[str, Any]:
    """Share of the foreign files reported out_of_domain, as stored and relabelled."""
    t = pd.read_parquet(truth)
    issue = issues.set_index("sop_instance_uid")["issue"]
    out: dict[str, Any] = {}
    for tag in ("foreign", "relabelled"):
        uids = t.loc[t["path"].astype(str).str.startswith(f"{tag}/"), "sop_instance_uid"]
        got = issue.reindex(uids)
        out[f"{tag}_out_of_domain"] = f"{int((got == 'out_of_domain').sum())}/{len(uids)}"
        out[f"{tag}_missed"] = sorted(t.set_index("sop_instance_uid").loc[got.index[got != "out_of_domain"], "path"]
                                      .str.split("/").str[-1])
    return out


def random_baseline(data: Path, size: int, backbone: str) -> None:
    """Embeddings of a randomly initialized backbone, stored as method ``random-init``."""
    from radaudit.models.backbone import create_backbone
    from radaudit.models.embed import embed

    ts = stages.load_training_set(data)
    feats = embed(create_backbone(backbone, in_chans=1), ts.dataset(data), size=size)
    stages.save_embeddings(data, "random-init", feats, ts.uids)


def evaluate(rec: Recorder, seed: int, data: Path, truth: Path, name: str, evidence: dict[str, Any],
             seconds: float, label: str | None = None) -> None:
    """Record one method's own audit figures and linear-eval accuracies (as ``label``, default its name)."""
    scores = stages.evaluate_method(data, truth, name, evidence=evidence)
    rec.add(seed, f"audit/{label or name}", seconds=round(seconds, 1), **{k: scores[k] for k in FIGURES})
    acc = stages.evaluate_label_fractions(data, truth, [name])[name]
    rec.add(seed, f"linear_eval/{label or name}", **{f"acc@{int(f * 100)}%": a for f, a in acc.items()})


def run_seed(rec: Recorder, args: argparse.Namespace, preset: AuditPreset, seed: int, root: Path) -> None:
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest

    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    truth = make_export(root, preset.n, seed, preset.export_size, args.shards, preset.duplicates, preset.devices,
                        preset.device_correlation)
    if args.foreign:
        add_foreign_files(root, truth)
    rec.add(seed, "export", seconds=round(time.perf_counter() - t, 1), images=preset.n,
            foreign=2 * len(FOREIGN_FILES) if args.foreign else 0)
    data = root / "data"
    t = time.perf_counter()
    run_ingest(IngestConfig(export_dir=root / "export", data_dir=data, cache=CacheParams(size=preset.cache_size),
                            workers=args.ingest_workers))
    labels = stages.map_labels(data)
    rec.add(seed, "ingest", seconds=round(time.perf_counter() - t, 1), cached=len(stages.load_training_set(data).uids),
            null_labels=int(labels["recorded_region"].isna().sum()))
    t = time.perf_counter()
    groups = stages.find_near_duplicates(data)
    rec.add(seed, "near_duplicates", seconds=round(time.perf_counter() - t, 1),
            copies=int(groups["duplicate_of"].notna().sum()))
    evidence = stages.issue_inputs(data, stages.load_training_set(data).uids)
    if args.baseline:
        t = time.perf_counter()
        random_baseline(data, preset.image_size, args.backbone)
        stages.compute_oof(data, "random-init", seed=seed)
        evaluate(rec, seed, data, truth, "random-init", evidence, time.perf_counter() - t)
    for method in preset.methods:
        extra = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr)) if v is not None}
        config = preset.pretrain_config(method, seed=seed, backbone=args.backbone, progress_bar=False, **extra)
        t = time.perf_counter()
        result = stages.train_backbone(data, method, config, truth_path=str(truth), from_scratch=True,
                                       cross_fit=preset.cross_fit(method),
                                       log=(lambda line: print("    " + line, flush=True)) if args.verbose else None)
        train_s = time.perf_counter() - t
        monitor = result.metrics[-1] if result.metrics else {}
        rec.add(seed, f"pretrain/{method}", seconds=round(train_s, 1), epochs=len(result.history),
                steps=result.steps, **{f"monitor_{k}": v for k, v in monitor.items() if k != "epoch"})
        t = time.perf_counter()
        stages.compute_embeddings(data, method, reuse=False, crop=preset.embed_crop)
        stages.compute_oof(data, method, seed=seed)
        evaluate(rec, seed, data, truth, method, evidence, time.perf_counter() - t)
    t = time.perf_counter()
    _, weights = stages.combine(data, preset.methods)
    issues = stages.audit(data, preset.methods, seed=seed)
    scores = stages.evaluate_against_truth(data, truth)
    rec.add(seed, "audit/ensemble", seconds=round(time.perf_counter() - t, 1),
            **{k: scores[k] for k in FIGURES}, weights=weights, heads_agreement=issues.attrs["heads_agreement"],
            warnings=len(issues.attrs["warnings"]))
    if args.foreign:
        rec.add(seed, "foreign", **foreign_figures(issues, truth))
    acc = stages.evaluate_label_fractions(data, truth, list(preset.methods))["ensemble"]
    rec.add(seed, "linear_eval/ensemble", **{f"acc@{int(f * 100)}%": a for f, a in acc.items()})
    if args.save_embeddings:
        dest = Path(args.save_embeddings) / f"seed{seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for f in (data / EMBED_DIR).glob("*"):
            shutil.copy2(f, dest / f.name)
        shutil.copy2(truth, dest / "truth.parquet")
    if args.crop_ablation is not None and args.crop_ablation != preset.embed_crop:
        # The same backbones embedded the other way (ten crops, or the whole image), each method alone.
        for method in preset.methods:
            t = time.perf_counter()
            stages.compute_embeddings(data, method, reuse=False, crop=args.crop_ablation)
            stages.compute_oof(data, method, seed=seed)
            evaluate(rec, seed, data, truth, method, evidence, time.perf_counter() - t,
                     label=f"{method}+crop{args.crop_ablation:g}")


def summarize(rec: Recorder) -> None:
    """Mean and spread over the seeds of the ensemble's and each method's headline figures."""
    df = pd.DataFrame(rec.doc["records"])
    audits = df[df["step"].str.startswith("audit/")]
    if audits.empty or audits["seed"].nunique() < 2:
        return
    cols = [c for c in ("mislabel_precision_at_k", "flagged_mislabel", "top20_precision", "ood_auroc", "ood_recall",
                        "ood_precision") if c in audits]
    table = audits.groupby("step")[cols].agg(["mean", "min", "max"]).round(3)
    print("\nover the seeds (mean, min, max):")
    print(table.to_string())
    rec.doc["summary"] = {step: {f"{c}_{stat}": float(table.loc[step, (c, stat)]) for c, stat in table.columns}
                          for step in table.index}
    rec.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU preset (10,000 images, 128 px, three methods)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", help="several seeds (overrides --seed)")
    ap.add_argument("--n", type=int, help="images in the export (default: the preset's)")
    ap.add_argument("--epochs", type=int, help="pretraining epochs per method (default: the preset's)")
    ap.add_argument("--methods", nargs="+", help="methods, in training order (default: the preset's)")
    ap.add_argument("--size", type=int, help="training view side (default: the preset's)")
    ap.add_argument("--supcon-cross-fit", type=int, help="SupCon backbones, each blind to one label fold "
                    "(1: one on all labels; default: the preset's)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], help="default: each method's paper choice")
    ap.add_argument("--lr", type=float, help="base learning rate per 256 images (default: each method's paper value)")
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 1, help="parallel export processes")
    ap.add_argument("--ingest-workers", type=int, default=0, help="decode workers (0: all cores)")
    ap.add_argument("--foreign", action="store_true", help="add real foreign DICOM files (pydicom-data), as stored "
                    "and relabelled as DX knee radiographs, and report how many come out out_of_domain")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random-init baseline")
    ap.add_argument("--workdir", type=Path, help="keep the export and data dir here (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="figures file (see the module docstring)")
    ap.add_argument("--save-embeddings", type=Path, help="copy each seed's embeddings and truth here")
    ap.add_argument("--verbose", action="store_true", help="print the pretraining log")
    ap.add_argument("--crop-ablation", type=float, metavar="SHARE",
                    help="at the end, embed again with ten crops of this share of the side and score each method "
                    "alone: the same backbones, embedded the other way (e.g. 0.875 beside the GPU preset's whole images)")
    args = ap.parse_args(argv)
    preset = PRESETS["gpu" if args.gpu else "cpu-demo"]
    changes = {k: v for k, v in (("n", args.n), ("epochs", args.epochs), ("image_size", args.size),
                                 ("supcon_cross_fit", args.supcon_cross_fit)) if v is not None}
    if args.methods:
        changes["methods"] = tuple(args.methods)
    preset = dataclasses.replace(preset, **changes)
    out = args.json or (Path(os.environ["OUT"]) / "quality.json" if os.environ.get("OUT")
                        else Path(__file__).resolve().parent / "out" / "quality.json")
    seeds = args.seeds or [args.seed]
    rec = Recorder(out, {**dataclasses.asdict(preset), "seeds": seeds, "backbone": args.backbone,
                         "argv": sys.argv[1:]})
    print(f"preset {preset.name}: {preset.n} images, methods {', '.join(preset.methods)}, {preset.epochs} epochs, "
          f"{preset.image_size} px, batch {preset.batch_size}; figures -> {out}", flush=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="radaudit-quality-"))
    t0 = time.perf_counter()
    try:
        for seed in seeds:
            run_seed(rec, args, preset, seed, work / f"seed{seed}")
            rec.add(seed, "total", seconds=round(time.perf_counter() - t0, 1))
        summarize(rec)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
