"""Ingest on real DICOM files and files damaged here: placement, identifiers, incrementality, cache."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from pacs import cache
from pacs.cache import CacheParams
from pacs.index import ERRORS_PATH, INDEX_PATH
from pacs.ingest import IngestConfig, run_ingest
from pacs.pseudo import KEY_FILE, pseudonymize

SIZE = 48


def config(export: Path, data: Path, **kw) -> IngestConfig:
    return IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=SIZE), workers=2, **kw)


@pytest.fixture
def ingested(messy_export, tmp_path):
    export, expected = messy_export
    data = tmp_path / "data"
    return export, data, expected, run_ingest(config(export, data))


def test_every_file_ends_in_exactly_one_table(ingested):
    export, data, expected, result = ingested
    index = pd.read_parquet(data / INDEX_PATH)
    errors = pd.read_parquet(data / ERRORS_PATH)
    assert set(index["path"]).isdisjoint(errors["path"])
    assert set(index["path"]) | set(errors["path"]) == set(expected)
    outcome = {p: "index" for p in index["path"]} | dict(zip(errors["path"], errors["stage"]))
    assert outcome == expected
    assert errors["reason"].str.len().min() > 5


def test_error_reasons_are_readable(ingested):
    *_, result = ingested
    reasons = dict(zip(result.errors["path"], result.errors["reason"]))
    assert "empty" in reasons["PAT4/empty.dcm"]
    assert "PNG" in reasons["PAT4/scan.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "truncated" in reasons["PAT4/truncated_pixels.dcm"]
    severity = dict(zip(result.errors["path"], result.errors["severity"]))
    assert severity["DICOMDIR"] == "skipped" and severity["PAT4/corrupt_j2k.dcm"] == "error"


def test_index_has_header_columns(ingested, good_sources):
    *_, result = ingested
    row = result.index.set_index("path").loc["PAT1/ST1/SE1/IM0002.DCM"]
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"], stop_before_pixels=True)
    assert row["sop_instance_uid"] == ds.SOPInstanceUID
    assert row["study_instance_uid"] == ds.StudyInstanceUID
    assert row["modality"] == "CT" and row["rows"] == 128 and row["columns"] == 128
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert row["file_size"] == os.path.getsize(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    multi = result.index.set_index("path").loc["PAT2/multi/frames"]
    assert multi["number_of_frames"] > 1 and multi["frames_in_file"] == multi["number_of_frames"]
    assert bool(result.index.set_index("path").loc["PAT2/sc/rgb.dcm", "was_color"]) is True
    assert result.index.set_index("path").loc["PAT4/raw_no_preamble", "transfer_syntax_uid"] == "1.2.840.10008.1.2"


def test_no_patient_identifiers_in_outputs(ingested, good_sources):
    export, data, _, result = ingested
    secrets = set()
    for src in good_sources.values():
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(kw, "") or "").strip()
            if len(value) >= 3:
                secrets.add(value)
    assert secrets, "the test files should carry identifiers"
    for parquet in data.rglob("*.parquet"):
        frame = pd.read_parquet(parquet)
        text = frame.astype(str).to_csv()
        for s in secrets:
            assert s not in text, f"{s!r} leaked into {parquet}"
    key = (data / KEY_FILE).read_bytes()
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"], stop_before_pixels=True)
    row = result.index.set_index("path").loc["PAT1/ST1/SE1/IM0002.DCM"]
    assert row["patient_key"] == pseudonymize(str(ds.PatientID), key, issuer=ds.get("IssuerOfPatientID"))
    assert row["patient_key"] != pseudonymize(str(ds.PatientID), b"another key")


def test_key_file_is_private(ingested):
    _, data, *_ = ingested
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600


def test_cache_holds_every_indexed_image(ingested):
    _, data, _, result = ingested
    assert len(result.manifest) == len(result.index)
    for uid in result.index["sop_instance_uid"]:
        img = cache.read(data, uid)
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE)
        assert img.max() > 0
    with pytest.raises(KeyError, match="not in the image cache"):
        cache.read(data, "1.2.3.4")


def test_second_run_is_a_no_op(ingested):
    export, data, expected, first = ingested
    stamps = {p: p.stat().st_mtime_ns for p in (data / "index").glob("*.parquet")}
    second = run_ingest(config(export, data))
    assert second.stats["new"] == second.stats["changed"] == second.stats["cached"] == 0
    assert second.stats["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in (data / "index").glob("*.parquet")} == stamps
    pd.testing.assert_frame_equal(second.index.reset_index(drop=True), first.index.reset_index(drop=True),
                                  check_dtype=False)


def test_new_changed_and_vanished_files(ingested, good_sources):
    export, data, expected, first = ingested
    (export / "PAT3" / "rle.dcm").unlink()
    new = export / "NEW" / "copy of ct"
    new.parent.mkdir()
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(new)
    changed = export / "PAT1/ST1/SE1/IM0002.DCM"
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))

    result = run_ingest(config(export, data))
    assert result.stats["new"] == 1 and result.stats["changed"] == 1 and result.stats["vanished"] == 1
    assert result.stats["cached"] == 2
    rows = result.index.set_index("path")
    assert not rows.loc["PAT3/rle.dcm", "present"] and pd.notna(rows.loc["PAT3/rle.dcm", "missing_since"])
    assert rows.loc["NEW/copy of ct", "sop_instance_uid"] == ds.SOPInstanceUID
    assert cache.read(data, ds.SOPInstanceUID).shape == (SIZE, SIZE)


def test_duplicate_instances_are_marked_not_cached_twice(ingested):
    export, data, *_ = ingested
    src = export / "PAT1/ST1/SE1/IM0002.DCM"
    (export / "ZZ_duplicate.dcm").write_bytes(src.read_bytes())
    result = run_ingest(config(export, data))
    rows = result.index.set_index("path")
    assert rows.loc["ZZ_duplicate.dcm", "duplicate_of"] == "PAT1/ST1/SE1/IM0002.DCM"
    assert result.stats["cached"] == 0


def test_full_rebuild_reads_everything_again(ingested):
    export, data, expected, first = ingested
    result = run_ingest(config(export, data, full_rebuild=True))
    assert result.stats["new"] == len(expected)
    assert result.stats["cached"] == len(first.index)


def test_cache_size_change_recaches(ingested):
    export, data, _, first = ingested
    cfg = IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=32), workers=1)
    result = run_ingest(cfg)
    assert result.stats["cached"] == len(first.index)
    uid = first.index["sop_instance_uid"].iloc[0]
    assert cache.read(data, uid).shape == (32, 32)


def test_a_hanging_decoder_becomes_an_error_row(tmp_path, good_sources, monkeypatch):
    export = tmp_path / "export"
    export.mkdir()
    (export / "a.dcm").write_bytes(good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes())

    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(cache, "preprocess", hang)  # workers are forked and inherit the patch
    result = run_ingest(IngestConfig(export_dir=export, data_dir=tmp_path / "data", workers=1, file_timeout_s=1))
    assert result.index.empty
    assert result.errors["stage"].tolist() == ["pixels"]
    assert "longer than 1 s" in result.errors["reason"].iloc[0]


def test_missing_export_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_ingest(IngestConfig(export_dir=tmp_path / "nope", data_dir=tmp_path / "data"))


def test_descriptions_are_decoded_with_their_character_set(tmp_path, good_sources):
    export = tmp_path / "export"
    export.mkdir()
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDescription = "Hüfte links"
    ds.BodyPartExamined = "FUSS"
    ds.save_as(export / "latin1.dcm")
    assert "Hüfte".encode("latin-1") in (export / "latin1.dcm").read_bytes()
    result = run_ingest(config(export, tmp_path / "data"))
    row = result.index.iloc[0]
    assert row["study_description"] == "Hüfte links" and row["body_part_examined"] == "FUSS"


def test_folders_named_after_the_patient_are_redacted(tmp_path, good_sources):
    """Viewer exports often name folders after the patient; no output may repeat the name or ID."""
    export = tmp_path / "export"
    folder = export / "MÜLLER^HANS 4711-0815" / "Knie li"
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    ds.SpecificCharacterSet, ds.PatientName, ds.PatientID = "ISO_IR 192", "Müller^Hans", "4711-0815"
    ds.PatientBirthDate = "19560312"
    ds.save_as(folder / "IM0001")
    (export / "hans_19560312").mkdir()
    (export / "hans_19560312" / "notes.txt").write_text("x")
    (folder / "broken.dcm").write_bytes(b"\x89PNG" + b"\0" * 100)
    (export / "MUELLER_HANS").mkdir()
    (export / "MUELLER_HANS" / "empty").write_bytes(b"")
    data = tmp_path / "data"
    first = run_ingest(config(export, data))
    assert len(first.index) == 1 and len(first.errors) == 3
    key = first.index["patient_key"].iloc[0]
    assert first.index["path"].iloc[0] == f"patient-{key[:8]}/Knie li/IM0001"
    second = run_ingest(config(export, data))
    assert second.stats["unchanged"] == 4 and second.stats["written"] == 0
    (folder / "later.dcm").write_bytes(b"")  # a later run meets a bad file in the known patient folder
    third = run_ingest(config(export, data))
    assert f"patient-{key[:8]}/Knie li/later.dcm" in set(third.errors["path"])
    for parquet in data.rglob("*.parquet"):
        text = pd.read_parquet(parquet).astype(str).to_csv().casefold()
        for secret in ("müller", "mueller", "hans", "4711-0815", "19560312"):
            assert secret not in text, f"{secret!r} in {parquet}"


def test_a_moved_file_stays_live_when_its_old_path_sorts_first(tmp_path, good_sources):
    export = tmp_path / "export"
    (export / "a").mkdir(parents=True)
    (export / "a" / "x.dcm").write_bytes(good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes())
    run_ingest(config(export, tmp_path / "data"))
    (export / "b").mkdir()
    (export / "a" / "x.dcm").rename(export / "b" / "x.dcm")
    result = run_ingest(config(export, tmp_path / "data"))
    rows = result.index.set_index("path")
    assert not rows.loc["a/x.dcm", "present"] and rows.loc["b/x.dcm", "present"]
    assert rows["duplicate_of"].isna().all()


def test_an_invalid_uid_is_an_error_row_not_a_crash(tmp_path, good_sources):
    export = tmp_path / "export"
    export.mkdir()
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    ds.SOPInstanceUID = "../../etc"
    ds.save_as(export / "evil.dcm")
    result = run_ingest(config(export, tmp_path / "data"))
    assert result.index.empty and "not a valid UID" in result.errors["reason"].iloc[0]
