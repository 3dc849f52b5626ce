"""Ingest on real DICOM files and files damaged here: placement, identifiers, incrementality, cache."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import signal
import stat
import time
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pyarrow.parquet as pq
import pytest

from radaudit.pacs import cache, fuzz, header
from radaudit.pacs import index as ix
from radaudit.pacs.cache import MANIFEST_SCHEMA, CacheParams
from radaudit.pacs.index import read_errors, read_index, read_manifest
from radaudit.pacs.ingest import IngestConfig, _to_cache, run_ingest
from radaudit.pacs.layout import KEY_FILE
from radaudit.pacs.pseudo import load_or_create_key, path_key, pseudonymize
from radaudit.pacs.regions import RegionMapper
from radaudit.pacs.synth import generate_export

SIZE = 48


def config(export: Path, data: Path, **kw) -> IngestConfig:
    return IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=SIZE), workers=2, **kw)


@pytest.fixture
def ingested(messy_export, tmp_path):
    export, expected = messy_export
    data = tmp_path / "data"
    return export, data, expected, run_ingest(config(export, data))


def by_real_path(data: Path, errors: pd.DataFrame, candidates) -> pd.DataFrame:
    """Error rows indexed by their real path (the shown one may hide a name nobody has read)."""
    key = load_or_create_key(data)
    real = {path_key(p, key): p for p in candidates}
    return errors.assign(real=errors["path_hash"].map(real)).set_index("real")


def test_every_file_ends_in_exactly_one_table(ingested):
    export, data, expected, result = ingested
    index = read_index(data)
    errors = by_real_path(data, read_errors(data), expected)
    assert set(index["path"]).isdisjoint(errors.index)
    assert set(index["path"]) | set(errors.index) == set(expected)
    outcome = {p: "index" for p in index["path"]} | dict(zip(errors.index, errors["stage"]))
    assert outcome == expected
    assert errors["reason"].str.len().min() > 5
    # Files nobody could read show their name only where it is a plain export name.
    shown = dict(zip(errors.index, errors["path"]))
    assert shown["DICOMDIR"] == "DICOMDIR" and shown["README.txt"] == "README.txt"
    assert re.fullmatch(r"PAT4/file-[0-9a-f]{8}\.dcm", shown["PAT4/empty.dcm"])
    assert shown["PAT4/truncated_pixels.dcm"] == "PAT4/truncated_pixels.dcm"  # read: its patient is known


def test_error_reasons_are_readable(ingested):
    _, data, expected, result = ingested
    reasons = by_real_path(data, result.errors, expected)["reason"].to_dict()
    assert "empty" in reasons["PAT4/empty.dcm"]
    assert "PNG" in reasons["PAT4/scan.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "truncated" in reasons["PAT4/truncated_pixels.dcm"]
    severity = by_real_path(data, result.errors, expected)["severity"].to_dict()
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
    (export / "PAT1/ZZ_duplicate.dcm").write_bytes(src.read_bytes())
    result = run_ingest(config(export, data))
    rows = result.index.set_index("path")
    assert rows.loc["PAT1/ZZ_duplicate.dcm", "duplicate_of"] == "PAT1/ST1/SE1/IM0002.DCM"
    assert result.stats["cached"] == 0
    # In another top-level folder (another partition, ingested on its own) the copy is cached by that
    # partition too, and the whole index still names it a duplicate.
    (export / "ZZ_duplicate.dcm").write_bytes(src.read_bytes())
    result = run_ingest(config(export, data))
    assert result.stats["cached"] == 1
    rows = read_index(data).set_index("path")
    assert rows.loc["ZZ_duplicate.dcm", "duplicate_of"] == "PAT1/ST1/SE1/IM0002.DCM"
    assert len(read_manifest(data)) == len(rows[rows["duplicate_of"].isna()])


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
    (folder / "IM0009").write_bytes(b"")  # a later run meets a bad file in the known patient folder
    (folder / "Schmidt Erika.pdf").write_bytes(b"%PDF-1.4")  # another patient's name, beside indexed images
    third = run_ingest(config(export, data))
    shown = set(third.errors["path"])
    assert f"patient-{key[:8]}/Knie li/IM0009" in shown
    assert f"patient-{key[:8]}/Knie li/file-{path_key('Schmidt Erika.pdf', load_or_create_key(data))[:8]}.pdf" in shown
    for parquet in data.rglob("*.parquet"):
        text = pd.read_parquet(parquet).astype(str).to_csv().casefold()
        for secret in ("müller", "mueller", "hans", "4711-0815", "19560312", "schmidt", "erika"):
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


def test_a_file_name_that_is_not_utf8_is_indexed_and_found_again(tmp_path, good_sources):
    """Latin-1 names (Windows and CD-viewer exports) are indexed under their real bytes' hash."""
    export = tmp_path / "export"
    export.mkdir()
    raw_export = os.fsencode(export)
    ct = good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes()
    Path(os.fsdecode(raw_export + b"/R\xf6ntgen.dcm")).write_bytes(ct)
    os.mkdir(raw_export + b"/Sch\xe4del")
    Path(os.fsdecode(raw_export + b"/Sch\xe4del/Notiz \xe4.txt")).write_text("x")
    ds = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PatientName, ds.PatientID = "Müller^Hans", "4711-0815"
    os.mkdir(raw_export + b"/M\xdcLLER HANS")
    ds.save_as(os.fsdecode(raw_export + b"/M\xdcLLER HANS/IM1"))
    data = tmp_path / "data"

    first = run_ingest(config(export, data))
    index = read_index(data)
    errors = read_errors(data)
    key = (data / KEY_FILE).read_bytes()
    row = index.set_index("path").loc["R\\xf6ntgen.dcm"]
    assert row["path_hash"] == hmac.new(key, b"path\x00R\xf6ntgen.dcm", hashlib.sha256).hexdigest()[:20]
    assert cache.read(data, row["sop_instance_uid"]).shape == (SIZE, SIZE)
    patient = index[index["sop_instance_uid"] == ds.SOPInstanceUID]
    assert patient["path"].tolist() == [f"patient-{patient['patient_key'].iloc[0][:8]}/IM1"]
    # A folder that holds no image may be named after a patient nobody has read: hidden, locatable.
    (shown,) = errors["path"]
    assert re.fullmatch(r"folder-[0-9a-f]{8}/file-[0-9a-f]{8}\.txt", shown) and errors["stage"].tolist() == ["discover"]
    assert ix.locate(export, key, errors["path_hash"].tolist()) == {errors["path_hash"][0]: "Sch\\xe4del/Notiz \\xe4.txt"}
    assert len(first.index) == 2

    second = run_ingest(config(export, data))
    assert second.stats["unchanged"] == 3 and second.stats["new"] == second.stats["changed"] == 0
    assert second.stats["written"] == 0


def _folded(text: str) -> set[str]:
    """A name as exports write it: as is, transliterated, bare letters, non-ASCII as "_"."""
    low = text.lower()
    translit = low.translate(str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}))
    bare = "".join(c for c in unicodedata.normalize("NFKD", low) if not unicodedata.combining(c))
    return {low, translit, bare, re.sub(r"[^\x00-\x7f]", "_", low)}


def test_a_synthetic_export_leaks_no_identifier_and_keeps_every_label(tmp_path):
    """Viewer-export folders ("O_Brien Günter (00122147)") must not survive into any output."""
    export, truth_path, data = tmp_path / "export", tmp_path / "truth.parquet", tmp_path / "data"
    generate_export(export, truth_path, n=60, seed=0, size=64, duplicates=0.1)  # also under another patient
    files = [p for p in export.rglob("*") if p.is_file()]
    assert any(p.relative_to(export).as_posix().startswith("O_Brien ") for p in files)  # the case at issue
    secrets: set[str] = set()
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for component in str(ds.PatientName).split("^")[:3]:  # family, given, middle
            for piece in re.split(r"[\W_]+", component):
                if len(piece) >= 3:
                    secrets |= _folded(piece)
        secrets |= {str(ds.PatientID).lower(), str(ds.PatientBirthDate)}
    assert {"brien", "müller", "mueller", "muller", "m_ller", "00122147"} <= secrets

    result = run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=32), workers=2))
    outputs = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in outputs)
    for p in outputs:
        if p.suffix == ".parquet":
            text = pq.read_table(p).to_pandas().astype(str).to_csv()
        elif p.suffix == ".npy":
            text = ""  # pixels only; the file name is checked below
        else:
            text = p.read_bytes().decode("utf-8", "replace")
        text = (p.relative_to(data).as_posix() + "\n" + text).lower()
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{leaked} in {p.relative_to(data)}"

    truth = pq.read_table(truth_path).to_pylist()
    index = read_index(data)
    assert read_errors(data).empty
    assert len(index) == len(files) == len(truth)
    assert set(index["sop_instance_uid"]) == {r["sop_instance_uid"] for r in truth}
    labels = RegionMapper.from_file().label_frame(index)
    recorded = dict(zip(labels["sop_instance_uid"], labels["recorded_region"]))
    assert {r["sop_instance_uid"]: recorded[r["sop_instance_uid"]] for r in truth} == {
        r["sop_instance_uid"]: r["recorded_region"] for r in truth
    }
    assert result.stats["cached"] == len(truth)


def test_a_header_read_that_hangs_or_kills_its_worker_is_one_error_row(tmp_path, good_sources, monkeypatch):
    export = tmp_path / "export"
    export.mkdir()
    ct = good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes()
    # The hanging file is alone in a folder named after its patient, whose header nobody read; the
    # crashing one sits beside indexed files in an ordinary folder.
    # A small run: its headers are read in a worker too.
    names = [f"im{i:02d}.dcm" for i in range(3)] + ["Knie li/im.dcm", "Knie li/im666.dcm",
                                                    "Schmidt Erika 0815/hang.dcm"]
    for name in names:
        (export / name).parent.mkdir(exist_ok=True)
        (export / name).write_bytes(ct)  # one instance many times: all indexed, cached once per partition
    read_header = ix.read_header

    def sabotaged(path, **kwargs):
        if path.endswith("hang.dcm"):
            time.sleep(30)
        if path.endswith("im666.dcm"):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault would
        return read_header(path, **kwargs)

    monkeypatch.setattr(ix, "read_header", sabotaged)  # workers are forked and inherit the patch
    t0 = time.monotonic()
    result = run_ingest(IngestConfig(export_dir=export, data_dir=tmp_path / "data", workers=2, file_timeout_s=1))
    assert time.monotonic() - t0 < 20
    errors = read_errors(tmp_path / "data").set_index("path")
    key = load_or_create_key(tmp_path / "data")
    hidden = f"folder-{path_key('Schmidt Erika 0815', key)[:8]}/file-{path_key('hang.dcm', key)[:8]}.dcm"
    assert sorted(errors.index) == ["Knie li/im666.dcm", hidden]
    assert set(errors["stage"]) == {"header"}
    assert "reading the header took longer than 1 s" in errors.loc[hidden, "reason"]
    assert errors.loc["Knie li/im666.dcm", "reason"].startswith("header reader crashed (exit code -9: killed by SIGKILL")
    index = read_index(tmp_path / "data")
    assert sorted(index["path"]) == sorted(names[:-2])
    assert result.stats["cached"] == 2  # the root's files and the folder "Knie li"


def _bomb_export(export: Path, good_sources, seed: int) -> None:
    """Two good files and a zip bomb (``IM000003.dcm``, 1 GiB of zeros, about 1 MB on disk): a 3-file run."""
    export.mkdir()
    (export / "ct.dcm").write_bytes(good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes())
    (export / "mr.dcm").write_bytes(good_sources["PAT2/Röntgen/älter.dcm"].read_bytes())
    source = pydicom.dcmread(good_sources["PAT1/ST1/SE1/IM0002.DCM"])
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = "2.25.99"
    with io.BytesIO() as f:
        source.save_as(f, enforce_file_format=True)
        bomb, _ = fuzz.mutate(f.getvalue(), np.random.default_rng(seed), kinds=["zip_bomb"], zip_bomb_bytes=1 << 30)
    assert len(bomb) < 2 << 20
    (export / "IM000003.dcm").write_bytes(bomb)


def _tables_on_disk(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_index(data), read_errors(data)


# fuzz.zip_bomb draws its shape: seed 0 one OB value, seed 2 1 MiB fragments of an undefined-length value.
@pytest.mark.parametrize(("seed", "reason"), [
    (0, "an element of its deflated dataset declares 1,073,741,824 bytes: it would inflate to more than 128 MiB"),
    (2, "its deflated dataset inflates to more than 128 MiB"),
])
def test_a_zip_bomb_is_quarantined_with_its_reason(tmp_path, good_sources, seed, reason):
    _bomb_export(tmp_path / "export", good_sources, seed)
    run_ingest(config(tmp_path / "export", tmp_path / "data", worker_memory_mb=256))
    index, errors = _tables_on_disk(tmp_path / "data")
    assert sorted(index["path"]) == ["ct.dcm", "mr.dcm"]
    assert len(cache.cached_uids(tmp_path / "data")) == 2
    assert errors[["path", "stage", "reason"]].values.tolist() == [
        ["IM000003.dcm", "header", f"needs more than the 256 MiB memory limit to read: {reason}"]]


def test_a_small_run_reads_its_headers_under_the_worker_memory_limit(tmp_path, good_sources, monkeypatch):
    # Without the inflation check, pydicom inflates the bomb whole: under the worker's limit that fails
    # in the worker, not in this process (a run of 3 files used to read its headers here, unlimited).
    monkeypatch.setattr(header, "_check_inflation", lambda *args: None)  # workers are forked: they see it
    _bomb_export(tmp_path / "export", good_sources, 0)
    run_ingest(config(tmp_path / "export", tmp_path / "data", worker_memory_mb=256))
    index, errors = _tables_on_disk(tmp_path / "data")
    assert sorted(index["path"]) == ["ct.dcm", "mr.dcm"]
    assert errors[["path", "stage", "reason"]].values.tolist() == [
        ["IM000003.dcm", "header", "reading the header needs more than the 256 MiB memory limit"]]


def _job(x: int) -> int:
    """A job for run_isolated that hangs, kills its worker or raises for some inputs."""
    if x == 3:
        time.sleep(30)
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 7:
        raise ValueError("bad seven")
    return x * 10


def test_run_isolated_in_chunks_gives_each_job_its_own_result_or_reason():
    done = []
    t0 = time.monotonic()
    results = ix.run_isolated(_job, list(range(10)), workers=2, timeout_s=0.5, action="working", actor="worker",
                              chunk_size=4, progress=lambda n, total: done.append((n, total)))
    assert time.monotonic() - t0 < 15
    assert [r for i, r in enumerate(results) if i not in (3, 5, 7)] == [0, 10, 20, 40, 60, 80, 90]
    assert results[3] == ix.JobFailure("working took longer than 0.5 s")
    assert results[5].reason.startswith("worker crashed (exit code -9: killed by SIGKILL")
    assert results[7] == ix.JobFailure("ValueError: bad seven")
    assert done[-1] == (10, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        ix.run_isolated(_job, [1], workers=1, timeout_s=1, action="working", actor="worker", chunk_size=0)


@pytest.mark.parametrize("indexed", [False, True])
def test_choosing_what_to_cache_emits_no_pandas_warning(tmp_path, good_sources, indexed):
    index, where = ix.empty_frame(ix.INDEX_SCHEMA), {}
    if indexed:
        export = tmp_path / "export"
        export.mkdir()
        (export / "a.dcm").write_bytes(good_sources["PAT1/ST1/SE1/IM0002.DCM"].read_bytes())
        update = ix.update_index(export, tmp_path / "data", key=b"k")
        index, where = update.index, update.partition_of
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        todo = _to_cache(index, ix.empty_frame(MANIFEST_SCHEMA), "params", set(), where)
    assert len(todo) == len(index) == int(indexed)


def test_error_rows_never_show_a_folder_that_may_be_named_after_a_patient() -> None:
    from radaudit.pacs.header import IDENTIFIERS
    from radaudit.pacs.pseudo import identifier_tokens

    key, now = b"k", pd.Timestamp("2026-01-01", tz="UTC")
    rows = [{"path": "Mueller Hans/IM1", "patient_key": "abcdef1234",
             IDENTIFIERS: identifier_tokens("Müller^Hans", "4711", None)}]
    errors = [
        ix.error_row("Mueller Hans/IM2", 10, 1, "header", "header reader crashed", now),  # beside IM1
        ix.error_row("Mueller Hans/Weber_Lea.dcm", 10, 1, "discover", "not DICOM: PDF document", now),
        ix.error_row("Mueller Hans/Lee.dcm", 10, 1, "discover", "not DICOM: PDF document", now),
        ix.error_row("Schmidt Erika/report.pdf", 10, 1, "discover", "not DICOM: PDF document", now),
        ix.error_row("Schmidt Erika/DOE.JOHN", 10, 1, "header", "reading the header took longer than 60 s", now),
        ix.error_row("Weber Lea", None, None, "discover", "cannot open folder: [Errno 13] '/x/Weber Lea'", now),
    ]
    legacy = ix.frame([ix.error_row("Berg Jan/IM9", 10, 1, "header", "header reader crashed", now,
                                    path_hash=path_key("Berg Jan/IM9", key))], ix.ERRORS_SCHEMA)
    ix._redact(rows, errors, kept_index=ix.empty_frame(ix.INDEX_SCHEMA), kept_errors=legacy,
               real_paths={path_key("Berg Jan/IM9", key): "Berg Jan/IM9"}, key=key)
    hidden = f"folder-{path_key('Schmidt Erika', key)[:8]}"
    assert [r["path"] for r in errors] == [
        "patient-abcdef12/IM2",  # the same folder name as the indexed file beside it
        f"patient-abcdef12/file-{path_key('Weber_Lea.dcm', key)[:8]}.dcm",  # a name nobody has read
        f"patient-abcdef12/file-{path_key('Lee.dcm', key)[:8]}.dcm",  # short, but no number: maybe a name
        f"{hidden}/file-{path_key('report.pdf', key)[:8]}.pdf",
        f"{hidden}/file-{path_key('DOE.JOHN', key)[:8]}",  # ".JOHN" is not an extension to show
        f"folder-{path_key('Weber Lea', key)[:8]}",
    ]
    assert errors[5]["reason"] == f"cannot open folder: [Errno 13] '/x/folder-{path_key('Weber Lea', key)[:8]}'"
    assert legacy["path"].tolist() == [f"folder-{path_key('Berg Jan', key)[:8]}/file-{path_key('IM9', key)[:8]}"]
    text = repr([*errors, legacy.to_dict("records")]).lower()
    assert not any(name in text for name in ("schmidt", "erika", "weber", "berg jan", "john", "mueller"))


def test_an_index_written_before_a_column_existed_is_read_with_it_empty(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radaudit.pacs.index import INDEX_SCHEMA, read_table

    old = pa.schema([f for f in INDEX_SCHEMA if f.name != "other_modality_attributes"])
    rows = pa.Table.from_pylist([{"path": "a.dcm", "sop_instance_uid": "1.2", "rows": 4}], schema=old)
    pq.write_table(rows, tmp_path / "index.parquet")
    df = read_table(tmp_path / "index.parquet", INDEX_SCHEMA)
    assert list(df["sop_instance_uid"]) == ["1.2"] and df["other_modality_attributes"].isna().all()
    assert set(INDEX_SCHEMA.names) <= set(df.columns)
    assert pa.Table.from_pandas(df[INDEX_SCHEMA.names], schema=INDEX_SCHEMA).num_rows == 1


def test_live_rows_keep_present_files_that_are_no_second_export() -> None:
    from radaudit.pacs.index import live_rows

    index = pd.DataFrame({"sop_instance_uid": ["a", "a", "b", "c"], "present": [True, True, False, True],
                          "duplicate_of": [None, "PAT/a.dcm", None, None]})
    assert live_rows(index)["sop_instance_uid"].tolist() == ["a", "c"]
