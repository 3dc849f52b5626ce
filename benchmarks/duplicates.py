"""Near-duplicate detection: speed at 10,000 and 100,000 images, quality against the synthetic truth.

    python benchmarks/duplicates.py --n 10000 --scale 100000     # about 10 min on 2 cores
    python benchmarks/duplicates.py --n 400 --scale 2000         # a smoke test

1. A synthetic export of ``--n`` images with 3% duplicates of each kind and as many hard
   negatives (128 px, like the demo), ingested into a 64 px cache (``--work`` keeps it for reruns).
2. At ``--n``: fingerprinting the cache, the candidate search, the verification and the groups,
   timed one by one; the figures against the truth (precision of the reported copies, recall
   per kind, hard negatives grouped). Baseline in the same run: the same exact search on the
   full 64 x 64 fingerprints instead of 16 x 16 ones (what a plain nearest-neighbour search
   over the pixels would do).
3. At ``--scale``: the cached images again, each in one of ten distinct versions (the eight
   flips and quarter turns, two of them with inverted grey levels: none is a duplicate of
   another), fingerprinted, searched and verified; the same steps, timed.

Figures go to ``benchmarks/out/duplicates.json`` (or ``$OUT``) as they are measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeVar
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._figures import Figures  # noqa: E402
from radaudit.pipelines import stages  # noqa: E402
from radaudit.pacs import cache  # noqa: E402
from radaudit.pacs.layout import MANIFEST_DIR  # noqa: E402
from radaudit.pacs.duplicates import (  # noqa: E402
    candidate_pairs,
    duplicate_groups,
    find_duplicates,
    fingerprint,
    pixel_digest,
)

T = TypeVar("T")


def prepare(work: Path, n: int, seed: int) -> Path:
    """Export and ingest once; a rerun with the same ``--work`` reuses them."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    data = work / "data"
    if not any((data / MANIFEST_DIR).glob("*.parquet")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generate_export(work / "export", work / "truth.parquet", n=n, seed=seed, size=128, duplicates=0.03,
                            force=True)
        run_ingest(IngestConfig(export_dir=work / "export", data_dir=data, cache=CacheParams(size=64), workers=2))
    return data


def _version(image: np.ndarray, v: int) -> np.ndarray:
    """One of ten distinct versions of a cached image (v = 0 is the image itself)."""
    out = np.rot90(image, v % 4)
    out = out[:, ::-1] if (v // 4) % 2 else out
    return 255 - out if v >= 8 else np.ascontiguousarray(out)


def timed(figs: Figures, section: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` and record its wall time as a figure."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    figs.add(section, what, time.perf_counter() - t, "s")
    return result


def exact_full_search(fps: np.ndarray, buckets: list[object], k: int = 8, block: int = 1024) -> int:
    """The baseline: each image's k nearest within its bucket by cosine on the full fingerprints
    (unknown pixels as the image's mean), the same search as ``candidate_pairs`` but at 64 x 64."""
    n = fps.shape[0]
    x = fps.reshape(n, -1)
    x = np.where(np.isnan(x), np.nanmean(x, axis=1, keepdims=True), x)
    x = np.nan_to_num(x - x.mean(axis=1, keepdims=True))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    keys = pd.factorize(pd.Series(buckets))[0]
    found = 0
    for key in np.unique(keys):
        z = x[keys == key]
        kk = min(k, len(z) - 1)
        for s in range(0, len(z), block) if kk > 0 else ():
            sim = z[s:s + block] @ z.T
            sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
            found += np.argpartition(-sim, kk - 1, axis=1)[:, :kk].size
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images in the synthetic export")
    ap.add_argument("--scale", type=int, default=100_000, help="images for the scale run (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the export and data dir here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    figs = Figures("duplicates", args.json, vars(args) | {"work": str(args.work)})
    work = args.work or Path(tempfile.mkdtemp(prefix="radaudit-dups-"))
    t = time.perf_counter()
    data = prepare(work, args.n, args.seed)
    figs.add("setup", f"export + ingest of {args.n} images (or reuse)", time.perf_counter() - t, "s")

    uids, manifest, patients, _ = stages.duplicate_inputs(data)
    n = len(uids)
    section = f"{n} images"
    fps, digests = timed(figs, section, "fingerprints and pixel hashes", stages.cache_fingerprints, data, uids,
                         manifest)
    aspect = (manifest["original_rows"] / manifest["original_columns"]).round(2).tolist()
    timed(figs, section, "candidate search (16 x 16, within an aspect ratio)", candidate_pairs, fps, aspect)
    t = time.perf_counter()
    exact_full_search(fps, aspect)
    base = time.perf_counter() - t
    figs.add(section, "baseline: the same search on full 64 x 64 fingerprints", base, "s")
    pairs = timed(figs, section, "find_duplicates (exact + candidates + verification)", find_duplicates, fps,
                  digests, aspect, patients)
    groups = timed(figs, section, "groups", duplicate_groups, pairs, uids, patients)
    # The figures against the truth, as the report would show them.
    truth = pd.read_parquet(work / "truth.parquet").set_index("sop_instance_uid")
    rows = groups.set_index("sop_instance_uid").reindex(uids)
    scores = stages.duplicate_scores(rows, truth, uids)
    scores.pop("_right")
    for key, value in scores.items():
        figs.add(f"{section}: quality", key, float(value), "", shown=f"{value:10.3f}" if isinstance(value, float)
                 else f"{value:10d}")

    if args.scale:
        section = f"{args.scale} images"
        reps = -(-args.scale // n)

        def scaled_fingerprints() -> tuple[np.ndarray, list[str]]:
            fps, digests = [], []
            for i in range(args.scale):
                image = _version(np.asarray(cache.read(data, uids[i % n], mmap=True)), (i // n) % 10)
                fps.append(fingerprint(image))
                digests.append(pixel_digest(image))
            return np.stack(fps), digests

        big, big_digests = timed(figs, section, f"fingerprints and pixel hashes ({reps} versions of each image)",
                                 scaled_fingerprints)
        big_aspect = [aspect[i % n] for i in range(args.scale)]
        big_patients = [f"{patients[i % n]}-{i // n}" for i in range(args.scale)]
        timed(figs, section, "candidate search (16 x 16, within an aspect ratio)", candidate_pairs, big, big_aspect)
        pairs = timed(figs, section, "find_duplicates (exact + candidates + verification)", find_duplicates, big,
                      big_digests, big_aspect, big_patients)
        timed(figs, section, "groups", duplicate_groups, pairs, [str(i) for i in range(args.scale)], big_patients)
        figs.add(section, "pairs found", float(pairs.i.size), "", shown=f"{pairs.i.size:10d}")


if __name__ == "__main__":
    main()
