"""Real DICOM files added to a synthetic export: foreign modalities, and real radiographs of other vendors.

An archive's out-of-domain images are not only drawn ones: :func:`add_foreign` copies real files
(e.g. pydicom's and pydicom-data's test files) into an export with fresh UIDs and a fresh
patient, and appends them to the truth table as out of domain. With ``relabel_as`` the header
lies the way a misfiled image does: Modality DX, the DX SOP Class and a region in Body Part
Examined, so only the pixels and the embeddings can tell.

Nor are an archive's radiographs all drawn by one generator: :func:`add_real_radiographs` copies
the real CR radiographs of pydicom-data (:data:`REAL_RADIOGRAPHS`: a Philips chest and a Fuji
lower leg, each uncompressed, JPEG 2000 lossless, lossy, and lossy stored uncompressed) into an
export as *in-domain* images. Each radiograph becomes one patient whose encodings are near
duplicates of the uncompressed one, as re-encoded copies in a PACS are.

Example::

    from pydicom.data import get_testdata_file
    add_foreign("export", "truth.parquet", [get_testdata_file("CT_small.dcm")], relabel_as="knee")
    add_real_radiographs("export", "truth.parquet")
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydicom.dataset import Dataset

__all__ = ["DX_SOP_CLASS", "REAL_ENCODINGS", "REAL_RADIOGRAPHS", "RealRadiograph", "add_foreign",
           "add_real_radiographs", "real_radiograph_files"]

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class RealRadiograph:
    """One real radiograph of pydicom-data and what is true about it (read off its header and pixels).

    Attributes:
        stem: File-name stem; its encodings are ``<stem>_<encoding>.dcm`` (:data:`REAL_ENCODINGS`).
        device: The truth's ``device``: who made it.
        true_region: Region of the vocabulary it shows; None when the vocabulary has none (a long bone).
        recorded_region: The region its header strings name in the vocabulary (None: they name none).
        recorded_raw: The header string that names ``recorded_region``.
        recorded_tag: The header keyword ``recorded_raw`` comes from.
        view: View as the synthetic truth spells it ("pa", "ap", ...).
        laterality: "L", "R" or None.
        has_marker: A side marker is burnt in.
        collimated: Collimator shutters show.
    """

    stem: str
    device: str
    true_region: str | None
    recorded_region: str | None
    recorded_raw: str | None
    recorded_tag: str | None
    view: str
    laterality: str | None
    has_marker: bool
    collimated: bool


# pydicom-data's CR radiographs. Its other CR files are not radiographs: the three of
# dicomdirtests/77654033/CR* are 16 x 16 noise patches, and chrJapMulti.dcm and its kin hold no pixels.
REAL_RADIOGRAPHS: tuple[RealRadiograph, ...] = (
    # Philips chest PA, 15-bit MONOCHROME1, 1955 x 1841: Body Part Examined CHEST, Study Description THORAX.
    RealRadiograph("RG1", "real_philips_cr", "chest", "chest", "CHEST", "BodyPartExamined", "pa", None,
                   has_marker=False, collimated=True),
    # Fuji lower leg AP (distal tibia, ankle at the bottom, "R" marker), 10-bit MONOCHROME1, 1760 x 1760,
    # Body Part Examined EXTREMITY, Study Description "Non-ossifying fibroma of distal tibia": a long
    # bone, which the default vocabulary lacks.
    RealRadiograph("RG3", "real_fuji_cr", None, None, None, None, "ap", "R", has_marker=True, collimated=True),
)
# Encodings of each real radiograph, the original first; the rest are its near duplicates, by kind.
REAL_ENCODINGS: dict[str, str | None] = {
    "UNCR": None,  # uncompressed
    "J2KR": "reencoded",  # JPEG 2000 lossless
    "J2KI": "reencoded_lossy",  # JPEG 2000 lossy (10:1 and 30:1)
    "UNCI": "reencoded_lossy",  # the lossy pixels stored uncompressed
}


def _uid(*parts: str) -> str:
    """A deterministic ``2.25`` UID from the given strings."""
    return "2.25." + str(int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:16], "big"))


def _read(f: str | os.PathLike[str]) -> Dataset:
    """A DICOM file with pixel data, or a ValueError that says which file and why not."""
    import pydicom

    try:
        ds = pydicom.dcmread(f)
    except Exception as error:  # pydicom raises several types for a damaged file
        raise ValueError(f"{f} is not a readable DICOM file: {error}") from error
    if "PixelData" not in ds:
        raise ValueError(f"{f} has no pixel data: choose an image file")
    return ds


_OTHER_IDENTIFIERS = ("OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthDate",
                      "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "StudyID")


def _new_patient(ds: Dataset, patient_id: str, patient_name: str, accession: str) -> None:
    """Give ``ds`` a fresh patient and accession; drop the original's other identifiers (birth
    date, other IDs and names, institution, referring physician, a study ID that repeats the patient's)."""
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession
    for keyword in _OTHER_IDENTIFIERS:
        if keyword in ds:
            delattr(ds, keyword)


def _save(ds: Dataset, export_dir: Path, rel: str, source: str | os.PathLike[str]) -> None:
    """Write ``ds`` as ``export_dir / rel`` with its file meta matching its SOP class and instance."""
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    path = export_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=False)
    except (TypeError, ValueError) as error:  # e.g. a file whose VRs contradict its transfer syntax
        path.unlink(missing_ok=True)
        raise ValueError(f"{source} cannot be written back as DICOM ({error}); choose another file") from error


def _append_truth(truth_path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Append ``rows`` to the truth file (atomically); columns either side lacks stay null there."""
    from radaudit.pacs.io import write_parquet_frame

    new = pd.DataFrame(rows)
    truth = pd.read_parquet(truth_path)
    write_parquet_frame(pd.concat([truth, new], ignore_index=True), truth_path)
    return new


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
    rows = []
    for i, f in enumerate(files):
        ds = _read(f)
        name = Path(f).name
        modality = str(ds.get("Modality", "OT"))
        sop = _uid(tag, name, "sop")
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = _uid(tag, name, "study")
        ds.SeriesInstanceUID = _uid(tag, name, "series")
        _new_patient(ds, f"FOREIGN{i:04d}", f"Foreign^{tag}^{i}", f"F{i:06d}")
        if relabel_as is not None:
            ds.Modality = "DX"
            ds.SOPClassUID = DX_SOP_CLASS
            ds.BodyPartExamined = relabel_as.upper()
            ds.SeriesDescription = f"{relabel_as} a.p."
        rel = f"{tag}/{i:04d}_{name}"
        _save(ds, Path(export_dir), rel, f)
        rows.append({"sop_instance_uid": sop, "path": rel, "true_region": None, "is_ood": True,
                     "ood_kind": f"foreign_{modality.lower()}", "modality": str(ds.Modality),
                     "recorded_region": relabel_as, "body_part_examined": relabel_as.upper() if relabel_as else None})
    return _append_truth(truth_path, rows)


def real_radiograph_files(images: Sequence[RealRadiograph] = REAL_RADIOGRAPHS,
                          encodings: Sequence[str] = tuple(REAL_ENCODINGS)) -> dict[str, list[Path]]:
    """Where pydicom-data keeps each real radiograph's encodings: ``{stem: [path per encoding]}``.

    Raises:
        FileNotFoundError: pydicom-data is not installed (or lacks a file).
    """
    from pydicom.data import get_testdata_file

    out: dict[str, list[Path]] = {}
    missing = []
    for image in images:
        files = [get_testdata_file(f"{image.stem}_{e}.dcm") for e in encodings]
        missing += [f"{image.stem}_{e}.dcm" for e, f in zip(encodings, files) if f is None]
        out[image.stem] = [Path(f) for f in files if f is not None]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: the real radiographs come with pydicom-data "
                                "(pip install pydicom-data)")
    return out


def add_real_radiographs(export_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], *,
                         tag: str = "real_cr", images: Sequence[RealRadiograph] = REAL_RADIOGRAPHS,
                         encodings: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """Copy real CR radiographs of other vendors into ``export_dir/<tag>/`` as in-domain images of new patients.

    Each radiograph becomes one patient, study and series; its encodings keep their pixels and
    header (the vendor's photometric, bit depth, window, transfer syntax) under fresh UIDs, with
    references between them (Source Image Sequence) following, and the patient's identifiers
    replaced as :func:`add_foreign` replaces them.

    Args:
        export_dir: A synthetic export (:func:`radaudit.pacs.synth.generate_export`).
        truth_path: Its truth file (``.parquet``); rewritten atomically with the new rows.
        tag: Subfolder, patient ID prefix and UID seed (another tag adds the same images as other patients).
        images: Which radiographs.
        encodings: ``{encoding: duplicate_kind}``, the first (kind None) being the original; default
            :data:`REAL_ENCODINGS`.

    Returns:
        The new truth rows: ``is_ood`` False, ``true_region`` and ``recorded_region`` from the
        :class:`RealRadiograph`, ``duplicate_of`` the original encoding's new UID (None for it) and
        ``duplicate_kind``, ``device``, and the header facts the synthetic truth records.

    Raises:
        FileNotFoundError: pydicom-data is not installed.
        ValueError: ``encodings`` does not start with the original, or a file cannot be copied.
    """
    encodings = dict(REAL_ENCODINGS if encodings is None else encodings)
    kinds = list(encodings.values())
    if not kinds or kinds[0] is not None or any(k is None for k in kinds[1:]):
        raise ValueError(f"encodings {encodings!r} must map the original first to None and each other to a "
                         "duplicate kind, e.g. {'UNCR': None, 'J2KR': 'reencoded'}")
    files = real_radiograph_files(images, tuple(encodings))
    out = Path(export_dir)
    rows: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        datasets = [_read(f) for f in files[image.stem]]
        # pydicom-data's encodings share study and series, and a lossy file and its uncompressed
        # copy share their SOP Instance UID: one fresh UID per encoding, references to the original follow.
        sops = {e: _uid(tag, image.stem, e, "sop") for e in encodings}
        original = sops[next(iter(encodings))]
        fresh = {str(ds[k].value): _uid(tag, image.stem, str(ds[k].value)) for ds in datasets
                 for k in ("StudyInstanceUID", "SeriesInstanceUID")}
        fresh[str(datasets[0].SOPInstanceUID)] = original
        patient_id = f"{tag.upper()}{i:04d}"
        for f, ds, (encoding, kind) in zip(files[image.stem], datasets, encodings.items()):
            _remap_uids(ds, fresh)
            ds.SOPInstanceUID = sops[encoding]
            _new_patient(ds, patient_id, f"Real^{tag}^{i}", f"R{i:06d}")
            ds.StudyID = f"R{i:06d}"  # the original's Study ID repeats its patient ID
            rel = f"{tag}/{patient_id}/{image.stem}_{encoding}.dcm"
            _save(ds, out, rel, f)
            rows.append(_real_truth_row(ds, image, rel, duplicate_of=original if kind else None, kind=kind))
    return _append_truth(truth_path, rows)


def _remap_uids(ds: Dataset, fresh: Mapping[str, str]) -> None:
    """Replace every UID value of ``ds`` (sequences included) that ``fresh`` maps."""
    def visit(_: Dataset, elem: Any) -> None:
        if elem.VR == "UI" and isinstance(elem.value, str) and elem.value in fresh:
            elem.value = fresh[elem.value]

    ds.walk(visit)


def _real_truth_row(ds: Dataset, image: RealRadiograph, rel: str, *, duplicate_of: str | None,
                    kind: str | None) -> dict[str, Any]:
    """The truth row of one copied real radiograph (columns as :func:`radaudit.pacs.synth.generate_export`'s)."""
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value) if value not in (None, "") else None

    orientation = ds.get("PatientOrientation")
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID), "path": rel, "patient_id": str(ds.PatientID),
        "patient_name": str(ds.PatientName), "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID), "accession_number": str(ds.AccessionNumber),
        "true_region": image.true_region, "recorded_region": image.recorded_region,
        "recorded_raw": image.recorded_raw, "recorded_tag": image.recorded_tag, "corruption": "none",
        "is_ood": False, "ood_kind": None, "view": image.view, "laterality": image.laterality,
        "has_gauge": False, "gauge_kind": None, "has_marker": image.has_marker, "collimated": image.collimated,
        "body_part_examined": text("BodyPartExamined"), "series_description": text("SeriesDescription"),
        "study_description": text("StudyDescription"), "protocol_name": text("ProtocolName"),
        "modality": str(ds.Modality), "sop_class_uid": str(ds.SOPClassUID), "rotated": 0,
        "orientation_tag_present": orientation is not None,
        "patient_orientation": "\\".join(orientation) if orientation is not None else None,
        "has_window": "WindowCenter" in ds, "has_padding": "PixelPaddingValue" in ds,
        "photometric": str(ds.PhotometricInterpretation), "bits_stored": int(ds.BitsStored),
        "presentation_lut_shape": text("PresentationLUTShape"), "bits_allocated": int(ds.BitsAllocated),
        "pixel_representation": int(ds.PixelRepresentation), "rows": int(ds.Rows), "columns": int(ds.Columns),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID), "duplicate_of": duplicate_of,
        "duplicate_kind": kind, "hard_negative_of": None, "hard_negative_kind": None, "device": image.device,
    }
