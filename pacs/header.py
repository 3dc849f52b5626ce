"""Read the header of one DICOM file into an index row, without touching the pixel data.

Only the tags the index needs are parsed (``specific_tags``), the pixel data is never read,
large values are deferred, and a large read past the end of the file is refused (file meta
values are never deferred), so a damaged length field cannot make the reader allocate or read
gigabytes; nor, under a memory limit, can a deflated dataset that inflates to gigabytes
(:mod:`radaudit.pacs.inflate`). The file is opened once; conversions of header values that
files share (a study's UIDs, the modality, sizes, descriptions) are memoized on their raw bytes.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from radaudit.pacs.discover import Kind, sniff_bytes
from radaudit.pacs.inflate import DEFLATED_BYTES, InflationRefused, check_inflation, deflated_dataset_start
from radaudit.pacs.pseudo import identifier_tokens, pseudonymize

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# index column -> DICOM keyword; strings unless listed in _INT_COLUMNS.
HEADER_TAGS: dict[str, str] = {
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "modality": "Modality",
    "photometric_interpretation": "PhotometricInterpretation",
    "rows": "Rows",
    "columns": "Columns",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "samples_per_pixel": "SamplesPerPixel",
    "number_of_frames": "NumberOfFrames",
    "body_part_examined": "BodyPartExamined",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "protocol_name": "ProtocolName",
    "view_position": "ViewPosition",
    "laterality": "Laterality",
    "image_laterality": "ImageLaterality",
    "patient_orientation": "PatientOrientation",
    "manufacturer": "Manufacturer",
    # With the manufacturer they name the acquisition device, so the audit can group images by device.
    "manufacturer_model_name": "ManufacturerModelName",
    "station_name": "StationName",
    "device_serial_number": "DeviceSerialNumber",
    "accession_number": "AccessionNumber",
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
}
INT_COLUMNS = frozenset(
    {"rows", "columns", "bits_allocated", "bits_stored", "samples_per_pixel", "number_of_frames",
     "series_number", "instance_number"}
)
# Read for the patient key and the pixel plausibility check, never written out.
_EXTRA_TAGS = [
    "SpecificCharacterSet", "PatientID", "PatientName", "PatientBirthDate", "IssuerOfPatientID", "PixelRepresentation", "PlanarConfiguration",
    "MediaStorageSOPClassUID", "ImageType",
]
# Attributes of other modalities' modules, which a CR or DX image never carries: a CT slice, an MR
# image or an ultrasound frame misfiled as "DX knee" keeps them (index column other_modality_attributes).
OTHER_MODALITY_ATTRIBUTES: tuple[str, ...] = (
    "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "SliceLocation",  # cross-sections
    "ConvolutionKernel", "ReconstructionDiameter",  # CT
    "ScanningSequence", "EchoTime", "RepetitionTime", "MagneticFieldStrength",  # MR
    "SequenceOfUltrasoundRegions", "TransducerType",  # US
    "EnergyWindowInformationSequence", "DetectorInformationSequence",  # NM
    "RadiopharmaceuticalInformationSequence",  # NM, PET
)
# Image Type values of cross-sections, CT scouts and nuclear medicine, never of a CR/DX image.
FOREIGN_IMAGE_TYPES = frozenset({"AXIAL", "LOCALIZER", "EMISSION", "TRANSMISSION"})
_SPECIFIC_TAGS = list(HEADER_TAGS.values()) + _EXTRA_TAGS + list(OTHER_MODALITY_ATTRIBUTES)
_SPECIFIC_TAG_NUMBERS = [BaseTag(tag_for_keyword(keyword)) for keyword in _SPECIFIC_TAGS]
_IMAGE_TYPE = BaseTag(tag_for_keyword("ImageType"))
_OTHER_MODALITY_TAGS = [(keyword, BaseTag(tag_for_keyword(keyword))) for keyword in OTHER_MODALITY_ATTRIBUTES]
_COLUMN_TAGS = [(column, BaseTag(tag_for_keyword(keyword)), column in INT_COLUMNS)
                for column, keyword in HEADER_TAGS.items()]
_PATIENT_ID, _ISSUER = BaseTag(tag_for_keyword("PatientID")), BaseTag(tag_for_keyword("IssuerOfPatientID"))
_PATIENT_NAME, _BIRTH_DATE = BaseTag(tag_for_keyword("PatientName")), BaseTag(tag_for_keyword("PatientBirthDate"))
_CHARSET = BaseTag(tag_for_keyword("SpecificCharacterSet"))
_DIRECTORY_RECORDS = BaseTag(tag_for_keyword("DirectoryRecordSequence"))
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
IDENTIFIERS = "_identifiers"

# Read by the pixel plausibility check, with their dictionary VR (US, IS, CS: no character set and no
# ambiguity changes their conversion): converted once here (see _convert_plausibility_tags).
_PLAUSIBILITY_TAGS = {
    BaseTag(tag_for_keyword(keyword)): dictionary_VR(keyword) for keyword in (
        "Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "NumberOfFrames",
        "PhotometricInterpretation",
    )
}
_SNIFF_BYTES = 132
# The Transfer Syntax UID comes within this many bytes of a sane file meta; a deflated one is checked
# (see _check_inflation). One read of the file's start either way.
_HEAD_BYTES = 512
# RecursionError: sequences nested thousands deep; zlib.error: a dataset declared deflated that is not.
_PYDICOM_ERRORS = (InvalidDicomError, EOFError, struct.error, OSError, ValueError, KeyError,
                   NotImplementedError, OverflowError, TypeError, IndexError, RecursionError, zlib.error)

# Memoized conversions by raw bytes (see _value); values longer than _MEMO_VALUE_BYTES are converted each time.
_VALUES: dict[tuple[Any, ...], Any] = {}
_CHARSETS: dict[Any, tuple[str, ...]] = {}
_ELEMENTS: dict[tuple[Any, ...], DataElement] = {}
_MEMO_ENTRIES = 1 << 14
_MEMO_VALUE_BYTES = 256
_UNIQUE_TAGS = frozenset({BaseTag(tag_for_keyword("SOPInstanceUID"))})  # one value per file: never memoized

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# Values larger than this are not read into memory while parsing the header.
_DEFER_BYTES = 64 * 1024
# A read larger than this past the end of the file is a damaged length (see _BoundedFile).
_LARGE_READ = 1 << 20


class _BoundedFile:
    """A binary file whose large reads cannot ask for more bytes than the file holds.

    pydicom reads a value by its declared length, and a file's ``read(n)`` allocates ``n`` bytes
    before reading: a damaged 4 GB length on a file meta element (never deferred) or on a
    deferred value read later allocated 4 GB, a MemoryError under a worker's memory limit. A
    read of more than ``_LARGE_READ`` bytes past the end of the file raises EOFError instead (a
    damaged length or a truncated file). Not an ``io.BufferedReader``, so pydicom re-opens the
    file with this class for deferred values (``type(fp)(path, "rb")``); only ``read`` is Python.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "rb") -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close() or the with block
        self.name = self._file.name
        self.size = os.fstat(self._file.fileno()).st_size
        self.seek, self.tell, self.fileno, self.close = self._file.seek, self._file.tell, self._file.fileno, \
            self._file.close
        self.refused: str | None = None  # why a read was refused (pydicom turns the EOFError into a warning)

    @property
    def closed(self) -> bool:
        """Whether the file is closed (pydicom then re-opens it by name for a deferred value)."""
        return self._file.closed

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > _LARGE_READ and n > self.size - self.tell():
            self.refused = (f"an element declares {n} bytes where {max(0, self.size - self.tell())} remain in the "
                            "file (a damaged length or a truncated file)")
            raise EOFError(self.refused)
        return self._file.read(n)

    def __enter__(self) -> _BoundedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class HeaderError(ValueError):
    """A file that cannot be indexed; the message is the reason recorded in ingest_errors."""

    def __init__(self, reason: str, *, stage: str = "header", severity: str = "error") -> None:
        super().__init__(reason)
        self.stage = stage
        self.severity = severity
        self.identifiers: frozenset[str] = frozenset()  # of a file that was read but refused: to redact paths


@dataclass(frozen=True)
class PixelElement:
    """Where the Pixel Data element sits in the file, as declared by its header."""

    offset: int  # file offset of the value
    length: int | None  # None for encapsulated (undefined length)


def read_header(path: str | os.PathLike[str], *, key: bytes, memory_limit_mb: int | None = None) -> dict[str, Any]:
    """Read one file's header into an index row (without path, size or mtime).

    Args:
        path: The file.
        key: Pseudonymization key for the patient key.
        memory_limit_mb: The memory the reading may use (a worker's limit, see
            ``radaudit.pacs.index.run_isolated``): a deflated dataset that inflates to more than half
            of it is refused before pydicom inflates it (pydicom's reading peaks at about twice the
            inflated size). None: no check.

    Raises:
        HeaderError: With a readable reason when the file is not an indexable DICOM image.
    """
    path = Path(path)
    try:
        fp = _BoundedFile(path)
    except OSError as exc:
        raise HeaderError(f"cannot read file: {exc.strerror or exc}", stage="discover") from exc
    with fp:
        try:
            file_size = fp.size
            head = fp.read(_HEAD_BYTES)
        except OSError as exc:
            raise HeaderError(f"cannot read file: {exc.strerror or exc}", stage="discover") from exc
        kind = sniff_bytes(head[:_SNIFF_BYTES])
        if kind is Kind.EMPTY:
            raise HeaderError("empty file (0 bytes)", stage="discover")
        if kind is Kind.NOT_DICOM:
            raise HeaderError(f"not DICOM: {_describe_foreign(head)}", stage="discover", severity="skipped")

        if memory_limit_mb is not None and DEFLATED_BYTES in head:
            _check_inflation(fp, kind, memory_limit_mb)
        try:
            fp.seek(0)
            ds = pydicom.dcmread(
                fp,
                force=kind is Kind.RAW,
                stop_before_pixels=True,
                defer_size=_DEFER_BYTES,
                specific_tags=_SPECIFIC_TAG_NUMBERS,
            )
            if fp.refused:
                raise EOFError(fp.refused)
            pixel = _probe_pixel_element(fp, ds)
            if pixel is None and _transfer_syntax(ds) == pydicom.uid.DeflatedExplicitVRLittleEndian:
                # The dataset was inflated into memory (ds.buffer), where stop_before_pixels left the
                # position: look there, without a second inflation. No offset in the file to check.
                inflated = _probe_pixel_element(ds.buffer, ds) if ds.buffer is not None else None
                pixel = PixelElement(offset=-1, length=None) if inflated is not None else None
        except _PYDICOM_ERRORS as exc:
            raise HeaderError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc

    media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if ds.file_meta else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or _DIRECTORY_RECORDS in ds:
        raise HeaderError("DICOMDIR (a directory of the export, not an image)", severity="skipped")

    _convert_plausibility_tags(ds)
    encodings, enc_key = _encodings(ds)
    row: dict[str, Any] = {
        column: _value(ds, tag, encodings, enc_key, integer=integer) for column, tag, integer in _COLUMN_TAGS
    }
    if not row["sop_instance_uid"]:
        raise HeaderError("no SOP Instance UID")
    if not _UID.fullmatch(row["sop_instance_uid"]):
        raise HeaderError("SOP Instance UID is not a valid UID (digits and dots, at most 64 characters)")
    row["transfer_syntax_uid"] = _transfer_syntax(ds)
    row["other_modality_attributes"] = _other_modality_attributes(ds, encodings, enc_key)
    patient_id = _value(ds, _PATIENT_ID, encodings, enc_key, integer=False)
    row["patient_key"] = _patient_key(patient_id, key, _value(ds, _ISSUER, encodings, enc_key, integer=False))
    # Used to redact paths, then dropped: never written anywhere.
    row[IDENTIFIERS] = identifier_tokens(_value(ds, _PATIENT_NAME, encodings, enc_key, integer=False), patient_id,
                                         _value(ds, _BIRTH_DATE, encodings, enc_key, integer=False))
    try:
        if pixel is None:
            raise HeaderError("no Pixel Data element (not an image)", stage="pixels", severity="skipped")
        _check_pixels(ds, pixel, file_size, row)
    except HeaderError as exc:
        exc.identifiers = row[IDENTIFIERS]
        raise
    return row


def _check_inflation(fp: _BoundedFile, kind: Kind, memory_limit_mb: int) -> None:
    """Refuse a deflated dataset whose reading would need more than ``memory_limit_mb``, before pydicom inflates it."""
    start = deflated_dataset_start(fp, 132 if kind is Kind.PART10 else 0)
    if start is None:
        return
    try:
        check_inflation(fp, start, (memory_limit_mb << 20) // 2)
    except InflationRefused as exc:
        raise HeaderError(f"needs more than the {memory_limit_mb} MiB memory limit to read: {exc}") from exc
    except OSError as exc:
        raise HeaderError(f"cannot read file: {exc.strerror or exc}", stage="discover") from exc


def _other_modality_attributes(ds: Dataset, encodings: list[str], enc_key: tuple[str, ...]) -> str | None:
    """The index's ``other_modality_attributes``: keywords of another modality's attributes present,
    then ``ImageType=<value>`` for each value in :data:`FOREIGN_IMAGE_TYPES`; None for none."""
    found = [keyword for keyword, tag in _OTHER_MODALITY_TAGS if tag in ds]
    image_type = _value(ds, _IMAGE_TYPE, encodings, enc_key, integer=False) or ""
    found += [f"ImageType={v}" for v in image_type.upper().split("\\") if v.strip() in FOREIGN_IMAGE_TYPES]
    return ",".join(found) or None


def clear_memos() -> None:
    """Forget the memoized conversions, as in a fresh process (for benchmarks)."""
    for memo in (_VALUES, _CHARSETS, _ELEMENTS):
        memo.clear()
    _patient_key.cache_clear()


@functools.lru_cache(maxsize=4096)  # one patient has many files
def _patient_key(patient_id: str | None, key: bytes, issuer: str | None) -> str | None:
    return pseudonymize(patient_id, key, issuer=issuer)


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


def _convert_plausibility_tags(ds: Dataset) -> None:
    """Convert the raw elements the pixel plausibility check reads, as ``Dataset.__getitem__`` would.

    Done once, memoized on the raw bytes, so that neither the index columns nor the check convert
    them again. Only elements read with their dictionary VR, whose conversion depends on neither
    the character set nor the dataset; any other (a deferred value, an odd VR) is left to pydicom.
    The converted elements are shared by the datasets of many files, which only read them.
    """
    elements = ds._dict
    for tag, dictionary_vr in _PLAUSIBILITY_TAGS.items():
        raw = elements.get(tag)
        if not isinstance(raw, RawDataElement) or type(raw.value) is not bytes \
                or (raw.VR or dictionary_vr) != dictionary_vr:
            continue
        memo_key = (tag, raw.VR, raw.value, raw.is_little_endian)
        elem = _ELEMENTS.get(memo_key)
        if elem is None:
            try:
                elem = convert_raw_data_element(raw, encoding=default_encoding)
            except Exception:  # noqa: BLE001 - left raw: the plausibility check meets the error as before
                continue
            if len(raw.value) <= _MEMO_VALUE_BYTES:
                _remember(_ELEMENTS, memo_key, elem)
        elements[tag] = elem


def _encodings(ds: Dataset) -> tuple[list[str], tuple[str, ...]]:
    """The Specific Character Set as Python codecs (ISO_IR 6 where absent), and as a memo key."""
    charset = (ds[_CHARSET].value if _CHARSET in ds else None) or "ISO_IR 6"
    memo_key: Any = None
    if type(charset) is str:
        memo_key = charset
    elif isinstance(charset, MultiValue) and all(type(c) is str for c in charset):
        memo_key = tuple(charset)
    if memo_key is not None:
        known = _CHARSETS.get(memo_key)
        if known is not None:
            return list(known), known
    encodings = convert_encodings(charset)
    enc_key = tuple(encodings)
    if memo_key is not None:
        _remember(_CHARSETS, memo_key, enc_key)
    return encodings, enc_key


def _value(ds: Dataset, tag: BaseTag, encodings: list[str], enc_key: tuple[str, ...], *, integer: bool) -> Any:
    """The element's value as the index stores it (str, int or None), memoized on its raw bytes.

    The conversion depends only on the tag, VR, bytes, byte order and character set.
    """
    # get_item + convert_raw_data_element skip Dataset's attribute machinery (5x cheaper per tag).
    try:
        raw = ds.get_item(tag)
    except EOFError as exc:  # a deferred value longer than the file (_BoundedFile)
        raise HeaderError(f"unreadable DICOM header: EOFError: {exc}") from exc
    if raw is None:
        return None
    if tag not in _UNIQUE_TAGS and isinstance(raw, RawDataElement) and type(raw.value) is bytes \
            and len(raw.value) <= _MEMO_VALUE_BYTES:
        memo_key = (tag, raw.VR, raw.value, raw.is_little_endian, enc_key, integer)
        try:
            return _VALUES[memo_key]
        except KeyError:
            value = _convert(raw, encodings, ds, integer=integer)
            _remember(_VALUES, memo_key, value)
            return value
    return _convert(raw, encodings, ds, integer=integer)


def _convert(raw: Any, encodings: list[str], ds: Dataset, *, integer: bool) -> Any:
    try:
        value = convert_raw_data_element(raw, encoding=encodings, ds=ds).value if isinstance(raw, RawDataElement) \
            else raw.value
    except Exception:  # noqa: BLE001 - an undecodable optional tag is recorded as missing, not fatal
        return None
    if value is None or value == "":
        return None
    if integer:
        try:
            number = int(value[0] if isinstance(value, (list, MultiValue)) else value)
        except (TypeError, ValueError, OverflowError):
            return None
        # A damaged IS (20 digits) must not reach the index's int64 columns: recorded as missing.
        return number if _INT64_MIN <= number <= _INT64_MAX else None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _transfer_syntax(ds: Dataset) -> str:
    ts = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
    if ts:
        return str(ts)
    # Raw dataset without meta: pydicom has guessed the encoding.
    if not ds.is_little_endian:
        return str(pydicom.uid.ExplicitVRBigEndian)
    return str(pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else pydicom.uid.ExplicitVRLittleEndian)


def _probe_pixel_element(fp: Any, ds: Dataset) -> PixelElement | None:
    """Read the tag header where ``stop_before_pixels`` left the file position."""
    little = ds.is_little_endian if ds.is_little_endian is not None else True
    implicit = ds.is_implicit_VR if ds.is_implicit_VR is not None else False
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        return None
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        offset = start + 8
    elif head[4:6] in (b"OB", b"OW", b"UN", b"OD", b"OF", b"OL", b"OV", b"UT", b"SQ", b"UC", b"UR"):
        (length,) = struct.unpack(endian + "L", head[8:12])
        offset = start + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        offset = start + 8
    return PixelElement(offset=offset, length=None if length == 0xFFFFFFFF else length)


def _check_pixels(ds: Dataset, pixel: PixelElement, file_size: int, row: dict[str, Any]) -> None:
    """Refuse pixel data whose declared geometry or length cannot be right, before any decode."""
    from radaudit.pacs.pixels import PixelDataError, check_pixel_plausibility

    try:
        check_pixel_plausibility(ds, file_size)
    except PixelDataError as exc:
        raise HeaderError(str(exc), stage="pixels") from exc
    remaining = file_size - pixel.offset
    if pixel.offset < 0:
        return
    if pixel.length is None:
        if remaining < 16:
            raise HeaderError("truncated: encapsulated Pixel Data has no fragments", stage="pixels")
        return
    if pixel.length > remaining:
        raise HeaderError(
            f"truncated pixel data: {remaining} of {pixel.length} declared bytes present", stage="pixels"
        )
    expected = (row["rows"] or 0) * (row["columns"] or 0) * (row["samples_per_pixel"] or 1) \
        * (row["number_of_frames"] or 1) * (row["bits_allocated"] or 16) // 8
    if expected and pixel.length < expected and UID(row["transfer_syntax_uid"]).is_encapsulated is False:
        raise HeaderError(
            f"pixel data too short: {pixel.length} bytes for {expected} declared by Rows x Columns x Frames",
            stage="pixels",
        )


def _describe_foreign(head: bytes) -> str:
    """What a file that is not DICOM is, from its first bytes."""
    head = head[:8]
    for magic, name in ((b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"%PDF", "PDF document"),
                        (b"PK\x03\x04", "ZIP archive"), (b"GIF8", "GIF image"), (b"II*\x00", "TIFF image"),
                        (b"MM\x00*", "TIFF image")):
        if head.startswith(magic):
            return f"{name} (content, whatever the file name says)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text file"
    return "no DICOM preamble and no dataset at the start of the file"
