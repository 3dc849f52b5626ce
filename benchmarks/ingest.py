"""Ingest speed: header indexing and cache scaling, each against a baseline measured in the same run.

    python benchmarks/ingest.py [--copies 40] [--workers 2] [--rounds 3] [--small 10 60] [--parts abcd]

(a) Header indexing, files/s: ``radaudit.pacs.index.update_index`` (content sniffing, header-only parse,
    pseudonymization, pixel plausibility) against a naive indexer that reads each whole file with
    ``pydicom.dcmread`` and takes the same header fields. The export is made of copies of the real
    radiographs in pydicom-data (RG1, RG3; uncompressed and JPEG 2000) and pydicom's small test
    files. Measured with the files in the page cache (warm) and evicted from it (cold, as a fresh
    export on disk or a network share is met: ``posix_fadvise(DONTNEED)`` before each contender).
    Each update_index run starts with the header reader's memos empty, as a fresh process. The
    contenders take turns for ``--rounds`` rounds; each one's best round is reported (the machine
    may be shared: the best round is the one least disturbed). update_index reads in worker
    processes under the per-file time and memory limits; "in this process" is the same reader
    with neither (``isolated=False``).
(b) Caching the JPEG 2000 radiographs at 256 px, reduced against full decode: ``benchmarks/decode.py``,
    run as its own process (its peak RSS figures need a small parent), printed at the end.
(c) The cache step (decode, border removal, orientation, resize, write) on the JPEG 2000
    radiographs with 1 and 2 worker processes, and the peak RSS of one worker on the largest.
(d) Small runs (``--small``: 10 and 60 files, a steward re-ingesting a folder, the tests): the
    header stage read in this process, as runs under 64 files were before their reads moved to
    workers under the memory limit, against the same stage in workers now; and the whole ingest
    (headers, decode, cache) now, for scale. Best of ``--rounds``, contenders taking turns.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radaudit.pacs.cache import CacheParams  # noqa: E402
from radaudit.pacs.ingest import IngestConfig, run_ingest  # noqa: E402
from radaudit.pacs.header import HEADER_TAGS, clear_memos  # noqa: E402
from radaudit.pacs.index import update_index, wait_for_workers  # noqa: E402

MEMORY_MB = IngestConfig.worker_memory_mb

RADIOGRAPHS = ["RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KI.dcm"]
SMALL = ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb.dcm", "emri_small.dcm", "JPEG-LL.dcm"]


def make_export(root: Path, names: list[str], copies: int) -> list[Path]:
    """Write each named test file ``copies`` times into a nested export, each copy its own instance."""
    paths = []
    for name in names:
        ds = pydicom.dcmread(get_testdata_file(name))
        for c in range(copies):
            dst = root / f"P{c:03d}" / name.replace(".dcm", "")
            dst.parent.mkdir(parents=True, exist_ok=True)
            uid = pydicom.uid.generate_uid(entropy_srcs=[name, str(c)])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.save_as(dst)
            paths.append(dst)
    return paths


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def naive_index(paths: list[Path]) -> list[dict]:
    """The baseline: read each whole file and take the same header fields."""
    rows = []
    for p in paths:
        ds = pydicom.dcmread(p)
        rows.append({column: ds.get(keyword) for column, keyword in HEADER_TAGS.items()})
    return rows


def bench_headers(root: Path, paths: list[Path], workers: int, rounds: int = 3) -> None:
    """Print files/s of the naive indexer and of update_index, warm and cold, and their ratios."""
    print(f"(a) header indexing, {len(paths)} files ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB), "
          f"best of {rounds} rounds")
    names = ("naive", "ours-0", "ours-1", f"ours-{workers}")
    for cache_state in ("warm", "cold"):
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                if cache_state == "cold":
                    evict(paths)
                else:
                    for p in paths:
                        p.read_bytes()
                clear_memos()
                with tempfile.TemporaryDirectory() as data:
                    t0 = time.perf_counter()
                    if name == "naive":
                        naive_index(paths)
                    else:
                        n = int(name.split("-")[1])
                        update = update_index(root, data, key=b"bench", workers=max(n, 1), isolated=n > 0,
                                              worker_memory_mb=MEMORY_MB)
                        assert len(update.index) == len(paths), update.errors
                    seconds[name].append(time.perf_counter() - t0)
                wait_for_workers()
        rates = {name: len(paths) / min(seconds[name]) for name in names}
        print(f"  page cache {cache_state}:")
        print(f"    naive dcmread indexer             : {rates['naive']:8.0f} files/s")
        for name in names[1:]:
            n = int(name.split("-")[1])
            label = f"update_index, {n} worker(s)" if n else "update_index, in this process"
            print(f"    {label:34s}: {rates[name]:8.0f} files/s   ratio {rates[name] / rates['naive']:5.1f}x")


def bench_cache(copies: int, size: int) -> None:
    """Print images/s of the cache step with 1 and 2 workers, and a worker's peak RSS."""
    names = ["RG1_J2KR.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KI.dcm"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        n = len(make_export(root, names, copies))
        rates = {}
        for workers in (1, 2):
            data = Path(tmp) / f"data{workers}"
            t0 = time.perf_counter()
            result = run_ingest(IngestConfig(export_dir=root, data_dir=data, cache=CacheParams(size=size),
                                             workers=workers))
            rates[workers] = n / (time.perf_counter() - t0)
            assert result.stats["cached"] == n, result.errors
        wait_for_workers()  # a worker counts in RUSAGE_CHILDREN once it has exited
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(c) cache step (ingest incl. headers), {n} JPEG 2000 radiographs -> {size} px")
    print(f"    1 worker : {rates[1]:6.1f} images/s")
    print(f"    2 workers: {rates[2]:6.1f} images/s   scaling {rates[2] / rates[1]:4.2f}x")
    print(f"    peak RSS of a worker process: {peak_mb:.0f} MB")


def bench_small_runs(sizes: list[int], workers: int, rounds: int, size: int) -> None:
    """Print, in ms, the header stage of small runs in this process, in 1 and in ``workers`` worker
    processes, and the whole ingest now."""
    print(f"(d) small runs, best of {rounds} rounds: header stage (update_index) in this process (before) vs in "
          f"worker processes under the {MEMORY_MB} MiB limit (now); whole ingest now ({workers} workers, "
          f"{size} px cache)")
    names = RADIOGRAPHS + SMALL
    counts = sorted({1, workers})
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "export"
            paths = make_export(root, names, -(-n // len(names)))
            for extra in paths[n:]:
                extra.unlink()
            seconds: dict[int | str, list[float]] = {0: [], **{w: [] for w in counts}, "ingest": []}
            for r in range(rounds):
                for name, times in seconds.items():
                    clear_memos()
                    data = Path(tmp) / f"data-{name}-{r}"
                    t0 = time.perf_counter()
                    if name == "ingest":
                        result = run_ingest(IngestConfig(export_dir=root, data_dir=data, workers=workers,
                                                         cache=CacheParams(size=size), pseudonym_key="bench"))
                        assert result.stats["cached"] == n, result.errors
                    else:
                        update = update_index(root, data, key=b"bench", workers=max(1, int(name)),
                                              worker_memory_mb=MEMORY_MB, isolated=name != 0)
                        assert len(update.index) == n, update.errors
                    times.append(time.perf_counter() - t0)
                    wait_for_workers()
        ms = {name: 1000 * min(s) for name, s in seconds.items()}
        shown = ", ".join(f"{w} worker(s) {ms[w]:.0f} ms ({ms[w] - ms[0]:+.0f})" for w in counts)
        print(f"    {n:3d} files: headers in this process {ms[0]:.0f} ms, {shown}; whole ingest now "
              f"{ms['ingest']:.0f} ms")


def bench_decode() -> None:
    """Print figure (b): ``benchmarks/decode.py`` in its own process."""
    print("(b) JPEG 2000 caching, reduced vs full decode (benchmarks/decode.py)", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("decode.py"))], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40, help="copies of each test file in the header benchmark")
    parser.add_argument("--cache-copies", type=int, default=4, help="copies of each radiograph in the cache benchmark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each contender in the header benchmark")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--small", type=int, nargs="+", default=[10, 60], help="file counts of the small runs (d)")
    parser.add_argument("--parts", default="abcd", help="which figures to measure (default %(default)s)")
    args = parser.parse_args()
    if "a" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "export"
            paths = make_export(root, RADIOGRAPHS + SMALL, args.copies)
            bench_headers(root, paths, args.workers, args.rounds)
    if "c" in args.parts:
        bench_cache(args.cache_copies, args.size)
    if "b" in args.parts:
        bench_decode()
    if "d" in args.parts:
        bench_small_runs(args.small, args.workers, args.rounds, args.size)


if __name__ == "__main__":
    main()
