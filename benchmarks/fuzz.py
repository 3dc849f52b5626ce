"""Fuzz the ingest: N mutated DICOM files through ``radaudit.pacs.ingest.run_ingest``, every file accounted for.

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--workers 2] [--timeout 10] [--worker-memory-mb 256]
                              [--zip-bomb-mb 300] [--json out.json]

Writes N files mutated by ``radaudit.pacs.fuzz`` (each kind in turn, over pydicom's test files, pydicom-data
and a small synthetic export; every file its own SOP Instance UID, so every one reaches the
decoder), ingests them with a 64 px cache, a per-file timeout and a per-worker memory limit, and reports:

- crashes of the run: an exception escaping ``run_ingest``, or the ingest process dying (must be 0);
- hangs: files whose error reason says they took longer than the timeout (bounded by it; counted apart);
- per kind, files refused for memory: over the worker limit, or out of memory (zip bombs must all be);
- files in the index, in the errors, in neither (must be 0) and in both (must be 0), per mutation kind;
- wall time against the baseline: the same number of unmutated files (same sources, unique UIDs)
  ingested the same way in the same run;
- peak RSS of one worker process (``RUSAGE_CHILDREN`` of the ingest process, whose children the
  workers are) and of the ingest process itself.

Each ingest runs in its own forked process, so its figures are its own and a crash of it is seen.
Exit status 1 when a check fails (a crash, a file in neither or in both tables, a zip bomb indexed).

The memory limit is 256 MiB by default (the least the ingest allows), not its 4,096: a zip bomb is
refused once it inflates past half the limit, and every 13th file is one (an archive holds few), so
each costs at most 128 MiB of inflation instead of 2 GiB; ``--zip-bomb-mb`` must stay above half the limit.
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._figures import Figures  # noqa: E402
from radaudit.pacs import fuzz  # noqa: E402
from radaudit.pacs import io  # noqa: E402
from radaudit.pacs import index as ix  # noqa: E402
from radaudit.pacs.cache import CacheParams  # noqa: E402
from radaudit.pacs.ingest import IngestConfig, run_ingest  # noqa: E402
from radaudit.pacs.pseudo import load_or_create_key, path_key  # noqa: E402

KEY = "fuzz-benchmark-key"
HANG_WORDS = "took longer than"
MEMORY_WORDS = "memory limit|out of memory"


def _ingest_child(config: IngestConfig, conn: Any) -> None:
    """Run one ingest in this (forked) process; send its wall time, peak RSS and any traceback."""
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    try:
        run_ingest(config)
        failure = None
    except BaseException:  # noqa: BLE001 - whatever escapes run_ingest is the crash being counted
        failure = traceback.format_exc()
    wall = time.perf_counter() - t0
    ix.wait_for_workers()
    conn.send({
        "wall_s": wall, "traceback": failure,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "ingest_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    conn.close()


def ingest(export: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Ingest ``export`` into ``data`` in a forked process; its report, with ``exitcode``."""
    config = IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=args.cache_size),
                          workers=args.workers, file_timeout_s=args.timeout, pseudonym_key=KEY,
                          worker_memory_mb=args.worker_memory_mb or None)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_ingest_child, args=(config, child))
    proc.start()
    child.close()
    try:
        report = parent.recv()
    except EOFError:  # the ingest process died without a word
        report = {"wall_s": float("nan"), "traceback": "ingest process died", "worker_peak_mb": float("nan"),
                  "ingest_peak_mb": float("nan")}
    proc.join()
    report["exitcode"] = proc.exitcode
    if proc.exitcode != 0 and report["traceback"] is None:
        report["traceback"] = f"ingest process exit code {proc.exitcode}"
    return report


def account(corpus: pd.DataFrame, data: Path) -> pd.DataFrame:
    """Per corpus file: in the index, in the errors, its error stage and reason (from the written tables)."""
    key = load_or_create_key(data, KEY)
    index = ix.read_index(data)
    errors = ix.read_errors(data)
    hashes = [path_key(p, key) for p in corpus["path"]]
    in_index = set(index["path_hash"])
    first_error = errors.drop_duplicates("path_hash").set_index("path_hash")
    error_count = collections.Counter(errors["path_hash"])
    return corpus.assign(
        in_index=[h in in_index for h in hashes],
        in_errors=[error_count[h] > 0 for h in hashes],
        stage=[first_error["stage"].get(h) for h in hashes],
        reason=[first_error["reason"].get(h) for h in hashes],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="mutated files (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="file timeout of the ingest, s (default 10)")
    parser.add_argument("--cache-size", type=int, default=64, help="cached image side, px (default 64)")
    parser.add_argument("--worker-memory-mb", type=int, default=256,
                        help="IngestConfig.worker_memory_mb (0: no limit; default %(default)s)")
    parser.add_argument("--zip-bomb-mb", type=int, default=300,
                        help="what each zip bomb inflates past, MiB (default %(default)s: about 0.3 MB on disk)")
    parser.add_argument("--json", default=None, help="figures file (default $OUT/fuzz.json or benchmarks/out/)")
    parser.add_argument("--out", default=None, help="keep the corpora and data here (default: a temporary folder)")
    args = parser.parse_args()
    if not args.worker_memory_mb or args.zip_bomb_mb <= args.worker_memory_mb // 2:
        parser.error("--zip-bomb-mb must exceed half of --worker-memory-mb, which must be set: the ingest refuses "
                     "a zip bomb once it inflates past half the limit")
    warnings.simplefilter("ignore")
    logging.getLogger("pacs").setLevel(logging.ERROR)  # one warning per failed file: the tables have them

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="radaudit-fuzz-"))
    root.mkdir(parents=True, exist_ok=True)
    figures = Figures("fuzz", args.json, {k: v for k, v in vars(args).items()} | {"cpus": mp.cpu_count()})
    t0 = time.perf_counter()
    sources = fuzz.default_sources(synth_dir=root)
    corpus = fuzz.write_corpus(root / "export", args.n, args.seed, sources, zip_bomb_bytes=args.zip_bomb_mb << 20)
    baseline_corpus = fuzz.write_corpus(root / "baseline", args.n, args.seed, sources, mutated=False)
    figures.note(f"{len(sources)} sources; {args.n} mutated and {args.n} unmutated files written in "
                 f"{time.perf_counter() - t0:.0f} s under {root}")

    base = ingest(root / "baseline", root / "baseline-data", args)
    run = ingest(root / "export", root / "data", args)
    crashes = int(run["traceback"] is not None)
    if crashes:
        figures.note(f"CRASH of the run:\n{run['traceback']}")
    acc = account(corpus, root / "data") if not crashes else corpus.assign(in_index=False, in_errors=False,
                                                                           stage=None, reason=None)
    hang = acc["reason"].fillna("").str.contains(HANG_WORDS)
    neither = int((~acc["in_index"] & ~acc["in_errors"]).sum())
    both = int((acc["in_index"] & acc["in_errors"]).sum())

    section = (f"{args.n} mutated files, {args.workers} workers, timeout {args.timeout:g} s, "
               f"memory limit {args.worker_memory_mb or 'none'} MiB")
    figures.add(section, "files", len(acc), "files", shown=f"{len(acc):10d}")
    figures.add(section, "crashes of the run (must be 0)", crashes, "", shown=f"{crashes:10d}")
    figures.add(section, "hangs (error: took longer than the timeout)", int(hang.sum()), "files",
                shown=f"{int(hang.sum()):10d}")
    for name, value in (("in the index", int(acc["in_index"].sum())), ("in the errors", int(acc["in_errors"].sum())),
                        ("in neither (must be 0)", neither), ("in both (must be 0)", both)):
        figures.add(section, name, value, "files", shown=f"{value:10d}")
    base_rate = args.n / base["wall_s"]
    rate = args.n / run["wall_s"]
    figures.add(section, "ingest wall time, mutated", run["wall_s"], "s")
    figures.add(section, "ingest wall time, baseline (unmutated, same sources)", base["wall_s"], "s")
    figures.add(section, "mutated files/s vs baseline files/s", rate / base_rate, "x",
                shown=f"{rate:10.1f} files/s vs {base_rate:.1f} files/s: {rate / base_rate:.2f}")
    figures.add(section, "peak RSS of one worker, mutated", run["worker_peak_mb"], "MiB")
    figures.add(section, "peak RSS of one worker, baseline", base["worker_peak_mb"], "MiB")
    figures.add(section, "peak RSS of the ingest process, mutated", run["ingest_peak_mb"], "MiB")
    figures.add(section, "peak RSS of the ingest process, baseline", base["ingest_peak_mb"], "MiB")
    if base["traceback"] is not None:
        figures.note(f"baseline run failed:\n{base['traceback']}")

    figures.note("per kind: files, index, errors, hangs, worker crashes, refused for memory")
    for kind, g in acc.groupby("kind"):
        reasons = g["reason"].fillna("")
        crashed = int(reasons.str.contains("crashed").sum())
        oom = int(reasons.str.contains(MEMORY_WORDS).sum())
        figures.add("per kind", kind, len(g), "files", shown=(
            f"{len(g):6d}  index {int(g['in_index'].sum()):5d}  errors {int(g['in_errors'].sum()):5d}  "
            f"hangs {int(reasons.str.contains(HANG_WORDS).sum()):3d}  crashed {crashed:3d}  memory {oom:4d}"),
            index=int(g["in_index"].sum()), errors=int(g["in_errors"].sum()),
            hangs=int(reasons.str.contains(HANG_WORDS).sum()), worker_crashes=crashed, memory=oom)
    bombs_indexed = int(acc.loc[acc["kind"] == "zip_bomb", "in_index"].sum())
    figures.add(section, "zip bombs indexed (must be 0)", bombs_indexed, "files", shown=f"{bombs_indexed:10d}")
    common = collections.Counter(r[:90] for r in acc["reason"].dropna()).most_common(20)
    figures.note("most common reasons:\n" + "\n".join(f"{n:6d}  {r}" for r, n in common))
    odd = acc[hang | acc["reason"].fillna("").str.contains("crashed|out of memory")]
    if len(odd):
        figures.note("hangs, worker crashes and out-of-memory rows:\n" + odd[["path", "source", "mutation", "reason"]]
                     .to_string(max_colwidth=90))

    failed = crashes or neither or both or bombs_indexed or (base["traceback"] is not None)
    if args.out or failed:
        io.write_parquet_frame(acc, root / "outcome.parquet")  # per file: source, mutation, table, reason
    if failed:
        figures.note(f"FAILED: corpus and data kept under {root}")
    elif not args.out:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
