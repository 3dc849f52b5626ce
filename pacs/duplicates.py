"""Near-duplicate radiographs: the same image twice, under other UIDs or another patient.

A PACS holds the same radiograph twice when it is re-exported under new UIDs, sent twice,
re-encoded (another transfer syntax or bit depth), re-exposed seconds later (a few pixels off),
or copied into another patient's study. Such copies inflate cohorts and leak between the
training and test splits that radaudit's users build. Images that merely look alike must *not*
be grouped: the other side of the same patient (nearly a mirror image), a follow-up of the same
region (the same anatomy, positioned anew), and other patients' images of the same view.

Detection works on the cached pixels and their geometry (:mod:`radaudit.pacs.cache`), so it does not
depend on a backbone, and its thresholds do not depend on the cache size:

1. **Exact**: a hash of the cached pixels (:func:`pixel_digest`); equal hashes are one group.
2. **Fingerprints** (:func:`fingerprint`): the cached content is put back where it was in the
   original image's field (border removal and orientation undone, with sub-pixel accuracy),
   on a ``FINGERPRINT_SIDE`` square; outside the exposed field is unknown (NaN). So two copies
   whose borders were cropped differently still line up.
3. **Candidates** (:func:`candidate_pairs`): the ``k`` most similar other images by cosine
   similarity of 16 x 16 fingerprints, among images of the same aspect ratio (the same
   radiograph keeps its field of view). An exact blocked search: see ``benchmarks/duplicates.py``.
4. **Verification**: a pair is a near duplicate when both the grey levels and their gradients
   (fine structure) correlate, maximized over shifts of up to ``MAX_SHIFT`` pixels (3% of the
   side), over the field both images expose: :func:`shift_correlation`.

Groups are the connected components of the verified pairs (:func:`duplicate_groups`). Flat
images (blank exposures) have no fingerprint and are never grouped: they are out of domain,
not copies.

Run the tests with::

    python -m pytest tests/pacs/test_duplicates.py -q
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FINGERPRINT_SIDE",
    "DuplicatePairs",
    "candidate_pairs",
    "candidate_vectors",
    "check_thresholds",
    "duplicate_groups",
    "exact_pairs",
    "find_duplicates",
    "fingerprint",
    "gradient_magnitude",
    "pair_similarity",
    "pixel_digest",
    "same_patient",
    "search_candidates",
    "shift_correlation",
    "verified",
]

FINGERPRINT_SIDE = 64
MAX_SHIFT = 2
CANDIDATE_SIDE = 16
# Verified near duplicates of one patient reach both. Chosen on the demo's exports of seeds 12, 13,
# 30 and 32 (`benchmarks/duplicates.py --quality-seeds 12 13 30 32`): a re-exposure's grey levels
# fell to 0.89-0.92 (lost at 0.94), while two images of one study, region and view reached 0.98-0.99
# in grey levels but at most 0.91 in gradients (paired at 0.88). Pair precision / recall, mean and
# worst of the four: 0.958 / 0.938 and 0.920 / 0.917 at (0.94, 0.88); 0.979 / 0.969 and 0.957 / 0.917
# at (0.88, 0.915).
GREY_THRESHOLD = 0.88
GRADIENT_THRESHOLD = 0.915
# Across patients only a copy of the file is plausible (a re-exposure is the same patient's), and
# a copy, even re-encoded, correlates almost perfectly; other patients' images of the same view
# reached 0.98 (grey) and 0.94 (gradients) on the synthetic exports.
CROSS_PATIENT_THRESHOLD = 0.985
_MIN_OVERLAP = 0.5  # share of the smaller exposed field both images must share to be compared
_MIN_PIXELS = 64
# The half-resolution look keeps pairs within this of the grey threshold. 0.04 lost a re-exposure
# with a small exposed field (0.85 at half resolution, 0.996 in full); at 0.15 recall equals that
# of no first look on 8 synthetic exports (300 to 10,000 images), at about 0.7x its time.
_COARSE_MARGIN = 0.15
_FLAT = 1.0  # grey levels (of 255): a fingerprint this flat is a blank image, never a duplicate
GEOMETRY = ("content_height", "content_width", "rot90", "crop_top", "crop_bottom", "crop_left", "crop_right",
            "original_rows", "original_columns")


def pixel_digest(image: np.ndarray) -> str:
    """A hash of an image's pixels, shape and dtype: equal digests mean identical pixels."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode(), digest_size=16)
    h.update(a.data)
    return h.hexdigest()


def fingerprint(image: np.ndarray, geometry: Mapping[str, Any] | None = None,
                side: int = FINGERPRINT_SIDE) -> np.ndarray:
    """The cached image put back into its original field, on a ``side`` x ``side`` square.

    Args:
        image: Shape: (H, W), a cached image (content centred on a black letterbox).
        geometry: The image's manifest facts ``GEOMETRY`` (content box, rotation, crop box in
            original pixels, original size); None: the whole image is the original field.
        side: Fingerprint side in pixels.

    Returns:
        Shape: (side, side), float32 grey levels; NaN outside the exposed field, and all NaN
        for a flat (blank) image.
    """
    from scipy import ndimage

    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {a.shape}")
    h, w = a.shape
    if geometry is None:
        geometry = {"content_height": h, "content_width": w, "rot90": 0, "crop_top": 0, "crop_bottom": h,
                    "crop_left": 0, "crop_right": w, "original_rows": h, "original_columns": w}
    missing = [k for k in GEOMETRY if k not in geometry or pd.isna(geometry[k])]
    if missing:
        raise ValueError(f"geometry lacks {missing}; pass the image's cache manifest row")
    g = {k: float(geometry[k]) for k in GEOMETRY}
    ch, cw = int(min(max(g["content_height"], 1), h)), int(min(max(g["content_width"], 1), w))
    top, left = (h - ch) // 2, (w - cw) // 2
    box = np.rot90(a[top:top + ch, left:left + cw].astype(np.float32), -int(g["rot90"]))
    bh, bw = box.shape
    span_y = max(g["crop_bottom"] - g["crop_top"], 1.0)
    span_x = max(g["crop_right"] - g["crop_left"], 1.0)
    # Centre of fingerprint pixel -> original pixel -> content pixel.
    yy = ((np.arange(side) + 0.5) / side * g["original_rows"] - g["crop_top"]) / span_y * bh - 0.5
    xx = ((np.arange(side) + 0.5) / side * g["original_columns"] - g["crop_left"]) / span_x * bw - 0.5
    y, x = np.meshgrid(yy, xx, indexing="ij")
    inside = (y >= -0.5) & (y <= bh - 0.5) & (x >= -0.5) & (x <= bw - 0.5)
    out = ndimage.map_coordinates(box, [y, x], order=1, mode="nearest").astype(np.float32)
    if not inside.any() or out[inside].std() < _FLAT:
        return np.full((side, side), np.nan, dtype=np.float32)
    return np.where(inside, out, np.nan).astype(np.float32)


def gradient_magnitude(fp: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The gradient magnitude of a fingerprint smoothed by ``sigma`` pixels (fine structure that
    tolerates sub-pixel shifts); NaN where the field or its 1-pixel margin is unknown.

    Args:
        fp: Shape: (S, S) or (N, S, S), from :func:`fingerprint`.
        sigma: Gaussian smoothing in pixels before the gradient.
    """
    from scipy import ndimage

    f = np.asarray(fp, dtype=np.float32)
    single = f.ndim == 2
    f = f[None] if single else f
    known = ~np.isnan(f)
    z = np.where(known, f, 0.0)
    num = ndimage.gaussian_filter(z, (0, sigma, sigma))
    den = ndimage.gaussian_filter(known.astype(np.float32), (0, sigma, sigma))
    z = np.where(known, num / np.maximum(den, 1e-6), 0.0)
    gy, gx = np.gradient(z, axis=(1, 2))
    inner = ndimage.binary_erosion(known, structure=np.ones((1, 3, 3), bool))
    out = np.where(inner, np.hypot(gy, gx), np.nan).astype(np.float32)
    return out[0] if single else out


def shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Pearson correlation of fingerprint pairs over the field both expose, maximized over shifts
    of up to ``max_shift`` pixels on each axis.

    Args:
        a, b: Shape: (P, S, S) (or (S, S)), NaN = unknown; compared pairwise.
        max_shift: Largest shift in pixels, each axis (both directions).

    Returns:
        Shape: (P,) (or a scalar), in [-1, 1]; -1 where the pair shares less than half of the
        smaller exposed field (or 64 pixels), or either side is flat there.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must both have Shape: (P, S, S), got {a.shape} and {b.shape}")
    p, s = a.shape[0], a.shape[1]
    field = np.minimum((~np.isnan(a)).reshape(p, -1).sum(axis=1), (~np.isnan(b)).reshape(p, -1).sum(axis=1))
    enough = np.maximum(_MIN_OVERLAP * field, _MIN_PIXELS)
    best = np.full(p, -1.0, dtype=np.float64)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pa = a[:, max(0, dy):s + min(0, dy), max(0, dx):s + min(0, dx)].reshape(p, -1)
            pb = b[:, max(0, -dy):s + min(0, -dy), max(0, -dx):s + min(0, -dx)].reshape(p, -1)
            both = ~np.isnan(pa) & ~np.isnan(pb)
            n = both.sum(axis=1)
            xa, xb = np.where(both, pa, 0.0), np.where(both, pb, 0.0)
            xa -= (xa.sum(axis=1) / np.maximum(n, 1))[:, None]
            xb -= (xb.sum(axis=1) / np.maximum(n, 1))[:, None]
            xa *= both
            xb *= both
            den = np.sqrt((xa * xa).sum(axis=1, dtype=np.float64) * (xb * xb).sum(axis=1, dtype=np.float64))
            ok = (n >= enough) & (den > 1e-9)
            r = np.where(ok, (xa * xb).sum(axis=1, dtype=np.float64) / np.maximum(den, 1e-12), -1.0)
            best = np.maximum(best, r)
    return best[0] if single else best


def _pool2(fps: np.ndarray) -> np.ndarray:
    """(N, S, S) fingerprints at half the side: the mean of each 2 x 2 block's known pixels."""
    n, s = fps.shape[0], fps.shape[1] // 2 * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a block with no known pixel stays NaN
        return np.nanmean(fps[:, :s, :s].reshape(n, s // 2, 2, s // 2, 2), axis=(2, 4)).astype(np.float32)


def _shrink(fps: np.ndarray, side: int) -> np.ndarray:
    """Mean-pool (N, S, S) fingerprints to (N, side*side), unknown as the image's mean, centred, unit norm."""
    n, s = fps.shape[0], fps.shape[1]
    f = s // side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a flat image has no known pixel: zeros
        mean = np.nanmean(fps.reshape(n, -1), axis=1) if n else np.zeros(0)
    filled = np.where(np.isnan(fps), np.nan_to_num(mean)[:, None, None], fps)
    x = filled[:, :side * f, :side * f].reshape(n, side, f, side, f).mean(axis=(2, 4)).reshape(n, -1)
    x -= x.mean(axis=1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def candidate_vectors(fps: np.ndarray) -> np.ndarray:
    """The search vectors of fingerprints: 16 x 16 mean-pooled, centred, unit norm (zeros for a flat image).

    Each row depends on its own fingerprint only, so a nightly run stores them and computes the
    new images' alone. Shape: (N, S, S) -> (N, 256), float32.
    """
    fps = np.asarray(fps, dtype=np.float32)
    if fps.ndim != 3 or fps.shape[1] != fps.shape[2]:
        raise ValueError(f"fps must have Shape: (N, S, S), got {fps.shape}")
    return _shrink(fps, CANDIDATE_SIDE)


def search_candidates(vectors: np.ndarray, buckets: Sequence[object] | None, live: np.ndarray,
                      new: np.ndarray | None = None, nearest: np.ndarray | None = None, *, k: int = 8,
                      budget: int = 1 << 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs that involve a new image: each new image's ``k`` most similar others in its
    bucket, and the old images a new one enters the ``k`` nearest of.

    With every image new this is the whole exact search (:func:`candidate_pairs`). A nightly run
    passes the night's images as ``new`` and each old image's stored similarities to its ``k``
    nearest (``nearest``, from the last run); pairs of two old images are the last run's and are
    not searched again.

    Args:
        vectors: Shape: (N, D), from :func:`candidate_vectors`.
        buckets: N keys; only images of one bucket are compared (None: one bucket).
        live: Shape: (N,), False for flat images (never candidates).
        new: Shape: (N,), the images to search for; None: all.
        nearest: Shape: (N, k), each image's similarities to its nearest, descending, -inf where it
            had fewer than ``k`` others; read for the old images only. None: no old image.
        k: Candidates per image.
        budget: Similarities held at once (memory: 4 bytes each, twice).

    Returns:
        ``(i, j, nearest)``: unique pairs with i < j, and ``nearest`` updated: the new images'
        own, and the old images' merged with the new images that entered them.
    """
    z = np.asarray(vectors, dtype=np.float32)
    n = z.shape[0]
    new = np.ones(n, dtype=bool) if new is None else np.asarray(new, dtype=bool)
    live = np.asarray(live, dtype=bool)
    top = np.full((n, k), -np.inf, dtype=np.float32)
    if nearest is not None:
        top[~new] = np.asarray(nearest, dtype=np.float32)[~new]
    keys = np.zeros(n, dtype=np.int64) if buckets is None else pd.factorize(pd.Series(list(buckets)))[0]
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    entered: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (old image, new image, similarity)
    for key in np.unique(keys[live & new]):
        members = np.flatnonzero(live & (keys == key))
        if members.size < 2:
            continue
        queries = np.flatnonzero(new[members])  # positions within members
        old = ~new[members]
        kk = min(k, members.size - 1)
        step = max(1, budget // members.size)
        for start in range(0, queries.size, step):
            q = queries[start:start + step]
            sim = z[members[q]] @ z[members].T  # (len(q), members)
            sim[np.arange(q.size), q] = -np.inf
            near = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            rows.append(members[np.repeat(q, kk)])
            cols.append(members[near.ravel()])
            best = -np.sort(-np.take_along_axis(sim, near, axis=1), axis=1)
            top[members[q], :kk] = best
            if old.any():
                # An old image gains a new neighbour that beats its k-th nearest so far.
                oi = np.flatnonzero(old)
                s_old = sim[:, oi]
                qi, oj = np.nonzero(s_old > top[members[oi], kk - 1][None, :])
                if qi.size:
                    entered.append((members[oi[oj]], members[q[qi]], s_old[qi, oj]))
    if entered:
        a = np.concatenate([e[0] for e in entered])
        b = np.concatenate([e[1] for e in entered])
        s = np.concatenate([e[2] for e in entered])
        for image in np.unique(a):
            mine = a == image
            merged = np.concatenate([top[image], s[mine]])
            kk = int(np.isfinite(top[image]).sum() + mine.sum())
            keep = -np.sort(-merged)[:k]
            cut = keep[min(k, kk) - 1]
            top[image] = keep
            won = b[mine][s[mine] >= cut]
            rows.append(np.full(won.size, image, dtype=np.int64))
            cols.append(won.astype(np.int64))
    i, j = np.concatenate(rows), np.concatenate(cols)
    if i.size == 0:
        return i, j, top
    pairs = np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], top


def candidate_pairs(fps: np.ndarray, buckets: Sequence[object] | None = None, *, k: int = 8,
                    block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each image's ``k`` most similar others within its bucket, by cosine similarity of 16 x 16
    fingerprints (exact search in blocks; flat images have no candidates).

    Args:
        fps: Shape: (N, S, S), from :func:`fingerprint`.
        buckets: N keys (e.g. the rounded aspect ratio); only images of one bucket are compared.
        k: Candidates per image.
        block: Rows compared at once (memory: ``block`` x bucket size floats, twice).

    Returns:
        ``(i, j)``, unique pairs with i < j.
    """
    fps = np.asarray(fps, dtype=np.float32)
    n = fps.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    live = ~np.isnan(fps).reshape(n, -1).all(axis=1)
    i, j, _ = search_candidates(candidate_vectors(fps), buckets, live, k=k, budget=block * max(n, 1))
    return i, j


def pair_similarity(fps: Any, i: np.ndarray, j: np.ndarray, *, grey_threshold: float = GREY_THRESHOLD,
                    max_shift: int = MAX_SHIFT, chunk: int = 2048) -> np.ndarray:
    """Grey-level and gradient correlations of candidate pairs, maximized over shifts.

    A first look at half the resolution (a quarter of the pixels, 9 shifts instead of 25) drops
    most candidates; gradients are compared only where the grey levels already reach
    ``grey_threshold``. Below it a correlation is -1 (not computed).

    Args:
        fps: Fingerprints, Shape: (N, S, S): an array, or anything that fancy-indexes like one
            (a store of memory-mapped parts).
        i, j: Pair members, Shape: (P,).

    Returns:
        Shape: (P, 2): grey-level and gradient correlations.
    """
    sims = []
    for s in range(0, len(i), chunk):
        a, b = np.asarray(i[s:s + chunk]), np.asarray(j[s:s + chunk])
        # Each image of the chunk is read and pooled once, however many pairs it is in.
        members, where = np.unique(np.concatenate([a, b]), return_inverse=True)
        f = np.asarray(fps[members], dtype=np.float32)
        coarse = _pool2(f)
        wa, wb = where[:a.size], where[a.size:]
        fa, fb = f[wa], f[wb]
        grey = np.full(a.size, -1.0)
        near = shift_correlation(coarse[wa], coarse[wb], max(1, max_shift // 2)) >= grey_threshold - _COARSE_MARGIN
        if near.any():
            grey[near] = shift_correlation(fa[near], fb[near], max_shift)
        grad = np.full(a.size, -1.0)
        hopeful = grey >= grey_threshold
        if hopeful.any():
            grad[hopeful] = shift_correlation(gradient_magnitude(fa[hopeful]), gradient_magnitude(fb[hopeful]),
                                              max_shift)
        sims.append(np.stack([grey, grad], axis=1))
    return np.concatenate(sims) if sims else np.zeros((0, 2))


def same_patient(patients: Sequence[object] | None, i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Per pair, whether both images belong to one known patient (None or NaN: unknown)."""
    owners = list(patients) if patients is not None else [None] * n
    who = pd.factorize(pd.Series(["" if p is None else str(p) for p in owners]))[0]
    known = np.array([p is not None and not (np.isscalar(p) and pd.isna(p)) and p is not pd.NA for p in owners],
                     dtype=bool)
    return (who[i] == who[j]) & known[i] & known[j]


def verified(sim: np.ndarray, one_patient: np.ndarray, *, grey_threshold: float = GREY_THRESHOLD,
             gradient_threshold: float = GRADIENT_THRESHOLD,
             cross_patient_threshold: float = CROSS_PATIENT_THRESHOLD) -> np.ndarray:
    """Which pairs are near duplicates: one patient's reach both one-patient thresholds, two
    patients' (or an unknown one's) reach ``cross_patient_threshold`` in both correlations."""
    sim = np.asarray(sim, dtype=np.float64).reshape(-1, 2)
    if sim.shape[0] == 0:
        return np.zeros(0, bool)
    return np.where(one_patient, (sim[:, 0] >= grey_threshold) & (sim[:, 1] >= gradient_threshold),
                    sim.min(axis=1) >= cross_patient_threshold)


def check_thresholds(grey_threshold: float, gradient_threshold: float, cross_patient_threshold: float) -> None:
    """Refuse thresholds outside (0, 1), or a cross-patient one below the one-patient ones."""
    for name, value in (("grey_threshold", grey_threshold), ("gradient_threshold", gradient_threshold),
                        ("cross_patient_threshold", cross_patient_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    if cross_patient_threshold < max(grey_threshold, gradient_threshold):
        raise ValueError(f"cross_patient_threshold ({cross_patient_threshold}) must be at least the one-patient "
                         f"thresholds ({grey_threshold}, {gradient_threshold}): a copy across patients needs more")


def exact_pairs(digests: Sequence[str], live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of consecutive images (by row) with equal pixel digests, flat images excluded (blank
    exposures are not copies of each other): ``(i, j)``, i < j, chaining every group."""
    n = len(digests)
    codes = pd.factorize(pd.Series(list(digests)))[0]
    order = np.lexsort((np.arange(n), codes))
    same = (codes[order][1:] == codes[order][:-1]) & live[order][1:] & live[order][:-1]
    ei, ej = order[:-1][same], order[1:][same]
    return np.minimum(ei, ej).astype(np.int64), np.maximum(ei, ej).astype(np.int64)


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs found by :func:`find_duplicates` (i < j), with their similarity (1.0 when exact:
    else the smaller of the grey-level and gradient correlations) and whether the pixels are
    identical."""

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray


def find_duplicates(fps: np.ndarray, digests: Sequence[str], buckets: Sequence[object] | None = None,
                    patients: Sequence[object] | None = None, *,
                    grey_threshold: float = GREY_THRESHOLD, gradient_threshold: float = GRADIENT_THRESHOLD,
                    cross_patient_threshold: float = CROSS_PATIENT_THRESHOLD,
                    max_shift: int = MAX_SHIFT, k: int = 8, chunk: int = 2048) -> DuplicatePairs:
    """Pairs of images that are the same radiograph: identical pixels, or verified near duplicates.

    Args:
        fps: Shape: (N, S, S) from :func:`fingerprint`.
        digests: N :func:`pixel_digest` values.
        buckets: N keys; near duplicates are looked for within a bucket (see :func:`candidate_pairs`).
        patients: N patient keys (None: unknown, treated as another patient's).
        grey_threshold, gradient_threshold: Correlations a near-duplicate pair of one patient
            reaches, in (0, 1).
        cross_patient_threshold: Both correlations a near-duplicate pair of two patients (or an
            unknown one) reaches.
        max_shift: Largest shift in fingerprint pixels.
        k: Candidates per image.
        chunk: Pairs verified at once (memory).

    Returns:
        :class:`DuplicatePairs`.
    """
    fps = np.asarray(fps, dtype=np.float32)
    if fps.ndim != 3 or fps.shape[1] != fps.shape[2]:
        raise ValueError(f"fps must have Shape: (N, S, S), got {fps.shape}")
    n = fps.shape[0]
    if len(digests) != n or any(v is not None and len(v) != n for v in (buckets, patients)):
        raise ValueError(f"digests, buckets and patients need one entry per fingerprint ({n})")
    check_thresholds(grey_threshold, gradient_threshold, cross_patient_threshold)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return DuplicatePairs(empty, empty, np.zeros(0), np.zeros(0, bool))
    live = ~np.isnan(fps).reshape(n, -1).all(axis=1)
    ei, ej = exact_pairs(digests, live)
    # Candidates that are not already exact copies, verified on grey levels and gradients.
    ci, cj = candidate_pairs(fps, buckets, k=k)
    codes = pd.factorize(pd.Series(list(digests)))[0]
    keep = codes[ci] != codes[cj]
    ci, cj = ci[keep], cj[keep]
    sim = pair_similarity(fps, ci, cj, grey_threshold=grey_threshold, max_shift=max_shift, chunk=chunk)
    near = verified(sim, same_patient(patients, ci, cj, n), grey_threshold=grey_threshold,
                    gradient_threshold=gradient_threshold, cross_patient_threshold=cross_patient_threshold)
    return DuplicatePairs(np.concatenate([ei, ci[near]]).astype(np.int64),
                          np.concatenate([ej, cj[near]]).astype(np.int64),
                          np.concatenate([np.ones(ei.size), sim[near].min(axis=1)]),
                          np.concatenate([np.ones(ei.size, bool), np.zeros(int(near.sum()), bool)]))


def duplicate_groups(pairs: DuplicatePairs, uids: Sequence[str], patients: Sequence[object],
                     order_keys: Sequence[object] | None = None) -> pd.DataFrame:
    """One row per image that has a duplicate: its group and the group's original.

    The original of a group is its first member by ``order_keys`` (e.g. when the file was first
    seen), then by SOP Instance UID.

    Args:
        pairs: From :func:`find_duplicates`.
        uids: N SOP Instance UIDs.
        patients: N patient keys (None: unknown).
        order_keys: N sortable values; None: UIDs alone.

    Returns:
        Columns ``group`` (from 1; groups spanning several patients first), ``sop_instance_uid``,
        ``duplicate_of`` (the original's UID; null for the original), ``similarity`` (to the
        original, along the best chain of pairs that joins them: its weakest link; 1.0 for the
        original), ``exact`` (identical pixels to the original along that chain),
        ``cross_patient`` (the group spans several patients), ``other_patient`` (this image's
        patient differs from the original's), ``group_size``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(uids)
    if len(patients) != n or (order_keys is not None and len(order_keys) != n):
        raise ValueError(f"patients and order_keys need one entry per image ({n})")
    columns = {"group": "int64", "sop_instance_uid": "object", "duplicate_of": "object", "similarity": "float64",
               "exact": "bool", "cross_patient": "bool", "other_patient": "bool", "group_size": "int64"}
    if pairs.i.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    comp = connected_components(coo_matrix((np.ones(pairs.i.size), (pairs.i, pairs.j)), shape=(n, n)),
                                directed=False)[1]
    keys = [str(u) for u in uids]
    order = [None] * n if order_keys is None else list(order_keys)
    patient = [None if p is None or p is pd.NA or (np.isscalar(p) and pd.isna(p)) else str(p) for p in patients]
    links: dict[int, list[tuple[int, float, bool]]] = {}
    for a, b, s, e in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.similarity.tolist(), pairs.exact.tolist()):
        links.setdefault(a, []).append((b, s, e))
        links.setdefault(b, []).append((a, s, e))
    members: dict[int, list[int]] = {}
    for m in sorted(links):
        members.setdefault(int(comp[m]), []).append(m)
    groups = []
    for ms in members.values():
        first = min(ms, key=lambda m: (order[m] is None, "" if order[m] is None else order[m], keys[m]))
        several = len({patient[m] for m in ms if patient[m] is not None}) > 1
        groups.append((not several, min(keys[m] for m in ms), first, ms, several))
    groups.sort(key=lambda g: g[:2])
    rows = []
    for number, (_, _, first, ms, several) in enumerate(groups, start=1):
        best: dict[int, tuple[float, bool]] = {first: (1.0, True)}
        frontier = [first]
        while frontier:  # widest path from the original (groups are small)
            nxt = []
            for a in frontier:
                for b, s, e in links[a]:
                    cand = (min(best[a][0], s), best[a][1] and e)
                    if b not in best or cand > best[b]:
                        best[b] = cand
                        nxt.append(b)
            frontier = nxt
        for m in sorted(ms, key=lambda m: (m != first, keys[m])):
            sim, exact = best[m]
            rows.append({"group": number, "sop_instance_uid": keys[m], "duplicate_of": None if m == first else keys[first],
                         "similarity": float(sim), "exact": bool(exact), "cross_patient": several,
                         "other_patient": bool(m != first and patient[m] is not None and patient[first] is not None
                                               and patient[m] != patient[first]),
                         "group_size": len(ms)})
    out = pd.DataFrame(rows).astype({c: t for c, t in columns.items() if t != "object"})
    for c in ("sop_instance_uid", "duplicate_of"):  # None stays None (pandas would infer a string dtype)
        out[c] = pd.Series([r[c] for r in rows], dtype=object)
    return out
