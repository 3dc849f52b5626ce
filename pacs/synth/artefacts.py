"""Detector physics and archive artefacts: quantum noise, blur, processing, collimation,
lead markers, burned-in text and calibration gauges."""

from __future__ import annotations

import functools
import math

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


def lead_marker(cv: Canvas, letter: str, rng: np.random.Generator) -> None:
    """Lead L/R marker in a corner of the field: a letter in a thin frame, opaque to X-rays."""
    size = min(cv.h, cv.w)
    px = max(int(size * rng.uniform(0.05, 0.08)), 7)
    m = text_mask(letter, px)
    h, w = m.shape
    framed = np.zeros((h + 4, w + 4), F32)
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = 0.6
    framed[2:-2, 2:-2] = m
    margin = int(size * rng.uniform(0.06, 0.14))
    row = margin if rng.random() < 0.6 else cv.h - margin - h
    col = margin if rng.random() < 0.5 else cv.w - margin - w
    paste(cv.metal, framed, row, col, 8.0, add=True)


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


def expose(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Turn the attenuation maps into a processed radiograph in [0, 1] (bone bright).

    Trabecular texture, quantum noise (Poisson, so thicker parts are noisier), detector blur,
    unsharp-mask edge enhancement and a random tone curve, as a CR/DX reader produces them.
    """
    h, w = cv.h, cv.w
    scale = min(h, w) / 256.0
    tex = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(F32), 0.6 + 0.6 * scale)
    tex *= 1.0 / (float(tex.std()) + 1e-6)
    att = cv.soft + cv.bone * (1.0 + 0.1 * tex)
    hi = float(np.percentile(att[::3, ::3], 99.7)) + 1e-3
    att += cv.metal * hi
    k = rng.uniform(2.5, 4.0) / hi
    n0 = 10 ** rng.uniform(2.7, 4.0)
    counts = n0 * np.exp(-k * att)
    counts += np.sqrt(counts) * rng.standard_normal((h, w)).astype(F32)
    img = -np.log(np.maximum(counts, 0.5) / n0) / (k * hi)
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 1.1) * scale)
    if rng.random() < 0.6:
        low = ndimage.uniform_filter(img, max(int(rng.uniform(8, 24) * scale), 3))
        img += rng.uniform(0.3, 1.0) * (img - low)
    lo = float(np.percentile(img[::4, ::4], rng.uniform(0.5, 5)))
    top = float(np.percentile(img[::4, ::4], rng.uniform(99.0, 99.9)))
    img = np.clip((img - lo) / max(top - lo, 1e-3), 0.0, 1.0)
    img **= rng.uniform(0.7, 1.4)
    return img.astype(F32)


def collimate(img: np.ndarray, rng: np.random.Generator, tight: float) -> tuple[np.ndarray, bool]:
    """Shutter a rotated rectangle; outside is white (scatter) or masked black by the reader.

    Returns the image and the outside-field mask (all False if not collimated).
    """
    h, w = img.shape
    ang = rng.normal(0, 0.03)
    hw = w / 2 * rng.uniform(tight, 0.97)
    hh = h / 2 * rng.uniform(tight, 0.97)
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
