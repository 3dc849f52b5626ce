"""Archive scale: every stage's first run against its nightly run with 1% new files.

    python benchmarks/scale.py --n 100000 --size 32            # about an hour on 2 cores (export included)
    python benchmarks/scale.py --n 2000                        # a smoke test

The ingest runs first, then again with nothing new, then every stage after it (labels, near
duplicates, pixel evidence, embeddings, heads, ensemble, audit, report), each in a process of its
own with its wall time and peak memory. Then 1% new files arrive in a new folder, and the ingest
and every stage run again: the nightly run. Baseline in the same run: each stage's first run;
the nightly runs are reported as a ratio of it. Retraining is a scheduled job of its own and is
not measured here: the backbone is a randomly initialised ResNet18 saved as the SimCLR checkpoint
(the same for both runs, as between two retrainings).

The export is synthetic (small images: this measures the per-file work, not decoding big
pixels), written in parallel shards. Each ingest runs in its own process so that its peak memory
(the process's VmHWM, and ``ru_maxrss`` of its worker processes) is its own. The rerun with
nothing new is profiled (cProfile) and its heaviest calls printed, so that what dominates the
fixed cost of a rerun shows (the walk, the index bookkeeping, rewriting the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._figures import Figures  # noqa: E402
from benchmarks.quality import make_export  # noqa: E402
from radaudit.pacs.layout import INDEX_DIR  # noqa: E402

INGEST = """
import cProfile, io, json, pstats, resource, sys, time
from radaudit.pacs.cache import CacheParams
from radaudit.pacs.ingest import IngestConfig, run_ingest
config = IngestConfig(export_dir=sys.argv[1], data_dir=sys.argv[2], cache=CacheParams(size=int(sys.argv[3])),
                      workers=int(sys.argv[4]))
profile = cProfile.Profile() if sys.argv[5] == "1" else None
t0 = time.perf_counter()
r = run_ingest(config) if profile is None else profile.runcall(run_ingest, config)
seconds = time.perf_counter() - t0
if profile is not None:
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(18)
    print(text.getvalue(), file=sys.stderr)
print(json.dumps({"seconds": seconds, "stats": {k: int(v) for k, v in r.stats.items()},
                  "peak_rss_mb": next(int(line.split()[1]) for line in open("/proc/self/status")
                                      if line.startswith("VmHWM:")) / 1024,
                  "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def ingest(export: Path, data: Path, size: int, workers: int, *, profile: bool = False) -> dict:
    """One ingest in a fresh process; its result line as a dict (with ``profile``: its heaviest calls printed)."""
    done = subprocess.run([sys.executable, "-c", INGEST, str(export), str(data), str(size), str(workers),
                           "1" if profile else "0"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        raise SystemExit(f"ingest failed:\n{done.stderr[-3000:]}")
    if profile:
        lines = done.stderr.splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), len(lines))
        print("\n".join(lines[start:start + 19]))
    return json.loads(done.stdout.strip().splitlines()[-1])


STAGE = """
import json, sys, time
from radaudit.pipelines import stages
name, data = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
log = []
if name == "labels":
    stages.map_labels(data)
elif name == "near_duplicates":
    stages.find_near_duplicates(data, log=log.append)
elif name == "pixel_evidence":
    stages.pixel_features(data, stages.load_training_set(data).uids, log=log.append)
elif name == "embeddings":
    stages.compute_embeddings(data, "simclr", batch_size=512, log=log.append)
elif name == "heads":
    stages.compute_oof(data, "simclr", log=log.append)
elif name == "ensemble":
    stages.combine(data, ["simclr"])
elif name == "audit":
    stages.audit(data, ["simclr"])
elif name == "report":
    stages.report(data)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's peak.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t0, "log": log, "peak_rss_mb": hwm / 1024}))
"""
AFTER_INGEST = ("labels", "near_duplicates", "pixel_evidence", "embeddings", "heads", "ensemble", "audit", "report")


def stage(name: str, data: Path) -> dict:
    """One stage in a fresh process: its wall time, peak memory and log lines."""
    done = subprocess.run([sys.executable, "-c", STAGE, name, str(data)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_random_backbone(data: Path, size: int) -> None:
    """A randomly initialised ResNet18 as the SimCLR checkpoint: what the embeddings use between retrainings."""
    import torch

    from radaudit.models.backbone import create_backbone
    from radaudit.models.checkpoint import save_checkpoint
    from radaudit.pacs.layout import checkpoint_dir

    torch.manual_seed(0)
    backbone = create_backbone("resnet18")
    save_checkpoint(checkpoint_dir(data, "simclr"), {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                    1, metadata={"method": "simclr", "backbone": "resnet18", "in_chans": 1, "size": size})


def run_stages(fig: Figures, data: Path, title: str, first: dict[str, float] | None) -> dict[str, float]:
    """Every stage after the ingest, one by one; with ``first``, each time also as a ratio of it."""
    seconds = {}
    for name in AFTER_INGEST:
        r = stage(name, data)
        seconds[name] = r["seconds"]
        extra = f"  ({'; '.join(r['log'])})" if r["log"] else ""
        if first is None:
            fig.add(title, name, r["seconds"], "s", peak_rss_mb=r["peak_rss_mb"])
        else:
            fig.add(title, f"{name}: against the first run", r["seconds"] / first[name], "ratio",
                    shown=f"{r['seconds'] / first[name]:10.3f}  ({r['seconds']:.1f} s)", seconds=r["seconds"],
                    peak_rss_mb=r["peak_rss_mb"])
        fig.add(title, f"{name}: peak RSS", r["peak_rss_mb"], "MB")
        if extra:
            fig.note(f"{title}, {name}:{extra}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="files in the export")
    ap.add_argument("--size", type=int, default=32, help="image side of the synthetic files (>= 32)")
    ap.add_argument("--cache-size", type=int, default=32, help="cached image side")
    ap.add_argument("--new", type=float, default=0.01, help="share of new files for the nightly rerun")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, help="keep the export and data dir here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="figures file (default benchmarks/out/scale.json or $OUT)")
    args = ap.parse_args(argv)
    fig = Figures("scale", args.json, {k: str(v) for k, v in vars(args).items()})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="radaudit-scale-"))
    export, data = work / "export", work / "data"

    t0 = time.perf_counter()
    make_export(work, args.n, 0, args.size, args.workers)
    fig.add("export", "files written", args.n / (time.perf_counter() - t0), "files/s")

    first = ingest(export, data, args.cache_size, args.workers)
    fig.add("first ingest", "rate", args.n / first["seconds"], "files/s", seconds=first["seconds"])
    fig.add("first ingest", "peak RSS of the ingest process", first["peak_rss_mb"], "MB")
    fig.add("first ingest", "peak RSS of a worker", first["peak_worker_rss_mb"], "MB")
    fig.note(f"first ingest: {first['stats']}")

    again = ingest(export, data, args.cache_size, args.workers, profile=True)
    fig.add("rerun, nothing new", "time against the first ingest", again["seconds"] / first["seconds"], "ratio",
            shown=f"{again['seconds'] / first['seconds']:10.3f}", seconds=again["seconds"])
    fig.add("rerun, nothing new", "peak RSS", again["peak_rss_mb"], "MB")
    fig.note(f"rerun, nothing new: {again['seconds']:.1f} s (profiled); {again['stats']}")

    save_random_backbone(data, args.cache_size)
    first_stages = run_stages(fig, data, "first run, stages after the ingest", None)

    new = max(1, int(args.n * args.new))
    make_export(work / "night", new, 1, args.size, args.workers)
    (work / "night" / "export").rename(export / "night-1")
    nightly = ingest(export, data, args.cache_size, args.workers)
    fig.add(f"nightly rerun, {new} new files", "time against the first ingest",
            nightly["seconds"] / first["seconds"], "ratio", shown=f"{nightly['seconds'] / first['seconds']:10.3f}",
            seconds=nightly["seconds"])
    fig.add(f"nightly rerun, {new} new files", "peak RSS", nightly["peak_rss_mb"], "MB")
    fig.note(f"nightly rerun: {nightly['seconds']:.1f} s; {nightly['stats']}")
    night_stages = run_stages(fig, data, f"nightly run, {new} new files, stages after the ingest", first_stages)
    total_first = first["seconds"] + sum(first_stages.values())
    total_night = nightly["seconds"] + sum(night_stages.values())
    fig.add("whole run, retraining excluded", "nightly against the first", total_night / total_first, "ratio",
            shown=f"{total_night / total_first:10.3f}  ({total_night:.0f} s against {total_first:.0f} s)")
    index_mb = sum(p.stat().st_size for p in (data / INDEX_DIR).glob("*.parquet")) / 1e6
    fig.add("tables", "index size", index_mb, "MB")
    print(f"max RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
