"""Speed of the synthetic export generator against writing the same number of blank DICOMs.

    python benchmarks/synth_speed.py --n 2000 --size 256

The baseline writes ``n`` blank 16-bit images of the same size with the same pydicom calls
(explicit VR, no compression), so the ratio shows the cost of drawing, artefacts, headers and
the mixed transfer syntaxes. Target: 2,000 images at 256 px in under 2 minutes on one core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import sys
import time
from pathlib import Path

# The repository before this folder: benchmarks/augment.py would shadow the augment package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from radaudit.pacs.synth import generate_export  # noqa: E402


def blank_export(out: Path, n: int, size: int) -> float:
    """Write ``n`` blank CR files; return seconds."""
    t0 = time.perf_counter()
    pixels = np.zeros((size, size), np.uint16).tobytes()
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
        ds.Modality, ds.PatientID = "CR", "0"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{i // 100:03d}" / f"IM{i:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    with tempfile.TemporaryDirectory() as tmp:
        base = blank_export(Path(tmp) / "blank", args.n, args.size)
        t0 = time.perf_counter()
        s = generate_export(Path(tmp) / "synth", Path(tmp) / "truth.parquet", n=args.n, seed=args.seed,
                            size=args.size)
        synth = time.perf_counter() - t0
    print(f"blank DICOM baseline : {args.n / base:8.1f} images/s ({base:.1f} s)")
    print(f"synthetic export     : {args.n / synth:8.1f} images/s ({synth:.1f} s, {s.n_series} series, "
          f"{s.n_studies} studies, {s.n_patients} patients)")
    print(f"drawing overhead     : {synth / base:8.1f}x the blank baseline; "
          f"target {args.n} images in < 120 s: {'met' if synth < 120 else 'MISSED'}")


if __name__ == "__main__":
    main()
