"""Real foreign DICOM files added to a synthetic export: fresh UIDs, truth rows, and the relabelled header."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radaudit.pacs.synth import generate_export
from radaudit.pacs.synth.foreign import DX_SOP_CLASS, add_foreign


def test_foreign_files_join_the_export_and_its_truth(tmp_path: Path) -> None:
    export, truth = tmp_path / "export", tmp_path / "truth.parquet"
    generate_export(export, truth, n=20, seed=0, size=32)
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    stored = add_foreign(export, truth, files)
    relabelled = add_foreign(export, truth, files, relabel_as="knee", tag="relabelled")
    t = pd.read_parquet(truth)
    assert len(t) == 24 and t["sop_instance_uid"].is_unique
    new = t.tail(4)
    assert new["is_ood"].all() and new["true_region"].isna().all()
    assert list(new["ood_kind"]) == ["foreign_ct", "foreign_mr"] * 2
    for row in stored.itertuples():
        ds = pydicom.dcmread(export / row.path)
        assert ds.SOPInstanceUID == row.sop_instance_uid and ds.Modality in ("CT", "MR")
        assert ds.PatientID.startswith("FOREIGN")
    for row in relabelled.itertuples():
        ds = pydicom.dcmread(export / row.path)
        assert (ds.Modality, ds.SOPClassUID, ds.BodyPartExamined) == ("DX", DX_SOP_CLASS, "KNEE")
        assert ds.file_meta.MediaStorageSOPClassUID == DX_SOP_CLASS
        assert ds.pixel_array.shape  # the pixels are untouched and still decode
    assert set(stored["sop_instance_uid"]).isdisjoint(relabelled["sop_instance_uid"])


def test_a_file_without_pixels_is_refused(tmp_path: Path) -> None:
    export, truth = tmp_path / "export", tmp_path / "truth.parquet"
    generate_export(export, truth, n=10, seed=0, size=32)
    with pytest.raises(ValueError, match="no pixel data"):
        add_foreign(export, truth, [get_testdata_file("rtplan.dcm")])
    with pytest.raises(ValueError, match="not a readable DICOM"):
        add_foreign(export, truth, [truth])


RELABELLED_FOREIGN = ("CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm",
                      "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG2000_UNC.dcm")


def test_a_foreign_image_relabelled_as_dx_is_still_told_by_its_header(tmp_path: Path) -> None:
    """CT, MR, multi-frame MR, monochrome US and NM files that claim "DX knee" keep tell-tale attributes."""
    from radaudit.models.ood import header_evidence
    from radaudit.pacs.header import read_header

    export, truth = tmp_path / "export", tmp_path / "truth.parquet"
    generate_export(export, truth, n=12, seed=0, size=32)
    files = [get_testdata_file(name) for name in RELABELLED_FOREIGN]
    if any(f is None for f in files):
        pytest.skip("needs pydicom-data")
    relabelled = add_foreign(export, truth, files, relabel_as="knee", tag="relabelled")
    t = pd.read_parquet(truth)
    rows = [read_header(export / p, key=b"k" * 32) for p in t["path"]]
    reasons = dict(zip(t["path"], header_evidence(pd.DataFrame(rows))))
    radiographs = t.loc[~t["is_ood"], "path"].tolist()
    assert len(radiographs) >= 8 and [reasons[p] for p in radiographs] == [""] * len(radiographs)
    got = {p.split("_", 1)[1]: reasons[p] for p in relabelled["path"]}
    assert not any("header: modality" in r or "SOP class" in r for r in got.values())  # the header claims DX
    assert "ImageOrientationPatient" in got["CT_small.dcm"] and "ConvolutionKernel" in got["CT_small.dcm"]
    assert "EchoTime" in got["MR_small.dcm"] and "EchoTime" in got["MR2_UNCR.dcm"]
    assert "10 frames" in got["emri_small.dcm"] and "MagneticFieldStrength" in got["emri_small.dcm"]
    assert "SequenceOfUltrasoundRegions" in got["JPGLosslessP14SV1_1s_1f_8b.dcm"]
    assert "ImageType=EMISSION" in got["JPEG2000_UNC.dcm"]
