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
   another), through the stage's incremental core (``update_duplicates``): a first run over
   all but ``--new-share`` of them (the baseline), then the nightly run that adds the rest.

With ``--quality-seeds``, instead: the demo's own export for each seed (``radaudit demo``'s
800 images in two shards, five devices, 3% duplicates and as many look-alikes, 64 px cache),
through the ``near_duplicates`` stage as the demo runs it, scored against the truth: pairs
found against true pairs (precision, recall), look-alikes grouped, copies missed by kind; then
the mean and the worst seed::

    python benchmarks/duplicates.py --quality-seeds 60 61 62 63 64     # about 2 min a seed on 2 cores

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


def prepare(work: Path, n: int, seed: int, devices: str | None = "mixed") -> Path:
    """Export and ingest once; a rerun with the same ``--work`` reuses them."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    data = work / "data"
    if not any((data / MANIFEST_DIR).glob("*.parquet")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generate_export(work / "export", work / "truth.parquet", n=n, seed=seed, size=128, duplicates=0.03,
                            devices=devices, force=True)
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
    ap.add_argument("--new-share", type=float, default=0.01, help="share of new images on the nightly run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--devices", default="mixed", help="device mix of the export, as the demo's ('legacy': one style)")
    ap.add_argument("--quality-seeds", type=int, nargs="*", default=None,
                    help="score the near_duplicates stage on the demo's export of each seed instead")
    ap.add_argument("--grey-threshold", type=float, default=None, help="one-patient grey-level threshold to try")
    ap.add_argument("--gradient-threshold", type=float, default=None, help="one-patient gradient threshold to try")
    ap.add_argument("--work", type=Path, default=None, help="keep the export and data dir here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    figs = Figures("duplicates", args.json, vars(args) | {"work": str(args.work)})
    work = args.work or Path(tempfile.mkdtemp(prefix="radaudit-dups-"))
    if args.quality_seeds:
        options = {k: v for k, v in (("grey_threshold", args.grey_threshold),
                                     ("gradient_threshold", args.gradient_threshold)) if v is not None}
        quality_seeds(figs, work, args.quality_seeds, args.n if args.n != 10_000 else 800, args.devices, options)
        return
    t = time.perf_counter()
    data = prepare(work, args.n, args.seed, None if args.devices == "legacy" else args.devices)
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
    scores, pairs_found, _ = score_groups(groups, truth, uids)
    scores.update({f"pair_{key}": value for key, value in pairs_found.items()})
    for key, value in scores.items():
        figs.add(f"{section}: quality", key, float(value), "", shown=f"{value:10.3f}" if isinstance(value, float)
                 else f"{value:10d}")

    if args.scale:
        scale_run(figs, data, uids, aspect, patients, args.scale, args.new_share, work)


def score_groups(groups: pd.DataFrame, truth: pd.DataFrame, uids: list[str]
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """The reported groups against the truth: the per-kind scores (``duplicate_scores``), the pair
    scores over the in-domain images (``pair_scores``), and each UID's reported group."""
    found = groups.set_index("sop_instance_uid").reindex(uids)
    scores = stages.duplicate_scores(found, truth, uids)
    scores.pop("_right")
    inside = [u for u in uids if not bool(truth["is_ood"].get(u, False))]
    reported = stages.duplicate_groups(uids, stages.copy_links(dict(zip(uids, found["duplicate_of"]))))
    true_groups = stages.duplicate_groups(uids, stages.copy_links(truth["duplicate_of"].to_dict()))
    return scores, stages.pair_scores(reported, true_groups, inside), reported


def quality_seeds(figs: Figures, work: Path, seeds: list[int], n: int, devices: str,
                  options: dict[str, float] | None = None) -> None:
    """The near_duplicates stage on the demo's export of each seed, against the truth; mean and worst."""
    from benchmarks.quality import make_export
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest

    rows = []
    for seed in seeds:
        root = work / f"seed{seed}"
        data = root / "data"
        if not any((data / MANIFEST_DIR).glob("*.parquet")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make_export(root, n, seed, 128, 2, duplicates=0.03, devices=None if devices == "legacy" else devices)
            run_ingest(IngestConfig(export_dir=root / "export", data_dir=data, cache=CacheParams(size=64), workers=2))
        groups = stages.find_near_duplicates(data, full_rebuild=True, **(options or {}))
        uids = stages.duplicate_inputs(data)[0]
        truth = pd.read_parquet(root / "truth.parquet").set_index("sop_instance_uid")
        scores, pairs, reported = score_groups(groups, truth, uids)
        missed = pd.Series([truth.loc[u, "duplicate_kind"] for u, d in truth["duplicate_of"].dropna().items()
                            if u in reported and reported.get(u) != reported.get(d) or u not in reported],
                           dtype=object).value_counts()
        row = {"seed": seed, "precision": pairs["precision"], "recall": pairs["recall"], "pairs": pairs["pairs"],
               "reported": pairs["pairs_reported"], "look_alikes_grouped": scores["hard_negatives_grouped"],
               "missed": ", ".join(f"{k} {v}" for k, v in missed.items()) or "none"}
        rows.append(row)
        figs.add("quality by seed", f"seed {seed}: pair precision / recall", pairs["recall"], "",
                 shown=f"{pairs['precision']:.3f} / {pairs['recall']:.3f}  ({pairs['pairs_reported']} reported, "
                       f"{pairs['pairs']} true; look-alikes grouped {scores['hard_negatives_grouped']}; "
                       f"copies missed: {row['missed']})", precision=pairs["precision"],
                 look_alikes_grouped=scores["hard_negatives_grouped"])
    table = pd.DataFrame(rows)
    for stat, fn in (("mean", "mean"), ("worst", "min")):
        figs.add("quality by seed", f"{stat}: pair precision / recall", float(getattr(table["recall"], fn)()), "",
                 shown=f"{getattr(table['precision'], fn)():.3f} / {getattr(table['recall'], fn)():.3f}")


def scale_run(figs: Figures, data: Path, uids: list[str], aspect: list[object], patients: list[str | None],
              scale: int, new_share: float, work: Path) -> None:
    """The near-duplicate stage's first run over ``scale`` images less the night's, then the nightly
    run that adds ``new_share`` of them: what each run fingerprints, searches and verifies."""
    from radaudit.pipelines.stages.duplicates import update_duplicates

    n = len(uids)
    section = f"{scale} images"
    reps = -(-scale // n)
    spent = {"fingerprints": 0.0}

    def fingerprints(rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        t = time.perf_counter()
        fps, digests = [], []
        for i in rows.tolist():
            image = _version(np.asarray(cache.read(data, uids[i % n], mmap=True)), (i // n) % 10)
            fps.append(fingerprint(image))
            digests.append(pixel_digest(image))
        spent["fingerprints"] += time.perf_counter() - t
        return np.stack(fps), digests

    big_ids = [str(i) for i in range(scale)]
    big_aspect = [aspect[i % n] for i in range(scale)]
    big_patients = [f"{patients[i % n]}-{i // n}" for i in range(scale)]
    night = max(1, int(round(scale * new_share)))
    # The night's images are spread over the archive, as new studies are (every image's versions
    # stay distinct, so none is a copy of another).
    late = np.random.default_rng(0).choice(scale, night, replace=False)
    old = np.setdiff1d(np.arange(scale), late)
    state = work / "duplicate_state"
    t = time.perf_counter()
    first = update_duplicates(state, [big_ids[i] for i in old], lambda r: fingerprints(old[r]),
                              [big_aspect[i] for i in old], [big_patients[i] for i in old], full_rebuild=True)
    first_s = time.perf_counter() - t
    figs.add(section, f"first run over {old.size} images ({reps} versions of each; fingerprints, search, "
                      f"verification; baseline)", first_s, "s")
    figs.add(section, "  of which fingerprints and pixel hashes", spent["fingerprints"], "s")
    spent["fingerprints"] = 0.0
    t = time.perf_counter()
    nightly = update_duplicates(state, big_ids, fingerprints, big_aspect, big_patients)
    night_s = time.perf_counter() - t
    figs.add(section, f"nightly run with {night} new images ({new_share:.0%})", night_s, "s")
    figs.add(section, "  of which fingerprints and pixel hashes", spent["fingerprints"], "s")
    figs.add(section, "nightly / first run", night_s / first_s, "x", shown=f"{night_s / first_s:10.3f}")
    figs.add(section, "pairs found: first run, nightly run", float(first.i.size), "",
             shown=f"{first.i.size:10d} {nightly.i.size:10d}")


if __name__ == "__main__":
    main()
