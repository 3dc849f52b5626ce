"""Detector physics and archive artefacts: quantum noise, blur, processing, collimation,
lead markers, burned-in text and calibration gauges.

:class:`Processing` holds what differs between detectors and their readers (noise, blur,
unsharp masking, tone curve, grid lines, film grain); its defaults are the generator's single
legacy style, drawn exactly as before devices existed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from radaudit.pacs.synth.canvas import F32, Canvas


@functools.lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def text_mask(text: str, px: int) -> np.ndarray:
    """Binary mask (float32, 0/1) of ``text`` rendered at roughly ``px`` pixels cap height."""
    font = _font(max(px, 6))
    box = font.getbbox(text)
    w, h = max(box[2] - box[0], 1), max(box[3] - box[1], 1)
    img = Image.new("L", (w + 2, h + 2))
    ImageDraw.Draw(img).text((1 - box[0], 1 - box[1]), text, fill=255, font=font)
    return (np.asarray(img, dtype=F32) > 96).astype(F32)


def paste(dst: np.ndarray, mask: np.ndarray, row: int, col: int, value: float, add: bool = False) -> None:
    """Write ``value`` where ``mask`` is set (or add it), clipped to ``dst``'s bounds."""
    h, w = mask.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, dst.shape[0]), min(col + w, dst.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    m = mask[r0 - row:r1 - row, c0 - col:c1 - col]
    view = dst[r0:r1, c0:c1]
    if add:
        view += value * m
    else:
        np.copyto(view, np.float32(value), where=m > 0)


def _marker(letter: str, h: int, w: int, rng: np.random.Generator, framed: bool) -> tuple[np.ndarray, int, int]:
    """The mask of an L/R marker (optionally in a thin frame) and its corner position in an h x w image."""
    size = min(h, w)
    px = max(int(size * rng.uniform(0.05, 0.08)), 7)
    m = text_mask(letter, px)
    mh, mw = m.shape
    if framed:
        m = np.pad(m, 2)
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 0.6
    margin = int(size * rng.uniform(0.06, 0.14))
    row = margin if rng.random() < 0.6 else h - margin - mh
    col = margin if rng.random() < 0.5 else w - margin - mw
    return m, row, col


def lead_marker(cv: Canvas, letter: str, rng: np.random.Generator, *, framed: bool = True) -> None:
    """Lead L/R marker in a corner of the field, opaque to X-rays: a letter in a thin frame, or the
    letter alone (``framed=False``)."""
    m, row, col = _marker(letter, cv.h, cv.w, rng, framed)
    paste(cv.metal, m, row, col, 8.0, add=True)


def digital_marker(img: np.ndarray, letter: str, rng: np.random.Generator) -> None:
    """L/R annotation set at the workstation after processing: a crisp white letter, no lead in the beam."""
    m, row, col = _marker(letter, *img.shape, rng, False)
    paste(img, m, row, col, 1.0)


def gauge(cv: Canvas, rng: np.random.Generator) -> str:
    """Calibration gauge near the joint: a 25 mm steel ball or a ring; returns its kind."""
    kind = "ball" if rng.random() < 0.6 else "ring"
    r = rng.uniform(1.1, 1.4) / cv.px  # radius in pixels (about 25 mm diameter)
    row = rng.uniform(0.2, 0.8) * cv.h
    col = (rng.uniform(0.05, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 0.95)) * cv.w
    rr = int(r) + 2
    r0, r1 = max(int(row) - rr, 0), min(int(row) + rr + 1, cv.h)
    c0, c1 = max(int(col) - rr, 0), min(int(col) + rr + 1, cv.w)
    yy, xx = np.ogrid[r0:r1, c0:c1]
    d2 = ((yy - row) ** 2 + (xx - col) ** 2).astype(F32)
    if kind == "ring":  # flat metal annulus seen face-on
        chord = ((d2 < r * r) & (d2 > (0.75 * r) ** 2)).astype(F32) * (0.5 * r)
    else:
        chord = np.sqrt(np.maximum(r * r - d2, 0.0))
    cv.metal[r0:r1, c0:c1] += chord * (12.0 / max(r, 1.0))
    return kind


TONES = ("gamma", "s_curve", "log")


@dataclass(frozen=True)
class Processing:
    """How a detector and its reader turn attenuation into a display image.

    Each ``(low, high)`` range is drawn from uniformly per image; sizes in pixels are for a
    256-pixel image and scale with it. The defaults are the generator's legacy style.

    Attributes:
        photons: log10 of the unattenuated quanta per pixel: fewer quanta, more quantum noise.
        contrast: Attenuation-to-log-signal gain (subject contrast; scatter lowers it).
        blur: Detector blur, Gaussian sigma.
        unsharp_rate: Probability of unsharp masking.
        unsharp_radius: Side of the box filter that gives the unsharp mask (small: edge enhancement).
        unsharp_amount: Weight of the high-pass added back.
        tone: Tone curve of the display image, one of :data:`TONES`: ``gamma`` (``x ** t``),
            ``s_curve`` (logistic of slope ``t`` about mid grey, film-like) or ``log``
            (``log1p(t x) / log1p(t)``, lifts the dark end).
        tone_param: The curve's ``t``.
        grid: Contrast of the shadow of a stationary anti-scatter grid ((0, 0): no grid).
        grid_period: Distance of the grid lines, stored pixels (not scaled).
        grain: Standard deviation of film grain ((0, 0): none).
    """

    photons: tuple[float, float] = (2.7, 4.0)
    contrast: tuple[float, float] = (2.5, 4.0)
    blur: tuple[float, float] = (0.4, 1.1)
    unsharp_rate: float = 0.6
    unsharp_radius: tuple[float, float] = (8.0, 24.0)
    unsharp_amount: tuple[float, float] = (0.3, 1.0)
    tone: str = "gamma"
    tone_param: tuple[float, float] = (0.7, 1.4)
    grid: tuple[float, float] = (0.0, 0.0)
    grid_period: tuple[float, float] = (2.5, 4.0)
    grain: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.tone not in TONES:
            raise ValueError(f"tone={self.tone!r}: choose one of {TONES}")


LEGACY_PROCESSING = Processing()


def tone_curve(img: np.ndarray, tone: str, t: float) -> np.ndarray:
    """Map a [0, 1] image through a monotone increasing curve with ``tone(0) = 0`` and ``tone(1) = 1``
    (bone stays bright); see :class:`Processing`."""
    if tone == "gamma":
        return img ** t
    if tone == "s_curve":
        ends = 1.0 / (1.0 + np.exp(-t * np.array([-0.5, 0.5])))
        return ((1.0 / (1.0 + np.exp(-t * (img - 0.5))) - ends[0]) / (ends[1] - ends[0])).astype(img.dtype)
    if tone == "log":
        return (np.log1p(t * img) / math.log1p(t)).astype(img.dtype)
    raise ValueError(f"tone={tone!r}: choose one of {TONES}")


def grid_lines(h: int, w: int, rng: np.random.Generator, contrast: tuple[float, float],
               period: tuple[float, float]) -> np.ndarray:
    """The shadow of a stationary grid's lead strips: thin parallel lines a few pixels apart, along
    the rows or the columns; an (h, 1) or (1, w) array to add to the image."""
    a, p, phase = rng.uniform(*contrast), rng.uniform(*period), rng.uniform(0.0, 2 * math.pi)
    along_columns = rng.random() < 0.5
    x = np.arange(w if along_columns else h, dtype=F32)
    line = (a * (0.5 + 0.5 * np.cos(2 * math.pi * x / p + phase)) ** 4).astype(F32)
    return line[None, :] if along_columns else line[:, None]


def film_grain(img: np.ndarray, rng: np.random.Generator, amount: tuple[float, float]) -> np.ndarray:
    """Silver-grain noise of a film: fine, spatially correlated, strongest in the dense (dark) parts."""
    g = ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(F32), 0.7)
    g *= rng.uniform(*amount) / (float(g.std()) + 1e-6)
    return np.clip(img + g * (0.5 + (1.0 - img)), 0.0, 1.0)


def expose(cv: Canvas, rng: np.random.Generator, processing: Processing = LEGACY_PROCESSING) -> np.ndarray:
    """Turn the attenuation maps into a processed radiograph in [0, 1] (bone bright).

    Trabecular texture, quantum noise (Poisson, so thicker parts are noisier), detector blur,
    grid lines, unsharp-mask edge enhancement, a tone curve and film grain, as a CR/DX reader or
    a film produces them, with the ranges of ``processing``.
    """
    p = processing
    h, w = cv.h, cv.w
    scale = min(h, w) / 256.0
    tex = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(F32), 0.6 + 0.6 * scale)
    tex *= 1.0 / (float(tex.std()) + 1e-6)
    att = cv.soft + cv.bone * (1.0 + 0.1 * tex)
    hi = float(np.percentile(att[::3, ::3], 99.7)) + 1e-3
    att += cv.metal * hi
    k = rng.uniform(*p.contrast) / hi
    n0 = 10 ** rng.uniform(*p.photons)
    counts = n0 * np.exp(-k * att)
    counts += np.sqrt(counts) * rng.standard_normal((h, w)).astype(F32)
    img = -np.log(np.maximum(counts, 0.5) / n0) / (k * hi)
    img = ndimage.gaussian_filter(img, rng.uniform(*p.blur) * scale)
    if p.grid[1] > 0:
        img = img + grid_lines(h, w, rng, p.grid, p.grid_period)
    if rng.random() < p.unsharp_rate:
        low = ndimage.uniform_filter(img, max(int(rng.uniform(*p.unsharp_radius) * scale), 3))
        img += rng.uniform(*p.unsharp_amount) * (img - low)
    lo = float(np.percentile(img[::4, ::4], rng.uniform(0.5, 5)))
    top = float(np.percentile(img[::4, ::4], rng.uniform(99.0, 99.9)))
    img = np.clip((img - lo) / max(top - lo, 1e-3), 0.0, 1.0)
    img = tone_curve(img, p.tone, rng.uniform(*p.tone_param))
    if p.grain[1] > 0:
        img = film_grain(img, rng, p.grain)
    return img.astype(F32)


def collimate(img: np.ndarray, rng: np.random.Generator, tight: float, *, scale: float = 1.0,
              tilt: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Shutter a rotated rectangle; outside is white (scatter) or masked black by the reader.

    The half-sides are a fraction in [tight, 0.97] of the image's, times ``scale`` (below 1: tighter);
    the tilt is normal with standard deviation ``tilt`` radians.

    Returns the image and the outside-field mask.
    """
    h, w = img.shape
    ang = rng.normal(0, tilt)
    hw = w / 2 * rng.uniform(tight, 0.97) * scale
    hh = h / 2 * rng.uniform(tight, 0.97) * scale
    cy, cx = h / 2 + rng.normal(0, 0.03) * h, w / 2 + rng.normal(0, 0.03) * w
    yy, xx = np.ogrid[:h, :w]
    c, s = math.cos(ang), math.sin(ang)
    xr = (xx - cx) * c + (yy - cy) * s
    yr = (yy - cy) * c - (xx - cx) * s
    outside = (np.abs(xr) > hw) | (np.abs(yr) > hh)
    if rng.random() < 0.7:
        fill = rng.uniform(0.8, 0.95) + 0.1 * img
    else:
        fill = np.zeros_like(img)
    return np.where(outside, fill, img).astype(F32), outside


def film_border(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A film laid slightly skewed on a scanner bed: the film's clear, unexposed rim, and beyond the
    film's edge the scanner's light (white) or its blanking (black), on one to four sides."""
    h, w = img.shape
    ang = rng.normal(0, 0.01)
    inset = [rng.uniform(0.02, 0.06) if rng.random() < 0.7 else 0.0 for _ in range(4)]  # top, bottom, left, right
    if not any(inset):
        inset[int(rng.integers(4))] = rng.uniform(0.02, 0.06)
    rim = rng.uniform(0.01, 0.025)
    outside_value = 1.0 if rng.random() < 0.7 else 0.0
    yy, xx = np.ogrid[:h, :w]
    c, s = math.cos(ang), math.sin(ang)
    yr = ((yy - h / 2) * c - (xx - w / 2) * s) / h + 0.5  # film coordinates, 0..1
    xr = ((xx - w / 2) * c + (yy - h / 2) * s) / w + 0.5
    top, bottom, left, right = inset
    inside_edge = np.minimum(np.minimum(yr - top, 1 - bottom - yr), np.minimum(xr - left, 1 - right - xr))
    out = np.where(inside_edge < rim, np.float32(rng.uniform(0.85, 0.93)), img)
    return np.where(inside_edge < 0, np.float32(outside_value), out).astype(F32)


def burn_text(img: np.ndarray, lines: list[str], rng: np.random.Generator) -> None:
    """Burn annotation text (white) into a corner, as modalities do with date and station."""
    h, w = img.shape
    px = max(int(min(h, w) * rng.uniform(0.035, 0.05)), 6)
    row = int(h * 0.02) if rng.random() < 0.5 else h - int(h * 0.02) - (px + 3) * len(lines)
    right = rng.random() < 0.5
    for i, line in enumerate(lines):
        m = text_mask(line, px)
        col = w - m.shape[1] - int(w * 0.02) if right else int(w * 0.02)
        paste(img, m, row + i * (px + 3), col, 1.0)
