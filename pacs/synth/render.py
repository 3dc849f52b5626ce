"""Render one radiograph (or one out-of-domain image) as a display image in [0, 1], bone bright."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from radaudit.pacs.synth import artefacts
from radaudit.pacs.synth.anatomy import LATERAL_REGIONS, VIEWS
from radaudit.pacs.synth.canvas import F32, Canvas

# Probability of a calibration gauge per region: mostly hip and pelvis, sometimes knee.
GAUGE_RATE = {"hip": 0.35, "pelvis": 0.3, "knee": 0.12}
GAUGE_RATE_OTHER = 0.01
# Tightest collimation (fraction of the frame) per region; extremities are coned down most.
TIGHT = {"hand": 0.55, "foot": 0.55, "ankle": 0.5, "elbow": 0.5, "knee": 0.6, "thoracic_spine": 0.4,
         "lumbar_spine": 0.45, "cervical_spine": 0.55}
OOD_KINDS: tuple[str, ...] = ("ct", "photo", "blank", "test_pattern", "document")
MARKER_STYLES = ("framed", "plain", "digital")


@dataclass(frozen=True)
class Acquisition:
    """How one device images a patient, beyond the anatomy: processing, markers, collimation, pose.

    The defaults are the generator's legacy style (drawn exactly as before devices existed), except
    ``clip``.

    Attributes:
        processing: Noise, blur, unsharp masking, tone curve, grid lines and film grain.
        marker_rate: Probability of an L/R marker for paired regions, and for the others.
        marker_style: ``framed`` (lead letter in a frame), ``plain`` (lead letter) or ``digital``
            (white letter set after processing), one of :data:`MARKER_STYLES`.
        collimation_rate: Probability of a visible collimator shutter.
        collimation_scale: Field size relative to the legacy one (below 1: tighter).
        collimation_tilt: Standard deviation of the shutter's tilt, radians.
        rotation: Added to each view's range of in-plane rotation, degrees (a patient in bed is
            positioned less exactly).
        text_rate: Probability of burned-in date and station text.
        film_border: Draw a scanner's border around the image (digitised film).
        clip: Clip the image to [0, 1]. The legacy style does not: its collimator scatter fill
            reaches 1.05 over bright anatomy, which wraps around in a few stored files; left so
            that legacy in-domain images stay byte-identical to earlier versions'.
    """

    processing: artefacts.Processing = artefacts.LEGACY_PROCESSING
    marker_rate: tuple[float, float] = (0.85, 0.5)
    marker_style: str = "framed"
    collimation_rate: float = 0.55
    collimation_scale: float = 1.0
    collimation_tilt: float = 0.03
    rotation: float = 0.0
    text_rate: float = 0.5
    film_border: bool = False
    clip: bool = True

    def __post_init__(self) -> None:
        if self.marker_style not in MARKER_STYLES:
            raise ValueError(f"marker_style={self.marker_style!r}: choose one of {MARKER_STYLES}")


LEGACY_ACQUISITION = Acquisition(clip=False)


@dataclass
class Rendered:
    """A rendered image and what was drawn (for the truth table)."""

    pixels: np.ndarray  # (rows, cols) float32 in [0, 1], or (rows, cols, 3) uint8 for photos, int16 HU for CT
    view: str = ""
    side: str | None = None  # "L" / "R" for paired regions
    has_gauge: bool = False
    gauge_kind: str | None = None
    marker: bool = False
    collimated: bool = False
    outside: np.ndarray | None = field(default=None, repr=False)


def render_radiograph(region: str, rng: np.random.Generator, h: int, w: int,
                      text: list[str] | None = None, acquisition: Acquisition = LEGACY_ACQUISITION,
                      gauge_rate: float | None = None) -> Rendered:
    """Draw one projection radiograph of ``region`` with random pose, exposure and artefacts.

    Every device draws the scene (view, pose, anatomy, gauge) from the same random numbers: the
    same ``rng`` state gives the same anatomy under each ``acquisition``, only its look differs.
    ``gauge_rate``: probability of a calibration gauge; None: the region's in :data:`GAUGE_RATE`
    (:data:`GAUGE_RATE_OTHER` for the rest). The draw is made whatever the rate, so the rate
    decides only whether this scene gets its gauge: a higher rate adds gauges, never removes one.
    """
    a = acquisition
    views = VIEWS[region]
    weights = np.array([v.weight for v in views])
    view = views[int(rng.choice(len(views), p=weights / weights.sum()))]
    fov = rng.uniform(*view.fov)
    side = ("L" if rng.random() < 0.5 else "R") if region in LATERAL_REGIONS else None
    # Standard display shows the patient's right on the image left: a right limb is drawn as is.
    mirror = side == "L" or (side is None and view.name == "lat" and rng.random() < 0.3)
    cx = view.center[0] + rng.uniform(-1, 1) * view.shift * fov
    cy = view.center[1] + rng.uniform(-1, 1) * view.shift * fov
    angle = rng.uniform(-1, 1) * (view.angle + math.radians(a.rotation))
    cv = Canvas(h, w, center=(cx, cy), fov=fov, angle=angle, mirror=mirror, squash=rng.uniform(*view.squash))
    view.draw(cv, rng)
    out = Rendered(np.empty(0), view=view.name, side=side)
    if rng.random() < (GAUGE_RATE.get(region, GAUGE_RATE_OTHER) if gauge_rate is None else gauge_rate):
        out.has_gauge, out.gauge_kind = True, artefacts.gauge(cv, rng)
    letter = None
    if rng.random() < (a.marker_rate[0] if side else a.marker_rate[1]):
        letter = side if side else ("R" if rng.random() < 0.5 else "L")
        if a.marker_style != "digital":
            artefacts.lead_marker(cv, letter, rng, framed=a.marker_style == "framed")
        out.marker = True
    img = artefacts.expose(cv, rng, a.processing)
    if rng.random() < a.collimation_rate:
        img, out.outside = artefacts.collimate(img, rng, TIGHT.get(region, 0.7), scale=a.collimation_scale,
                                               tilt=a.collimation_tilt)
        out.collimated = True
    if a.film_border:
        img = artefacts.film_border(img, rng)
    if letter and a.marker_style == "digital":
        artefacts.digital_marker(img, letter, rng)
    if text and rng.random() < a.text_rate:
        artefacts.burn_text(img, text, rng)
    if a.clip:
        np.clip(img, 0.0, 1.0, out=img)
    out.pixels = img
    return out


def render_ood(kind: str, rng: np.random.Generator, h: int, w: int) -> Rendered:
    """Out-of-domain images that end up in radiograph archives.

    ``ct``: an axial CT slice (int16 Hounsfield units); ``photo``: an RGB clinical photo (uint8);
    ``blank``: an empty or nearly empty exposure (:data:`BLANK_VARIANTS`); ``test_pattern``: a QC
    pattern; ``document``: a scanned form.
    """
    yy, xx = np.mgrid[:h, :w].astype(F32)
    yn, xn = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    if kind == "ct":
        a, b = rng.uniform(0.75, 0.92), rng.uniform(0.55, 0.75)
        r = (xn / a) ** 2 + (yn / b) ** 2
        hu = np.full((h, w), -1000.0, F32)
        hu[r < 1] = -90.0  # subcutaneous fat
        hu[r < 0.8] = 40.0
        tex = rng.standard_normal((h, w)).astype(F32)
        from scipy import ndimage

        hu += ndimage.gaussian_filter(tex, 2.0) * 60 * (r < 0.8)
        for _ in range(rng.integers(2, 5)):  # organs
            ox, oy, orad = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.2), rng.uniform(0.1, 0.3)
            hu[((xn - ox) ** 2 + (yn - oy) ** 2) < orad**2] += rng.uniform(-30, 40)
        vert = (xn**2 + ((yn - b * 0.6) / 0.8) ** 2) < 0.012
        hu[vert] = 700.0
        hu[(xn**2 + ((yn - b * 0.6) / 0.8) ** 2) < 0.006] = 250.0
        hu += rng.normal(0, 12, (h, w)).astype(F32)
        return Rendered(np.clip(hu, -1024, 3000).astype(np.int16), view="axial")
    if kind == "photo":
        base = rng.uniform(120, 220, 3)
        img = np.empty((h, w, 3), F32)
        for c in range(3):
            img[..., c] = base[c] + 30 * np.sin(xn * rng.uniform(1, 4) + rng.uniform(0, 6)) * yn
        blob = ((xn - rng.uniform(-0.3, 0.3)) ** 2 + (yn - rng.uniform(-0.3, 0.3)) ** 2) < rng.uniform(0.05, 0.2)
        img[blob] = img[blob] * np.array([1.0, 0.55, 0.5], F32)  # a reddish wound
        img += rng.normal(0, 6, img.shape).astype(F32)
        return Rendered(np.clip(img, 0, 255).astype(np.uint8), view="photo")
    if kind == "blank":
        return _blank(rng, h, w, yn, xn)
    if kind == "test_pattern":
        img = np.zeros((h, w), F32)
        img[: h // 4] = (np.floor(xx[: h // 4] / w * 8) / 7)  # grey wedge
        band = slice(h // 4, h // 2)
        freq = 1 + np.floor(xx[band] / w * 6) * 2
        img[band] = 0.5 + 0.5 * np.sign(np.sin(xx[band] * freq * math.pi / 8))
        img[h // 2:] = ((np.floor(xx[h // 2:] / (w / 16)) + np.floor(yy[h // 2:] / (h / 16))) % 2) * 0.8
        img[(np.abs(xn) < 0.02) | (np.abs(yn) < 0.02)] = 1.0
        return Rendered(img, view="qc")
    if kind == "document":
        img = np.full((h, w), 0.95, F32)
        px = max(h // 40, 6)
        row = int(h * 0.08)
        while row < h * 0.9:
            words = " ".join("x" * int(rng.integers(2, 9)) for _ in range(int(rng.integers(3, 8))))
            artefacts.paste(img, artefacts.text_mask(words, px), row, int(w * 0.08), 0.1)
            row += int(px * rng.uniform(1.6, 2.6))
        return Rendered(img, view="scan")
    raise ValueError(f"unknown out-of-domain kind {kind!r}; choose one of {OOD_KINDS}")


# An exposure with no anatomy on it: a plain plate (heel-effect gradient, little noise), an
# over-exposed plate with only the lead marker and the burned-in date, and an under-exposed one
# where quantum noise is all there is.
BLANK_VARIANTS: tuple[str, ...] = ("plain", "marked", "noisy")


def _blank(rng: np.random.Generator, h: int, w: int, yn: np.ndarray, xn: np.ndarray) -> Rendered:
    """One of :data:`BLANK_VARIANTS`; ``view`` is ``blank_<variant>``."""
    from scipy import ndimage

    variant = BLANK_VARIANTS[int(rng.integers(len(BLANK_VARIANTS)))]
    tilt = rng.uniform(-0.04, 0.04, 2)
    if variant == "plain":
        level = rng.uniform(0.0, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 1.0)
        img = level + rng.normal(0, 0.01, (h, w)).astype(F32) + tilt[0] * yn + tilt[1] * xn
    elif variant == "marked":  # over-exposed: direct exposure is black in the bone-bright display
        img = rng.uniform(0.0, 0.08) + rng.normal(0, 0.01, (h, w)).astype(F32) + tilt[0] * yn
        size = min(h, w)
        letter = artefacts.text_mask("R" if rng.random() < 0.5 else "L", max(int(size * 0.07), 7))
        artefacts.paste(img, letter, int(size * rng.uniform(0.06, 0.14)), int(size * rng.uniform(0.06, 0.14)), 1.0)
        day = f"{int(rng.integers(1, 29)):02d}.{int(rng.integers(1, 13)):02d}.20{int(rng.integers(10, 26))}"
        artefacts.burn_text(img, [day], rng)
    else:  # under-exposed: a few quanta per pixel, blurred by the detector
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)).astype(F32), rng.uniform(0.5, 1.0))
        img = rng.uniform(0.5, 0.9) + rng.uniform(0.05, 0.1) * noise / (float(noise.std()) + 1e-6) + tilt[0] * yn
    return Rendered(np.clip(img, 0, 1).astype(F32), view=f"blank_{variant}")
