"""Ingest at archive scale: a first ingest, a rerun with nothing new, a nightly rerun with 1% new files.

    python benchmarks/scale.py --n 100000 --size 32            # about 25 min on 2 cores (export included)
    python benchmarks/scale.py --n 2000                        # a smoke test

The export is synthetic (small images: this measures the per-file work, not decoding big
pixels), written in parallel shards. Each ingest runs in its own process so that its peak memory
(``ru_maxrss`` of the ingest process and of its worker processes) is its own. Baseline in the
same run: the first ingest; the reruns are reported as a ratio of it. The reruns are profiled
(cProfile) and their heaviest calls printed, so that what dominates a nightly rerun shows (the
walk, the index bookkeeping, rewriting the tables).
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
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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

    new = max(1, int(args.n * args.new))
    make_export(work / "night", new, 1, args.size, args.workers)
    (work / "night" / "export").rename(export / "night-1")
    nightly = ingest(export, data, args.cache_size, args.workers, profile=True)
    fig.add(f"nightly rerun, {new} new files", "time against the first ingest",
            nightly["seconds"] / first["seconds"], "ratio", shown=f"{nightly['seconds'] / first['seconds']:10.3f}",
            seconds=nightly["seconds"])
    fig.add(f"nightly rerun, {new} new files", "peak RSS", nightly["peak_rss_mb"], "MB")
    fig.note(f"nightly rerun: {nightly['seconds']:.1f} s (profiled); {nightly['stats']}")
    index_mb = sum(p.stat().st_size for p in (data / INDEX_DIR).glob("*.parquet")) / 1e6
    fig.add("tables", "index size", index_mb, "MB")
    print(f"max RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
