"""Acquisition-device profiles of the synthetic export: each profile writes the header and pixel
properties it claims, read back through the ingest; the mix's shares and region dependence; the
device looks measured on a fixed scene; determinism; the legacy style without devices."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from radaudit.pacs import read_image
from radaudit.pacs.cache import CacheParams, letterbox, read
from radaudit.pacs.index import read_manifest
from radaudit.pacs.ingest import IngestConfig, run_ingest
from radaudit.pacs.synth import REGIONS, generate_export, render_preview
from radaudit.pacs.synth import artefacts
from radaudit.pacs.synth.canvas import Canvas
from radaudit.pacs.synth.devices import LEGACY, MIXED, MIXES, PROFILES, assign_devices, region_preferences
from radaudit.pacs.synth.export import CR_STORAGE, DX_STORAGE, plan_devices
from radaudit.pacs.synth.render import LEGACY_ACQUISITION, render_radiograph

SIZE = 64
ARGS = {"n": 60, "seed": 0, "size": SIZE, "noise": 0.1, "missing": 0.05, "ood": 0.1, "duplicates": 0.05,
        "devices": MIXED, "device_correlation": 0.6}
OWN_ENCODING = ("ct", "photo")  # out-of-domain kinds stored in their own encoding, whatever the device


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame, object]:
    """A mixed-device export of 60 images (plus duplicates), ingested: (root, truth, index, summary)."""
    root = tmp_path_factory.mktemp("devices")
    summary = generate_export(root / "export", root / "truth.parquet", **ARGS)
    result = run_ingest(IngestConfig(export_dir=root / "export", data_dir=root / "data",
                                     cache=CacheParams(size=SIZE), workers=1, pseudonym_key="test"))
    truth = pd.read_parquet(root / "truth.parquet")
    assert len(result.errors) == 0, result.errors[["path", "reason"]].to_string()
    return root, truth, result.index.set_index("sop_instance_uid"), summary


def _originals(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[truth["duplicate_of"].isna() & truth["hard_negative_of"].isna()]


def test_every_profile_appears_and_the_summary_counts_them(ingested) -> None:
    _, truth, _, summary = ingested
    originals = _originals(truth)
    in_domain = collections.Counter(originals.loc[~originals["is_ood"], "device"])
    assert set(in_domain) == set(PROFILES), f"seed {ARGS['seed']} misses a device in its in-domain images: {in_domain}"
    assert summary.device_counts == dict(sorted(collections.Counter(originals["device"]).items()))
    assert sum(summary.device_counts.values()) == ARGS["n"]
    assert summary.device_counts["cr_minority"] == round(MIXES[MIXED]["cr_minority"] * ARGS["n"])
    assert truth["device"].notna().all()


def test_each_profile_writes_its_header_read_back_through_the_ingest(ingested) -> None:
    _, truth, index, _ = ingested
    for _, row in truth.iterrows():
        p = PROFILES[row["device"]]
        ix = index.loc[row["sop_instance_uid"]]
        assert (ix["manufacturer"], ix["manufacturer_model_name"], ix["station_name"], ix["device_serial_number"]) \
            == (p.manufacturer, p.model, p.station, p.serial), row["path"]
        if not row["is_ood"]:  # a CT slice, a photo or a scanned form keeps its own modality
            assert ix["modality"] == p.modality
            assert ix["sop_class_uid"] == {"CR": CR_STORAGE, "DX": DX_STORAGE}[p.modality]
        if row["ood_kind"] in OWN_ENCODING:
            continue
        monochrome1 = p.encoding.monochrome1
        assert monochrome1 in (0.0, 1.0)  # every profile stores one polarity
        assert ix["photometric_interpretation"] == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")


def test_each_profile_writes_its_bit_depth_spacing_and_matrix(ingested) -> None:
    root, truth, index, _ = ingested
    originals = _originals(truth)
    for _, row in originals[~originals["ood_kind"].isin(OWN_ENCODING)].iterrows():
        p = PROFILES[row["device"]]
        ix = index.loc[row["sop_instance_uid"]]
        low, high = p.bits_range
        assert low <= ix["bits_stored"] <= high, (row["device"], ix["bits_stored"])
        assert ix["bits_allocated"] == (8 if high == 8 else 16)
        long_side = max(ix["rows"], ix["columns"])
        assert long_side == max(32, round(SIZE * p.resolution)), (row["device"], ix["rows"], ix["columns"])
        if row["is_ood"]:
            continue
        ds = pydicom.dcmread(root / "export" / row["path"], stop_before_pixels=True)
        for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
            assert (keyword in ds) == (keyword in p.spacing_tags), (row["device"], keyword)
        for keyword in p.spacing_tags:
            spacing = [float(v) for v in ds[keyword].value]
            assert spacing[0] == spacing[1] and abs(spacing[0] * long_side - p.field_mm) < 0.01, (keyword, spacing)
    # The resolutions differ: the minority reader's matrix is 0.8 of the DR room's.
    sides = originals.assign(side=originals[["rows", "columns"]].max(axis=1)).groupby("device")["side"].max()
    assert sides["cr_minority"] == round(0.8 * SIZE) < sides["dr_room"] == SIZE


def test_film_is_8_bit_and_monochrome1_devices_store_bone_dark(ingested) -> None:
    """As stored, MONOCHROME1 pixels run against the image that read_image (and so the cache) shows."""
    root, truth, _, _ = ingested
    originals = _originals(truth)
    checked = collections.Counter()
    for _, row in originals[~originals["is_ood"]].iterrows():
        ds = pydicom.dcmread(root / "export" / row["path"])
        stored = ds.pixel_array.astype(np.float64)
        shown = read_image(root / "export" / row["path"])
        inside = ~((stored == stored.max()) & (shown == 0))  # not pixel padding
        corr = np.corrcoef(stored[inside], shown[inside])[0, 1]
        if row["device"] == "film_digitiser":
            assert ds.pixel_array.dtype == np.uint8 and int(ds.BitsStored) == 8
        if PROFILES[row["device"]].encoding.monochrome1:
            assert corr < -0.95, (row["path"], corr)
        else:
            assert corr > 0.95, (row["path"], corr)
        checked[row["device"]] += 1
    assert set(checked) == set(PROFILES)


def test_the_cache_holds_the_normalized_image_of_each_device(ingested) -> None:
    """The cached image is read_image's (bone bright) image, cropped, turned upright and letterboxed."""
    root, truth, _, _ = ingested
    manifest = read_manifest(root / "data").set_index("sop_instance_uid")
    for device, rows in _originals(truth).groupby("device"):
        row = rows[~rows["is_ood"]].iloc[0]
        m = manifest.loc[row["sop_instance_uid"]]
        img = read_image(root / "export" / row["path"])[m["crop_top"]:m["crop_bottom"], m["crop_left"]:m["crop_right"]]
        expected = letterbox(np.rot90(img, m["rot90"]), SIZE).astype(int)
        assert np.abs(read(root / "data", row["sop_instance_uid"]).astype(int) - expected).max() <= 1, device


@pytest.mark.parametrize("device", list(PROFILES))
def test_a_known_pattern_is_bright_where_it_should_be_after_each_devices_encoding(tmp_path: Path, device: str) -> None:
    """Polarity of each profile's stored encoding against a known answer: the QC test pattern's grey
    wedge rises to the right, and a scanned form is a bright page, after read_image."""
    generate_export(tmp_path / "e", tmp_path / "t.parquet", n=5, seed=1, size=SIZE, ood=1.0, noise=0, missing=0,
                    devices=device)
    truth = pd.read_parquet(tmp_path / "t.parquet").set_index("ood_kind")
    assert (truth["device"] == device).all()
    wedge = read_image(tmp_path / "e" / truth.loc["test_pattern", "path"])
    top = wedge[: wedge.shape[0] // 4].mean(axis=0)
    assert np.corrcoef(np.arange(top.size), top)[0, 1] > 0.95 and top[-1] - top[0] > 0.5
    assert read_image(tmp_path / "e" / truth.loc["document", "path"]).mean() > 0.6


def test_duplicates_and_hard_negatives_keep_their_originals_device(ingested) -> None:
    root, truth, index, _ = ingested
    by_uid = truth.set_index("sop_instance_uid")
    copies = truth[truth["duplicate_of"].notna() | truth["hard_negative_of"].notna()]
    assert len(copies) == 2 * round(ARGS["duplicates"] * ARGS["n"])
    for _, row in copies.iterrows():
        orig = by_uid.loc[row["duplicate_of"] if pd.notna(row["duplicate_of"]) else row["hard_negative_of"]]
        assert row["device"] == orig["device"]
        assert index.loc[row["sop_instance_uid"], "device_serial_number"] == PROFILES[orig["device"]].serial


def test_one_device_per_study(ingested) -> None:
    _, truth, _, _ = ingested
    assert (_originals(truth).groupby("study_instance_uid")["device"].nunique() == 1).all()


def test_the_plan_is_what_the_export_writes(ingested) -> None:
    _, truth, _, _ = ingested
    plan_args = {k: v for k, v in ARGS.items() if k not in ("size", "duplicates")}
    written = _originals(truth)
    regions = [r if isinstance(r, str) else None for r in written["true_region"]]
    assert collections.Counter(plan_devices(**plan_args)) == collections.Counter(zip(regions, written["device"]))


def test_same_arguments_give_the_same_bytes_and_truth(ingested, tmp_path: Path) -> None:
    root, truth, _, _ = ingested
    generate_export(tmp_path / "again", tmp_path / "truth.parquet", **ARGS)
    files = {p.relative_to(root / "export"): p.read_bytes() for p in (root / "export").rglob("*") if p.is_file()}
    again = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert again == files
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "truth.parquet"), truth)


def test_without_devices_the_legacy_style_and_the_same_plan(ingested, tmp_path: Path) -> None:
    """devices=None: the truth's device is "legacy", headers name the old random devices and stations
    without a serial, spacing is 0.15 mm at 2048 pixels; images, studies, labels and who is whose
    patient are those of the same seed with devices (names and IDs are drawn anew)."""
    _, mixed, _, _ = ingested
    args = {k: v for k, v in ARGS.items() if k not in ("devices", "device_correlation")}
    summary = generate_export(tmp_path / "e", tmp_path / "t.parquet", **args)
    legacy = pd.read_parquet(tmp_path / "t.parquet")
    assert (legacy["device"] == LEGACY).all() and summary.device_counts == {LEGACY: ARGS["n"]}
    for _, row in legacy[~legacy["is_ood"]].head(12).iterrows():
        ds = pydicom.dcmread(tmp_path / "e" / row["path"], stop_before_pixels=True)
        assert "DeviceSerialNumber" not in ds and "PixelSpacing" not in ds
        assert str(ds.StationName).startswith("RAD") and max(ds.Rows, ds.Columns) == SIZE
        assert abs(float(ds.ImagerPixelSpacing[0]) * SIZE - 0.15 * 2048) < 0.01
    plan = ["sop_instance_uid", "study_instance_uid", "true_region", "recorded_region", "corruption", "ood_kind"]
    key = ["sop_instance_uid"]
    pd.testing.assert_frame_equal(_originals(legacy)[plan].sort_values(key).reset_index(drop=True),
                                  _originals(mixed)[plan].sort_values(key).reset_index(drop=True))

    def patients(truth: pd.DataFrame) -> set[frozenset[str]]:
        return {frozenset(g) for g in _originals(truth).groupby("patient_id")["study_instance_uid"]
                .agg(frozenset)}

    assert patients(legacy) == patients(mixed)


def test_the_minority_device_holds_2_to_5_percent_mostly_hands_feet_and_ankles() -> None:
    minority = []
    for seed in range(5):
        plan = plan_devices(n=400, seed=seed)
        share = sum(d == "cr_minority" for _, d in plan) / len(plan)
        assert 0.02 <= share <= 0.05, (seed, share)
        minority += [r for r, d in plan if d == "cr_minority"]
    assert np.mean([r in ("hand", "foot", "ankle") for r in minority]) > 0.5


def _cramers_v(pairs: list[tuple[str | None, str]]) -> float:
    ind = [(r, d) for r, d in pairs if r is not None]
    regions, devices = sorted({r for r, _ in ind}), sorted({d for _, d in ind})
    counts = collections.Counter(ind)
    table = np.array([[counts[r, d] for d in devices] for r in regions], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(np.sqrt(((table - expected) ** 2 / expected).sum() / table.sum() / (min(table.shape) - 1)))


def test_device_correlation_sets_how_strongly_devices_follow_regions() -> None:
    free, tied = (plan_devices(n=3000, seed=3, device_correlation=c) for c in (0.0, 1.0))
    assert _cramers_v(free) < 0.25 < 0.45 < _cramers_v(tied)  # devices drawn by study: V of independence ~0.15
    on_cr = {name: np.mean([d in ("cr_reader", "cr_minority") for r, d in plan if r == "hand"])
             for name, plan in (("free", free), ("tied", tied))}
    assert on_cr["free"] < 0.55 and on_cr["tied"] > 0.85, on_cr
    chests_on_dr = np.mean([d in ("dr_room", "bedside") for r, d in tied if r == "chest"])
    assert chests_on_dr > 0.85
    for plan in (free, tied):  # the shares hold at any correlation
        counts = collections.Counter(d for _, d in plan)
        for name, share in MIXES[MIXED].items():
            assert abs(counts[name] / len(plan) - share) < 0.05, (name, counts[name] / len(plan))


def test_region_preferences_keep_the_shares_and_favour_the_preferred_devices() -> None:
    names, shares = list(MIXES[MIXED]), list(MIXES[MIXED].values())
    prefs = region_preferences(names, shares)
    np.testing.assert_allclose(prefs.sum(axis=1), 1.0)
    np.testing.assert_allclose(prefs.mean(axis=0), shares, atol=1e-9)
    hand = prefs[REGIONS.index("hand")]
    assert hand[names.index("cr_reader")] + hand[names.index("cr_minority")] > 0.85


def test_assign_devices_fills_a_small_share_exactly_and_skips_out_of_domain_studies() -> None:
    studies = [("hand", 1)] * 30 + [("chest", 2)] * 30 + [(None, 1)] * 10
    names = assign_devices(studies, {"dr_room": 0.95, "cr_minority": 0.05}, 1.0, np.random.default_rng(0))
    minority = [studies[i] for i, name in enumerate(names) if name == "cr_minority"]
    assert sum(k for _, k in minority) == round(0.05 * 100) and {r for r, _ in minority} == {"hand"}


def _scene(ramp: bool) -> Canvas:
    """A fixed scene: soft tissue (a ramp of thickness, or flat) over a bone block."""
    cv = Canvas(96, 96, center=(0.0, 0.0), fov=20.0)
    if ramp:
        cv.soft[:] = np.linspace(0.2, 2.0, 96, dtype=np.float32)[:, None] * np.linspace(1.0, 1.3, 96)[None, :]
    else:
        cv.soft[:] = 1.0
        cv.bone[40:90, 30:66] = 1.5
    return cv


def _high_frequency(img: np.ndarray) -> float:
    flat = img[4:32, 8:88]  # soft tissue only
    return float((flat - ndimage.gaussian_filter(flat, 2.0)).std())


def _line_peak(img: np.ndarray) -> float:
    """Strongest periodicity with a period under 10 pixels along the rows or columns, against the median."""
    best = 0.0
    for profile in (img.mean(axis=0), img.mean(axis=1)):
        detrended = profile - ndimage.uniform_filter1d(profile, 9, mode="nearest")
        power = np.abs(np.fft.rfft(detrended[8:-8]))[8:] ** 2
        best = max(best, float(power.max() / np.median(power)))
    return best


def test_bedside_is_noisier_than_the_dr_room_on_the_same_scene() -> None:
    for seed in range(5):
        noise = {name: _high_frequency(artefacts.expose(_scene(False), np.random.default_rng(seed),
                                                        PROFILES[name].acquisition.processing))
                 for name in ("bedside", "dr_room")}
        assert noise["bedside"] > 2 * noise["dr_room"], (seed, noise)


def test_the_cr_reader_shows_grid_lines_and_the_dr_room_does_not() -> None:
    for seed in range(5):
        peak = {name: _line_peak(artefacts.expose(_scene(True), np.random.default_rng(seed),
                                                  PROFILES[name].acquisition.processing))
                for name in ("cr_reader", "dr_room")}
        assert peak["cr_reader"] > 40 > 20 > peak["dr_room"], (seed, peak)


@pytest.mark.parametrize("tone", artefacts.TONES)
def test_every_tone_curve_keeps_black_white_and_order(tone: str) -> None:
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    y = artefacts.tone_curve(x, tone, 4.0)
    assert y.dtype == np.float32 and abs(y[0]) < 1e-6 and abs(y[-1] - 1.0) < 1e-6 and np.all(np.diff(y) > 0)


def test_digitised_film_has_a_scanner_border() -> None:
    acquisition = PROFILES["film_digitiser"].acquisition
    for seed in range(6):
        img = render_radiograph("knee", np.random.default_rng(seed), 128, 128, acquisition=acquisition).pixels
        edges = (img[0], img[-1], img[:, 0], img[:, -1])
        assert any(np.isin(edge, (0.0, 1.0)).mean() > 0.9 for edge in edges), seed


def test_same_scene_under_each_device_and_the_bedside_collimates_tighter() -> None:
    """One random state draws the same anatomy under every profile; the bedside unit shutters more of
    the frame, more often, than the DR room."""
    outside: dict[str, list[float]] = {"bedside": [], "dr_room": []}
    for seed in range(30):
        looks = {name: render_radiograph("chest", np.random.default_rng(seed), SIZE, SIZE, acquisition=p.acquisition)
                 for name, p in PROFILES.items() if name in outside}
        assert len({(r.view, r.side, r.has_gauge) for r in looks.values()}) == 1
        for name, r in looks.items():
            outside[name].append(float(r.outside.mean()) if r.collimated else 0.0)
    assert np.mean(outside["bedside"]) > 2 * np.mean(outside["dr_room"])


def test_legacy_acquisition_is_the_default() -> None:
    a = render_radiograph("knee", np.random.default_rng(4), 48, 48)
    b = render_radiograph("knee", np.random.default_rng(4), 48, 48, acquisition=LEGACY_ACQUISITION)
    assert np.array_equal(a.pixels, b.pixels)


def test_preview_ends_with_a_row_of_devices(tmp_path: Path) -> None:
    from PIL import Image

    size = 48
    sheet = np.asarray(Image.open(render_preview(tmp_path / "sheet.png", seed=2, size=size, per_region=1)))
    last = sheet[-size:].astype(float)
    tiles = [last[14:, i * size:(i + 1) * size] for i in range(1 + len(PROFILES))]  # below the label band
    assert all(t.std() > 10 for t in tiles)
    assert min(np.abs(a - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1:]) > 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": "ct_scanner"}, r"devices='ct_scanner'.*mixed.*cr_reader"),
        ({"devices": {"cr_reader": 0.5, "laser_printer": 0.5}}, "unknown profile 'laser_printer'"),
        ({"devices": {"cr_reader": -1.0}}, r"devices\['cr_reader'\]=-1.0"),
        ({"devices": {"cr_reader": 0.0}}, "sum to 0"),
        ({"devices": MIXED, "device_correlation": 1.5}, r"device_correlation=1.5 must lie in \[0, 1\]"),
        ({"devices": MIXED, "device_correlation": float("nan")}, r"\[0, 1\]"),
    ],
)
def test_bad_device_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_export(tmp_path / "e", tmp_path / "t.parquet", n=5, seed=0, size=32, **kwargs)
    assert not (tmp_path / "e").exists()


def test_the_legacy_name_is_the_single_older_style_everywhere() -> None:
    """``radaudit synth --devices legacy`` and ``radaudit demo --devices legacy`` mean the same export."""
    from radaudit.pacs.synth.devices import resolve_mix

    assert resolve_mix(LEGACY) is None and resolve_mix(None) is None
    assert resolve_mix(MIXED) == dict(MIXES[MIXED])
    with pytest.raises(ValueError, match="'legacy'"):
        resolve_mix("vintage")
