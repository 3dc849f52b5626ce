"""Near duplicates over the data dir, incrementally: a nightly run costs what the night's images cost.

:func:`find_near_duplicates` keeps its work under ``audit/duplicate_state/``
(:data:`radaudit.pacs.layout.DUPLICATE_STATE_DIR`):

- ``part-<n>.fps.npy`` and ``part-<n>.vec.npy``: the fingerprints (Shape: (M, 64, 64)) and search
  vectors (Shape: (M, 256)) of the images first fingerprinted in one run, written once and
  memory-mapped on reading;
- ``rows.parquet`` + ``nearest.npy``: per stored image its UID and cache key, pixel digest, part and
  offset, and its similarities to its ``k`` nearest in the search (:func:`radaudit.pipelines.stages.store.save_rows`
  pairs the two);
- ``pairs.parquet``: the candidate pairs whose grey levels matched, with both correlations.

A stored row holds while the image's cached pixels are unchanged (the same cache key) and the
settings that shape the stored work (``k``, ``max_shift``, ``grey_threshold``, the fingerprint
side) are the same. A nightly run fingerprints the new or changed images only, searches them
against all (:func:`radaudit.pacs.duplicates.search_candidates`), verifies only the new candidate
pairs, and decides every stored pair again with the current patients and thresholds. Old pairs
are not searched again: a pair of two old images stays found while both images live, even when
a new image would push it out of the ``k`` nearest, and an image whose neighbour vanished is
not searched again until the stored rows are rebuilt. They are rebuilt from nothing on
``full_rebuild``, when the settings change, or when fewer than half of the stored rows are still
live.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radaudit.pacs import cache
from radaudit.pacs import io as pio
from radaudit.pacs.index import read_manifest
from radaudit.pacs.layout import DUPLICATE_STATE_DIR, DUPLICATES_PATH
from radaudit.pipelines.stages.data import live_index
from radaudit.pipelines.stages.store import cache_keys, load_rows, save_rows

if TYPE_CHECKING:
    from radaudit.pacs.duplicates import DuplicatePairs

__all__ = ["cache_fingerprints", "duplicate_inputs", "find_near_duplicates", "update_duplicates"]

PART_IMAGES = 32_768  # images per stored part: bounds the memory of fingerprinting a whole archive
_ROWS = "rows.parquet"
_NEAREST = "nearest.npy"
_PAIRS = "pairs.parquet"


def duplicate_inputs(data_dir: str | os.PathLike[str]) -> tuple[list[str], pd.DataFrame, list[str | None],
                                                                 list[str] | None]:
    """What :func:`find_near_duplicates` needs of the cached, live images, sorted by UID: their UIDs,
    their cache manifest rows (geometry), patient keys (None where absent) and when the index first
    saw them (None for an index without that column)."""
    data_dir = Path(data_dir)
    live = live_index(data_dir).drop_duplicates("sop_instance_uid")
    manifest = read_manifest(data_dir)
    manifest = manifest[manifest["sop_instance_uid"].isin(live["sop_instance_uid"])].sort_values(
        "sop_instance_uid", ignore_index=True)
    facts = live.set_index("sop_instance_uid").reindex(manifest["sop_instance_uid"])
    patients = [k if isinstance(k, str) else None for k in facts["patient_key"]]
    first_seen = facts["first_seen"].astype(str).tolist() if "first_seen" in facts else None
    return manifest["sop_instance_uid"].tolist(), manifest, patients, first_seen


def cache_fingerprints(data_dir: str | os.PathLike[str], uids: Sequence[str], geometry: pd.DataFrame, *,
                       log: Any | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`radaudit.pacs.duplicates.fingerprint` and :func:`radaudit.pacs.duplicates.pixel_digest` of each
    cached image.

    Args:
        geometry: One cache manifest row per UID, same order.

    Returns:
        Shape: (N, S, S) fingerprints and N digests.
    """
    from radaudit.pacs.duplicates import FINGERPRINT_SIDE, GEOMETRY, fingerprint, pixel_digest

    fps, digests = [], []
    for i, (uid, facts) in enumerate(zip(uids, geometry[list(GEOMETRY)].to_dict("records"))):
        image = cache.read(data_dir, uid, mmap=True)
        fps.append(fingerprint(image, facts))
        digests.append(pixel_digest(image))
        if log is not None and (i + 1) % 10_000 == 0:
            log(f"near_duplicates: fingerprinted {i + 1}/{len(uids)} images")
    side = FINGERPRINT_SIDE
    return (np.stack(fps) if fps else np.zeros((0, side, side), np.float32)), digests


class _Parts:
    """The stored fingerprints of the current images, fancy-indexed like one (N, S, S) array."""

    def __init__(self, state_dir: Path, part: np.ndarray, offset: np.ndarray) -> None:
        self.part, self.offset = part, offset
        self.arrays = {int(p): np.load(state_dir / f"part-{int(p):06d}.fps.npy", mmap_mode="r")
                       for p in np.unique(part)}

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        first = next(iter(self.arrays.values()))
        out = np.empty((index.size, *first.shape[1:]), dtype=np.float32)
        parts = self.part[index]
        for p in np.unique(parts):
            mine = parts == p
            out[mine] = self.arrays[int(p)][self.offset[index[mine]]]
        return out


def _save_npy(array: np.ndarray, path: Path) -> None:
    """Write an array as ``.npy`` atomically, without a second copy in memory."""
    with pio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _load_state(state_dir: Path, settings: str, k: int) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame] | None:
    """The stored rows, nearest similarities and pairs, or None where nothing usable is stored."""
    if not (state_dir / _ROWS).exists():
        return None
    try:
        nearest, rows = load_rows(state_dir / _NEAREST, state_dir / _ROWS)
    except (ValueError, OSError):
        return None  # an interrupted write: start again
    if (rows.empty or not {"settings", "id"} <= set(rows.columns) or not (rows["settings"] == settings).all()
            or nearest.shape[1] != k):
        return None
    if not all((state_dir / f"part-{int(p):06d}.{kind}.npy").exists()
               for p in rows["part"].unique() for kind in ("fps", "vec")):
        return None
    pairs = pd.read_parquet(state_dir / _PAIRS) if (state_dir / _PAIRS).exists() else None
    if pairs is None:
        return None
    return rows, np.asarray(nearest), pairs


def update_duplicates(state_dir: str | os.PathLike[str], ids: Sequence[str],
                      fingerprints: Callable[[np.ndarray], tuple[np.ndarray, list[str]]],
                      buckets: Sequence[object], patients: Sequence[object] | None, *, full_rebuild: bool = False,
                      log: Any | None = None, **options: Any) -> DuplicatePairs:
    """The near-duplicate pairs of the images ``ids``, reusing what ``state_dir`` holds of earlier runs.

    Works on arrays, so the stage and the archive-scale benchmark share it: ``fingerprints(rows)``
    returns the fingerprints (Shape: (len(rows), S, S)) and pixel digests of the images at those
    row positions, and is called only for images the state does not hold.

    Args:
        state_dir: Where the state lives (see the module's docstring).
        ids: One key per image that changes when its pixels change (``uid|cache key``).
        buckets: Per image, the key images are searched within (the rounded aspect ratio).
        patients: Per image, the patient key (None: unknown).
        full_rebuild: Ignore the stored state.
        options: ``grey_threshold``, ``gradient_threshold``, ``cross_patient_threshold``, ``k``,
            ``max_shift``, ``chunk`` (see :func:`radaudit.pacs.duplicates.find_duplicates`).

    Returns:
        :class:`radaudit.pacs.duplicates.DuplicatePairs` over the rows of ``ids``.
    """
    from radaudit.pacs import duplicates as dup

    known_options = {"grey_threshold", "gradient_threshold", "cross_patient_threshold", "max_shift", "k", "chunk"}
    unknown = sorted(set(options) - known_options)
    if unknown:
        raise ValueError(f"unknown near-duplicate option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(known_options))}")
    grey_t = float(options.get("grey_threshold", dup.GREY_THRESHOLD))
    grad_t = float(options.get("gradient_threshold", dup.GRADIENT_THRESHOLD))
    cross_t = float(options.get("cross_patient_threshold", dup.CROSS_PATIENT_THRESHOLD))
    dup.check_thresholds(grey_t, grad_t, cross_t)
    k, max_shift = int(options.get("k", 8)), int(options.get("max_shift", dup.MAX_SHIFT))
    chunk = int(options.get("chunk", 2048))
    settings = json.dumps({"side": dup.FINGERPRINT_SIDE, "k": k, "max_shift": max_shift, "grey": grey_t,
                           "version": 1}, sort_keys=True)

    state_dir = Path(state_dir)
    ids = pd.Index(list(ids))
    n = len(ids)
    state = None if full_rebuild else _load_state(state_dir, settings, k)
    known = np.zeros(n, dtype=bool)
    stored = np.full(n, np.nan)
    if state is not None:
        rows, nearest_old, pairs_old = state
        where = pd.Series(np.arange(len(rows)), index=rows["id"].to_numpy())
        stored = where[~where.index.duplicated(keep="last")].reindex(ids).to_numpy()
        known = ~np.isnan(stored)
        if known.sum() * 2 < len(rows):  # most stored rows are gone: rebuild rather than carry them
            state, known, stored = None, np.zeros(n, dtype=bool), np.full(n, np.nan)
    if state is None:
        for old in state_dir.glob("part-*.npy") if state_dir.exists() else []:
            old.unlink()
        rows, nearest_old, pairs_old = None, None, None

    part = np.full(n, -1, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    digests = np.empty(n, dtype=object)
    live = np.zeros(n, dtype=bool)
    nearest = np.full((n, k), -np.inf, dtype=np.float32)
    if known.any():
        src = stored[known].astype(np.int64)
        part[known] = rows["part"].to_numpy(np.int64)[src]
        offset[known] = rows["offset"].to_numpy(np.int64)[src]
        digests[known] = rows["digest"].to_numpy(object)[src]
        live[known] = rows["live"].to_numpy(bool)[src]
        nearest[known] = nearest_old[src]
    new = ~known
    todo = np.flatnonzero(new)
    next_part = int(rows["part"].max()) + 1 if rows is not None and len(rows) else 0
    for start in range(0, todo.size, PART_IMAGES):
        batch = todo[start:start + PART_IMAGES]
        fps, dig = fingerprints(batch)
        _save_npy(fps, state_dir / f"part-{next_part:06d}.fps.npy")
        _save_npy(dup.candidate_vectors(fps), state_dir / f"part-{next_part:06d}.vec.npy")
        part[batch], offset[batch] = next_part, np.arange(batch.size)
        digests[batch] = dig
        live[batch] = ~np.isnan(fps).reshape(batch.size, -1).all(axis=1)
        next_part += 1
        if log is not None and todo.size > PART_IMAGES:
            log(f"near_duplicates: fingerprinted {start + batch.size}/{todo.size} images")
    if log is not None:
        log(f"near_duplicates: {todo.size} images fingerprinted, {n - todo.size} kept from the last run")

    vectors = np.zeros((n, dup.CANDIDATE_SIDE ** 2), dtype=np.float32)
    for p in np.unique(part):
        mine = part == p
        vectors[mine] = np.load(state_dir / f"part-{int(p):06d}.vec.npy", mmap_mode="r")[offset[mine]]
    ci, cj, nearest = dup.search_candidates(vectors, buckets, live, new, nearest, k=k)
    codes = pd.factorize(pd.Series(list(digests)))[0]
    keep = codes[ci] != codes[cj]
    ci, cj = ci[keep], cj[keep]
    sim = dup.pair_similarity(_Parts(state_dir, part, offset), ci, cj, grey_threshold=grey_t, max_shift=max_shift,
                              chunk=chunk)
    hopeful = sim[:, 0] >= grey_t
    found = pd.DataFrame({"i": ci[hopeful], "j": cj[hopeful], "grey": sim[hopeful, 0], "gradient": sim[hopeful, 1]})
    if pairs_old is not None and len(pairs_old):
        position = pd.Series(np.arange(n), index=ids)
        a = position.reindex(pairs_old["id_i"]).to_numpy()
        b = position.reindex(pairs_old["id_j"]).to_numpy()
        both = ~np.isnan(a) & ~np.isnan(b)
        a, b = a[both].astype(np.int64), b[both].astype(np.int64)
        carried = pd.DataFrame({"i": np.minimum(a, b), "j": np.maximum(a, b),
                                "grey": pairs_old["grey"].to_numpy()[both],
                                "gradient": pairs_old["gradient"].to_numpy()[both]})
        carried = carried[codes[carried["i"].to_numpy()] != codes[carried["j"].to_numpy()]]
        found = pd.concat([carried, found], ignore_index=True).drop_duplicates(["i", "j"], keep="last")
    found = found.sort_values(["i", "j"], ignore_index=True)
    if log is not None:
        log(f"near_duplicates: {ci.size} new candidate pairs verified, {len(found)} pairs matching in grey levels")

    fi, fj = found["i"].to_numpy(np.int64), found["j"].to_numpy(np.int64)
    fsim = found[["grey", "gradient"]].to_numpy(np.float64)
    near = dup.verified(fsim, dup.same_patient(patients, fi, fj, n), grey_threshold=grey_t,
                        gradient_threshold=grad_t, cross_patient_threshold=cross_t)
    ei, ej = dup.exact_pairs(list(digests), live)

    pio.write_parquet_frame(pd.DataFrame({"id_i": ids[fi], "id_j": ids[fj], "grey": fsim[:, 0],
                                          "gradient": fsim[:, 1]}), state_dir / _PAIRS)
    save_rows(nearest, state_dir / _NEAREST,
              pd.DataFrame({"id": ids, "digest": list(digests), "live": live, "part": part, "offset": offset,
                            "settings": settings}),
              state_dir / _ROWS)
    used = set(part.tolist())
    for stale in state_dir.glob("part-*.npy"):
        if int(stale.name.split("-")[1].split(".")[0]) not in used:
            stale.unlink()
    return dup.DuplicatePairs(np.concatenate([ei, fi[near]]), np.concatenate([ej, fj[near]]),
                              np.concatenate([np.ones(ei.size), fsim[near].min(axis=1)]),
                              np.concatenate([np.ones(ei.size, bool), np.zeros(int(near.sum()), bool)]))


def find_near_duplicates(data_dir: str | os.PathLike[str], *, log: Any | None = None, full_rebuild: bool = False,
                         **options: Any) -> pd.DataFrame:
    """Group the cached, live images that are the same radiograph (:mod:`radaudit.pacs.duplicates`); write
    ``audit/near_duplicates.parquet``.

    Near duplicates are looked for among images of the same aspect ratio, and a pair of two
    patients needs a near-perfect match (see :func:`radaudit.pacs.duplicates.find_duplicates`). A group's
    original is the member first seen by the index, then the smallest UID. The work of earlier
    runs is reused (:func:`update_duplicates`); ``full_rebuild`` starts from nothing.

    Args:
        options: For :func:`update_duplicates` (thresholds, ``k``, ``max_shift``).

    Returns:
        :func:`radaudit.pacs.duplicates.duplicate_groups`' rows.
    """
    from radaudit.pacs.duplicates import duplicate_groups

    data_dir = Path(data_dir)
    uids, geometry, patients, first_seen = duplicate_inputs(data_dir)
    ids = [f"{u}|{c}" for u, c in zip(uids, cache_keys(data_dir, uids))]
    aspect = (geometry["original_rows"] / geometry["original_columns"].clip(lower=1)).round(2).tolist()

    def fingerprints(rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return cache_fingerprints(data_dir, [uids[i] for i in rows], geometry.iloc[rows])

    pairs = update_duplicates(data_dir / DUPLICATE_STATE_DIR, ids, fingerprints, aspect, patients,
                              full_rebuild=full_rebuild, log=log, **options)
    groups = duplicate_groups(pairs, uids, patients, first_seen)
    pio.write_parquet_frame(groups, data_dir / DUPLICATES_PATH)
    return groups
