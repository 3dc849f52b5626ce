"""Synthetic PACS export: determinism, valid DICOM, truth consistent with headers, exact rates."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pydicom
import pytest

from radaudit.pacs.synth import REGIONS, generate_export, render_preview
from radaudit.pacs.synth.export import NEIGHBOURS, TAGS
from radaudit.pacs.synth.headers import UNMAPPABLE, UNMAPPABLE_CS
from radaudit.pacs.synth.render import GAUGE_RATE, GAUGE_RATE_OTHER, render_radiograph

N, SEED, SIZE = 42, 3, 64
RATES = {"noise": 0.1, "missing": 0.1, "ood": 0.05}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], object]:
    root = tmp_path_factory.mktemp("synth")
    summary = generate_export(root / "export", root / "truth.parquet", n=N, seed=SEED, size=SIZE, **RATES)
    return root, pq.read_table(root / "truth.parquet").to_pylist(), summary


def _files(export_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(export_dir).as_posix(): p.read_bytes() for p in export_dir.rglob("*") if p.is_file()}


def test_same_seed_gives_same_bytes_and_truth(export, tmp_path: Path) -> None:
    root, truth, _ = export
    generate_export(tmp_path / "again", tmp_path / "truth.parquet", n=N, seed=SEED, size=SIZE, **RATES)
    assert _files(tmp_path / "again") == _files(root / "export")
    assert pq.read_table(tmp_path / "truth.parquet").to_pylist() == truth


def test_other_seed_gives_other_export(export, tmp_path: Path) -> None:
    root, truth, _ = export
    generate_export(tmp_path / "other", tmp_path / "truth.parquet", n=N, seed=SEED + 1, size=SIZE, **RATES)
    other = pq.read_table(tmp_path / "truth.parquet").to_pylist()
    assert {r["sop_instance_uid"] for r in other}.isdisjoint(r["sop_instance_uid"] for r in truth)


def test_every_file_is_valid_dicom_and_in_the_truth(export) -> None:
    root, truth, _ = export
    files = sorted(p for p in (root / "export").rglob("*") if p.is_file())
    assert len(files) == len(truth) == N
    by_path = {r["path"]: r for r in truth}
    syntaxes = set()
    for path in files:
        row = by_path[path.relative_to(root / "export").as_posix()]
        ds = pydicom.dcmread(path)  # raises on anything that is not Part-10
        assert ds.file_meta.TransferSyntaxUID == row["transfer_syntax"]
        pixels = ds.pixel_array
        assert pixels.shape[:2] == (row["rows"], row["columns"]) == (ds.Rows, ds.Columns)
        assert max(ds.Rows, ds.Columns) == SIZE
        if ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1:
            assert int(pixels.max()) < 2 ** ds.BitsStored
        assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid
        syntaxes.add(row["transfer_syntax"])
    assert len(syntaxes) >= 3


def test_truth_matches_headers(export) -> None:
    root, truth, _ = export
    keyword = {"BodyPartExamined": "body_part_examined", "SeriesDescription": "series_description",
               "StudyDescription": "study_description", "ProtocolName": "protocol_name"}
    for row in truth:
        ds = pydicom.dcmread(root / "export" / row["path"], stop_before_pixels=True)
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert ds.PatientID == row["patient_id"] and str(ds.PatientName) == row["patient_name"]
        assert ds.StudyInstanceUID == row["study_instance_uid"]
        assert ds.SeriesInstanceUID == row["series_instance_uid"]
        assert ds.Modality == row["modality"] and ds.SOPClassUID == row["sop_class_uid"]
        assert ds.PhotometricInterpretation == row["photometric"]
        assert ds.BitsStored == row["bits_stored"]
        for tag, col in keyword.items():
            assert str(ds.get(tag, "")) == row[col], (tag, row["path"])
        assert ("PatientOrientation" in ds) == row["orientation_tag_present"]
        if row["orientation_tag_present"]:
            assert "\\".join(ds.PatientOrientation) == row["patient_orientation"]
        if row["recorded_region"] is None:
            assert row["recorded_tag"] is None
            for tag in TAGS:  # nothing names a region
                assert str(ds.get(tag, "")) in UNMAPPABLE + UNMAPPABLE_CS + ("",)
        else:
            assert str(ds.get(row["recorded_tag"])) == row["recorded_raw"] != ""
            for tag in TAGS[: TAGS.index(row["recorded_tag"])]:  # earlier tags are blank or meaningless
                assert str(ds.get(tag, "")) in UNMAPPABLE + UNMAPPABLE_CS + ("",)
        if row["laterality"]:
            assert ds.ImageLaterality == row["laterality"]


def test_rates_and_class_balance_are_exact(export) -> None:
    _, truth, summary = export
    kinds = collections.Counter(r["corruption"] for r in truth)
    assert kinds["swap"] + kinds["confusion"] == round(RATES["noise"] * N) == summary.n_noise
    assert kinds["missing"] == round(RATES["missing"] * N) == summary.n_missing
    assert sum(r["is_ood"] for r in truth) == round(RATES["ood"] * N) == summary.n_ood
    in_domain = [r for r in truth if not r["is_ood"]]
    counts = collections.Counter(r["true_region"] for r in in_domain)
    assert set(counts) == set(REGIONS) and max(counts.values()) - min(counts.values()) <= 1
    for r in in_domain:
        if r["corruption"] == "none":
            assert r["recorded_region"] == r["true_region"]
        elif r["corruption"] == "confusion":
            assert r["recorded_region"] in NEIGHBOURS[r["true_region"]]
        elif r["corruption"] == "swap":
            assert r["recorded_region"] not in (None, r["true_region"])
        else:
            assert r["recorded_region"] is None
    assert all(r["true_region"] is None and r["ood_kind"] for r in truth if r["is_ood"])


def test_zero_rates_give_clean_labels(tmp_path: Path) -> None:
    s = generate_export(tmp_path / "e", tmp_path / "t.csv", n=14, seed=0, size=32, noise=0, missing=0, ood=0)
    rows = pacsv.read_csv(tmp_path / "t.csv").to_pylist()
    assert s.n_noise == s.n_missing == s.n_ood == 0
    assert sorted(r["true_region"] for r in rows) == sorted(REGIONS)
    assert all(r["recorded_region"] == r["true_region"] for r in rows)


def test_gauge_rates_spelling_out_the_default_table_give_the_default_export(export, tmp_path: Path) -> None:
    root, truth, _ = export
    table = {r: GAUGE_RATE.get(r, GAUGE_RATE_OTHER) for r in REGIONS}
    generate_export(tmp_path / "e", tmp_path / "t.parquet", n=N, seed=SEED, size=SIZE, gauge_rates=table, **RATES)
    assert _files(tmp_path / "e") == _files(root / "export")
    assert pq.read_table(tmp_path / "t.parquet").to_pylist() == truth


def test_gauge_rates_put_gauges_where_asked_and_leave_the_other_images_alone(tmp_path: Path) -> None:
    args = {"n": 140, "seed": 1, "size": 32, "ood": 0.0}
    generate_export(tmp_path / "d", tmp_path / "d.parquet", **args)
    generate_export(tmp_path / "g", tmp_path / "g.parquet", gauge_rates={"hip": 1.0, "pelvis": 1.0, "knee": 0.5},
                    **args)
    default = pd.read_parquet(tmp_path / "d.parquet").set_index("sop_instance_uid")
    rates = pd.read_parquet(tmp_path / "g.parquet").set_index("sop_instance_uid").loc[default.index]
    share = rates.groupby("true_region")["has_gauge"].mean()
    assert share.drop("knee").to_dict() == {r: float(r in ("hip", "pelvis")) for r in REGIONS if r != "knee"}
    knee = default["true_region"] == "knee"
    # The same draw decides each scene's gauge: at 0.5 the knees of the default 0.12 keep theirs, more get one.
    assert (rates.loc[knee & default["has_gauge"], "has_gauge"]).all()
    assert rates.loc[knee, "has_gauge"].sum() > default.loc[knee, "has_gauge"].sum()
    same = default.index[default["has_gauge"] == rates["has_gauge"]]
    assert len(same) > 100
    for uid in same:
        assert (tmp_path / "g" / rates.at[uid, "path"]).read_bytes() == (
            tmp_path / "d" / default.at[uid, "path"]).read_bytes()


def test_a_gauge_rate_sets_the_share_of_gauge_bearing_images() -> None:
    for rate in (0.0, 0.3, 1.0):
        got = np.mean([render_radiograph("knee", np.random.default_rng([7, i]), 32, 32, gauge_rate=rate).has_gauge
                       for i in range(300)])
        assert abs(got - rate) < 0.08, (rate, got)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "positive integer"),
        ({"n": 0}, "positive integer"),
        ({"noise": 1.5}, r"noise=1.5 .* \[0, 1\]"),
        ({"missing": -0.1}, r"missing=-0.1 .* \[0, 1\]"),
        ({"ood": float("nan")}, r"\[0, 1\]"),
        ({"noise": 0.6, "missing": 0.3, "ood": 0.2}, "sum to at most 1"),
        ({"size": 16}, "size=16"),
        ({"seed": -3}, "non-negative"),
        ({"gauge_rates": {"knee": 1.5}}, r"gauge_rates\['knee'\]=1.5 .* \[0, 1\]"),
        ({"gauge_rates": {"femur": 0.5}}, "unknown regions"),
        ({"gauge_rates": [0.5]}, "must map region names"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n": 5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        generate_export(tmp_path / "e", tmp_path / "t.parquet", **args)
    assert not (tmp_path / "e").exists()


def test_non_empty_dir_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "e"
    out.mkdir()
    (out / "old.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="force"):
        generate_export(out, tmp_path / "t.parquet", n=3, seed=0, size=32)
    generate_export(out, tmp_path / "t.parquet", n=3, seed=0, size=32, force=True)
    assert not (out / "old.dcm").exists() and len([p for p in out.rglob("*") if p.is_file()]) == 3


def test_truth_must_live_outside_the_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        generate_export(tmp_path / "e", tmp_path / "e" / "t.parquet", n=3, seed=0)
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        generate_export(tmp_path / "e", tmp_path / "t.json", n=3, seed=0)


def test_preview_shows_every_region(tmp_path: Path) -> None:
    from PIL import Image

    path = render_preview(tmp_path / "sheet.png", seed=1, size=48, per_region=1)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape[1] == 6 * 48 and sheet.shape[0] >= -(-len(REGIONS) // 6) * 48
    assert sheet.std() > 10


def test_region_mapper_reads_the_recorded_labels(export) -> None:
    from radaudit.pacs import regions

    _, truth, _ = export
    mapper = regions.RegionMapper.from_file()
    assert tuple(regions.DEFAULT_REGIONS) == REGIONS
    for row in truth:
        label = mapper.map_tags({k: row[k] for k in regions.TAG_PRIORITY})
        assert label.region == row["recorded_region"], row["recorded_raw"]


def test_every_in_domain_radiograph_shows_anatomy_through_its_own_window(tmp_path: Path) -> None:
    """The stored window covers the stored values: a window shifted by an intercept that the file
    does not carry (no Rescale Intercept written) turned whole radiographs white."""
    from radaudit.pacs import read_image

    out, truth = tmp_path / "export", tmp_path / "truth.parquet"
    generate_export(out, truth, n=150, seed=5, size=48, noise=0, missing=0, ood=0)
    rows = pq.read_table(truth).to_pylist()
    assert sum(r["has_window"] for r in rows) > 50
    spread = {}
    for r in rows:
        lo, hi = np.percentile(read_image(out / r["path"]), [10, 90])
        spread[r["path"]] = float(hi - lo)
    assert min(spread.values()) > 0.05, sorted(spread.items(), key=lambda kv: kv[1])[:3]


def test_hard_negatives_are_the_other_side_or_a_follow_up_of_one_original_each(tmp_path):
    """Issue 16's hard negatives: the same patient's other side (mirrored, other laterality) and a
    follow-up of the same region (moved, later date); not duplicates, one per original."""
    from radaudit.pacs.synth.export import HARD_NEGATIVE_KINDS

    generate_export(tmp_path / "e", tmp_path / "t.parquet", n=60, seed=2, size=64, duplicates=0.1)
    t = pd.read_parquet(tmp_path / "t.parquet").set_index("sop_instance_uid")
    negs = t[t["hard_negative_of"].notna()]
    assert len(negs) == 6 and set(negs["hard_negative_kind"]) == set(HARD_NEGATIVE_KINDS)
    assert negs["duplicate_of"].isna().all() and negs["hard_negative_of"].is_unique
    for uid, row in negs.iterrows():
        orig = t.loc[row["hard_negative_of"]]
        a, b = pydicom.dcmread(tmp_path / "e" / row["path"]), pydicom.dcmread(tmp_path / "e" / orig["path"])
        assert a.PatientID == b.PatientID and a.StudyInstanceUID != b.StudyInstanceUID
        assert row["true_region"] == orig["true_region"] and not orig["is_ood"]
        va, vb = a.pixel_array.astype(float), b.pixel_array.astype(float)
        assert va.shape == vb.shape and not np.array_equal(va, vb)
        bits = int(a.BitsStored)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if a.PixelRepresentation else (0, 2 ** bits)
        assert low <= va.min() and va.max() < high  # no value wraps around BitsStored
        if row["hard_negative_kind"] == "contralateral":
            assert {row["laterality"], orig["laterality"]} == {"L", "R"}
            # Nearer to the mirror image than to the original: it is the other side.
            assert np.corrcoef(va.ravel(), vb[:, ::-1].ravel())[0, 1] > np.corrcoef(va.ravel(), vb.ravel())[0, 1]
        else:
            assert a.StudyDate > b.StudyDate
            assert row["laterality"] == orig["laterality"] or (pd.isna(row["laterality"]) and pd.isna(orig["laterality"]))


def test_duplicates_of_each_kind_are_written_with_their_truth(tmp_path):
    """Issue 16's synthetic duplicates: a copy under new UIDs, a re-encoded copy (other transfer syntax
    and bit depth, same modality values up to the lost bits), a re-exposure (shifted, new noise), and a
    copy under another patient."""
    from radaudit.pacs.synth.export import DUPLICATE_KINDS

    s = generate_export(tmp_path / "e", tmp_path / "t.parquet", n=40, seed=1, size=64, duplicates=0.1)
    t = pd.read_parquet(tmp_path / "t.parquet").set_index("sop_instance_uid")
    dups = t[t["duplicate_of"].notna()]
    assert s.n_duplicates == 4 and s.n_hard_negatives == 4 and len(t) == 48
    assert sorted(dups["duplicate_kind"]) == sorted(DUPLICATE_KINDS)
    assert t.loc[t["duplicate_of"].isna(), "duplicate_kind"].isna().all()
    for uid, row in dups.iterrows():
        orig = t.loc[row["duplicate_of"]]
        assert not orig["is_ood"] and pd.isna(orig["duplicate_of"])
        a, b = pydicom.dcmread(tmp_path / "e" / row["path"]), pydicom.dcmread(tmp_path / "e" / orig["path"])
        assert a.SOPInstanceUID == uid != b.SOPInstanceUID and a.StudyInstanceUID != b.StudyInstanceUID
        assert row["true_region"] == orig["true_region"]
        assert row[["recorded_region"]].equals(orig[["recorded_region"]])  # the same label, or none
        slope_a, slope_b = float(a.get("RescaleSlope", 1)), float(b.get("RescaleSlope", 1))
        va, vb = a.pixel_array * slope_a, b.pixel_array * slope_b
        kind = row["duplicate_kind"]
        if kind in ("copy", "other_patient"):
            assert a.PixelData == b.PixelData and a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
        if kind == "reencoded":
            assert (a.file_meta.TransferSyntaxUID, int(a.BitsStored)) != (b.file_meta.TransferSyntaxUID, int(b.BitsStored))
            assert np.abs(va - vb).max() <= 3 * slope_b  # two bits fewer (or more)
        if kind == "shifted":
            assert a.pixel_array.shape == b.pixel_array.shape and not np.array_equal(va, vb)
        same_patient = a.PatientID == b.PatientID
        assert same_patient == (kind != "other_patient")
        assert (row["patient_id"] == orig["patient_id"]) == same_patient
    without = generate_export(tmp_path / "e2", tmp_path / "t2.parquet", n=40, seed=1, size=64)
    assert without.n_hard_negatives == 0 and pd.read_parquet(tmp_path / "t2.parquet")["hard_negative_of"].isna().all()
    assert without.n_duplicates == 0 and pd.read_parquet(tmp_path / "t2.parquet")["duplicate_of"].isna().all()
    with pytest.raises(ValueError, match="duplicates"):
        generate_export(tmp_path / "e3", tmp_path / "t3.parquet", n=10, seed=1, size=32, duplicates=0.9)
