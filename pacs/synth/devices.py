"""Acquisition-device profiles of the synthetic PACS export, and how devices are spread over regions.

A real archive mixes devices: a CR cassette reader, a flat-panel DR room, a bedside unit,
digitised films, a second vendor's CR in an outpatient clinic. Each changes the *look* of an
image (tone curve, sharpness, noise texture, resolution, collimation, grid lines, borders, bit
depth and polarity as stored) and names itself in the header, while the anatomy stays the same.
Devices are correlated with regions (hands go to the CR reader, chests to the DR room or the
bedside unit), so an audit that learns the device learns a shortcut to the region.

Usage::

    from radaudit.pacs.synth import generate_export
    generate_export("export", "truth.parquet", n=800, seed=0, devices="mixed", device_correlation=0.6)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from radaudit.pacs.synth.anatomy import REGIONS
from radaudit.pacs.synth.artefacts import Processing
from radaudit.pacs.synth.render import LEGACY_ACQUISITION, Acquisition

LEGACY = "legacy"  # the truth's device of ``devices=None``: the single style of the generator before devices
MIXED = "mixed"
# Devices with a smaller share than this get exactly round(share * n) images (a small share drawn
# study by study would swing by half of itself at a few hundred images).
EXACT_SHARE_BELOW = 0.1
# Affinity of a region for a device it does not prefer, against 1 for a preferred one.
AFFINITY_FLOOR = 0.02


@dataclass(frozen=True)
class Encoding:
    """How a device stores its pixels; each series draws from these (defaults: the legacy DX mix).

    Attributes:
        bits: (Bits Stored, weight) choices; 8 bits are stored in 8-bit words, more in 16.
        monochrome1: Probability of MONOCHROME1 (stored inverted: bone dark as stored).
        signed: Probability of signed pixels (for 12 bits or more), with an offsetting intercept.
        rescale: Probability of writing Rescale Intercept/Slope.
        intercepts: (Rescale Intercept, weight) choices for unsigned pixels.
        window: Probability of a stored VOI window (else the reader's fallback window applies).
        voi_functions: (VOI LUT Function or None, weight) choices.
    """

    bits: tuple[tuple[int, float], ...] = ((8, 0.1), (10, 0.15), (12, 0.45), (14, 0.1), (15, 0.1), (16, 0.1))
    monochrome1: float = 0.15
    signed: float = 0.08
    rescale: float = 0.5
    intercepts: tuple[tuple[float, float], ...] = ((0.0, 0.8), (-1024.0, 0.1), (100.0, 0.1))
    window: float = 0.85
    voi_functions: tuple[tuple[str | None, float], ...] = ((None, 0.8), ("LINEAR", 0.15), ("LINEAR_EXACT", 0.05))


@dataclass(frozen=True)
class DeviceProfile:
    """One acquisition device: what it writes in the header, how it stores and how it renders.

    Attributes:
        name: Short stable snake_case name (the truth's ``device`` column).
        kind: What sort of device it is, in words.
        manufacturer, model, station, serial: Manufacturer, Manufacturer's Model Name, Station
            Name and Device Serial Number (None: not written).
        modality: ``CR`` or ``DX``; the SOP Class follows (CR Image Storage, Digital X-Ray Image Storage).
        encoding: Stored encoding.
        acquisition: Processing, noise, markers, collimation and pose.
        resolution: Matrix size relative to the export's ``size`` (at least 32 pixels).
        field_mm: Long side of the detector field in mm: the written pixel spacing is
            ``field_mm / long side in pixels``.
        spacing_tags: Which of ImagerPixelSpacing and PixelSpacing the device writes.
        text: Station strings burned into images (one drawn per image, after the date).
    """

    name: str
    kind: str
    manufacturer: str
    model: str
    station: str
    serial: str | None
    modality: str
    encoding: Encoding
    acquisition: Acquisition
    resolution: float = 1.0
    field_mm: float = 0.15 * 2048
    spacing_tags: tuple[str, ...] = ("ImagerPixelSpacing",)
    text: tuple[str, ...] = ("ST-RAD1", "CR-2", "DX ROOM 3", "Unfall")

    @property
    def bits_range(self) -> tuple[int, int]:
        """The smallest and largest Bits Stored the device writes."""
        bits = [b for b, weight in self.encoding.bits if weight > 0]
        return min(bits), max(bits)


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile(
        name="cr_reader", kind="CR cassette reader (storage phosphor), multi-frequency processing",
        manufacturer="Agfa", model="CR 85-X", station="CR85X-NORD", serial="85X04127", modality="CR",
        encoding=Encoding(bits=((10, 0.3), (12, 0.7)), monochrome1=1.0, signed=0.0, rescale=0.3,
                          intercepts=((0.0, 1.0),), window=0.9, voi_functions=((None, 0.5), ("LINEAR", 0.5))),
        acquisition=Acquisition(
            processing=Processing(photons=(2.9, 3.5), contrast=(2.5, 3.5), blur=(0.8, 1.3), unsharp_rate=1.0,
                                  unsharp_radius=(10.0, 30.0), unsharp_amount=(1.2, 2.0), tone="s_curve",
                                  tone_param=(5.0, 8.0), grid=(0.02, 0.04), grid_period=(2.2, 3.5)),
            marker_rate=(0.9, 0.6), collimation_rate=0.75),
        field_mm=350.0, text=("CR-2", "ST-RAD1", "Ambulanz")),
    DeviceProfile(
        name="dr_room", kind="flat-panel DR room (CsI scintillator), gentle processing",
        manufacturer="SIEMENS", model="Ysio Max", station="DR-RAUM-2", serial="10517", modality="DX",
        encoding=Encoding(bits=((14, 0.5), (15, 0.1), (16, 0.4)), monochrome1=0.0, signed=0.1, rescale=0.8,
                          intercepts=((0.0, 0.7), (-1024.0, 0.3)), window=1.0,
                          voi_functions=((None, 0.3), ("LINEAR", 0.4), ("SIGMOID", 0.3))),
        acquisition=Acquisition(
            processing=Processing(photons=(4.0, 4.6), contrast=(2.8, 4.0), blur=(0.3, 0.6), unsharp_rate=1.0,
                                  unsharp_radius=(20.0, 40.0), unsharp_amount=(0.2, 0.5), tone="log",
                                  tone_param=(1.5, 3.0)),
            marker_rate=(0.9, 0.5), marker_style="digital", collimation_rate=0.5, collimation_tilt=0.01),
        field_mm=430.0, spacing_tags=("ImagerPixelSpacing", "PixelSpacing"), text=("DX ROOM 3", "RAUM 2")),
    DeviceProfile(
        name="bedside", kind="bedside (portable) DR unit with a wireless detector, no grid",
        manufacturer="Carestream Health", model="DRX-Revolution", station="MOBIL-ITS", serial="DRXR1187",
        modality="DX",
        encoding=Encoding(bits=((12, 0.6), (14, 0.4)), monochrome1=0.0, signed=0.0, rescale=0.5,
                          intercepts=((0.0, 1.0),), window=0.9, voi_functions=((None, 0.6), ("LINEAR", 0.4))),
        acquisition=Acquisition(
            processing=Processing(photons=(2.2, 2.8), contrast=(1.8, 2.8), blur=(0.5, 0.9), unsharp_rate=0.8,
                                  unsharp_radius=(10.0, 24.0), unsharp_amount=(0.4, 0.9), tone="gamma",
                                  tone_param=(0.8, 1.2)),
            marker_rate=(0.7, 0.5), marker_style="plain", collimation_rate=0.9, collimation_scale=0.85,
            collimation_tilt=0.09, rotation=12.0, text_rate=0.9),
        resolution=0.9, field_mm=350.0, text=("MOBIL", "ITS 2", "AP liegend", "Notaufnahme")),
    DeviceProfile(
        name="film_digitiser", kind="digitised film (laser film scanner), 8 bits, film grain, scanner border",
        manufacturer="VIDAR Systems Corporation", model="DiagnosticPRO Advantage", station="FILMSCAN-ARCHIV",
        serial="DPA22871", modality="CR",
        encoding=Encoding(bits=((8, 1.0),), monochrome1=0.0, signed=0.0, rescale=0.0, intercepts=((0.0, 1.0),),
                          window=0.3, voi_functions=((None, 1.0),)),
        acquisition=Acquisition(
            processing=Processing(photons=(3.5, 4.2), contrast=(2.5, 3.5), blur=(0.9, 1.5), unsharp_rate=0.0,
                                  tone="s_curve", tone_param=(8.0, 12.0), grain=(0.015, 0.03)),
            marker_rate=(0.9, 0.6), collimation_rate=0.6, text_rate=0.0, film_border=True),
        resolution=0.875, field_mm=430.0, spacing_tags=("PixelSpacing",), text=("FILMSCAN",)),
    DeviceProfile(
        name="cr_minority", kind="a second vendor's CR in an outpatient clinic: 10-bit, edge enhancement, noisy",
        manufacturer="FUJIFILM Corporation", model="FCR Capsula XLII", station="CR-AMB-2", serial="FCR7731",
        modality="CR",
        encoding=Encoding(bits=((10, 1.0),), monochrome1=1.0, signed=0.0, rescale=0.0, intercepts=((0.0, 1.0),),
                          window=0.9, voi_functions=((None, 1.0),)),
        acquisition=Acquisition(
            processing=Processing(photons=(2.4, 3.0), contrast=(2.5, 3.5), blur=(0.6, 1.0), unsharp_rate=1.0,
                                  unsharp_radius=(3.0, 6.0), unsharp_amount=(0.8, 1.5), tone="gamma",
                                  tone_param=(1.3, 1.8)),
            marker_rate=(0.9, 0.6), marker_style="plain", collimation_rate=0.8, text_rate=0.7),
        resolution=0.8, field_mm=240.0, text=("FCR", "AMB-2")),
)}

# Shares of the images per device; the minority device holds 3.5% of them.
MIXES: dict[str, dict[str, float]] = {
    MIXED: {"cr_reader": 0.32, "dr_room": 0.38, "bedside": 0.13, "film_digitiser": 0.135, "cr_minority": 0.035},
}

# The devices each region mostly comes from when devices follow regions fully (device_correlation=1).
PREFERRED: dict[str, tuple[str, ...]] = {
    "skull": ("cr_reader", "film_digitiser"), "cervical_spine": ("dr_room", "bedside"),
    "thoracic_spine": ("dr_room", "film_digitiser"), "lumbar_spine": ("dr_room", "film_digitiser"),
    "chest": ("dr_room", "bedside"), "clavicle": ("cr_reader", "bedside"), "shoulder": ("dr_room", "cr_reader"),
    "elbow": ("cr_reader",), "hand": ("cr_reader", "cr_minority"), "pelvis": ("dr_room", "bedside"),
    "hip": ("dr_room", "film_digitiser"), "knee": ("dr_room", "film_digitiser"),
    "ankle": ("cr_reader", "cr_minority"), "foot": ("cr_reader", "cr_minority"),
}


def legacy_profile(manufacturer: str, model: str, modality: str, station: str) -> DeviceProfile:
    """The profile of ``devices=None``: the legacy style under one of ``headers.DEVICES``' names,
    with its old encoding mix (MONOCHROME1 more often on CR)."""
    return DeviceProfile(
        name=LEGACY, kind="the generator's single style", manufacturer=manufacturer, model=model, station=station,
        serial=None, modality=modality, encoding=Encoding(monochrome1=0.35 if modality == "CR" else 0.15),
        acquisition=LEGACY_ACQUISITION)


def resolve_mix(devices: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """The shares per profile name of a ``devices`` argument (None and ``"legacy"``: None, the legacy style).

    Raises:
        ValueError: For an unknown name or invalid shares, with the valid choices.
    """
    if devices is None or devices == LEGACY:
        return None
    if isinstance(devices, str):
        if devices in MIXES:
            return dict(MIXES[devices])
        if devices in PROFILES:
            return {devices: 1.0}
        raise ValueError(f"devices={devices!r}: give a mix ({', '.join(MIXES)}), one profile name "
                         f"({', '.join(PROFILES)}), a mapping of profile names to shares, or None (or 'legacy') for the legacy style")
    if not isinstance(devices, Mapping) or not devices:
        raise ValueError(f"devices={devices!r}: give a mix name such as {MIXED!r}, a profile name or a non-empty "
                         "mapping of profile names to shares, e.g. {'cr_reader': 0.5, 'dr_room': 0.5}")
    unknown = [name for name in devices if name not in PROFILES]
    if unknown:
        raise ValueError(f"devices: unknown profile {unknown[0]!r}; choose from {', '.join(PROFILES)}")
    for name, share in devices.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0:
            raise ValueError(f"devices[{name!r}]={share!r}: a share must be a finite number >= 0, e.g. 0.25")
    total = float(sum(devices.values()))
    if total <= 0:
        raise ValueError("devices: the shares sum to 0; give at least one device a positive share")
    return {name: float(share) / total for name, share in devices.items() if share > 0}


def check_correlation(device_correlation: object) -> float:
    """``device_correlation`` as a float in [0, 1], or a ValueError that says so."""
    c = device_correlation
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not 0.0 <= c <= 1.0:
        raise ValueError(f"device_correlation={c!r} must lie in [0, 1] (0: devices independent of region, "
                         "1: each region mostly from its preferred devices), e.g. device_correlation=0.6")
    return float(c)


def region_preferences(names: Sequence[str], shares: Sequence[float]) -> np.ndarray:
    """P(device | region) when devices follow regions fully, shape (len(REGIONS), len(names)).

    The affinities (1 for a region's preferred devices, :data:`AFFINITY_FLOOR` otherwise) are scaled
    (Sinkhorn) until, over equally frequent regions, each device holds its share: any mix of these
    rows with the shares themselves keeps every device's share, whatever the correlation.
    """
    target = np.asarray(shares, dtype=np.float64)
    table = np.array([[1.0 if name in PREFERRED.get(region, ()) else AFFINITY_FLOOR for name in names]
                      for region in REGIONS])
    for _ in range(500):
        table *= (1.0 / len(REGIONS) / table.sum(axis=1))[:, None]
        table *= (target / table.sum(axis=0))[None, :]
        if np.abs(table.sum(axis=1) * len(REGIONS) - 1.0).max() < 1e-12:
            break
    return table / table.sum(axis=1, keepdims=True)


def assign_devices(studies: Sequence[tuple[str | None, int]], mix: Mapping[str, float], correlation: float,
                   rng: np.random.Generator) -> list[str]:
    """One device per study.

    A study of region ``r`` draws device ``d`` with probability ``(1 - correlation) * share[d] +
    correlation * P(d | r)`` (:func:`region_preferences`); a study without a true region (out of
    domain) draws by the shares. Devices whose share is below :data:`EXACT_SHARE_BELOW` get
    exactly ``round(share * images)`` images (as near as study sizes allow, never more), on
    in-domain studies chosen with those probabilities as weights.

    Args:
        studies: (true region or None, number of images) per study.
        mix: Shares per profile name (positive, summing to 1).
        correlation: In [0, 1].
        rng: Random source.

    Returns:
        The profile name of each study.
    """
    names = list(mix)
    shares = np.array([mix[name] for name in names])
    prefs = region_preferences(names, shares)
    row = {region: i for i, region in enumerate(REGIONS)}
    p = np.array([shares if region not in row else (1 - correlation) * shares + correlation * prefs[row[region]]
                  for region, _ in studies]).reshape(len(studies), len(names))
    sizes = np.array([k for _, k in studies])
    total = int(sizes.sum())
    out = [""] * len(studies)
    exact = sorted((j for j in range(len(names)) if shares[j] < EXACT_SHARE_BELOW), key=lambda j: (shares[j], names[j]))
    for j in exact:
        free = np.array([i for i, (region, _) in enumerate(studies) if not out[i] and region in row], dtype=np.int64)
        if not free.size:
            break
        keys = rng.random(free.size) ** (1.0 / p[free, j])  # weighted sampling without replacement
        want, got = round(shares[j] * total), 0
        for i in free[np.argsort(-keys, kind="stable")]:
            if got + sizes[i] <= want:
                out[i], got = names[j], got + int(sizes[i])
            if got == want:
                break
    rest = [j for j in range(len(names)) if j not in exact] or list(range(len(names)))
    for i in range(len(studies)):
        if not out[i]:
            cumulative = np.cumsum(p[i, rest]) / p[i, rest].sum()
            out[i] = names[rest[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(rest) - 1)]]
    return out
