"""Real foreign DICOM files (CT, MR, US, NM, secondary captures, colour) added to a synthetic export.

An archive's out-of-domain images are not only drawn ones: :func:`add_foreign` copies real files
(e.g. pydicom's and pydicom-data's test files) into an export with fresh UIDs and a fresh
patient, and appends them to the truth table as out of domain. With ``relabel_as`` the header
lies the way a misfiled image does: Modality DX, the DX SOP Class and a region in Body Part
Examined, so only the pixels and the embeddings can tell.

Example::

    from pydicom.data import get_testdata_file
    add_foreign("export", "truth.parquet", [get_testdata_file("CT_small.dcm")], relabel_as="knee")
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["DX_SOP_CLASS", "add_foreign"]

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def _uid(*parts: str) -> str:
    """A deterministic ``2.25`` UID from the given strings."""
    return "2.25." + str(int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:16], "big"))


def add_foreign(export_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str],
                files: Sequence[str | os.PathLike[str]], *, relabel_as: str | None = None,
                tag: str = "foreign") -> pd.DataFrame:
    """Copy ``files`` into ``export_dir/<tag>/`` as new instances and append them to the truth table.

    Args:
        export_dir: A synthetic export (:func:`radaudit.pacs.synth.generate_export`).
        truth_path: Its truth file (``.parquet``); rewritten atomically with the new rows.
        files: DICOM files with pixel data.
        relabel_as: A region name: the copies claim to be DX radiographs of it.
        tag: Subfolder and prefix of the new UIDs (use another tag to add the same files twice).

    Returns:
        The new truth rows (``is_ood`` True, ``ood_kind`` ``foreign_<modality>``).

    Raises:
        ValueError: A file has no pixel data, or cannot be read or written as DICOM.
    """
    import pydicom

    from radaudit.pacs.io import write_parquet_frame

    out = Path(export_dir) / tag
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, f in enumerate(files):
        try:
            ds = pydicom.dcmread(f)
        except Exception as error:  # pydicom raises several types for a damaged file
            raise ValueError(f"{f} is not a readable DICOM file: {error}") from error
        if "PixelData" not in ds:
            raise ValueError(f"{f} has no pixel data: choose an image file")
        name = Path(f).name
        modality = str(ds.get("Modality", "OT"))
        sop = _uid(tag, name, "sop")
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = _uid(tag, name, "study")
        ds.SeriesInstanceUID = _uid(tag, name, "series")
        ds.PatientID = f"FOREIGN{i:04d}"
        ds.PatientName = f"Foreign^{tag}^{i}"
        ds.AccessionNumber = f"F{i:06d}"
        if relabel_as is not None:
            ds.Modality = "DX"
            ds.SOPClassUID = DX_SOP_CLASS
            ds.BodyPartExamined = relabel_as.upper()
            ds.SeriesDescription = f"{relabel_as} a.p."
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        rel = f"{tag}/{i:04d}_{name}"
        try:
            ds.save_as(Path(export_dir) / rel, enforce_file_format=False)
        except (TypeError, ValueError) as error:  # e.g. a file whose VRs contradict its transfer syntax
            (Path(export_dir) / rel).unlink(missing_ok=True)
            raise ValueError(f"{f} cannot be written back as DICOM ({error}); choose another file") from error
        rows.append({"sop_instance_uid": sop, "path": rel, "true_region": None, "is_ood": True,
                     "ood_kind": f"foreign_{modality.lower()}", "modality": str(ds.Modality),
                     "recorded_region": relabel_as, "body_part_examined": relabel_as.upper() if relabel_as else None})
    new = pd.DataFrame(rows)
    truth = pd.read_parquet(truth_path)
    write_parquet_frame(pd.concat([truth, new], ignore_index=True), truth_path)
    return new
