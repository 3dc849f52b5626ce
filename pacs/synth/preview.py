"""Contact sheet of the generator: every region in its views, artefacts, out-of-domain images and
one scene as each acquisition device renders it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from radaudit.pacs.synth.anatomy import REGIONS
from radaudit.pacs.synth.devices import LEGACY, PROFILES
from radaudit.pacs.synth.render import LEGACY_ACQUISITION, OOD_KINDS, render_ood, render_radiograph

COLUMNS = 6


def _tile(img: np.ndarray, size: int) -> Image.Image:
    if img.ndim == 3:
        return Image.fromarray(img).resize((size, size))
    if img.dtype == np.int16:  # CT in HU: soft-tissue window
        img = np.clip((img.astype(np.float32) + 160) / 400, 0, 1)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).convert("RGB").resize((size, size))


def render_preview(png_path: str | os.PathLike[str], *, seed: int = 0, size: int = 256,
                   per_region: int = 3, device_region: str = "knee") -> Path:
    """Write a PNG grid: ``per_region`` random images of each of the 14 regions, then out-of-domain
    images and a row of artefact examples (gauges, stored rotations, MONOCHROME1 as stored), and
    last a row with one scene of ``device_region`` as the legacy style and each device profile
    renders it (at the device's resolution, shown at ``size``), labelled by device name.

    Returns the path written.
    """
    if size < 32:
        raise ValueError(f"size={size} is too small for a readable preview; use size >= 32")
    if device_region not in REGIONS:
        raise ValueError(f"device_region={device_region!r}: choose one of {', '.join(REGIONS)}")
    rng = np.random.default_rng(seed)
    tiles: list[tuple[str, Image.Image]] = []
    for region in REGIONS:
        for _ in range(per_region):
            r = render_radiograph(region, rng, size, size, text=["12.03.2021", "ST-RAD2"])
            label = f"{region} {r.view} {r.side or ''}{' gauge' if r.has_gauge else ''}"
            tiles.append((label, _tile(r.pixels, size)))
    for kind in OOD_KINDS:
        tiles.append((f"OOD {kind}", _tile(render_ood(kind, rng, size, size).pixels, size)))
    for region in ("hip", "pelvis", "knee"):
        r = render_radiograph(region, rng, size, size)
        while not r.has_gauge:
            r = render_radiograph(region, rng, size, size)
        tiles.append((f"{region} gauge {r.gauge_kind}", _tile(r.pixels, size)))
    r = render_radiograph("knee", rng, size, size)
    tiles.append(("knee stored rot 90", _tile(np.rot90(r.pixels, 1), size)))
    tiles.append(("chest MONO1 as stored", _tile(1.0 - render_radiograph("chest", rng, size, size).pixels, size)))
    tiles += [("", Image.new("RGB", (size, size)))] * (-len(tiles) % COLUMNS)  # the devices start a row
    scene = int(rng.integers(1 << 31))
    for name, acquisition, resolution in [(LEGACY, LEGACY_ACQUISITION, 1.0)] + [
            (p.name, p.acquisition, p.resolution) for p in PROFILES.values()]:
        side = max(32, round(size * resolution))
        r = render_radiograph(device_region, np.random.default_rng(scene), side, side, text=["12.03.2021", name],
                              acquisition=acquisition)
        tiles.append((name, _tile(r.pixels, size)))
    rows = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * size, rows * size))
    draw = ImageDraw.Draw(sheet)
    for i, (label, tile) in enumerate(tiles):
        x, y = (i % COLUMNS) * size, (i // COLUMNS) * size
        sheet.paste(tile, (x, y))
        draw.rectangle((x, y, x + size - 1, y + 12), fill=(0, 0, 0))
        draw.text((x + 2, y), label, fill=(255, 255, 0))
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
