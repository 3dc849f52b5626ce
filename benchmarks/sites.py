"""Cross-site transfer: a backbone and heads trained on one hospital's export, applied to another's.

Site A (a university hospital: mostly the flat-panel DR room and bedside units) and site B (a smaller
hospital: mostly the CR reader, digitised film and a second vendor's CR) get synthetic exports from
distinct seeds (no image in common) with the device mixes :data:`SITE_MIXES`. Three SimCLR backbones
are pretrained, with the same settings: on A, on B, and on A and B pooled. For site B's images, three
arms:

- ``A->B``: A's backbone embeds B's images, and a head fit on *all* of A's recorded labels (A's
  :func:`radaudit.pipelines.stages.compute_oof` full head) predicts them; no cross-fitting is needed,
  since neither the backbone nor the head saw B;
- ``B``: B's own backbone, out-of-fold heads on B's recorded labels (the audit's probabilities);
- ``pooled``: the backbone on A+B, out-of-fold heads on A+B's recorded labels, B's rows scored;

and the same for site A's images (``A``, ``B->A``, ``pooled``), so the drop shows in both
directions. Figures per arm: accuracy of the most probable region against the true region (in-domain
images), precision@k of the wrong recorded labels (k = the site's truly wrong labelled in-domain
images, ranked by the probability of the recorded label; :func:`benchmarks._runs.precision_at_k`),
and accuracy per acquisition device. Each is printed and written to the JSON file as it is measured.

Run from the repository root::

    python benchmarks/sites.py                      # 400 images a site, 30 epochs, 32 px: 11 min on 2 idle cores
    python benchmarks/sites.py --seeds 0 1 2 3      # two pairs: A seed 0 with B seed 1, A seed 2 with B seed 3
    python benchmarks/sites.py --gpu                # 2,000 images per site, 128 px, 30 epochs (about 3 min on one H100)
    python benchmarks/sites.py --n 100 --epochs 2   # a smoke test
    python benchmarks/sites.py --workdir /tmp/sites --json sites.json

The JSON goes to ``--json``, else ``$OUT/sites.json`` where ``OUT`` is set, else
``benchmarks/out/sites.json``.

The CPU time was measured on 2 idle cores on 2026-12-07 (10 min 59 s; about 0.8 s a step of 64
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
from benchmarks._runs import (Trained, accuracy, accuracy_by, add_run_options, embed_with, ingest,  # noqa: E402
                              precision_at_k, train, truth_frame, work_dir)
from benchmarks.quality import Recorder, make_export  # noqa: E402
from radaudit.models.presets import PRESETS, AuditPreset  # noqa: E402
from radaudit.pipelines import stages  # noqa: E402

# Device mixes (shares of studies, :func:`radaudit.pacs.synth.generate_export`'s ``devices``).
SITE_MIXES: dict[str, dict[str, float]] = {
    "A": {"dr_room": 0.55, "bedside": 0.3, "cr_reader": 0.1, "film_digitiser": 0.05},
    "B": {"cr_reader": 0.5, "film_digitiser": 0.3, "cr_minority": 0.15, "dr_room": 0.05},
}
METHOD = "simclr"


def settings(gpu: bool, n: int | None = None, epochs: int | None = None) -> AuditPreset:
    """The run's settings per site, from the CPU demo's or the GPU audit's preset.

    CPU: 400 images per site and 30 epochs (three backbones: 400, 400 and 800 images), the demo's
    32 px views of a 64 px cache and ten-crop embeddings. GPU: 2,000 images per site, 30 epochs of
    128 px views at batch 256 (the GPU preset's 512 would leave 4 steps an epoch), whole-image embeddings.
    """
    base = (dataclasses.replace(PRESETS["gpu"], n=2000, epochs=30, batch_size=256) if gpu
            else dataclasses.replace(PRESETS["cpu-demo"], n=400, epochs=30))
    changes = {k: v for k, v in (("n", n), ("epochs", epochs)) if v is not None}
    # The devices come from SITE_MIXES, not from the preset.
    return dataclasses.replace(base, methods=(METHOD,), duplicates=0.0, devices=None, **changes)


@dataclasses.dataclass(frozen=True)
class Site:
    """One data dir: its truth file and, per image of its training set, the labels the figures need."""

    data: Path
    truth: Path
    uids: list[str]
    recorded: np.ndarray  # recorded region index, -1 null
    true: np.ndarray  # true region index, -1 out of domain
    device: np.ndarray  # the truth's acquisition device

    @classmethod
    def load(cls, data: Path, truth: Path) -> Site:
        """The training set of ``data`` with its truth."""
        ts = stages.load_training_set(data)
        frame = truth_frame(truth, ts.uids)
        return cls(data, truth, ts.uids, ts.labels, stages.truth_labels(ts, frame),
                   frame["device"].astype(str).to_numpy())


def score(rec: Recorder, pair: str, step: str, probs: np.ndarray, site: Site) -> dict[str, Any]:
    """Record accuracy, precision@k and accuracy per device of ``probs`` (rows: ``site``'s training set)."""
    prec, k = precision_at_k(probs, site.recorded, site.true)
    figures: dict[str, Any] = {"accuracy": accuracy(probs, site.true), "precision_at_k": prec, "k": k,
                               "images": int((site.true >= 0).sum())}
    rec.add(pair, step, **figures)
    by_device = accuracy_by(probs, site.true, site.device)
    rec.add(pair, f"{step} by device", **{f"acc_{d}": a for d, (a, _) in by_device.items()})
    return figures | {"by_device": by_device}


def rows_of(trained: Trained, uids: list[str]) -> np.ndarray:
    """``trained``'s out-of-fold probabilities of ``uids`` (e.g. a site's rows of the pooled data dir)."""
    pos = pd.Series(np.arange(len(trained.uids)), index=trained.uids)
    return trained.oof.probabilities[pos.loc[uids].to_numpy()]


def run_pair(rec: Recorder, preset: AuditPreset, seeds: tuple[int, int], work: Path, shards: int = 2,
             ingest_workers: int = 0, verbose: bool = False) -> None:
    """Exports, ingests, the three backbones and the six arms of one pair of seeds (site A's, site B's)."""
    pair = f"{seeds[0]}/{seeds[1]}"
    log = (lambda line: print("    " + line, flush=True)) if verbose else None
    exports = work / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    truths: dict[str, Path] = {}
    for name, seed in zip("AB", seeds):
        t = time.perf_counter()
        truths[name] = make_export(work / name, preset.n, seed, preset.export_size, shards, 0.0, SITE_MIXES[name],
                                   preset.device_correlation)
        (work / name / "export").rename(exports / name)
        devices = pd.read_parquet(truths[name])["device"].value_counts()
        rec.add(pair, f"export {name}", seconds=round(time.perf_counter() - t, 1), export_seed=seed,
                **{f"n_{d}": int(c) for d, c in devices.items()})
    truths["A+B"] = work / "A+B" / "truth.parquet"
    truths["A+B"].parent.mkdir(parents=True, exist_ok=True)
    pd.concat([pd.read_parquet(truths[s]) for s in "AB"], ignore_index=True).to_parquet(truths["A+B"])
    sites: dict[str, Site] = {}
    for name, export in (("A", exports / "A"), ("B", exports / "B"), ("A+B", exports)):
        t = time.perf_counter()
        data = work / name / "data"
        images = ingest(export, data, preset.cache_size, ingest_workers)
        sites[name] = Site.load(data, truths[name])
        in_domain = pd.Series(sites[name].device[sites[name].true >= 0]).value_counts()
        rec.add(pair, f"ingest {name}", seconds=round(time.perf_counter() - t, 1), images=images,
                **{f"in_domain_{d}": int(c) for d, c in in_domain.items()})
    trained: dict[str, Trained] = {}
    # A and B first: the cross-site figures need only those two; the pooled backbone costs as much again.
    for name in ("A", "B", "A+B"):
        trained[name] = tr = train(sites[name].data, sites[name].truth, preset, METHOD, seeds[0], log=log)
        rec.add(pair, f"pretrain {name}", seconds=round(tr.pretrain_s, 1), heads_seconds=round(tr.heads_s, 1),
                epochs=tr.epochs, steps=tr.steps, **{f"monitor_{k}": v for k, v in tr.monitor.items()})
        if name == "B":
            for target, source in (("B", "A"), ("A", "B")):
                t = time.perf_counter()
                x = embed_with(sites[source].data, METHOD, sites[target].data, preset.image_size, preset.embed_crop)
                probs = trained[source].oof.head.predict_proba(x)
                score(rec, pair, f"{target}: {source}->{target}", probs, sites[target])
                score(rec, pair, f"{target}: {target} itself", rows_of(trained[target], sites[target].uids),
                      sites[target])
                rec.add(pair, f"{target}: transfer seconds", seconds=round(time.perf_counter() - t, 1))
    for target in ("B", "A"):
        score(rec, pair, f"{target}: pooled", rows_of(trained["A+B"], sites[target].uids), sites[target])


def summarize(rec: Recorder) -> None:
    """Each arm's accuracy and precision@k: per pair, and their mean over the pairs."""
    df = pd.DataFrame(rec.doc["records"])
    arms = df[df["step"].str.contains(": ") & df["accuracy"].notna()] if "accuracy" in df else df.iloc[:0]
    if arms.empty:
        return
    table = arms.pivot_table(index="step", columns="seed", values=["accuracy", "precision_at_k"])
    table[("accuracy", "mean")] = table["accuracy"].mean(axis=1)
    table[("precision_at_k", "mean")] = table["precision_at_k"].mean(axis=1)
    print("\nper pair of seeds (A/B) and mean:")
    print(table.sort_index(axis=1).round(3).to_string())
    rec.doc["summary"] = {step: {"accuracy_mean": float(table.loc[step, ("accuracy", "mean")]),
                                 "precision_at_k_mean": float(table.loc[step, ("precision_at_k", "mean")])}
                          for step in table.index}
    rec.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU settings (2,000 images per site, 128 px, 30 epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="SEED",
                    help="pairs of seeds, site A's then site B's (default: 0 1)")
    ap.add_argument("--n", type=int, help="images per site (default: 400; --gpu 2,000)")
    ap.add_argument("--epochs", type=int, help="pretraining epochs of each backbone (default: 30; --gpu 30)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    if len(args.seeds) % 2 or len(set(args.seeds)) < len(args.seeds):
        ap.error("--seeds takes pairs of distinct seeds: site A's, then site B's (e.g. 0 1 2 3)")
    pairs = list(zip(args.seeds[::2], args.seeds[1::2]))
    preset = settings(args.gpu, args.n, args.epochs)
    out = args.json or default_json_path("sites")
    rec = Recorder(out, {**dataclasses.asdict(preset), "pairs": pairs, "site_mixes": SITE_MIXES, "method": METHOD,
                         "argv": sys.argv[1:] if argv is None else argv})
    print(f"{preset.n} images per site, {METHOD} {preset.epochs} epochs at {preset.image_size} px, batch "
          f"{preset.batch_size}, embeddings {'ten crops' if preset.embed_crop else 'whole images'}; figures -> {out}",
          flush=True)
    t0 = time.perf_counter()
    with work_dir(args.workdir, "radaudit-sites-") as work:
        for a, b in pairs:
            run_pair(rec, preset, (a, b), work / f"pair{a}-{b}", args.shards, args.ingest_workers, args.verbose)
            rec.add(f"{a}/{b}", "total", seconds=round(time.perf_counter() - t0, 1))
    summarize(rec)


if __name__ == "__main__":
    main()
