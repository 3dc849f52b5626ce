"""Write a synthetic PACS export (DICOM Part-10 files in archive-like folders) and its truth table.

Usage::

    from radaudit.pacs.synth import generate_export
    generate_export("demo/export", "demo/truth.parquet", n=500, seed=0, noise=0.08)
    generate_export("demo/export", "demo/truth.parquet", n=500, seed=0, devices="mixed", force=True)
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from radaudit.pacs.synth import devices as dv
from radaudit.pacs.synth import headers as hd
from radaudit.pacs.synth.anatomy import LATERAL_REGIONS, REGIONS
from radaudit.pacs.synth.devices import DeviceProfile, Encoding
from radaudit.pacs.synth.render import OOD_KINDS, Rendered, render_ood, render_radiograph

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")

# Systematic confusions: regions that technologists and RIS menus mix up.
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "skull": ("cervical_spine",), "cervical_spine": ("skull", "thoracic_spine"),
    "thoracic_spine": ("lumbar_spine", "chest", "cervical_spine"), "lumbar_spine": ("thoracic_spine", "pelvis"),
    "chest": ("thoracic_spine", "clavicle", "shoulder"), "clavicle": ("shoulder", "chest"),
    "shoulder": ("clavicle", "elbow"), "elbow": ("knee", "shoulder"), "hand": ("foot",),
    "pelvis": ("hip", "lumbar_spine"),
    "hip": ("pelvis",), "knee": ("elbow", "ankle"), "ankle": ("foot", "knee"), "foot": ("hand", "ankle"),
}
CONFUSION_SHARE = 0.5  # of corrupted labels, the part that are neighbour confusions (the rest: uniform swaps)
TAGS = ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName")  # the mapper's order
TAG_WEIGHTS = (0.55, 0.25, 0.12, 0.08)
TRANSFER_SYNTAXES = ((ExplicitVRLittleEndian, 0.45), (ImplicitVRLittleEndian, 0.15), (JPEG2000Lossless, 0.15),
                     (RLELossless, 0.2), (DeflatedExplicitVRLittleEndian, 0.05))
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_export` wrote."""

    out_dir: Path
    truth_path: Path
    n: int
    n_swap: int
    n_confusion: int
    n_missing: int
    n_ood: int
    n_patients: int
    n_studies: int
    n_series: int
    region_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    n_duplicates: int = 0
    n_hard_negatives: int = 0
    device_counts: dict[str, int] = field(default_factory=dict)  # of the n images, by the truth's ``device``

    @property
    def n_noise(self) -> int:
        """Corrupted recorded labels (swaps plus confusions)."""
        return self.n_swap + self.n_confusion


@dataclass
class _Image:
    idx: int
    true_region: str | None
    recorded: str | None
    corruption: str  # none | swap | confusion | missing
    ood_kind: str | None = None
    device: str = dv.LEGACY


@dataclass
class _Series:
    images: list[_Image]
    recorded: str | None
    true_region: str | None
    ood_kind: str | None


def _validate_plan(n: Any, seed: Any, rates: dict[str, Any]) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r}: the number of images must be a positive integer, e.g. n=200")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: use a non-negative integer, e.g. seed=0")
    for name, rate in rates.items():
        if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name}={rate!r} is a fraction of the images and must lie in [0, 1], e.g. {name}=0.05")
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"noise + missing + ood = {total:g} > 1: each image has at most one of these defects; "
                         "lower the rates so that they sum to at most 1")


def _validate(out_dir: Path, truth_path: Path, n: Any, seed: Any, rates: dict[str, Any], size: Any,
              force: bool) -> None:
    _validate_plan(n, seed, rates)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 4096:
        raise ValueError(f"size={size!r}: the image side in pixels must be an integer in [32, 4096], e.g. size=256")
    if truth_path.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"truth path {truth_path} must end in .parquet or .csv (that picks the format)")
    out_abs, truth_abs = out_dir.resolve(), truth_path.resolve()
    if out_abs == truth_abs or out_abs in truth_abs.parents:
        raise ValueError(f"the truth file {truth_path} lies inside the export {out_dir}: put it outside, "
                         "or the audit would index it as part of the archive")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ValueError(f"{out_dir} exists and is not empty; choose an empty or new directory, "
                             "or pass force=True (--force) to replace its contents")
        protected = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()}
        if out_abs in protected or out_abs in Path.cwd().resolve().parents:
            raise ValueError(f"refusing to clear {out_dir} (root, home or the working directory or above); "
                             "pass a dedicated export directory")


def _check_gauge_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """``generate_export``'s ``gauge_rates`` as a plain dict, or a ValueError saying what is wrong."""
    if not isinstance(rates, Mapping):
        raise ValueError(f"gauge_rates={rates!r} must map region names to shares, e.g. {{'hip': 0.9, 'knee': 0.3}}")
    unknown = sorted(str(r) for r in rates if r not in REGIONS)
    if unknown:
        raise ValueError(f"gauge_rates names unknown regions {unknown}; valid: {', '.join(REGIONS)}")
    for region, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"gauge_rates[{region!r}]={rate!r} is a probability and must lie in [0, 1]")
    return {str(r): float(v) for r, v in rates.items()}


def _counts(n: int, noise: float, missing: float, ood: float) -> tuple[int, int, int]:
    """Exact defect counts: round(rate * n), capped so that they never exceed n together."""
    n_ood = min(round(ood * n), n)
    n_missing = min(round(missing * n), n - n_ood)
    n_noise = min(round(noise * n), n - n_ood - n_missing)
    return n_noise, n_missing, n_ood


def _plan(n: int, rng: np.random.Generator, noise: float, missing: float, ood: float) -> list[_Image]:
    """Assign true regions (balanced), corruptions and out-of-domain images with exact counts."""
    n_noise, n_missing, n_ood = _counts(n, noise, missing, ood)
    n_in = n - n_ood
    regions = [REGIONS[i % len(REGIONS)] for i in range(n_in)]
    rng.shuffle(regions)
    images = [_Image(i, r, r, "none") for i, r in enumerate(regions)]
    order = rng.permutation(n_in)
    n_conf = round(n_noise * CONFUSION_SHARE)
    for j, k in enumerate(order[: n_missing + n_noise]):
        im = images[int(k)]
        if j < n_missing:
            im.recorded, im.corruption = None, "missing"
        elif j < n_missing + n_conf:
            im.recorded, im.corruption = hd.pick(rng, NEIGHBOURS[im.true_region]), "confusion"
        else:
            others = [r for r in REGIONS if r != im.true_region]
            im.recorded, im.corruption = hd.pick(rng, others), "swap"
    for j in range(n_ood):
        kind = OOD_KINDS[j % len(OOD_KINDS)]
        rec = hd.pick(rng, REGIONS) if rng.random() < 0.5 else None
        images.append(_Image(n_in + j, None, rec, "none", kind))
    return images


def _chunks(items: list[Any], rng: np.random.Generator, lo: int, hi: int) -> list[list[Any]]:
    out, i = [], 0
    while i < len(items):
        k = int(rng.integers(lo, hi + 1))
        out.append(items[i:i + k])
        i += k
    return out


def _hierarchy(images: list[_Image], rng: np.random.Generator) -> list[list[list[_Series]]]:
    """Group images into series (same true and recorded label), series into studies (same true
    region; images without any label get studies of their own), studies into patients."""
    by_key: dict[tuple[str, ...], list[_Image]] = defaultdict(list)
    for im in images:
        by_key[(im.ood_kind or "", im.true_region or "", im.corruption == "missing" and "m" or "",
                im.recorded or "")].append(im)
    studies_by: dict[tuple[str, ...], list[_Series]] = defaultdict(list)
    for key in sorted(by_key):
        ims = by_key[key]
        rng.shuffle(ims)  # type: ignore[arg-type]
        for chunk in _chunks(ims, rng, 1, 4):
            s = _Series(chunk, chunk[0].recorded, chunk[0].true_region, chunk[0].ood_kind)
            studies_by[key if s.ood_kind else key[:3]].append(s)
    studies: list[list[_Series]] = []
    for key in sorted(studies_by):
        series = studies_by[key]
        if key[0]:  # out-of-domain: one series per study
            studies += [[s] for s in series]
            continue
        order = rng.permutation(len(series))
        studies += _chunks([series[int(i)] for i in order], rng, 1, 2)
    order = rng.permutation(len(studies))
    return _chunks([studies[int(i)] for i in order], rng, 1, 3)


def _planned(n: int, seed: int, noise: float, missing: float, ood: float, mix: Mapping[str, float] | None,
             correlation: float) -> tuple[list[_Image], list[list[list[_Series]]], np.random.Generator]:
    """The images, their patients/studies/series and each study's device; also the random source
    that writing goes on with. Devices draw from their own stream, so a seed gives the same images,
    labels, series, studies and patients (not their names) with or without devices."""
    rng = np.random.default_rng([seed, 0])
    images = _plan(n, rng, noise, missing, ood)
    patients = _hierarchy(images, rng)
    if mix is not None:
        studies = [study for studies in patients for study in studies]
        names = dv.assign_devices([(study[0].true_region, sum(len(s.images) for s in study)) for study in studies],
                                  mix, correlation, np.random.default_rng([seed, 4]))
        for study, name in zip(studies, names, strict=True):
            for im in (im for series in study for im in series.images):
                im.device = name
    return images, patients, rng


def plan_devices(*, n: int, seed: int, noise: float = 0.08, missing: float = 0.05, ood: float = 0.02,
                 devices: str | Mapping[str, float] = dv.MIXED,
                 device_correlation: float = 0.6) -> list[tuple[str | None, str]]:
    """The (true region, device) of each of the ``n`` images that :func:`generate_export` writes with
    these arguments, without rendering anything: a mix's shares and its dependence on the region
    can be checked at any ``n`` in milliseconds. True region None: out of domain.

    Raises:
        ValueError: On an invalid argument, with how to fix it.
    """
    _validate_plan(n, seed, {"noise": noise, "missing": missing, "ood": ood})
    mix, correlation = dv.resolve_mix(devices), dv.check_correlation(device_correlation)
    images, _, _ = _planned(int(n), int(seed), noise, missing, ood, mix, correlation)
    return [(im.true_region, im.device) for im in images]


def _series_strings(s: _Series, study_maps: str | None, study_desc: str, side: str | None, english: bool,
                    rng: np.random.Generator) -> tuple[dict[str, str], str | None, str]:
    """Body Part / Series Description / Protocol Name for one series such that the first tag (in
    the mapper's order) that names a region names ``s.recorded``.

    Returns the strings (without the study's description), the deciding tag and its raw string.
    """
    out = {"BodyPartExamined": hd.unmappable(rng, cs=True), "SeriesDescription": hd.unmappable(rng),
           "ProtocolName": hd.unmappable(rng)}
    rec = s.recorded
    if rec is None:
        return out, None, ""
    if study_maps is None:
        allowed = ["BodyPartExamined", "SeriesDescription", "ProtocolName"]
    elif study_maps == rec:
        allowed = ["BodyPartExamined", "SeriesDescription", "StudyDescription"]
    else:
        allowed = ["BodyPartExamined", "SeriesDescription"]
    w = np.array([TAG_WEIGHTS[TAGS.index(t)] for t in allowed])
    tag = allowed[int(rng.choice(len(allowed), p=w / w.sum()))]
    raw = study_desc if tag == "StudyDescription" else ""
    for t in TAGS[TAGS.index(tag):]:
        if t == "StudyDescription":
            continue
        decisive = t == tag
        if not decisive and rng.random() < 0.35:
            continue  # leave blank / unmappable
        source = rec
        if not decisive and s.true_region and s.true_region != rec and rng.random() < 0.5:
            source = s.true_region  # the order said one thing, the technologist chose another
        src_side = side if source in LATERAL_REGIONS else None
        if t == "BodyPartExamined":
            out[t] = hd.body_part(source, rng)
        elif t == "ProtocolName":
            out[t] = hd.region_string(source, rng, src_side, english=english).replace(" ", "_").upper()[:64]
        else:
            out[t] = hd.region_string(source, rng, src_side, english=english)
        if decisive:
            raw = out[t]
    return out, tag, raw


def _orientation(view: str, k: int) -> list[str]:
    """Patient Orientation (row, column direction) of the standard display, rotated k * 90 deg CCW."""
    row, col = ("A" if view == "lat" else "L"), "F"
    for _ in range(k % 4):
        row, col = col, _OPPOSITE[row]
    return [row, col]


def _draw_encoding(rng: np.random.Generator, e: Encoding) -> dict[str, Any]:
    """One series' stored encoding and transfer syntax, drawn from a device's :class:`Encoding`."""
    photometric = "MONOCHROME1" if rng.random() < e.monochrome1 else "MONOCHROME2"
    bits = int(_draw(rng, e.bits))
    return {"bits": bits, "alloc": 8 if bits == 8 else 16, "photometric": photometric,
            "signed": bits >= 12 and rng.random() < e.signed, "rescale": rng.random() < e.rescale,
            "intercept": float(_draw(rng, e.intercepts)), "window": rng.random() < e.window,
            "voi_fn": _draw(rng, e.voi_functions), "ts": _draw(rng, TRANSFER_SYNTAXES)}


def _study_device(name: str, rng: np.random.Generator, study_n: int) -> DeviceProfile:
    """The profile of a study's device; the legacy style draws its names from ``headers.DEVICES``."""
    if name != dv.LEGACY:
        return dv.PROFILES[name]
    maker, model, modality = hd.DEVICES[int(rng.integers(len(hd.DEVICES)))]
    return dv.legacy_profile(maker, model, modality, station="RAD" + str(study_n % 7))


def _encode_gray(ds: Dataset, img: np.ndarray, enc: dict[str, Any], rng: np.random.Generator,
                 pad_mask: np.ndarray | None) -> dict[str, Any]:
    """Store a [0, 1] display image with the series' bit depth, sign, rescale, window and photometric."""
    bits = enc["bits"]
    maxv = (1 << bits) - 1
    lo = rng.uniform(0.0, 0.08) * maxv + (16 if pad_mask is not None else 0)
    hi = rng.uniform(0.6, 1.0) * maxv
    v = np.rint(lo + img * (hi - lo))
    mono1 = enc["photometric"] == "MONOCHROME1"
    if mono1:
        v = maxv - v
    signed = enc["signed"]
    offset = 1 << (bits - 1) if signed else 0
    intercept = float(offset) + (enc["intercept"] if not signed else 0.0)
    stored = v - offset
    pad_value = None
    if pad_mask is not None:
        pad_value = (maxv if mono1 else 0) - offset
        stored[pad_mask] = pad_value
    dtype = (np.int16 if signed else np.uint16) if enc["alloc"] == 16 else np.uint8
    arr = stored.astype(dtype)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc["photometric"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = enc["alloc"], bits, bits - 1
    ds.PixelRepresentation = int(signed)
    if enc["rescale"] or signed:
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", "1"
        ds.RescaleType = "US"
    if enc["window"]:
        # The window is in modality values: stored + RescaleIntercept where one is written (signed data:
        # intercept = offset, so modality values equal the unsigned ones), stored values otherwise.
        shift = enc["intercept"] if enc["rescale"] and not signed else 0.0
        center = (maxv - (lo + hi) / 2 if mono1 else (lo + hi) / 2) + shift
        ds.WindowCenter, ds.WindowWidth = f"{center:.1f}", f"{(hi - lo) * 1.02:.1f}"
        if enc["voi_fn"]:
            ds.VOILUTFunction = enc["voi_fn"]
    if pad_value is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", int(pad_value))
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    return {"has_window": bool(enc["window"]), "has_padding": pad_value is not None}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in " -_." else "_" for c in text).strip() or "x"


def _path_for(layout: int, pat: dict[str, str], st: dict[str, Any], se: dict[str, Any], inst: int,
              sop: str, ctr: int) -> str:
    """Relative path of one file in one of a few archive export layouts."""
    if layout == 0:  # DICOMDIR-style
        return f"P{pat['n']:05d}/S{st['n']:05d}/SE{se['number']:04d}/IM{ctr:06d}"
    if layout == 1:  # viewer export with names, spaces and umlauts
        name = _safe(pat["name"].replace("^", " "))
        return (f"{name} ({_safe(pat['id'])})/{st['date']} {_safe(st['desc'] or 'Studie')}/"
                f"{se['number']} - {_safe(se['desc'] or 'Serie')}/Bild {inst}.dcm")
    if layout == 2:
        return f"{_safe(pat['id'])}/{_safe(st['accession'])}/{sop}.DCM"
    return f"export_{st['date']}/{_safe(pat['id'])}_{se['number']}_{inst}"


def _atomic_truth(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _draw(rng: np.random.Generator, p: tuple[tuple[Any, float], ...]) -> Any:
    w = np.array([x[1] for x in p])
    return p[int(rng.choice(len(p), p=w / w.sum()))][0]


def generate_export(
    out_dir: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    noise: float = 0.08,
    missing: float = 0.05,
    ood: float = 0.02,
    size: int = 256,
    force: bool = False,
    duplicates: float = 0.0,
    devices: str | Mapping[str, float] | None = None,
    device_correlation: float = 0.6,
    gauge_rates: Mapping[str, float] | None = None,
) -> SynthSummary:
    """Write ``n`` synthetic radiographs as a PACS export and their ground truth.

    Exactly ``round(noise * n)`` in-domain images get a wrong recorded label (half confusions of
    neighbouring regions, half uniform swaps), ``round(missing * n)`` get no usable label and
    ``round(ood * n)`` are out of domain; true regions are balanced. The same arguments give
    byte-identical files and truth.

    Args:
        out_dir: Export root (created; must be empty unless ``force``, which clears it).
        truth_path: ``.parquet`` or ``.csv`` outside the export; one row per SOP Instance UID.
        n: Number of images.
        seed: Random seed.
        noise: Fraction of corrupted recorded labels.
        missing: Fraction of images whose header strings name no region.
        ood: Fraction of out-of-domain images (CT slice, photo, blank, test pattern, scanned form).
        size: Longer image side in pixels.
        force: Replace the contents of a non-empty ``out_dir``.
        duplicates: Fraction of ``n``: that many extra files are duplicates of in-domain images
            (:data:`DUPLICATE_KINDS` in turn; the truth's ``duplicate_of`` names the original),
            and as many more are *hard negatives* a duplicate detector must not flag
            (:data:`HARD_NEGATIVE_KINDS`: the other side of the same patient, a follow-up of the
            same region; the truth's ``hard_negative_of`` names the image they resemble).
        devices: Acquisition devices (:mod:`radaudit.pacs.synth.devices`): None keeps the single
            legacy style (the in-domain files of earlier versions, byte for byte; the blank
            exposures among the out-of-domain images now come in three variants, and the truth
            gained ``device``, ``"legacy"``); ``"mixed"`` (:data:`~radaudit.pacs.synth.devices.MIXED`) the five
            profiles of :data:`~radaudit.pacs.synth.devices.PROFILES` in their shares, the minority
            device with 3.5% of the images; a profile name, all images from it; or a mapping of
            profile names to shares. One device per study; the truth's ``device`` names it, and
            duplicates and hard negatives keep their original's.
        device_correlation: How strongly devices follow regions, in [0, 1]: 0 draws each study's
            device by the shares alone, 1 mostly from its region's preferred devices
            (:data:`~radaudit.pacs.synth.devices.PREFERRED`); each device keeps its share either way.
        gauge_rates: Probability of a calibration gauge per true region (region name to a share in
            [0, 1]; regions left out get none), in place of
            :data:`~radaudit.pacs.synth.render.GAUGE_RATE`; None (default) keeps that table and the
            files of earlier versions. With the same seed, a region's gauge-bearing images at a
            higher rate include those at a lower one, and the other images stay as they are.

    Returns:
        Counts of what was written.

    Raises:
        ValueError: On an invalid argument, with how to fix it.
    """
    t0 = time.perf_counter()
    out, truth = Path(out_dir), Path(truth_path)
    _validate(out, truth, n, seed, {"noise": noise, "missing": missing, "ood": ood}, size, force)
    if isinstance(duplicates, bool) or not isinstance(duplicates, (int, float)) or not 0.0 <= duplicates <= 0.5:
        raise ValueError(f"duplicates={duplicates!r} is a fraction of n in [0, 0.5], e.g. duplicates=0.03")
    mix, correlation = dv.resolve_mix(devices), dv.check_correlation(device_correlation)
    rates = None if gauge_rates is None else _check_gauge_rates(gauge_rates)
    n, seed, size = int(n), int(seed), int(size)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    images, patients, rng = _planned(n, seed, noise, missing, ood, mix, correlation)
    rows: list[dict[str, Any]] = []
    n_studies = n_series = ctr = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deliberate header sins (e.g. "HÜFTE" in a CS element)
        for p_i, studies in enumerate(patients):
            pat = hd.person(rng) | {"n": p_i + 1}
            layout = int(rng.integers(4))
            for study in studies:
                n_studies += 1
                rows_study = _write_study(out, study, pat, layout, n_studies, seed, size, rng, ctr, rates)
                ctr += len(rows_study)
                n_series += len(study)
                rows += rows_study
    n_dup = round(float(duplicates) * n)
    if n_dup:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            originals = list(rows)
            rows += _write_duplicates(out, originals, n_dup, seed)
            rows += _write_hard_negatives(out, originals, n_dup, seed)
    for r in rows:
        for column in ("duplicate_of", "duplicate_kind", "hard_negative_of", "hard_negative_kind"):
            r.setdefault(column, None)
    rows.sort(key=lambda r: r["path"])
    _atomic_truth(pa.Table.from_pylist(rows), truth)
    counts = {r: sum(1 for im in images if im.true_region == r) for r in REGIONS}
    return SynthSummary(
        out_dir=out, truth_path=truth, n=n,
        n_swap=sum(im.corruption == "swap" for im in images),
        n_confusion=sum(im.corruption == "confusion" for im in images),
        n_missing=sum(im.corruption == "missing" for im in images),
        n_ood=sum(im.ood_kind is not None for im in images),
        n_patients=len(patients), n_studies=n_studies, n_series=n_series, region_counts=counts,
        seconds=time.perf_counter() - t0, n_duplicates=n_dup, n_hard_negatives=sum(
            r["hard_negative_of"] is not None for r in rows),
        device_counts=dict(sorted(Counter(im.device for im in images).items())),
    )


# What a PACS holds twice: the same file re-exported under new UIDs, re-encoded (another transfer
# syntax and bit depth), a re-exposure seconds later (shifted a few pixels, new noise), and the
# same image copied into another patient's study (a serious integrity error).
DUPLICATE_KINDS = ("copy", "reencoded", "shifted", "other_patient")


def _write_duplicates(out: Path, rows: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """Write ``k`` duplicates of in-domain images (kinds in turn); return their truth rows."""
    import copy

    rng = np.random.default_rng([seed, 2])
    candidates = sorted((r for r in rows if not r["is_ood"]), key=lambda r: r["path"])
    if not candidates:
        return []
    originals = [candidates[i] for i in rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)]
    new_rows = []
    for j, orig in enumerate(originals):
        kind = DUPLICATE_KINDS[j % len(DUPLICATE_KINDS)]
        others = [r for r in candidates if r["patient_id"] != orig["patient_id"]]
        if kind == "other_patient" and not others:  # an export of one patient
            kind = "copy"
        ds = pydicom.dcmread(out / orig["path"])
        row = dict(orig)
        if kind in ("reencoded", "shifted"):
            arr = ds.pixel_array  # stored values
            if kind == "reencoded":
                arr, factor = _requantized(ds, arr)
                ds.RescaleSlope = f"{float(ds.get('RescaleSlope', 1) or 1) * factor:g}"
                ds.RescaleIntercept = ds.get("RescaleIntercept", "0")
            else:
                arr = _reexposed(arr, rng, _stored_range(ds))
            _set_pixels(ds, arr)
        if kind == "other_patient":
            other = others[j % len(others)]
            donor = pydicom.dcmread(out / other["path"], stop_before_pixels=True)
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID"):
                if keyword in donor:
                    setattr(ds, keyword, copy.deepcopy(donor[keyword].value))
                elif keyword in ds:
                    delattr(ds, keyword)
            row.update(patient_id=other["patient_id"], patient_name=other["patient_name"])
            top = other["path"].split("/")[0]
        else:
            top = orig["path"].split("/")[0]
        row.update(_save_anew(ds, out, f"{top}/DUP{j + 1:05d}/IM000001", seed, "duplicate", j))
        row.update(duplicate_of=orig["sop_instance_uid"], duplicate_kind=kind, bits_stored=float(ds.BitsStored))
        new_rows.append(row)
    return new_rows


# What a duplicate detector must tell from a duplicate: the same patient's other side (nearly a
# mirror image of the same anatomy) and a follow-up of the same region months later (the same
# anatomy, positioned and exposed anew).
HARD_NEGATIVE_KINDS = ("contralateral", "follow_up")


def _write_hard_negatives(out: Path, rows: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """Write ``k`` hard negatives of in-domain images (kinds in turn); return their truth rows.

    The contralateral image is the original mirrored, 2-4% larger or smaller and turned by up to
    2 degrees, with new noise and the other laterality; the follow-up is turned by 4-8 degrees,
    shifted by 5-8% and scaled by 4-8%, exposed with another gamma, a new study months later.
    """
    import datetime

    rng = np.random.default_rng([seed, 3])
    candidates = sorted((r for r in rows if not r["is_ood"]), key=lambda r: r["path"])
    if not candidates:
        return []
    sided = [r for r in candidates if isinstance(r["laterality"], str)]  # a left or right knee, hand, ...
    picks: list[tuple[str, dict[str, Any]]] = []
    used: set[str] = set()  # one hard negative per original: two of one would resemble each other
    for j in range(min(k, len(candidates))):
        kind = HARD_NEGATIVE_KINDS[j % len(HARD_NEGATIVE_KINDS)]
        pool = [r for r in (sided if kind == "contralateral" else candidates) if r["sop_instance_uid"] not in used]
        if not pool:
            kind, pool = "follow_up", [r for r in candidates if r["sop_instance_uid"] not in used]
        orig = pool[int(rng.integers(len(pool)))]
        used.add(orig["sop_instance_uid"])
        picks.append((kind, orig))
    new_rows = []
    for j, (kind, orig) in enumerate(picks):
        ds = pydicom.dcmread(out / orig["path"])
        arr = ds.pixel_array
        row = dict(orig)
        if kind == "contralateral":
            arr = _moved(arr[:, ::-1], rng, degrees=(0.0, 2.0), shift=(0.0, 0.01), scale=(0.02, 0.04), gamma=(1.0, 1.0),
                         stored_range=_stored_range(ds))
            side = _OPPOSITE[orig["laterality"]]
            for keyword in ("ImageLaterality", "Laterality"):
                if keyword in ds:
                    setattr(ds, keyword, side)
            row.update(laterality=side)
        else:
            arr = _moved(arr, rng, degrees=(4.0, 8.0), shift=(0.05, 0.08), scale=(0.04, 0.08), gamma=(0.8, 1.25),
                         stored_range=_stored_range(ds))
            when = datetime.datetime.strptime(str(ds.StudyDate), "%Y%m%d") + datetime.timedelta(
                days=int(rng.integers(60, 700)))
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
        _set_pixels(ds, arr)
        row.update(_save_anew(ds, out, f"{orig['path'].split('/')[0]}/NEG{j + 1:05d}/IM000001", seed,
                              "hard-negative", j))
        row.update(hard_negative_of=orig["sop_instance_uid"], hard_negative_kind=kind)
        new_rows.append(row)
    return new_rows


def _set_pixels(ds: Dataset, arr: np.ndarray) -> None:
    """Store ``arr`` as uncompressed Pixel Data of ``ds``."""
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _save_anew(ds: Dataset, out: Path, rel: str, seed: int, what: str, j: int) -> dict[str, Any]:
    """Save ``ds`` at ``out / rel`` under new study, series and instance UIDs; return its truth fields."""
    study, series, sop = (hd.uid(seed, what, part, j) for part in ("study", "series", "sop"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out / rel, enforce_file_format=True)
    return {"sop_instance_uid": str(sop), "path": rel, "study_instance_uid": str(study),
            "series_instance_uid": str(series), "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)}


def _stored_range(ds: Dataset) -> tuple[int, int]:
    """The values ``BitsStored`` can hold (a value beyond them would wrap on reading)."""
    bits = int(ds.BitsStored)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if int(ds.PixelRepresentation) else (0, (1 << bits) - 1)


def _moved(arr: np.ndarray, rng: np.random.Generator, *, degrees: tuple[float, float], shift: tuple[float, float],
           scale: tuple[float, float], gamma: tuple[float, float], stored_range: tuple[int, int]) -> np.ndarray:
    """``arr`` turned, shifted and scaled about its centre (each by a random amount in its range and
    direction), exposed with another gamma, with new noise; edges repeated, same dtype, values
    within ``stored_range``."""
    from scipy import ndimage

    def amount(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds)) * float(rng.choice((-1.0, 1.0)))

    h, w = arr.shape
    theta = math.radians(amount(degrees))
    zoom = 1.0 + amount(scale)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]) / zoom
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - rot @ centre - rot @ np.array([amount(shift) * h, amount(shift) * w])
    moved = ndimage.affine_transform(arr.astype(np.float64), rot, offset=offset, order=1, mode="nearest")
    lo, hi = float(arr.min()), float(arr.max())
    spread = max(1.0, hi - lo)
    g = float(rng.uniform(*gamma))
    moved = lo + spread * np.clip((moved - lo) / spread, 0.0, 1.0) ** g
    noisy = moved + rng.normal(0.0, 0.005 * spread, arr.shape)
    return np.clip(np.rint(noisy), *stored_range).astype(arr.dtype)


def _requantized(ds: Dataset, arr: np.ndarray) -> tuple[np.ndarray, float]:
    """The stored values at another bit depth, and the factor that keeps modality values (x slope)."""
    bits = int(ds.BitsStored)
    if bits > 8:  # two bits fewer: values / 4, slope x 4
        ds.BitsStored, ds.HighBit = bits - 2, bits - 3
        if "PixelPaddingValue" in ds:
            ds.PixelPaddingValue = int(ds.PixelPaddingValue) >> 2
        return (arr.astype(np.int32) >> 2).astype(arr.dtype), 4.0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits + 2, bits + 1  # 8-bit: two bits more
    if "PixelPaddingValue" in ds:
        ds.PixelPaddingValue = int(ds.PixelPaddingValue) << 2
    return arr.astype(np.uint16) << 2, 0.25


def _reexposed(arr: np.ndarray, rng: np.random.Generator, stored_range: tuple[int, int]) -> np.ndarray:
    """The same view seconds later: shifted by 1-3% of its size (edges repeated), with new noise."""
    h, w = arr.shape
    dy, dx = (int(rng.integers(max(1, s // 100), max(2, 3 * s // 100) + 1)) * int(rng.choice((-1, 1)))
              for s in (h, w))
    moved = np.roll(arr, (dy, dx), axis=(0, 1))
    if dy > 0:
        moved[:dy] = moved[dy]
    elif dy < 0:
        moved[dy:] = moved[dy - 1]
    if dx > 0:
        moved[:, :dx] = moved[:, dx:dx + 1]
    elif dx < 0:
        moved[:, dx:] = moved[:, dx - 1:dx]
    spread = max(1.0, float(arr.max()) - float(arr.min()))
    noisy = moved.astype(np.float64) + rng.normal(0.0, 0.005 * spread, arr.shape)
    return np.clip(np.rint(noisy), *stored_range).astype(arr.dtype)


def _write_study(out: Path, study: list[_Series], pat: dict[str, Any], layout: int, study_n: int, seed: int,
                 size: int, rng: np.random.Generator, ctr: int,
                 gauge_rates: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Render and write all images of one study; return their truth rows."""
    when = hd.study_datetime(rng)
    device = _study_device(study[0].images[0].device, rng, study_n)
    english = rng.random() < 0.3
    first = study[0]
    labelled = any(s.recorded for s in study) and not all(im.corruption == "missing" for s in study for im in s.images)
    if first.ood_kind:
        study_region = first.recorded
    elif labelled and rng.random() < 0.85:
        study_region = first.true_region
    else:
        study_region = None
    side = ("L" if rng.random() < 0.5 else "R") if first.true_region in LATERAL_REGIONS else None
    study_desc = (hd.region_string(study_region, rng, side if study_region in LATERAL_REGIONS else None,
                                   english=english) if study_region else hd.unmappable(rng))
    st = {"n": study_n, "date": when.strftime("%Y%m%d"), "desc": study_desc, "accession": hd.accession(rng, when),
          "uid": hd.uid(seed, "study", study_n)}
    charset = "ISO_IR 192" if rng.random() < 0.3 else "ISO_IR 100"
    rows = []
    for s_i, series in enumerate(study):
        strings, tag, raw = _series_strings(series, study_region, study_desc, side, english, rng)
        se = {"number": s_i + 1 + int(rng.integers(0, 3)) * 100 * (rng.random() < 0.2),
              "desc": strings["SeriesDescription"], "uid": hd.uid(seed, "series", study_n, s_i)}
        enc = _draw_encoding(rng, device.encoding)
        aspect = float(_draw(rng, ((1.0, 0.4), (0.8, 0.3), (0.82, 0.2), (1.25, 0.1))))
        long = max(32, round(size * device.resolution))
        h, w = (long, max(32, round(long * aspect))) if aspect <= 1 else (max(32, round(long / aspect)), long)
        for inst, im in enumerate(series.images, start=1):
            irng = np.random.default_rng([seed, 1, im.idx])
            sop = hd.uid(seed, "sop", im.idx)
            text = [when.strftime("%d.%m.%Y"), hd.pick(irng, device.text)]
            if im.ood_kind:
                r = render_ood(im.ood_kind, irng, h, w)
            else:
                rate = None if gauge_rates is None else gauge_rates.get(im.true_region, 0.0)
                r = render_radiograph(im.true_region, irng, h, w, text=text, acquisition=device.acquisition,
                                      gauge_rate=rate)
            rel = _path_for(layout, pat, st, se, inst, str(sop), ctr + len(rows) + 1)
            stem, dot, ext = rel.rpartition(".") if rel.endswith((".dcm", ".DCM")) else (rel, "", "")
            dup = 1
            while (out / rel).exists():  # two studies of one patient on one day, same description
                dup += 1
                rel = f"{stem} ({dup}){dot}{ext}"
            ds, meta = _dataset(r, im, enc, device, pat, st, se, strings, sop, inst, when, charset, irng)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            rows.append({
                "sop_instance_uid": str(sop), "path": rel, "patient_id": pat["id"], "patient_name": pat["name"],
                "study_instance_uid": str(st["uid"]), "series_instance_uid": str(se["uid"]),
                "accession_number": st["accession"], "true_region": im.true_region,
                "recorded_region": im.recorded, "recorded_raw": raw if im.recorded else None,
                "recorded_tag": tag if im.recorded else None, "corruption": im.corruption,
                "is_ood": im.ood_kind is not None, "ood_kind": im.ood_kind, "device": device.name,
                "view": r.view, "laterality": r.side,
                "has_gauge": r.has_gauge, "gauge_kind": r.gauge_kind, "has_marker": r.marker,
                "collimated": r.collimated, "body_part_examined": strings["BodyPartExamined"],
                "series_description": strings["SeriesDescription"], "study_description": study_desc,
                "protocol_name": strings["ProtocolName"], **meta,
            })
    return rows


def _dataset(r: Rendered, im: _Image, enc: dict[str, Any], device: DeviceProfile, pat: dict[str, Any],
             st: dict[str, Any], se: dict[str, Any], strings: dict[str, str], sop: UID, inst: int, when: Any,
             charset: str, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    """Build the Part-10 dataset of one image; return it and the truth fields about its encoding."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    kind = im.ood_kind
    modality = device.modality
    sop_class = {"ct": CT_STORAGE, "photo": SC_STORAGE, "document": SC_STORAGE}.get(kind or "", None)
    if sop_class is None:
        sop_class = DX_STORAGE if modality == "DX" else CR_STORAGE
    mod = {"ct": "CT", "photo": "XC", "document": "OT"}.get(kind or "", modality)
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if kind == "ct" else [])
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
    ds.ContentTime = (when.replace(second=0)).strftime("%H%M") + f"{inst:02d}"
    ds.AccessionNumber = st["accession"]
    ds.Modality = mod
    ds.Manufacturer, ds.ManufacturerModelName = device.manufacturer, device.model
    ds.InstitutionName = hd.INSTITUTIONS[pat["n"] % len(hd.INSTITUTIONS)]
    ds.ReferringPhysicianName = hd.PHYSICIANS[st["n"] % len(hd.PHYSICIANS)]
    ds.StationName = device.station
    if device.serial:
        ds.DeviceSerialNumber = device.serial
    ds.StudyDescription = st["desc"]
    ds.SeriesDescription = strings["SeriesDescription"]
    ds.PatientName, ds.PatientID = pat["name"], pat["id"]
    ds.PatientBirthDate, ds.PatientSex = pat["birth"], pat["sex"]
    if pat["n"] % 3 == 0:
        ds.IssuerOfPatientID = "KIS"
    ds.BodyPartExamined = strings["BodyPartExamined"]
    ds.ProtocolName = strings["ProtocolName"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = st["uid"], se["uid"]
    ds.StudyID = str(st["n"])
    ds.SeriesNumber, ds.InstanceNumber = se["number"], inst
    meta: dict[str, Any] = {"modality": mod, "sop_class_uid": str(sop_class), "rotated": 0,
                            "orientation_tag_present": False, "patient_orientation": None,
                            "has_window": False, "has_padding": False}
    ts = enc["ts"]
    if kind == "photo":
        ds.ConversionType = "DV"
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.Rows, ds.Columns = r.pixels.shape[:2]
        ds.PixelData = r.pixels.tobytes()
        ts = ExplicitVRLittleEndian
        meta |= {"photometric": "RGB", "bits_stored": 8}
    elif kind == "ct":
        ds.KVP, ds.SliceThickness = "120", "5"
        ds.ImagePositionPatient = [-250, -250, float(rng.integers(-400, 0))]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{500 / max(r.pixels.shape):.4f}"] * 2
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.Rows, ds.Columns = r.pixels.shape
        ds.PixelData = np.clip(r.pixels.astype(np.int32) + 1024, 0, 4095).astype(np.uint16).tobytes()
        ts = ts if ts in (ExplicitVRLittleEndian, JPEG2000Lossless) else ExplicitVRLittleEndian
        meta |= {"photometric": "MONOCHROME2", "bits_stored": 12, "has_window": True}
    else:
        if kind == "document":
            ds.ConversionType = "WSD"
        img = r.pixels
        k = 0
        if not kind and rng.random() < 0.1:
            k = int(_draw(rng, ((1, 0.4), (2, 0.2), (3, 0.4))))
        pad = r.outside if (r.outside is not None and rng.random() < 0.3 and not kind) else None
        if pad is not None and not np.any(pad):
            pad = None
        if pad is not None:
            img = np.where(pad, 0.0, img)
        img = np.rot90(img, k)
        pad = np.rot90(pad, k) if pad is not None else None
        meta |= _encode_gray(ds, np.ascontiguousarray(img), enc, rng, pad)
        present = rng.random() < (0.75 if k else 0.85)
        orient = _orientation(r.view, k)
        if present:
            ds.PatientOrientation = orient
        meta |= {"rotated": 90 * k, "orientation_tag_present": present, "patient_orientation": "\\".join(orient),
                 "photometric": enc["photometric"], "bits_stored": enc["bits"]}
        px = r.pixels.shape
        spacing = f"{(device.field_mm / max(px)):.4f}"
        for keyword in device.spacing_tags:
            setattr(ds, keyword, [spacing, spacing])
        view_pos = {"ap": "AP", "pa": "PA", "lat": "LL", "dp": "PA", "obl": "", "lauenstein": "AP"}.get(r.view, "")
        ds.ViewPosition = view_pos
        if r.side:
            ds.ImageLaterality = r.side
            ds.Laterality = r.side
        ds.KVP = str(int(rng.integers(50, 125)))
        ds.ExposureTime = str(int(rng.integers(4, 200)))
        ds.BurnedInAnnotation = "YES" if r.marker else "NO"
        if mod == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.DetectorType = "SCINTILLATOR"
            good = "INVERSE" if enc["photometric"] == "MONOCHROME1" else "IDENTITY"
            ds.PresentationLUTShape = good if rng.random() > 0.03 else ("IDENTITY" if good == "INVERSE" else "INVERSE")
            meta["presentation_lut_shape"] = ds.PresentationLUTShape
    meta.setdefault("presentation_lut_shape", None)
    meta["bits_allocated"] = int(ds.BitsAllocated)
    meta["pixel_representation"] = int(ds.PixelRepresentation)
    meta["rows"], meta["columns"] = int(ds.Rows), int(ds.Columns)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ts == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif ts == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    meta["transfer_syntax"] = str(ds.file_meta.TransferSyntaxUID)
    return ds, meta
