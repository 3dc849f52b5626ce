"""Decode one DICOM image into a float32 [0, 1] grey image, bone bright.

The one pixel normalization of the pipeline (every consumer relies on it), in this order:

1. decode the first frame only (any transfer syntax the installed pydicom plugins decode);
   JPEG 2000 may be decoded at 1/2**reduce resolution when the caller only needs ``min_side``
   pixels (OpenJPEG skips the wavelet levels a later resize would throw away);
2. colour (RGB, YBR, palette) becomes luminance;
3. modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept);
4. VOI: VOI LUT Sequence, else the first Window Center/Width (LINEAR, LINEAR_EXACT, SIGMOID),
   else a robust percentile window on the non-padding pixels;
5. MONOCHROME1 inverted after the VOI (pydicom never does it); Presentation LUT Shape is
   ignored because some CR/DX files carry a wrong one;
6. Pixel Padding Value (and Range Limit), matched on the stored values, set to 0.

Every failure is a :class:`PixelDataError` with a readable reason, and the declared geometry is
checked (:func:`check_pixel_plausibility`) before anything is decoded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.uid import UID

from radaudit.pacs.discover import Kind, sniff

log = logging.getLogger(__name__)

__all__ = [
    "DecodedImage",
    "PixelDataError",
    "WINDOW_SOURCES",
    "check_pixel_plausibility",
    "decode_image",
    "j2k_reduce_available",
    "normalize_frame",
    "read_image",
]

WINDOW_SOURCES = ("voi_lut", "window", "fallback")
FALLBACK_PERCENTILES = (0.5, 99.5)
MAX_PIXEL_BYTES = 1 << 30

# JPEG 2000 and HTJ2K: the syntaxes OpenJPEG can decode at reduced resolution.
J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFER_BYTES = 1024  # values above this stay on disk until asked for: no allocation from a bad length
_MAX_FRAMES = 100_000
_MAX_SIDE = 65_535
_MAX_STAT_PIXELS = 1 << 22  # percentile statistics on at most ~4 M pixels (strided subsample)


class PixelDataError(ValueError):
    """The pixel data of a file cannot be turned into an image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """One normalized image and how it was obtained.

    Attributes:
        pixels: float32 2-D array in [0, 1], bone bright, padding 0. Shape: (rows, columns)
            divided by ``2**reduce`` and rounded up.
        frames: Number of frames in the file.
        frame_index: The frame decoded (always 0).
        was_color: The stored image was colour (RGB, YBR or palette) and became luminance.
        photometric: Photometric Interpretation as stored.
        window_source: "voi_lut", "window" (Window Center/Width) or "fallback" (percentiles).
        reduce: The image was decoded at 1/2**reduce of full resolution (JPEG 2000 only).
        original_shape: (Rows, Columns) as declared.
        transfer_syntax: Transfer Syntax UID of the file.
    """

    pixels: np.ndarray
    frames: int
    frame_index: int
    was_color: bool
    photometric: str
    window_source: str
    reduce: int
    original_shape: tuple[int, int]
    transfer_syntax: str


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the first frame of a DICOM file as float32 2-D in [0, 1], bone bright.

    Raises:
        PixelDataError: The file has no decodable, plausible pixel data.
    """
    return decode_image(path).pixels


def decode_image(
    path: str | os.PathLike[str],
    *,
    min_side: int | None = None,
    ds: Dataset | None = None,
    threads: int = 1,
) -> DecodedImage:
    """Decode and normalize the first frame of a DICOM file.

    Args:
        path: The DICOM file.
        min_side: The smallest short side the caller needs. JPEG 2000 is then decoded at the
            largest ``reduce`` with ``min(rows, cols) / 2**reduce >= min_side`` that the
            codestream's decomposition levels allow; other syntaxes decode in full.
        ds: A full dataset of ``path`` already read with its Pixel Data, to avoid a second read.
            A dataset without Pixel Data (e.g. a header read) is ignored: the file is read.
        threads: OpenJPEG decoder threads. Keep 1 inside worker processes.

    Returns:
        The image and how it was decoded.

    Raises:
        PixelDataError: With a readable reason, for anything from an empty file to a decoder error.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels or None, got {min_side}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        raise PixelDataError(f"cannot read file: {exc.strerror or exc}") from exc
    if ds is None or not any(k in ds for k in _PIXEL_KEYWORDS):
        ds = _read_dataset(path)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise PixelDataError("no Pixel Data element (not an image)")
    check_pixel_plausibility(ds, file_size)
    ts = _transfer_syntax(ds)
    _check_decodable(ts)
    _check_codestream_size(ds, ts)

    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _frames(ds)
    reduce = 0
    stored: np.ndarray | None = None
    if ts in J2K_SYNTAXES and "PixelData" in ds and (min_side is not None or threads > 1):
        stored, reduce = _decode_j2k_reduced(ds, frames, min_side, threads)
    if stored is None:
        reduce = 0
        stored = _decode_first_frame(path, ds, ts)

    pixels, was_color, window_source = normalize_frame(stored, ds)
    return DecodedImage(
        pixels=pixels,
        frames=frames,
        frame_index=0,
        was_color=was_color,
        photometric=str(ds.get("PhotometricInterpretation", "")),
        window_source=window_source,
        reduce=reduce,
        original_shape=(rows, cols),
        transfer_syntax=ts,
    )


# ---------------------------------------------------------------------------------------------
# Plausibility: refuse what cannot be right before any decoder allocates memory.


def check_pixel_plausibility(ds: Dataset, file_size: int, *, max_bytes: int = MAX_PIXEL_BYTES) -> None:
    """Refuse pixel data whose declared geometry cannot be right, before any decode.

    Works on a header read with ``stop_before_pixels=True`` (then only the file size bounds the
    pixel bytes) and on a full or deferred read (then the Pixel Data length is checked too).

    Args:
        ds: The dataset; Pixel Data may be absent.
        file_size: Size of the file in bytes.
        max_bytes: Largest declared (uncompressed) pixel data accepted.

    Raises:
        PixelDataError: A tag is missing, zero or absurd, the declared pixels exceed
            ``max_bytes``, or an uncompressed file is too short for its declared pixels.
    """
    rows = _int_tag(ds, "Rows", low=1, high=_MAX_SIDE)
    cols = _int_tag(ds, "Columns", low=1, high=_MAX_SIDE)
    bits_allocated = _int_tag(ds, "BitsAllocated", low=1, high=64)
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise PixelDataError(f"Bits Allocated is {bits_allocated}: must be 1, 8, 16, 32 or 64")
    samples = _int_tag(ds, "SamplesPerPixel", low=1, high=4, default=1)
    if samples == 2:
        raise PixelDataError("Samples per Pixel is 2: must be 1, 3 or 4")
    if "PixelData" in ds or "BitsStored" in ds:
        stored = _int_tag(ds, "BitsStored", low=1, high=64, default=bits_allocated)
        if stored > bits_allocated:
            raise PixelDataError(f"Bits Stored ({stored}) exceeds Bits Allocated ({bits_allocated})")
    if not str(ds.get("PhotometricInterpretation", "") or "").strip():
        raise PixelDataError("no Photometric Interpretation")
    frames = _frames(ds)

    expected = (rows * cols * samples * frames * bits_allocated + 7) // 8
    if expected > max_bytes:
        raise PixelDataError(
            f"declared pixel data size {_human(expected)} ({rows} x {cols} x {samples} samples x "
            f"{frames} frames x {bits_allocated} bits) exceeds the {_human(max_bytes)} limit"
        )
    ts = _transfer_syntax(ds)
    try:
        encapsulated = UID(ts).is_encapsulated
    except ValueError as exc:  # pydicom read it as explicit VR little endian, whatever it is
        raise PixelDataError(f"unknown transfer syntax {ts[:64]!r}: how the pixel data are encoded is unknown") from exc
    if encapsulated or ts == _DEFLATED:
        return
    if file_size < expected:
        raise PixelDataError(
            f"truncated pixel data: the file has {file_size} bytes, the declared pixels need {expected}"
        )
    elem = _pixel_element(ds)
    if elem is None:
        return
    present = _present_length(elem, file_size)
    if present is not None and present < expected:
        raise PixelDataError(f"truncated pixel data: {present} of {expected} bytes")


def _int_tag(ds: Dataset, keyword: str, *, low: int, high: int, default: int | None = None) -> int:
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"{_spaced(keyword)} is not a number: {exc}") from exc
    if value is None or value == "":
        if default is not None:
            return default
        raise PixelDataError(f"no {_spaced(keyword)}")
    try:
        number = int(value[0] if isinstance(value, (list, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"{_spaced(keyword)} is not a number: {value!r}") from exc
    if not low <= number <= high:
        raise PixelDataError(f"{_spaced(keyword)} is {number}: must be between {low} and {high}")
    return number


def _frames(ds: Dataset) -> int:
    return _int_tag(ds, "NumberOfFrames", low=1, high=_MAX_FRAMES, default=1)


def _pixel_element(ds: Dataset) -> Any:
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            return ds.get_item(keyword, keep_deferred=True)
    return None


def _present_length(elem: Any, file_size: int) -> int | None:
    """Bytes of a native pixel data value actually present, or None when unknown."""
    value = getattr(elem, "value", None)
    if value is not None:
        return len(value) if isinstance(value, (bytes, bytearray)) else None
    length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:
        return None
    return max(0, min(length, file_size - tell))


def _spaced(keyword: str) -> str:
    out = "".join(" " + c if c.isupper() and i else c for i, c in enumerate(keyword))
    return out.replace("Of ", "of ").replace("Per ", "per ")


def _human(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# Reading and decoding.


def _read_dataset(path: Path) -> Dataset:
    """Read the dataset with large values deferred, so a bad length allocates nothing."""
    try:
        kind = sniff(path)
    except OSError as exc:
        raise PixelDataError(f"cannot read file: {exc.strerror or exc}") from exc
    if kind is Kind.EMPTY:
        raise PixelDataError("empty file (0 bytes)")
    if kind is Kind.NOT_DICOM:
        raise PixelDataError("not a DICOM file (no DICM preamble and no dataset at the start)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=kind is Kind.RAW, defer_size=_DEFER_BYTES)
            if _transfer_syntax(ds) == _DEFLATED:
                # Deferred values would be re-read from the compressed file: read it whole. The first
                # read's inflated copy goes first, so that the two never take memory at once.
                del ds
                ds = pydicom.dcmread(path, force=kind is Kind.RAW)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            NotImplementedError, OverflowError) as exc:
        raise PixelDataError(f"unreadable DICOM dataset: {type(exc).__name__}: {exc}") from exc
    for warning in caught:
        if "End of file reached" in str(warning.message):
            raise PixelDataError("truncated file: it ends inside an element of undefined length "
                                 "(encapsulated Pixel Data or a sequence)")
    return ds


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    # A raw dataset without meta: pydicom guessed the encoding while reading it.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        return str(pydicom.uid.ExplicitVRBigEndian)
    return str(pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian)


def _check_decodable(ts: str) -> None:
    uid = UID(ts)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise PixelDataError(f"transfer syntax {ts} ({uid.name}) has no pixel data decoder") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        hint = "install pylibjpeg-openjpeg" if ts in J2K_SYNTAXES else "install python-gdcm"
        raise PixelDataError(f"transfer syntax {ts} ({uid.name}) cannot be decoded: {hint} ({missing})")


# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15; SOF55 of JPEG-LS): they carry the frame's size.
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
_ITEM = b"\xfe\xff\x00\xe0"
# JPEG (ISO 10918) syntaxes: baseline, extended, lossless (processes 14 and 14 SV1).
_JPEG_10918 = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                         "1.2.840.10008.1.2.4.70"})
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})


def _check_codestream_size(ds: Dataset, ts: str) -> None:
    """Refuse an encapsulated first frame that a decoder would allocate by, or abort on, wrongly.

    Its codestream must declare Rows x Columns, and a JPEG frame at most 16 Bits Allocated.

    Decoders allocate what the codestream header says (OpenJPEG; CharLS in GDCM): a damaged
    64 x 64 JPEG 2000 frame whose header says 40000 x 40000 made a worker touch 6 GB before
    failing, and GDCM aborts its process (SIGABRT) when Rows x Columns exceed a JPEG-LS frame,
    or when a JPEG frame comes with Bits Allocated above 16.
    The plausibility check bounds Rows x Columns; this ties the codestream to them. Such a frame
    never decodes into the declared image anyway.
    """
    if not UID(ts).is_encapsulated or "PixelData" not in ds:
        return
    if ts in _JPEG_10918 and int(ds.BitsAllocated) > 16:  # GDCM's JPEG codec aborts its process on it
        raise PixelDataError(f"Bits Allocated is {int(ds.BitsAllocated)} with {UID(ts).name}: "
                             "JPEG holds at most 16 bits per sample")
    if ts not in J2K_SYNTAXES and ts not in _JPEG_10918 and ts not in _JPEG_LS:
        return  # RLE, deflate, ...: no codestream header to check (RLE data can hold any bytes)
    try:
        found = _codestream_size(_first_fragment(ds.PixelData), j2k=ts in J2K_SYNTAXES)
    except Exception:  # noqa: BLE001 - a broken encapsulation is the decoder's to report
        return
    if found is None:
        return
    name, rows, cols = found
    if (rows, cols) != (int(ds.Rows), int(ds.Columns)):
        raise PixelDataError(
            f"the {name} codestream declares {rows} x {cols} pixels (rows x columns), the header "
            f"{int(ds.Rows)} x {int(ds.Columns)}: damaged, refused before a decoder allocates or overruns it"
        )


def _first_fragment(pixel_data: bytes, limit: int = 1 << 16) -> bytes:
    """The first ``limit`` bytes of the first fragment after the Basic Offset Table (b"" if none)."""
    if pixel_data[:4] != _ITEM:
        return b""
    pos = 8 + int.from_bytes(pixel_data[4:8], "little")
    if pixel_data[pos : pos + 4] != _ITEM:
        return b""
    length = int.from_bytes(pixel_data[pos + 4 : pos + 8], "little")
    return bytes(pixel_data[pos + 8 : pos + 8 + min(length, limit)])


def _codestream_size(data: bytes, *, j2k: bool) -> tuple[str, int, int] | None:
    """(codestream kind, rows, columns) from a JPEG 2000 header (``j2k``), else a JPEG or JPEG-LS one;
    None if none is found."""
    if j2k:
        start = data[:4096].find(b"\xff\x4f\xff\x51")  # SOC, SIZ (also inside a JP2 wrapper)
        if start < 0 or len(data) < start + 24:
            return None
        x, y, x0, y0 = (int.from_bytes(data[start + 8 + 4 * k : start + 12 + 4 * k], "big") for k in range(4))
        return ("JPEG 2000", y - y0, x - x0) if x > x0 and y > y0 else None
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            rows, cols = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
            return ("JPEG-LS" if marker == 0xF7 else "JPEG", rows, cols) if rows and cols else None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _decode_first_frame(path: Path, ds: Dataset, ts: str) -> np.ndarray:
    """Frame 0 through pydicom; native data still on disk is read from the file, that frame only."""
    meta = getattr(ds, "file_meta", None)
    in_file_format = bool(meta is not None and meta.get("TransferSyntaxUID"))
    native = not UID(ts).is_encapsulated and ts != _DEFLATED
    loaded = isinstance(getattr(_pixel_element(ds), "value", None), (bytes, bytearray))
    try:
        if native and in_file_format and not loaded:
            arr = pixel_array(path, index=0)
        else:
            if not in_file_format:  # a raw dataset: tell pydicom the encoding it guessed
                ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = UID(ts)
            arr = pixel_array(ds, index=0)
    except MemoryError as exc:
        raise PixelDataError("out of memory while decoding the pixel data") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any decoder failure is this file's reason, a Rust decoder's
        # panic too (pyo3's PanicException is a BaseException, and cannot be pickled back from a worker)
        raise PixelDataError(f"cannot decode pixel data ({UID(ts).name}): {type(exc).__name__}: {exc}") from exc
    return arr


def _decode_j2k_reduced(
    ds: Dataset, frames: int, min_side: int | None, threads: int
) -> tuple[np.ndarray | None, int]:
    """Frame 0 of a JPEG 2000 file through OpenJPEG, at reduced resolution when allowed.

    Returns (None, 0) when the fast path is unavailable or fails: the caller decodes in full.
    """
    lib = _openjp2()
    if lib is None:
        return None, 0
    try:
        codestream = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as exc:  # noqa: BLE001 - pydicom will report the same problem with more context
        log.debug("cannot split JPEG 2000 fragments: %s", exc)
        return None, 0
    reduce = 0
    if min_side is not None:
        levels = j2k_decomposition_levels(codestream)
        reduce = choose_reduce(int(ds.Rows), int(ds.Columns), min_side, levels or 0)
    if reduce == 0 and threads == 1:
        return None, 0
    try:
        components, signed = _opj_decode(lib, codestream, reduce=reduce, threads=threads)
    except _OpenJpegError as exc:
        log.debug("OpenJPEG fast path failed (%s); decoding in full", exc)
        return None, 0
    arr = _j2k_to_stored(components, signed, ds)
    return arr, reduce


def choose_reduce(rows: int, cols: int, min_side: int, levels: int) -> int:
    """Largest r <= levels with min(rows, cols) / 2**r >= min_side (0 when none)."""
    reduce = 0
    while reduce < levels and min(rows, cols) / 2 ** (reduce + 1) >= min_side:
        reduce += 1
    return reduce


def j2k_decomposition_levels(codestream: bytes) -> int | None:
    """Fewest wavelet decomposition levels in the main header (COD and COC markers).

    Returns None when the header cannot be parsed. Tile-part headers may lower it further;
    OpenJPEG then fails and the caller decodes in full.
    """
    data = memoryview(codestream)
    if len(data) < 4 or bytes(data[:2]) == b"\x00\x00":  # JP2 box wrapper: look for the codestream
        start = bytes(data[:4096]).find(b"\xff\x4f\xff\x51")
        if start < 0:
            return None
        data = data[start:]
    if bytes(data[:2]) != b"\xff\x4f":
        return None
    pos, levels, csiz = 2, [], 0
    while pos + 4 <= len(data):
        marker = int.from_bytes(data[pos : pos + 2], "big")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xFF90 or length < 2:  # start of tile: main header is over
            break
        if marker == 0xFF51 and len(body) >= 36:
            csiz = int.from_bytes(body[34:36], "big")
        elif marker == 0xFF52 and len(body) >= 6:
            levels.append(body[5])
        elif marker == 0xFF53:
            offset = 2 if csiz >= 257 else 1
            if len(body) > offset + 1:
                levels.append(body[offset + 1])
        pos += 2 + length
    return min(levels) if levels else None


def _j2k_to_stored(components: list[np.ndarray], signed: bool, ds: Dataset) -> np.ndarray:
    """OpenJPEG's int32 components as pydicom returns them (sign, colour space)."""
    if len(components) == 1:
        arr = components[0]
        if int(ds.get("PixelRepresentation", 0) or 0) == 1 and not signed:
            # pydicom's J2K sign correction: the codestream says unsigned, the dataset signed.
            prec = int(ds.get("BitsStored", 16) or 16)
            arr = np.where(arr >= 1 << (prec - 1), arr - (1 << prec), arr)
        return arr
    arr = np.stack(components[:3], axis=-1)
    if str(ds.get("PhotometricInterpretation", "")) in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr.astype(np.uint8 if int(ds.BitsAllocated) == 8 else np.uint16),
                                  "YBR_FULL", "RGB")
    return arr


# ---------------------------------------------------------------------------------------------
# Normalization.


def normalize_frame(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool, str]:
    """Turn the decoded values of one frame into the normalized image.

    Args:
        stored: One frame as pydicom decodes it: (rows, cols) stored values, or (rows, cols, 3)
            RGB; any resolution (the LUTs are per pixel).
        ds: The dataset with the LUT, window, photometric and padding tags.

    Returns:
        (float32 2-D image in [0, 1] bone bright, was_color, window_source).
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            stored = apply_color_lut(stored, ds)
        if stored.ndim == 3:
            grey = _luminance(stored)
            return _fallback_window(grey, np.zeros(grey.shape, dtype=bool)), True, "fallback"
        if stored.ndim != 2:
            raise PixelDataError(f"decoded frame has shape {stored.shape}, expected 2-D")
        padding = _padding_mask(stored, ds)
        values = apply_modality_lut(stored, ds)
        out, source = _voi(values, ds, padding)
    except PixelDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed LUT or window tags are this file's reason
        raise PixelDataError(f"cannot apply the LUTs of the file: {type(exc).__name__}: {exc}") from exc
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    out[padding] = 0.0
    return out, False, source


def _voi(values: np.ndarray, ds: Dataset, padding: np.ndarray) -> tuple[np.ndarray, str]:
    """VOI LUT, else the first window, else the percentile fallback; float32 [0, 1]."""
    lut = _voi_lut_item(ds)
    if lut is not None:
        out = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float32)
        entries = int(lut.LUTDescriptor[0]) or 1 << 16
        first = int(lut.LUTDescriptor[1])
        top = int(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0).max())
        if top > 0:
            # Scale by the bit depth the LUT values use: some files declare 16 bits and fill 12.
            return np.clip(out / float(2 ** top.bit_length() - 1), 0.0, 1.0), "voi_lut"
    window = _window(ds)
    if window is not None:
        return window(values), "window"
    return _fallback_window(values, padding), "fallback"


def _voi_lut_item(ds: Dataset) -> Dataset | None:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _window(ds: Dataset) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function applying the first valid Window Center/Width, or None when there is none."""
    try:
        center = _first(ds.get("WindowCenter"))
        width = _first(ds.get("WindowWidth"))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except (TypeError, ValueError):
        return None
    if center is None or width is None or not math.isfinite(center) or not math.isfinite(width):
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if width < (1 if function == "LINEAR" else 1e-12):
        return None
    # Only the window tags: pydicom then maps to the fixed range [0, 2**16 - 1].
    win = Dataset()
    win.PhotometricInterpretation = "MONOCHROME2"
    win.BitsStored = 16
    win.PixelRepresentation = 0
    win.WindowCenter = center
    win.WindowWidth = width
    win.VOILUTFunction = function

    def apply(values: np.ndarray) -> np.ndarray:
        out = apply_windowing(values.astype(np.float64), win) / 65535.0
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    return apply


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    return float(value)


def _fallback_window(values: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """Linear window between robust percentiles of the non-padding pixels."""
    sample = values[~padding] if padding.any() else values.ravel()
    if sample.size > _MAX_STAT_PIXELS:
        sample = sample[:: math.ceil(sample.size / _MAX_STAT_PIXELS)]
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    lo, hi = np.percentile(sample, FALLBACK_PERCENTILES)
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) array, float32."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """True where the stored value is Pixel Padding Value (or within its Range Limit)."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == "" or isinstance(value, bytes):
        return np.zeros(stored.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit")
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits = int(ds.get("BitsAllocated", 16) or 16)

    def as_stored(v: Any) -> int:
        v = int(v[0] if isinstance(v, (list, pydicom.multival.MultiValue)) else v)
        if signed and v >= 1 << (bits - 1):  # read as US although the pixels are signed
            v -= 1 << bits
        return v

    lo = as_stored(value)
    hi = as_stored(limit) if limit not in (None, "") and not isinstance(limit, bytes) else lo
    lo, hi = min(lo, hi), max(lo, hi)
    if lo == hi:
        return stored == lo
    return (stored >= lo) & (stored <= hi)


# ---------------------------------------------------------------------------------------------
# OpenJPEG through ctypes: reduced-resolution JPEG 2000 from memory.
#
# pydicom's plugins decode J2K in full only. glymur needs a file on disk and finds only a
# system or configured libopenjp2; Pillow's plugin rounds reduced sizes differently from
# OpenJPEG. Pillow's wheel bundles libopenjp2 (2.5.x), so a pip-only install always has one:
# this minimal binding uses it, or a system or imagecodecs copy.


class _OpenJpegError(RuntimeError):
    pass


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_CODEC_J2K, _CODEC_JP2 = 0, 2
_STREAM_END = ctypes.c_size_t(-1).value


class _ImageComp(ctypes.Structure):
    """opj_image_comp_t (openjpeg.h, stable since 2.0)."""

    _fields_ = [
        ("dx", ctypes.c_uint32), ("dy", ctypes.c_uint32), ("w", ctypes.c_uint32), ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32), ("y0", ctypes.c_uint32), ("prec", ctypes.c_uint32), ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32), ("resno_decoded", ctypes.c_uint32), ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)), ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    """opj_image_t (openjpeg.h, stable since 2.0)."""

    _fields_ = [
        ("x0", ctypes.c_uint32), ("y0", ctypes.c_uint32), ("x1", ctypes.c_uint32), ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32), ("color_space", ctypes.c_int), ("comps", ctypes.POINTER(_ImageComp)),
        ("icc_profile_buf", ctypes.c_void_p), ("icc_profile_len", ctypes.c_uint32),
    ]


def _openjp2_candidates() -> list[str]:
    """libopenjp2 paths: $RADAUDIT_OPENJP2, Pillow's bundled copy, the system's, imagecodecs'."""
    found = [os.environ["RADAUDIT_OPENJP2"]] if os.environ.get("RADAUDIT_OPENJP2") else []
    try:
        import PIL

        pil_dir = Path(PIL.__file__).parent
        for pattern in ("../pillow.libs/libopenjp2*", ".dylibs/libopenjp2*"):
            found += sorted(glob.glob(str(pil_dir / pattern)))
    except ImportError:
        pass
    system = ctypes.util.find_library("openjp2")
    if system:
        found.append(system)
    try:
        import importlib.util

        spec = importlib.util.find_spec("imagecodecs")
        if spec is not None and spec.origin:
            found += sorted(glob.glob(str(Path(spec.origin).parent.parent / "imagecodecs.libs" / "libopenjp2*")))
    except (ImportError, ValueError):
        pass
    return found


@functools.cache
def _openjp2() -> ctypes.CDLL | None:
    """The first loadable libopenjp2 >= 2.3 with its prototypes set, or None."""
    for candidate in _openjp2_candidates():
        try:
            lib = ctypes.CDLL(candidate)
            lib.opj_version.restype = ctypes.c_char_p
            version = tuple(int(p) for p in lib.opj_version().decode().split(".")[:2])
            if version < (2, 3):
                continue
            _set_prototypes(lib)
        except (OSError, AttributeError, ValueError) as exc:
            log.debug("libopenjp2 at %s unusable: %s", candidate, exc)
            continue
        log.debug("reduced JPEG 2000 decoding with libopenjp2 %s at %s", lib.opj_version().decode(), candidate)
        return lib
    return None


def j2k_reduce_available() -> bool:
    """Whether JPEG 2000 can be decoded at reduced resolution here (a libopenjp2 was found)."""
    return _openjp2() is not None


def _set_prototypes(lib: ctypes.CDLL) -> None:
    vp = ctypes.c_void_p
    image_pp = ctypes.POINTER(ctypes.POINTER(_Image))
    for name, restype, argtypes in (
        ("opj_stream_create", vp, [ctypes.c_size_t, ctypes.c_int32]),
        ("opj_stream_set_read_function", None, [vp, _READ_FN]),
        ("opj_stream_set_skip_function", None, [vp, _SKIP_FN]),
        ("opj_stream_set_seek_function", None, [vp, _SEEK_FN]),
        ("opj_stream_set_user_data_length", None, [vp, ctypes.c_uint64]),
        ("opj_stream_destroy", None, [vp]),
        ("opj_create_decompress", vp, [ctypes.c_int]),
        ("opj_set_default_decoder_parameters", None, [vp]),
        ("opj_setup_decoder", ctypes.c_int32, [vp, vp]),
        ("opj_codec_set_threads", ctypes.c_int32, [vp, ctypes.c_int]),
        ("opj_set_error_handler", ctypes.c_int32, [vp, _MSG_FN, vp]),
        ("opj_read_header", ctypes.c_int32, [vp, vp, image_pp]),
        ("opj_decode", ctypes.c_int32, [vp, vp, ctypes.POINTER(_Image)]),
        ("opj_end_decompress", ctypes.c_int32, [vp, vp]),
        ("opj_destroy_codec", None, [vp]),
        ("opj_image_destroy", None, [ctypes.POINTER(_Image)]),
    ):
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _opj_decode(lib: ctypes.CDLL, codestream: bytes, *, reduce: int, threads: int) -> tuple[list[np.ndarray], bool]:
    """Decode a J2K codestream (or JP2 file) from memory; returns (int32 components, signed)."""
    data = bytes(codestream)
    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    pos = 0
    errors: list[str] = []

    @_READ_FN
    def read(dst: int, n: int, _: int) -> int:
        nonlocal pos
        n = min(n, len(data) - pos)
        if n <= 0:
            return _STREAM_END
        ctypes.memmove(dst, base + pos, n)
        pos += n
        return n

    @_SKIP_FN
    def skip(n: int, _: int) -> int:
        nonlocal pos
        new = min(max(pos + n, 0), len(data))
        moved, pos = new - pos, new
        return moved

    @_SEEK_FN
    def seek(n: int, _: int) -> int:
        nonlocal pos
        if not 0 <= n <= len(data):
            return 0
        pos = n
        return 1

    @_MSG_FN
    def on_error(msg: bytes, _: int) -> None:
        errors.append(msg.decode(errors="replace").strip())

    codec_format = _CODEC_JP2 if data[4:8] == b"jP  " else _CODEC_J2K
    stream = lib.opj_stream_create(min(len(data), 1 << 22) or 1, 1)
    codec = lib.opj_create_decompress(codec_format)
    image = ctypes.POINTER(_Image)()
    try:
        if not stream or not codec:
            raise _OpenJpegError("cannot create an OpenJPEG decoder")
        lib.opj_stream_set_read_function(stream, read)
        lib.opj_stream_set_skip_function(stream, skip)
        lib.opj_stream_set_seek_function(stream, seek)
        lib.opj_stream_set_user_data_length(stream, len(data))
        lib.opj_set_error_handler(codec, on_error, None)
        # opj_dparameters_t starts with cp_reduce; the buffer is larger than the struct (~8.3 KB).
        params = ctypes.create_string_buffer(1 << 15)
        lib.opj_set_default_decoder_parameters(params)
        ctypes.c_uint32.from_buffer(params).value = reduce
        if not lib.opj_setup_decoder(codec, params):
            raise _OpenJpegError("; ".join(errors) or "decoder setup failed")
        if threads > 1:
            lib.opj_codec_set_threads(codec, threads)
        if not lib.opj_read_header(stream, codec, ctypes.byref(image)):
            raise _OpenJpegError("; ".join(errors) or "cannot read the codestream header")
        if not (lib.opj_decode(codec, stream, image) and lib.opj_end_decompress(codec, stream)):
            raise _OpenJpegError("; ".join(errors) or "decoding failed")
        img = image.contents
        comps = [img.comps[i] for i in range(img.numcomps)]
        if not comps or any(not c.data or c.w == 0 or c.h == 0 for c in comps):
            raise _OpenJpegError("decoded image has no data")
        if len({(c.w, c.h) for c in comps[:3]}) != 1:
            raise _OpenJpegError("subsampled components")
        arrays = [np.ctypeslib.as_array(c.data, shape=(c.h, c.w)).copy() for c in comps]
        return arrays, bool(comps[0].sgnd)
    finally:
        if image:
            lib.opj_image_destroy(image)
        if codec:
            lib.opj_destroy_codec(codec)
        if stream:
            lib.opj_stream_destroy(stream)
