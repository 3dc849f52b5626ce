"""Ingest speed: header indexing and cache scaling, each against a baseline measured in the same run.

    python benchmarks/ingest.py [--copies 40] [--workers 2]

(a) Header indexing, files/s: ``pacs.index.update_index`` (content sniffing, header-only parse,
    pseudonymization, pixel plausibility) against a naive loop that reads each whole file with
    ``pydicom.dcmread``. The export is made of copies of the real radiographs in pydicom-data
    (RG1, RG3; uncompressed and JPEG 2000) and pydicom's small test files.
(c) The cache step (decode, border removal, orientation, resize, write) on the JPEG 2000
    radiographs with 1 and 2 worker processes, and the peak RSS of one worker on the largest.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs.cache import CacheParams  # noqa: E402
from pacs.ingest import IngestConfig, run_ingest  # noqa: E402
from pacs.index import update_index  # noqa: E402

RADIOGRAPHS = ["RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KI.dcm"]
SMALL = ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb.dcm", "emri_small.dcm", "JPEG-LL.dcm"]


def make_export(root: Path, names: list[str], copies: int) -> list[Path]:
    """Copy each named test file ``copies`` times into a nested export; return the paths."""
    paths = []
    for c in range(copies):
        for name in names:
            dst = root / f"P{c:03d}" / name.replace(".dcm", "")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(get_testdata_file(name), dst)
            paths.append(dst)
    return paths


def bench_headers(root: Path, paths: list[Path], workers: int) -> None:
    """Print files/s of the naive loop and of update_index, and their ratio."""
    for p in paths:  # warm the page cache for both contenders
        p.read_bytes()
    t0 = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p)
    naive = len(paths) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as data:
        t0 = time.perf_counter()
        update = update_index(root, data, key=b"bench", workers=1)
        ours = len(paths) / (time.perf_counter() - t0)
        assert len(update.index) == len(paths), update.errors
        t0 = time.perf_counter()
        update_index(root, data, key=b"bench", workers=workers)
        ours_par = len(paths) / (time.perf_counter() - t0)
    print(f"(a) header indexing, {len(paths)} files ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB)")
    print(f"    naive dcmread loop          : {naive:8.0f} files/s")
    print(f"    update_index, 1 process     : {ours:8.0f} files/s   ratio {ours / naive:5.1f}x")
    print(f"    update_index, {workers} processes   : {ours_par:8.0f} files/s   ratio {ours_par / naive:5.1f}x")


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
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(c) cache step (ingest incl. headers), {n} JPEG 2000 radiographs -> {size} px")
    print(f"    1 worker : {rates[1]:6.1f} images/s")
    print(f"    2 workers: {rates[2]:6.1f} images/s   scaling {rates[2] / rates[1]:4.2f}x")
    print(f"    peak RSS of a worker process: {peak_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40, help="copies of each test file in the header benchmark")
    parser.add_argument("--cache-copies", type=int, default=4, help="copies of each radiograph in the cache benchmark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        paths = make_export(root, RADIOGRAPHS + SMALL, args.copies)
        bench_headers(root, paths, args.workers)
    bench_cache(args.cache_copies, args.size)


if __name__ == "__main__":
    main()
