"""Real CR radiographs of other vendors (pydicom-data) inside a synthetic export, through the pipeline's stages.

A Philips chest (RG1, 15-bit MONOCHROME1) and a Fuji lower leg (RG3, 10-bit MONOCHROME1), each
uncompressed, JPEG 2000 lossless, JPEG 2000 lossy and lossy-stored-uncompressed, are added to a
small synthetic export by :func:`radaudit.pacs.synth.foreign.add_real_radiographs`, ingested with
:func:`radaudit.pacs.ingest.run_ingest`, and labelled and grouped by the stage functions, without
Dagster. They must come out bone bright, labelled from their headers where the vocabulary covers
the region (chest) and null where it does not (tibia), grouped with their own encodings only, and
never out of domain by header or pixels.

Run with::

    python -m pytest tests/pacs/test_real_cr.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from radaudit.pacs.synth.foreign import REAL_ENCODINGS, add_foreign, add_real_radiographs, real_radiograph_files

try:
    FILES = real_radiograph_files()
except FileNotFoundError as error:
    pytest.skip(f"needs pydicom-data (a dev dependency): {error}", allow_module_level=True)

CACHE = 64  # the CPU demo's cache size (models/presets.py)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 48-image synthetic export with the real radiographs, ingested, labelled and searched for near duplicates."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export
    from radaudit.pipelines import stages

    root = tmp_path_factory.mktemp("realcr")
    export, truth = root / "export", root / "truth.parquet"
    generate_export(export, truth, n=48, seed=3, size=64, ood=0.1, duplicates=0.0)
    rows = add_real_radiographs(export, truth)
    run_ingest(IngestConfig(export_dir=export, data_dir=root / "data", cache=CacheParams(size=CACHE), workers=1))
    data = root / "data"
    return {"export": export, "truth": truth, "data": data, "rows": rows, "labels": stages.map_labels(data),
            "groups": stages.find_near_duplicates(data)}


def _uid(rows: pd.DataFrame, name: str) -> str:
    """The new SOP Instance UID of e.g. ``RG1_J2KI``."""
    return rows.loc[rows["path"].str.endswith(f"/{name}.dcm"), "sop_instance_uid"].item()


def _content(data: Path, uid: str) -> np.ndarray:
    """The cached image inside its content box (the letterbox cut off), as float."""
    from radaudit.pacs import cache
    from radaudit.pacs.index import read_manifest

    manifest = read_manifest(data).set_index("sop_instance_uid")
    h, w = (int(manifest.loc[uid, c]) for c in ("content_height", "content_width"))
    img = cache.read(data, uid).astype(np.float64)
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


# The copies and their truth rows.

def test_real_radiographs_join_the_export_as_in_domain_patients(ingested: dict) -> None:
    rows, truth = ingested["rows"], pd.read_parquet(ingested["truth"])
    assert len(rows) == 8 and truth["sop_instance_uid"].is_unique and len(truth) == 56
    assert not rows["is_ood"].any() and rows["ood_kind"].isna().all()
    by_stem = {stem: rows[rows["path"].str.contains(f"/{stem}_")] for stem in FILES}
    rg1, rg3 = by_stem["RG1"], by_stem["RG3"]
    assert (rg1["true_region"] == "chest").all() and (rg1["recorded_region"] == "chest").all()
    assert rg3["true_region"].isna().all() and rg3["recorded_region"].isna().all()
    assert set(rg1["device"]) == {"real_philips_cr"} and set(rg3["device"]) == {"real_fuji_cr"}
    for group in (rg1, rg3):
        assert group["patient_id"].nunique() == 1 and group["study_instance_uid"].nunique() == 1
        original = group.loc[group["path"].str.endswith("_UNCR.dcm"), "sop_instance_uid"].item()
        copies = group[group["sop_instance_uid"] != original]
        assert (copies["duplicate_of"] == original).all()
        assert sorted(copies["duplicate_kind"]) == sorted(k for k in REAL_ENCODINGS.values() if k)
    assert rg1["patient_id"].iloc[0] != rg3["patient_id"].iloc[0]
    # The synthetic rows keep their own device; every column of the truth is kept.
    assert (truth["device"].iloc[:48] == "legacy").all()
    assert set(truth["device"].iloc[48:]) == {"real_philips_cr", "real_fuji_cr"}


def test_copies_keep_their_pixels_under_fresh_identifiers(ingested: dict) -> None:
    rows, export = ingested["rows"], ingested["export"]
    for source in FILES["RG1"]:
        name = source.name[:-4]
        original = pydicom.dcmread(source)
        copy = pydicom.dcmread(export / rows.loc[rows["path"].str.endswith(f"/{name}.dcm"), "path"].item())
        assert copy.PixelData == original.PixelData
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            assert copy[keyword].value != original[keyword].value
        assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID == _uid(rows, name)
        assert "RG1" not in str(copy.PatientName) + copy.PatientID + copy.StudyID
        assert "OtherPatientIDs" not in copy and original.OtherPatientIDs == "26210"
        for keyword in ("PatientBirthDate", "InstitutionName", "ReferringPhysicianName"):
            assert keyword not in copy
        if "SourceImageSequence" in copy:  # the encodings name their uncompressed predecessor, by its new UID
            assert copy.SourceImageSequence[0].ReferencedSOPInstanceUID == _uid(rows, "RG1_UNCR")


def test_added_twice_under_another_tag_they_are_other_patients(tmp_path: Path) -> None:
    from radaudit.pacs.synth import generate_export

    export, truth = tmp_path / "export", tmp_path / "truth.parquet"
    generate_export(export, truth, n=8, seed=0, size=32)
    first = add_real_radiographs(export, truth, encodings={"UNCR": None, "J2KR": "reencoded"})
    second = add_real_radiographs(export, truth, tag="again", encodings={"UNCR": None, "J2KR": "reencoded"})
    foreign = add_foreign(export, truth, [FILES["RG3"][0]])  # the --foreign path beside it still works
    t = pd.read_parquet(truth)
    assert len(t) == 8 + 4 + 4 + 1 and t["sop_instance_uid"].is_unique
    assert set(first["patient_id"]).isdisjoint(second["patient_id"])
    assert bool(foreign["is_ood"].item()) and pd.isna(t["device"].iloc[-1])


def test_bad_encodings_and_missing_pydicom_data_are_explained(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.data

    with pytest.raises(ValueError, match="original first"):
        add_real_radiographs(tmp_path, tmp_path / "t.parquet", encodings={"J2KR": "reencoded", "UNCR": None})
    monkeypatch.setattr(pydicom.data, "get_testdata_file", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install pydicom-data"):
        add_real_radiographs(tmp_path, tmp_path / "t.parquet")


# What the pipeline makes of them.

def test_ingest_caches_every_encoding_bone_bright(ingested: dict) -> None:
    """MONOCHROME1 is inverted after the VOI: the mediastinum and spine are brighter than the lungs,
    the tibia brighter than the air beside the leg."""
    data, rows = ingested["data"], ingested["rows"]
    for name in (p.name[:-4] for p in FILES["RG1"]):
        chest = _content(data, _uid(rows, name))
        h, w = chest.shape
        middle = chest[int(0.3 * h):int(0.7 * h)]
        mediastinum = middle[:, int(0.45 * w):int(0.55 * w)].mean()
        lungs = min(middle[:, int(0.2 * w):int(0.3 * w)].mean(), middle[:, int(0.7 * w):int(0.8 * w)].mean())
        assert mediastinum > lungs + 30, (name, mediastinum, lungs)
    for name in (p.name[:-4] for p in FILES["RG3"]):
        leg = _content(data, _uid(rows, name))
        h, w = leg.shape
        profile = leg[int(0.2 * h):int(0.8 * h)].mean(axis=0)  # per column
        tibia = profile[int(0.4 * w):int(0.6 * w)].mean()
        air = max(profile[:int(0.15 * w)].mean(), profile[-int(0.1 * w):].mean())
        assert air < 64 and tibia > air + 100, (name, tibia, air)


def test_every_encoding_gives_the_same_cached_image(ingested: dict) -> None:
    """JPEG 2000 is decoded at reduced resolution; its field and pixels must still be those of the
    uncompressed file (before border.MIN_SIDE, at a cache of 64 px RG1_J2KI lost 23% of its width)."""
    from radaudit.pacs import cache
    from radaudit.pacs.index import read_manifest

    data, rows = ingested["data"], ingested["rows"]
    manifest = read_manifest(data).set_index("sop_instance_uid")
    for stem, files in FILES.items():
        names = [p.name[:-4] for p in files]
        uids = [_uid(rows, n) for n in names]
        geometry = manifest.loc[uids]
        assert (geometry["crop_bottom"] <= geometry["original_rows"]).all()
        assert (geometry["crop_right"] <= geometry["original_columns"]).all()
        box = geometry[["content_height", "content_width"]].to_numpy()
        assert np.abs(box - box[0]).max() <= 1, (stem, box)
        field = geometry[["crop_top", "crop_bottom", "crop_left", "crop_right"]].to_numpy(dtype=float)
        side = geometry[["original_rows", "original_rows", "original_columns", "original_columns"]].to_numpy()
        assert np.abs(field / side - field[0] / side[0]).max() < 0.01, (stem, field)
        images = [cache.read(data, u).astype(np.float64).ravel() for u in uids]
        lossless = images[0]
        for name, img in zip(names[1:], images[1:]):
            r = np.corrcoef(lossless, img)[0, 1]
            assert r > (0.99 if name.endswith("J2KR") else 0.95), (name, r)


def test_labels_come_from_the_header_where_the_vocabulary_has_the_region(ingested: dict) -> None:
    labels, rows = ingested["labels"].set_index("sop_instance_uid"), ingested["rows"]
    got = labels.loc[rows["sop_instance_uid"]]
    rg1 = rows["path"].str.contains("/RG1_").to_numpy()
    assert (got.loc[rg1, "recorded_region"] == "chest").all()
    assert (got.loc[rg1, "recorded_tag"] == "body_part_examined").all()
    # Body Part EXTREMITY, Study Description "Non-ossifying fibroma of distal tibia": a long bone, null.
    assert got.loc[~rg1, "recorded_region"].isna().all() and (got.loc[~rg1, "recorded_raw"] == "EXTREMITY").all()
    # The truth says what the mapper says.
    assert [r if isinstance(r, str) else None for r in got["recorded_region"]] == \
        [r if isinstance(r, str) else None for r in rows["recorded_region"]]


def test_near_duplicates_are_each_images_own_encodings(ingested: dict) -> None:
    from radaudit.pipelines.stages.truth import duplicate_scores, read_truth

    groups, rows = ingested["groups"], ingested["rows"]
    members = groups.groupby("group")["sop_instance_uid"].apply(frozenset)
    expected = {frozenset(rows.loc[rows["path"].str.contains(f"/{stem}_"), "sop_instance_uid"]) for stem in FILES}
    assert set(members) == expected  # no synthetic image grouped with anything, no real one with another
    assert not groups["cross_patient"].any() and (groups["similarity"] > 0.99).all()
    truth = read_truth(ingested["truth"])
    uids = sorted(groups["sop_instance_uid"])
    scores = duplicate_scores(groups.set_index("sop_instance_uid"), truth, uids)
    assert scores["duplicates"] == 6 and scores["duplicate_precision"] == scores["duplicate_recall"] == 1.0
    assert scores["duplicate_recall_reencoded"] == scores["duplicate_recall_reencoded_lossy"] == 1.0


def test_neither_header_nor_pixels_call_them_out_of_domain(ingested: dict) -> None:
    """Against the synthetic in-domain images as reference, as the audit scores them."""
    from radaudit.models.ood import combine_evidence, pixel_evidence
    from radaudit.pipelines import stages

    data, rows = ingested["data"], ingested["rows"]
    truth = pd.read_parquet(ingested["truth"]).set_index("sop_instance_uid")
    uids = stages.load_training_set(data).uids
    evidence = stages.issue_inputs(data, uids)
    real = np.isin(uids, rows["sop_instance_uid"])
    synthetic_in = ~real & ~truth.loc[uids, "is_ood"].to_numpy(dtype=bool)
    z, which = pixel_evidence(evidence["pixel_feats"], np.flatnonzero(synthetic_in))
    verdict = combine_evidence(evidence["header_reasons"], z, which, np.zeros(len(uids)))
    assert [evidence["header_reasons"][i] for i in np.flatnonzero(real)] == [""] * 8
    assert not verdict.flagged[real].any() and z[real].max() < 3.0, z[real]
    # The same evidence does flag the export's drawn intruders (CT, photo, document, blank, ...).
    assert verdict.flagged[~real & ~synthetic_in].mean() >= 0.5


def test_scoring_counts_the_tibia_as_a_missing_label_not_as_out_of_domain_or_wrong(ingested: dict,
                                                                                   tmp_path: Path) -> None:
    from radaudit.pipelines import stages
    from radaudit.pipelines.stages.truth import score_issues

    data = tmp_path / "data"
    shutil.copytree(ingested["data"], data)
    ts = stages.load_training_set(data)
    rows = ingested["rows"]
    tibia = np.isin(ts.uids, rows.loc[rows["path"].str.contains("/RG3_"), "sop_instance_uid"])
    n = len(ts.uids)
    # An audit that flags the four tibia encodings as missing labels and nothing else.
    issues = pd.DataFrame({"sop_instance_uid": ts.uids, "issue": np.where(tibia, "missing_label", None),
                           "label_quality": 1.0, "suggested_region": 0, "ood_score": 0.0,
                           "rank": np.argsort(np.argsort(~tibia, kind="stable")) + 1})
    scores = score_issues(issues, ts, ingested["truth"])
    truth = pd.read_parquet(ingested["truth"]).set_index("sop_instance_uid").loc[ts.uids]
    assert scores["images"] == n and scores["out_of_domain"] == int(truth["is_ood"].sum()) == 5
    assert scores["top20_precision"] == 1.0  # a missing label of an in-domain image
    synthetic_missing = int(((ts.labels < 0) & ~truth["is_ood"].to_numpy(dtype=bool) & ~tibia).sum())
    assert scores["missing_labels"] == synthetic_missing + 4
    wrong = (ts.labels >= 0) & ~truth["is_ood"].to_numpy(dtype=bool) & (
        ts.labels != stages.truth_labels(ts, ingested["truth"]))
    assert scores["truly_mislabelled"] == int(wrong.sum()) and not wrong[tibia].any()
