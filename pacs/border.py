"""Border removal: crop uniform margins and collimator bands off a normalized radiograph.

numpy only (no torch): this runs inside the image cache's CPU decode workers.

Two kinds of border are removed, in this order:

1. Uniform margins: outer rows and columns whose values are (almost) constant, such as zero
   padding, a black or white frame burnt in by the modality, or masked shutter areas.
   Found at full resolution, so a margin of known width is cropped exactly.
2. Collimator bands: regions along an edge that the collimator shutters kept out of the beam.
   After MONOCHROME1 inversion they are bright or light grey, smooth (often with a scatter ramp)
   and end at a long, straight, possibly slightly tilted step edge. Found on a block-averaged
   working copy of about 512 px: per row (or column) the first strong step from the edge
   inwards; a straight line fitted to those steps (tilt up to about 10 degrees) must explain
   most of them, and the band must be brighter than the field just inside it, or uniform.
   The crop goes past the innermost point of the fitted line, so a tilted band is removed
   whole at the price of a thin sliver of field.

Both depend on the image's resolution below :data:`MIN_SIDE` pixels on the short side: decode at
least that much (JPEG 2000 can be decoded at reduced resolution) before looking for the field.

Dark, noisy regions along an edge are never taken for bands: they are direct exposure (air)
and belong to the field. The crop never leaves less than ``min_keep`` of a dimension: if it
would, the bands are ignored, and if even the margins leave too little, nothing is cropped.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_SIDE", "find_exposed_field", "remove_border"]

_WORK_SIDE = 512  # long side of the working copy used for band detection
# The smallest short side at which the field found is the one found at full resolution: a step is
# measured over 1/256 of the long side, but over one pixel at least, so a smaller image measures it
# over a wider share and takes anatomy edges for shutters (RG1's chest decoded at 1/16, 123 x 116,
# lost 23% of its width; at 1/4 and 1/8 the field is within 1% of the full-resolution one).
MIN_SIDE = 256
_MAX_BAND_FRACTION = 0.4  # a single band never takes more than this share of its dimension
_MAX_TILT = np.tan(np.deg2rad(10.0))


def find_exposed_field(
    img: np.ndarray,
    *,
    margin_tolerance: float = 0.02,
    step_threshold: float = 0.1,
    min_keep: float = 0.25,
) -> tuple[int, int, int, int]:
    """Return the bounds of the exposed field, without uniform margins and collimator bands.

    Args:
        img: Normalized radiograph, float in [0, 1], bone bright, padding already 0.
            Shape: (H, W).
        margin_tolerance: Largest peak-to-peak range of a row or column counted as uniform.
        step_threshold: Smallest intensity step (in [0, 1] units) taken for a shutter edge.
        min_keep: Smallest share of each dimension the crop may leave, in (0, 1].

    Returns:
        ``(top, bottom, left, right)``, half-open: the field is ``img[top:bottom, left:right]``.
        ``(0, H, 0, W)`` when nothing is cropped.

    Raises:
        ValueError: If ``img`` is not 2-D or an option is out of range.
    """
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"find_exposed_field expects a 2-D image, got shape {img.shape}; "
                         "pass one frame of a grey image")
    if not 0.0 < min_keep <= 1.0:
        raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
    if margin_tolerance < 0 or step_threshold <= 0:
        raise ValueError("margin_tolerance must be >= 0 and step_threshold > 0, "
                         f"got {margin_tolerance} and {step_threshold}")
    h, w = img.shape
    full = (0, h, 0, w)
    if h < 8 or w < 8:
        return full
    x = np.nan_to_num(img.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    min_h, min_w = int(np.ceil(min_keep * h)), int(np.ceil(min_keep * w))

    margins = _uniform_margins(x, margin_tolerance)
    t, b, l, r = margins
    if b - t < min_h or r - l < min_w:
        return full
    bands = _collimator_bands(x, margins, step_threshold)
    t, b, l, r = bands
    if b - t < min_h or r - l < min_w:
        return margins
    return bands


def remove_border(img: np.ndarray, **options: float) -> np.ndarray:
    """Crop uniform margins and collimator bands; see :func:`find_exposed_field`.

    Args:
        img: Normalized radiograph, float in [0, 1], bone bright. Shape: (H, W).
        **options: Passed to :func:`find_exposed_field`.

    Returns:
        A view of ``img`` on the exposed field. Shape: (bottom - top, right - left).
    """
    top, bottom, left, right = find_exposed_field(img, **options)
    return np.asarray(img)[top:bottom, left:right]


def _uniform_margins(x: np.ndarray, tol: float) -> tuple[int, int, int, int]:
    """Peel outer rows and columns whose range within the current bounds is at most ``tol``."""
    h, w = x.shape
    t, b, l, r = 0, h, 0, w
    while True:
        before = (t, b, l, r)
        region = x[t:b, l:r]
        if region.size == 0:
            return 0, h, 0, w
        col_flat = np.ptp(region, axis=0) <= tol
        row_flat = np.ptp(region, axis=1) <= tol
        l, r = l + _leading_true(col_flat), r - _leading_true(col_flat[::-1])
        t, b = t + _leading_true(row_flat), b - _leading_true(row_flat[::-1])
        if l >= r or t >= b:
            return 0, h, 0, w
        if (t, b, l, r) == before:
            return t, b, l, r


def _leading_true(mask: np.ndarray) -> int:
    """Number of leading True values of a 1-D boolean array."""
    if mask.all():
        return int(mask.size)
    return int(np.argmin(mask))


def _collimator_bands(x: np.ndarray, bounds: tuple[int, int, int, int],
                      step: float) -> tuple[int, int, int, int]:
    """Find collimator bands inside ``bounds`` on a block-averaged copy.

    A second pass looks again at the sides that had no band, since a band along one side
    hides the ends of the bands along the neighbouring sides.
    """
    t, b, l, r = bounds
    h, w = x.shape
    found: set[str] = set()
    for _ in range(2):
        region = x[t:b, l:r]
        f = max(1, int(np.ceil(max(region.shape) / _WORK_SIDE)))
        work = _block_mean(region, f)
        wh, ww = work.shape
        if wh < 16 or ww < 16:
            break
        max_w, max_h = int(_MAX_BAND_FRACTION * w / f), int(_MAX_BAND_FRACTION * h / f)
        views = {"left": (work, max_w), "right": (work[:, ::-1], max_w),
                 "top": (work.T, max_h), "bottom": (work[::-1].T, max_h)}
        cut = {side: 0 if side in found else _band_width(v, step, max_width=m)
               for side, (v, m) in views.items()}
        found |= {side for side, c in cut.items() if c}
        if not any(cut.values()):
            break
        # Working pixels to full pixels; the ragged remainder of the block grid stays in the field.
        t, b, l, r = (t + cut["top"] * f, b - cut["bottom"] * f if cut["bottom"] else b,
                      l + cut["left"] * f, r - cut["right"] * f if cut["right"] else r)
        if t >= b or l >= r:
            return bounds
    return t, b, l, r


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """Average non-overlapping f x f blocks (the ragged last row and column of blocks is dropped)."""
    if f == 1:
        return x
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    return x[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _band_width(work: np.ndarray, step: float, *, max_width: int) -> int:
    """Width in working pixels of a collimator band along the left edge of ``work``, or 0.

    Each row is scanned from the left for the first step larger than ``step`` (a central
    difference over ``2d`` pixels, so a blurred shutter edge still counts); a line
    ``position = a + slope * row`` is fitted to those positions and must explain most rows.
    """
    n, m = work.shape
    d = max(1, round(max(n, m) / 256))
    limit = min(max_width, m - 2 * d - 1)
    if limit <= 2 * d:
        return 0
    diff = np.abs(work[:, 2 * d : limit + 2 * d] - work[:, :limit])  # step centred at j + d
    jump = diff > step
    has = jump.any(axis=1)
    if has.sum() < 0.3 * n:
        return 0
    rows = np.nonzero(has)[0]
    first = np.argmax(jump[rows], axis=1)
    # Follow each row's step to its steepest point, then on until the transition has settled.
    window = 8 * d
    cols = first[:, None] + np.arange(window)[None, :]
    cols = np.minimum(cols, diff.shape[1] - 1)
    seg = diff[rows[:, None], cols]
    peak = np.argmax(seg, axis=1)
    peak_val = seg[np.arange(len(rows)), peak]
    after = (np.arange(window)[None, :] > peak[:, None]) & (seg < 0.25 * peak_val[:, None])
    settle = np.where(after.any(axis=1), np.argmax(after, axis=1), window - 1)
    centre = first + peak + d  # column of the edge itself
    inner = first + settle + d + 1  # first column past the transition

    slope, offset, inliers = _fit_line(rows.astype(np.float64), centre.astype(np.float64), tol=2.0 * d + 1)
    if inliers.sum() < 0.7 * len(rows) or inliers.sum() < 0.3 * n:
        return 0
    edge_rows = rows[inliers]
    # The band must reach the image edge and be brighter than the field inside it.
    line = offset + slope * edge_rows
    cols = np.arange(m)[None, :]
    band_mask = cols < (line - d)[:, None]
    inside_mask = (cols >= (line + 2 * d)[:, None]) & (cols < (line + 6 * d)[:, None])
    if band_mask.sum() < len(edge_rows) or not inside_mask.any():
        return 0
    sub = work[edge_rows]
    if np.median(sub[band_mask]) <= np.median(sub[inside_mask]) + step / 2:
        return 0
    # Cut where the transition has settled on the innermost inlier row, plus the line's extent.
    extra = inner[inliers] - centre[inliers]
    cut = int(np.ceil((offset + slope * np.array([0, n - 1])).max() + np.median(extra)))
    return cut if cut <= max_width else 0


def _fit_line(x: np.ndarray, y: np.ndarray, *, tol: float) -> tuple[float, float, np.ndarray]:
    """Robust line ``y = offset + slope * x`` over a grid of small slopes; returns the inliers too.

    For each slope the offset is the densest window of width ``2 * tol`` of the residuals (a
    mode, so rows that found another edge do not drag it), then a least-squares refit on the
    inliers.
    """
    best_count, best = -1, (0.0, float(np.median(y)))
    span = max(float(x.max() - x.min()), 1.0)
    for slope in np.linspace(-_MAX_TILT, _MAX_TILT, max(3, int(2 * _MAX_TILT * span / tol) | 1)):
        res = np.sort(y - slope * x)
        counts = np.searchsorted(res, res + 2 * tol, side="right") - np.arange(len(res))
        i = int(np.argmax(counts))
        if counts[i] > best_count:
            best_count, best = int(counts[i]), (float(slope), float(res[i] + tol))
    slope, offset = best
    inl = np.abs(y - (offset + slope * x)) <= tol
    if inl.sum() >= 2 and np.ptp(x[inl]) > 0:
        slope, offset = (float(v) for v in np.polyfit(x[inl], y[inl], 1))
        inl = np.abs(y - (offset + slope * x)) <= tol
    return slope, offset, inl
