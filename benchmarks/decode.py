"""Ingest benchmark (b): caching JPEG 2000 radiographs at 256 px, reduced decode vs full decode.

Fast path: ``decode_image(path, min_side=256)`` (OpenJPEG skips the wavelet levels the resize
would discard) + resize. Naive path: ``pydicom.dcmread(path).pixel_array`` (full decode, all
frames) + the same normalization + the same resize. Single process, one decoder thread, as in
a cache worker. Also prints the peak RSS of decoding the largest radiograph, each path in a
fresh subprocess so the figures do not mix.

Run from the repository root::

    python benchmarks/decode.py
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from radaudit.pacs.pixels import decode_image, j2k_reduce_available, normalize_frame  # noqa: E402

SIZE = 256
ROUNDS = 3
FILES = ["RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"]


def resize(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Scale the long side to ``size`` (bilinear) and quantize to uint8, as the cache does."""
    h, w = img.shape
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(shape, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out) * 255 + 0.5, 0, 255).astype(np.uint8)


def fast(path: str) -> np.ndarray:
    return resize(decode_image(path, min_side=SIZE, threads=1).pixels)


def naive(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    frame = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        frame = frame[0]
    return resize(normalize_frame(frame, ds)[0])


def time_per_image(fn: Callable[[str], np.ndarray], paths: list[str]) -> float:
    """Median over rounds of the mean milliseconds per image."""
    fn(paths[0])  # warm-up: library loading, first-call costs
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        rounds.append((time.perf_counter() - start) * 1000 / len(paths))
    return statistics.median(rounds)


def peak_rss_mb(mode: str, path: str) -> float:
    """Peak RSS of a fresh interpreter that imports everything and decodes ``path`` once."""
    out = subprocess.run([sys.executable, __file__, "--rss", mode, path], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _rss_child(mode: str, path: str) -> None:
    if mode != "imports":
        {"fast": fast, "naive": naive}[mode](path)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def main() -> None:
    paths = [get_testdata_file(name) for name in FILES]
    # First, while this process is small: a child's ru_maxrss starts at its parent's RSS at fork.
    largest = max(paths, key=lambda p: os.path.getsize(p))
    rss = {mode: peak_rss_mb(mode, largest) for mode in ("imports", "fast", "naive")}
    print(f"JPEG 2000 radiographs of pydicom-data cached to {SIZE} px, single process, 1 decoder thread")
    print(f"reduced decode available (libopenjp2 found): {j2k_reduce_available()}")
    for name, p in zip(FILES, paths):
        d = decode_image(p, min_side=SIZE)
        print(f"  {name}: {d.original_shape[0]}x{d.original_shape[1]} -> reduce {d.reduce} -> "
              f"{d.pixels.shape[0]}x{d.pixels.shape[1]}")
    agreement = [np.abs(fast(p).astype(int) - naive(p).astype(int)) for p in paths]
    t_naive = time_per_image(naive, paths)
    t_fast = time_per_image(fast, paths)
    print(f"naive (dcmread().pixel_array + normalize + resize): {t_naive:7.1f} ms/image")
    print(f"fast  (decode_image(min_side={SIZE}) + resize):       {t_fast:7.1f} ms/image")
    print(f"speed-up: {t_naive / t_fast:.1f}x (goal >= 5x)")
    print(f"peak RSS (ru_maxrss) decoding {Path(largest).name} in a fresh process: fast {rss['fast']:.0f} MB, "
          f"naive {rss['naive']:.0f} MB (imports alone: {rss['imports']:.0f} MB)")
    print("uint8 difference fast vs naive: mean {:.2f}, 99th percentile {:.0f} grey levels".format(
        float(np.mean([a.mean() for a in agreement])), float(max(np.percentile(a, 99) for a in agreement))))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        _rss_child(sys.argv[2], sys.argv[3])
    else:
        main()
