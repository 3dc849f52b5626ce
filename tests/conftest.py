"""Shared fixtures: small PACS-like exports built from real DICOM files shipped in pip packages."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

# Real files: pydicom's test files and pydicom-data's CR radiographs, in several encodings.
GOOD_FILES = {
    "PAT1/ST1/SE1/IM0001": "RG3_J2KR.dcm",            # CR tibia, JPEG 2000 lossless
    "PAT1/ST1/SE1/IM0002.DCM": "CT_small.dcm",        # explicit VR little endian
    "PAT1/ST1/SE2/bild mit leerzeichen.dcm": "MR_small_bigendian.dcm",
    "PAT2/Röntgen/älter.dcm": "MR_small_jp2klossless.dcm",
    "PAT2/multi/frames": "emri_small.dcm",            # multi-frame
    "PAT2/sc/rgb.dcm": "SC_rgb.dcm",                  # colour secondary capture
    "PAT3/deflated.dcm": "image_dfl.dcm",
    "PAT3/rle.dcm": "MR_small_RLE.dcm",
    "PAT3/jpeg_lossless.dcm": "JPEG-LL.dcm",
}


def unique_copy(src: Path, dst: Path, seed: str) -> None:
    """Copy a real file, giving it its own SOP Instance UID (pydicom's MR test files share one)."""
    ds = pydicom.dcmread(src)
    uid = pydicom.uid.generate_uid(entropy_srcs=[seed])
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)


def strip_to_raw_dataset(src: Path) -> bytes:
    """The bytes of a Part 10 file without preamble and file meta, as some exporters write."""
    data = src.read_bytes()
    assert data[128:132] == b"DICM"
    (group_length,) = struct.unpack("<L", data[140:144])
    return data[144 + group_length :]


@pytest.fixture(scope="session")
def good_sources() -> dict[str, Path]:
    """Relative export path -> the real source file."""
    return {rel: Path(get_testdata_file(name)) for rel, name in GOOD_FILES.items()}


def build_export(root: Path, good_sources: dict[str, Path]) -> dict[str, str]:
    """Write a messy export under ``root``; return {relative path: expected outcome}.

    Outcomes: "index" for files that must be indexed and cached, else "<stage>" of the error row.
    """
    expected: dict[str, str] = {}
    for rel, src in good_sources.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.name.startswith("MR_small"):
            unique_copy(src, dst, rel)
        else:
            shutil.copyfile(src, dst)
        expected[rel] = "index"

    unique_copy(Path(get_testdata_file("MR_small_implicit.dcm")), root / "tmp_implicit.dcm", "raw")
    raw = root / "PAT4" / "raw_no_preamble"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(strip_to_raw_dataset(root / "tmp_implicit.dcm"))
    (root / "tmp_implicit.dcm").unlink()
    expected["PAT4/raw_no_preamble"] = "index"

    shutil.copyfile(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    expected["DICOMDIR"] = "header"

    (root / "PAT4" / "empty.dcm").write_bytes(b"")
    expected["PAT4/empty.dcm"] = "discover"
    (root / "PAT4" / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    expected["PAT4/scan.dcm"] = "discover"
    (root / "README.txt").write_text("export notes\n")
    expected["README.txt"] = "discover"

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (root / "PAT4" / "truncated_pixels.dcm").write_bytes(ct[: len(ct) - 20000])
    expected["PAT4/truncated_pixels.dcm"] = "pixels"
    (root / "PAT4" / "truncated_header.dcm").write_bytes(ct[:300])
    expected["PAT4/truncated_header.dcm"] = "header"

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 500
    ds.save_as(root / "PAT4" / "absurd_size.dcm")
    expected["PAT4/absurd_size.dcm"] = "pixels"

    corrupt = root / "PAT4" / "corrupt_j2k.dcm"
    unique_copy(Path(get_testdata_file("MR_small_jp2klossless.dcm")), corrupt, "corrupt")
    j2k = bytearray(corrupt.read_bytes())
    start = j2k.index(b"\xff\x4f\xff\x51")  # SOC + SIZ: the codestream's main header
    j2k[start + 2 : start + 40] = bytes(range(200, 238))  # a SIZ marker no decoder accepts
    corrupt.write_bytes(bytes(j2k))
    expected["PAT4/corrupt_j2k.dcm"] = "pixels"
    return expected


@pytest.fixture
def messy_export(tmp_path: Path, good_sources: dict[str, Path]) -> tuple[Path, dict[str, str]]:
    """A messy export in a temporary folder and the expected outcome of each file."""
    root = tmp_path / "export"
    root.mkdir()
    return root, build_export(root, good_sources)
