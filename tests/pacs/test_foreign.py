"""Real foreign DICOM files added to a synthetic export: fresh UIDs, truth rows, and the relabelled header."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs.synth import generate_export
from pacs.synth.foreign import DX_SOP_CLASS, add_foreign


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
