"""Seeded DICOM mutation fuzzer: real files damaged the ways an archive's files get damaged.

Every mutator edits the bytes of a valid file at a place found by pydicom's own parse of it
(:func:`parse`: element offsets from ``pydicom.filereader.data_element_generator``, items and
fragments walked by their headers), so a mutation hits the field it means to hit: a length
field, Rows, the Transfer Syntax UID. The same bytes and seed give the same mutation.

Kinds (:data:`KINDS`): random bit flips, truncation, a wrong declared length, undefined length
on an element that is not a sequence, thousands of nested sequences, a sequence item holding
copies of itself, absurd image geometry (Rows, Columns, Bits Allocated, Samples per Pixel,
Number of Frames), absurd Instance/Series Numbers, a bad Transfer Syntax UID (unknown, garbage,
empty, missing, or one that contradicts the encoding), huge lengths on OB/OW/UN elements, a
JPEG / JPEG 2000 codestream header that declares a huge image, and a zip bomb (a deflated dataset
that inflates past a given size).

Sources: pydicom's test files and pydicom-data (:func:`default_sources`), plus a small synthetic
export (``radaudit.pacs.synth.generate_export``). Write a corpus and ingest it::

    from radaudit.pacs.fuzz import write_corpus
    corpus = write_corpus("fuzz/export", n=300, seed=0)   # one row per file: path, source, kind, mutation

The benchmark ``python benchmarks/fuzz.py --n 10000`` runs the ingest on such a corpus.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.datadict import dictionary_VR
from pydicom.filereader import data_element_generator
from pydicom.uid import generate_uid
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from radaudit.pacs import io as pio
from radaudit.pacs.discover import Kind, sniff_bytes

__all__ = [
    "KINDS",
    "ZIP_BOMB_BYTES",
    "Element",
    "Layout",
    "default_sources",
    "mutate",
    "parse",
    "with_instance_uid",
    "write_corpus",
    "zip_bomb",
]

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
TRANSFER_SYNTAX, GROUP_LENGTH = 0x00020010, 0x00020000
SOP_INSTANCE_UID, PIXEL_DATA = 0x00080018, 0x7FE00010
IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
DEFLATED, RLE, JPEG_BASELINE, J2K = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
                                     "1.2.840.10008.1.2.4.90")
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE})
# Sources larger than this are skipped by default: a 10,000-file corpus stays a few hundred MB.
MAX_SOURCE_BYTES = 1 << 20
# What a zip bomb inflates past by default: about 1 MB on disk.
ZIP_BOMB_BYTES = 1 << 30
_MIB = 1 << 20
_LARGE_VRS = frozenset({"OB", "OW", "UN", "OB or OW", "US or OW", "OB or OW or UN"})


@dataclass(frozen=True)
class Element:
    """Where one data element (or sequence item, or pixel fragment) sits in the file.

    Offsets are from the start of the file. ``end`` is past the value, and past the delimiter of
    an undefined-length value. ``vr`` is the explicit VR as written, or the dictionary VR for an
    implicit encoding (None for an unknown tag); items and fragments have ``vr`` None.
    """

    tag: int
    vr: str | None
    start: int
    length_at: int
    length_size: int  # 2 or 4 bytes
    value_at: int
    length: int  # as declared; UNDEFINED for undefined length
    end: int
    depth: int  # 0: top-level dataset or file meta; each sequence item adds 1
    meta: bool = False


@dataclass(frozen=True)
class Layout:
    """A parsed file: its encoding and every element found, in file order."""

    little: bool
    implicit: bool
    has_meta: bool
    dataset_start: int
    transfer_syntax: str | None
    elements: tuple[Element, ...]

    @property
    def deflated(self) -> bool:
        """The dataset is deflated: only the file meta can be located."""
        return self.transfer_syntax == DEFLATED

    def find(self, tag: int) -> Element | None:
        """The top-level (or file meta) element with ``tag``, or None."""
        for e in self.elements:
            if e.tag == tag and e.depth == 0:
                return e
        return None

    @property
    def pixel_start(self) -> int | None:
        """Offset of the Pixel Data element, or None."""
        e = self.find(PIXEL_DATA)
        return e.start if e is not None else None


def parse(data: bytes) -> Layout:
    """Locate every element of a DICOM file (Part 10, or a raw dataset with a guessed encoding).

    Raises:
        ValueError: The bytes are not a DICOM file this parser can walk.
    """
    kind = sniff_bytes(data[:132])
    if kind not in (Kind.PART10, Kind.RAW):
        raise ValueError(f"not a DICOM file ({kind.value})")
    fp = io.BytesIO(data)
    elements: list[Element] = []
    ts: str | None = None
    has_meta = kind is Kind.PART10 or data[:2] == b"\x02\x00"
    start = 132 if kind is Kind.PART10 else 0
    try:
        if has_meta:
            fp.seek(start)
            meta = data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
            for elem in meta:
                end = fp.tell()
                elements.append(_element(elem, end, implicit=False, depth=0, meta=True))
                if elem.tag == TRANSFER_SYNTAX and isinstance(elem.value, bytes):
                    ts = elem.value.decode("ascii", "replace").strip("\0 ")
            start = fp.tell()
        # A raw dataset is big endian if its first group reads so; the VR encoding is found as pydicom does.
        little = ts != EXPLICIT_BE if ts is not None else int.from_bytes(data[start : start + 2], "little") <= 0xFF
        implicit = ts == IMPLICIT_LE
        if ts != DEFLATED:
            implicit = _walk_dataset(fp, data, start, None, implicit, little, 0, elements)
    except (ValueError, KeyError, struct.error, OSError, EOFError, NotImplementedError, TypeError,
            RecursionError) as exc:
        raise ValueError(f"cannot walk the file: {type(exc).__name__}: {exc}") from exc
    elements.sort(key=lambda e: e.start)  # an item is recorded after its contents
    return Layout(little=little, implicit=implicit, has_meta=has_meta, dataset_start=start, transfer_syntax=ts,
                  elements=tuple(elements))


def _element(elem: object, end: int, *, implicit: bool, depth: int, meta: bool = False) -> Element:
    """An :class:`Element` from what ``data_element_generator`` yielded and the file position after it."""
    tag = int(elem.tag)  # type: ignore[attr-defined]
    vr = elem.VR  # type: ignore[attr-defined]
    value_at = getattr(elem, "value_tell", None)
    if value_at is None:  # a DataElement: an undefined-length sequence that pydicom parsed
        value_at = elem.file_tell  # type: ignore[attr-defined]
    length = getattr(elem, "length", UNDEFINED) if not getattr(elem, "is_undefined_length", False) else UNDEFINED
    if implicit or vr is None:
        header, size = 8, 4
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = None
    else:
        header, size = (12, 4) if vr in EXPLICIT_VR_LENGTH_32 else (8, 2)
    return Element(tag=tag, vr=vr, start=value_at - header, length_at=value_at - size, length_size=size,
                   value_at=value_at, length=length, end=end, depth=depth, meta=meta)


def _walk_dataset(fp: io.BytesIO, data: bytes, start: int, end: int | None, implicit: bool, little: bool,
                  depth: int, out: list[Element]) -> bool:
    """Append the elements of the dataset at ``start`` (to ``end``, or to its item delimiter when None).

    Like pydicom, the first element's bytes decide between implicit and explicit VR (a file may
    say one and hold the other; an item of an explicit dataset may be implicit). Returns the one used.
    """
    vr_bytes = data[start + 4 : start + 6]
    if len(vr_bytes) == 2 and (end is None or start + 6 <= end) and not (depth and implicit):
        implicit = not (0x40 < vr_bytes[0] < 0x5B and 0x40 < vr_bytes[1] < 0x5B)
    fp.seek(start)
    stop = (lambda tag, vr, length: fp.tell() > end) if end is not None else None
    gen = data_element_generator(fp, implicit, little, stop_when=stop, defer_size=0)
    for elem in gen:
        after = fp.tell()
        e = _element(elem, after, implicit=implicit, depth=depth)
        out.append(e)
        if e.vr == "SQ" or (e.length == UNDEFINED and e.tag == PIXEL_DATA):
            _walk_items(fp, data, e, implicit, little, depth + 1, out)
        fp.seek(after)  # the generator reads on from where this element ended
    return implicit


def _walk_items(fp: io.BytesIO, data: bytes, sq: Element, implicit: bool, little: bool, depth: int,
                out: list[Element]) -> None:
    """Append the items of a sequence (and their elements), or the fragments of encapsulated pixel data."""
    unpack = struct.Struct("<HHL" if little else ">HHL").unpack_from
    pos = sq.value_at
    stop = sq.value_at + sq.length if sq.length != UNDEFINED else sq.end
    fragments = sq.tag == PIXEL_DATA
    while pos + 8 <= min(stop, len(data)):
        group, elem, length = unpack(data, pos)
        tag = group << 16 | elem
        if tag != ITEM:
            return
        if length == UNDEFINED and not fragments:
            _walk_dataset(fp, data, pos + 8, None, implicit, little, depth, out)
            item_end = fp.tell()
        else:
            item_end = pos + 8 + (0 if length == UNDEFINED else length)
            if not fragments and length:
                _walk_dataset(fp, data, pos + 8, item_end, implicit, little, depth, out)
        out.append(Element(tag=ITEM, vr=None, start=pos, length_at=pos + 4, length_size=4, value_at=pos + 8,
                           length=length, end=item_end, depth=depth))
        pos = item_end


# ---------------------------------------------------------------------------------------------
# Byte-level helpers.


def _pack(value: int, size: int, little: bool) -> bytes:
    return value.to_bytes(size, "little" if little else "big")


def _set_length(data: bytes, e: Element, length: int, little: bool) -> bytes:
    """``data`` with the length field of ``e`` overwritten (nothing else moves)."""
    little = True if e.meta else little
    return data[: e.length_at] + _pack(length, e.length_size, little) + data[e.length_at + e.length_size :]


def _encode(tag: int, vr: str, value: bytes, *, implicit: bool, little: bool) -> bytes:
    """One element's bytes: tag, VR (explicit), length and value (padded to an even length)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    head = _pack(tag >> 16, 2, little) + _pack(tag & 0xFFFF, 2, little)
    if implicit:
        return head + _pack(len(value), 4, little) + value
    if vr in EXPLICIT_VR_LENGTH_32:
        return head + vr.encode() + b"\0\0" + _pack(len(value), 4, little) + value
    return head + vr.encode() + _pack(len(value), 2, little) + value


def _replace(data: bytes, layout: Layout, e: Element, new: bytes) -> bytes:
    """``data`` with element ``e`` (top level or file meta) replaced by ``new`` bytes.

    A file meta element keeps File Meta Information Group Length right, so the damage stays
    where it was meant to be.
    """
    out = data[: e.start] + new + data[e.end :]
    if e.meta:
        group = layout.find(GROUP_LENGTH)
        if group is not None and group.length == 4:
            old = int.from_bytes(data[group.value_at : group.value_at + 4], "little")
            fixed = max(0, old + len(new) - (e.end - e.start))
            out = out[: group.value_at] + _pack(fixed, 4, True) + out[group.value_at + 4 :]
    return out


def _insert(data: bytes, layout: Layout, tag: int, new: bytes) -> bytes:
    """``data`` with ``new`` (an element of ``tag``) inserted in tag order in the top-level dataset."""
    at = len(data)
    for e in layout.elements:
        if e.depth == 0 and not e.meta and e.tag > tag:
            at = e.start
            break
    return data[:at] + new + data[at:]


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _top(layout: Layout) -> list[Element]:
    return [e for e in layout.elements if e.depth == 0 and not e.meta]


def _pick(layout: Layout, rng: np.random.Generator, wanted: Callable[[Element], bool]) -> Element | None:
    """A random element that ``wanted`` accepts; one of the dataset in 9 of 10 draws where it has any
    (a file meta element damaged hides the whole dataset, which other kinds cover already)."""
    pool = [e for e in layout.elements if wanted(e)]
    inside = [e for e in pool if not e.meta]
    if inside and rng.random() < 0.9:
        pool = inside
    return pool[int(rng.integers(len(pool)))] if pool else None


# ---------------------------------------------------------------------------------------------
# Mutators: (data, layout or None, rng) -> (mutated bytes, detail), or None when not applicable.

Mutator = Callable[[bytes, "Layout | None", np.random.Generator], "tuple[bytes, str] | None"]


def bit_flip(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Flip 1-16 distinct random bits; mostly in the header (before Pixel Data), where they matter."""
    if not data:
        return None
    header = layout.pixel_start if layout is not None and layout.pixel_start else len(data)
    span = header if rng.random() < 0.75 else len(data)
    n = int(min(rng.integers(1, 17), span * 8))
    out = bytearray(data)
    for bit in rng.choice(span * 8, size=n, replace=False):
        out[int(bit) // 8] ^= 1 << (int(bit) % 8)
    return bytes(out), f"{n} bits"


def truncate(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Cut the file short: anywhere, or inside a random element's header or value."""
    if len(data) < 2:
        return None
    if layout is not None and layout.elements and rng.random() < 0.5:
        e = layout.elements[int(rng.integers(len(layout.elements)))]
        cut = int(rng.integers(e.start + 1, max(e.start + 2, min(e.end, len(data)))))
    else:
        cut = int(rng.integers(1, len(data)))
    cut = min(cut, len(data) - 1)
    return data[:cut], f"{cut} of {len(data)} bytes"


def wrong_length(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Overwrite one element's (or item's, or fragment's) length field with a wrong value."""
    if layout is None or not layout.elements:
        return None
    e = _pick(layout, rng, lambda e: True)
    if e is None:
        return None
    top = (1 << (8 * e.length_size)) - 1
    old = e.length if e.length != UNDEFINED else len(data) - e.value_at
    candidates = [0, old + 1, old - 1, old + 2 * int(rng.integers(1, 64)), old // 2, len(data) - e.value_at + 2,
                  int(rng.integers(0, 2 * len(data) + 1)), top - 1]
    candidates = [c for c in candidates if 0 <= c <= top and c != e.length]
    if not candidates:
        return None
    new = int(candidates[int(rng.integers(len(candidates)))])
    return _set_length(data, e, new, layout.little), f"{_tag(e.tag)} length {e.length} -> {new}"


def undefined_length(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Declare undefined length (0xFFFFFFFF) on an element that is not a sequence."""
    if layout is None:
        return None
    e = _pick(layout, rng, lambda e: e.length_size == 4 and e.vr != "SQ" and e.tag != ITEM and e.length != UNDEFINED)
    if e is None:
        return None
    return _set_length(data, e, UNDEFINED, layout.little), f"{_tag(e.tag)} {e.vr}"


def huge_length(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Declare a huge length (about 2 or 4 GB) on an OB, OW or UN element, e.g. Pixel Data."""
    if layout is None:
        return None
    e = _pick(layout, rng, lambda e: e.length_size == 4 and e.vr in _LARGE_VRS and e.length != UNDEFINED)
    if e is None:
        return None
    new = int(rng.choice([0x7FFFFFF0, 0x7FFFFFFE, 0xFFFFFFF0, 0x40000000]))
    return _set_length(data, e, new, layout.little), f"{_tag(e.tag)} {e.vr} -> 0x{new:08X}"


# Sequence tags that nesting mutations insert (the first absent one is used).
_SEQUENCE_TAGS = (0x00081140, 0x00081115, 0x00089215, 0x00400275, 0x00081250)


def _nest(tag: int, depth: int, content: bytes, *, implicit: bool, little: bool, defined: bool) -> bytes:
    """``depth`` sequences of ``tag``, each with one item holding ``content`` then the next sequence.

    Built in linear time: with undefined lengths the bytes are a repeated prefix and suffix; with
    defined lengths each level's length is computed from the inside out.
    """
    tag_bytes = _pack(tag >> 16, 2, little) + _pack(tag & 0xFFFF, 2, little)
    sq_head = tag_bytes + (b"" if implicit else b"SQ\0\0")
    item_tag = _pack(0xFFFE, 2, little) + _pack(0xE000, 2, little)
    if not defined:
        undef = _pack(UNDEFINED, 4, little)
        item_end = _pack(0xFFFE, 2, little) + _pack(0xE00D, 2, little) + b"\0\0\0\0"
        seq_end = _pack(0xFFFE, 2, little) + _pack(0xE0DD, 2, little) + b"\0\0\0\0"
        return (sq_head + undef + item_tag + undef + content) * depth + (item_end + seq_end) * depth
    # sizes[k]: bytes of the sequence at nesting level k (0 outermost), from the innermost outwards.
    sizes = [0] * depth
    inner = 0
    for k in range(depth - 1, -1, -1):
        item_len = len(content) + inner
        sizes[k] = len(sq_head) + 4 + 8 + item_len
        inner = sizes[k]
    parts = []
    for k in range(depth):
        item_len = sizes[k] - len(sq_head) - 4 - 8
        parts.append(sq_head + _pack(item_len + 8, 4, little) + item_tag + _pack(item_len, 4, little) + content)
    return b"".join(parts)


def deep_sequence(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Insert thousands of nested sequences (each an item holding the next), undefined or defined lengths."""
    if layout is None or layout.deflated:
        return None
    present = {e.tag for e in _top(layout)}
    tag = next((t for t in _SEQUENCE_TAGS if t not in present), None)
    if tag is None:
        return None
    depth = int(rng.integers(2_000, 12_001))
    defined = bool(rng.random() < 0.5)
    nested = _nest(tag, depth, b"", implicit=layout.implicit, little=layout.little, defined=defined)
    return _insert(data, layout, tag, nested), f"depth {depth}, {'defined' if defined else 'undefined'} lengths"


def self_nested_sequence(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Replace a sequence by one whose item holds a byte copy of its own contents and of itself, many times over.

    The file's first top-level sequence with an item is used; a file without one gets a small
    Referenced Image Sequence to nest.
    """
    if layout is None or layout.deflated:
        return None
    seq = next((e for e in _top(layout) if e.vr == "SQ" and e.length != 0), None)
    item = None
    if seq is not None:
        item = next((i for i in layout.elements if i.tag == ITEM and seq.value_at <= i.start < seq.end), None)
    copies = int(rng.integers(50, 3_001))
    defined = bool(rng.random() < 0.5)
    if seq is None or item is None:
        tag = next((t for t in _SEQUENCE_TAGS if t not in {e.tag for e in _top(layout)}), None)
        if tag is None:
            return None
        content = _encode(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.1", implicit=layout.implicit,
                          little=layout.little)
        nested = _nest(tag, copies, content, implicit=layout.implicit, little=layout.little, defined=defined)
        return _insert(data, layout, tag, nested), f"new {_tag(tag)} x {copies}"
    if item.length == UNDEFINED:
        content = data[item.value_at : item.end - 8]  # without the item delimiter
    else:
        content = data[item.value_at : item.value_at + item.length]
    copies = max(1, min(copies, (2 << 20) // (len(content) + 32)))
    nested = _nest(seq.tag, copies, content, implicit=layout.implicit, little=layout.little, defined=defined)
    return _replace(data, layout, seq, nested), f"{_tag(seq.tag)} x {copies}"


_US_VALUES: dict[str, tuple[int, ...]] = {
    "Rows": (0, 1, 0x8000, 0xFFFE, 0xFFFF),
    "Columns": (0, 1, 0x8000, 0xFFFE, 0xFFFF),
    "BitsAllocated": (0, 1, 3, 7, 12, 33, 64, 255, 0xFFFF),
    "BitsStored": (0, 17, 33, 64, 0xFFFF),
    "SamplesPerPixel": (0, 2, 3, 4, 5, 255, 0xFFFF),
}
_IS_VALUES = (b"0", b"-1", b"100000", b"2147483647", b"99999999999999999999", b"1e9", b"NaN", b"", b"abc", b"4 ")
_GEOMETRY_TAGS = {"Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
                  "SamplesPerPixel": 0x00280002, "NumberOfFrames": 0x00280008}
_NUMBER_TAGS = {"InstanceNumber": 0x00200013, "SeriesNumber": 0x00200011, "AcquisitionNumber": 0x00200012}
_NUMBER_VALUES = (b"99999999999999999999", b"-9223372036854775809", b"9223372036854775807", b"1e400", b"-0",
                  b"+000000000001", b"12345678901")


def _set_value(data: bytes, layout: Layout, tag: int, vr: str, value: bytes) -> bytes:
    """``data`` with the top-level element ``tag`` holding ``value``: in place when the size is kept, else
    the element rewritten or inserted."""
    e = layout.find(tag)
    padded = value + (b" " if len(value) % 2 else b"")
    if e is not None and e.length == len(padded):
        return data[: e.value_at] + padded + data[e.value_at + e.length :]
    new = _encode(tag, vr, value, implicit=layout.implicit, little=layout.little)
    return _replace(data, layout, e, new) if e is not None else _insert(data, layout, tag, new)


def absurd_geometry(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Write an absurd Rows, Columns, Bits Allocated/Stored, Samples per Pixel or Number of Frames,
    or all of Rows, Columns and Number of Frames at their largest at once."""
    if layout is None or layout.deflated or layout.find(PIXEL_DATA) is None:
        return None
    keyword = str(rng.choice([*_GEOMETRY_TAGS, "all"]))
    if keyword == "all":
        for kw, value in (("Rows", 0xFFFF), ("Columns", 0xFFFF)):
            data = _set_value(data, layout, _GEOMETRY_TAGS[kw], "US", _pack(value, 2, layout.little))
            layout = parse(data)
        data = _set_value(data, layout, _GEOMETRY_TAGS["NumberOfFrames"], "IS", b"99999")
        return data, "Rows=65535 Columns=65535 NumberOfFrames=99999"
    tag = _GEOMETRY_TAGS[keyword]
    if keyword == "NumberOfFrames":
        values = [(v, f"{keyword}={v.decode()!r}") for v in _IS_VALUES]
        vr = "IS"
    else:
        values = [(_pack(v, 2, layout.little), f"{keyword}={v}") for v in _US_VALUES[keyword]]
        vr = "US"
    for i in rng.permutation(len(values)):  # a value the file does not hold already
        value, detail = values[int(i)]
        out = _set_value(data, layout, tag, vr, value)
        if out != data:
            return out, detail
    return None


def absurd_number(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Write an out-of-range Instance, Series or Acquisition Number (IS): 20 digits, 1e400, -2**63 - 1."""
    if layout is None or layout.deflated:
        return None
    keyword = str(rng.choice(list(_NUMBER_TAGS)))
    value = _NUMBER_VALUES[int(rng.integers(len(_NUMBER_VALUES)))]
    return _set_value(data, layout, _NUMBER_TAGS[keyword], "IS", value), f"{keyword}={value.decode()}"


def _contradictions(ts: str | None) -> list[str]:
    """Transfer syntaxes that contradict how a file encoded in ``ts`` is really encoded."""
    if ts == IMPLICIT_LE:
        return [EXPLICIT_LE, EXPLICIT_BE, DEFLATED, RLE, J2K]
    if ts == EXPLICIT_LE:
        return [IMPLICIT_LE, EXPLICIT_BE, DEFLATED, RLE, JPEG_BASELINE, J2K]
    if ts == EXPLICIT_BE:
        return [IMPLICIT_LE, EXPLICIT_LE, J2K]
    if ts == DEFLATED:
        return [EXPLICIT_LE, IMPLICIT_LE]
    return [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED] + [t for t in (RLE, JPEG_BASELINE, J2K) if t != ts]


def bad_transfer_syntax(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Replace the file meta's Transfer Syntax UID: unknown, garbage, empty, missing or contradicting."""
    if layout is None or not layout.has_meta:
        return None
    e = layout.find(TRANSFER_SYNTAX)
    if e is None:
        return None
    variant = str(rng.choice(["unknown", "garbage", "empty", "missing", "contradicting"]))
    if variant == "missing":
        return _replace(data, layout, e, b""), "missing"
    if variant == "unknown":
        value = f"1.2.840.10008.1.2.4.{int(rng.integers(1000, 10000))}".encode()
    elif variant == "garbage":
        value = bytes(rng.integers(0, 256, size=int(rng.integers(1, 65)), dtype=np.uint8))
    elif variant == "empty":
        value = b""
    else:
        options = _contradictions(layout.transfer_syntax)
        value = options[int(rng.integers(len(options)))].encode()
    new = _encode(TRANSFER_SYNTAX, "UI", value, implicit=False, little=True)
    shown = value.decode("ascii", "backslashreplace")[:40]
    return _replace(data, layout, e, new), f"{variant} {shown!r}"


# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS SOF55): they carry the frame's size.
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def _size_fields(data: bytes, start: int, end: int) -> tuple[str, int] | None:
    """("j2k" or "jpeg", offset of the size fields) in the codestream at ``data[start:end]``.

    JPEG 2000: offset of SIZ's Xsiz (Ysiz, XOsiz, YOsiz, XTsiz, YTsiz follow, 4 bytes each);
    JPEG and JPEG-LS: offset of the frame header's number of lines (columns follow, 2 bytes each).
    """
    soc = data.find(b"\xff\x4f\xff\x51", start, min(end, start + 4096))
    if soc >= 0 and soc + 32 <= end:
        return "j2k", soc + 8
    if data[start : start + 2] != b"\xff\xd8":
        return None
    pos = start + 2
    while pos + 9 <= min(end, start + (1 << 16)):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif marker in _JPEG_SOF:
            return "jpeg", pos + 5
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def codestream_size(data: bytes, layout: Layout | None, rng: np.random.Generator) -> tuple[bytes, str] | None:
    """Make the first frame's JPEG / JPEG-LS / JPEG 2000 header declare a huge image (Rows and Columns unchanged).

    Decoders allocate what the codestream declares, not what the DICOM header says.
    """
    if layout is None or layout.deflated:
        return None
    px = layout.find(PIXEL_DATA)
    if px is None or px.length != UNDEFINED:
        return None
    fragments = [e for e in layout.elements if e.tag == ITEM and px.value_at <= e.start < px.end]
    if len(fragments) < 2:  # the Basic Offset Table, then the first fragment
        return None
    frag = fragments[1]
    found = _size_fields(data, frag.value_at, min(frag.end, len(data)))
    if found is None:
        return None
    kind, at = found
    out = bytearray(data)
    if kind == "j2k":
        side = int(rng.choice([20_000, 46_341, 65_535, 100_000, (1 << 31) - 1]))
        x0, y0 = struct.unpack_from(">II", data, at + 8)
        struct.pack_into(">II", out, at, x0 + side, y0 + side)
        one_tile = bool(rng.random() < 0.5)
        if one_tile:
            struct.pack_into(">II", out, at + 16, side, side)
        return bytes(out), f"JPEG 2000 SIZ {side} x {side}{', one tile' if one_tile else ''}"
    side = int(rng.choice([20_000, 30_000, 65_500, 65_535]))
    struct.pack_into(">HH", out, at, side, side)
    return bytes(out), f"JPEG frame header {side} x {side}"


# Private (odd) groups a zip bomb's element may take: the first that the file does not use.
_BOMB_GROUPS = (0x0009, 0x0011, 0x0013, 0x0015, 0x0017, 0x7FE1)


def zip_bomb(data: bytes, layout: Layout | None, rng: np.random.Generator, *,
             inflated_bytes: int = ZIP_BOMB_BYTES) -> tuple[bytes, str] | None:
    """Make the file a deflated dataset (Deflated Explicit VR Little Endian) that inflates past ``inflated_bytes``.

    A private element of zeros joins the dataset: one OB value of that length, or 1 MiB fragments
    of an undefined-length OB value (whose size no element header gives away). Zeros deflate
    about 1,000 to 1, so 1 GiB takes about 1 MB on disk, and the stream is built without the
    inflated bytes (:func:`_deflate_repeated`). Applies to explicit VR little endian files with a
    file meta (the encoding a deflated dataset has).
    """
    if inflated_bytes < 1:
        raise ValueError(f"inflated_bytes must be positive, got {inflated_bytes}")
    if layout is None or not layout.has_meta or layout.deflated or layout.implicit or not layout.little:
        return None
    ts = layout.find(TRANSFER_SYNTAX)
    group = next((g for g in _BOMB_GROUPS if g not in {e.tag >> 16 for e in _top(layout)}), None)
    if ts is None or group is None:
        return None
    out = _replace(data, layout, ts, _encode(TRANSFER_SYNTAX, "UI", DEFLATED.encode(), implicit=False, little=True))
    shift = len(out) - len(data)  # the new Transfer Syntax UID's length moves the dataset
    start = layout.dataset_start + shift
    tag = group << 16 | 0x1000
    at = next((e.start for e in _top(layout) if e.tag > tag), len(data)) + shift
    copies = -(-inflated_bytes // _MIB)
    fragments = bool(rng.random() < 0.5)
    creator = _encode(group << 16 | 0x0010, "LO", b"RADAUDIT ZIP BOMB", implicit=False, little=True)
    head = _pack(group, 2, True) + _pack(0x1000, 2, True) + b"OB\0\0"
    if fragments:
        head += _pack(UNDEFINED, 4, True)
        chunk = _pack(0xFFFE, 2, True) + _pack(0xE000, 2, True) + _pack(_MIB, 4, True) + bytes(_MIB)
        end = _pack(0xFFFE, 2, True) + _pack(0xE0DD, 2, True) + bytes(4)
    else:
        head += _pack(copies * _MIB, 4, True)
        chunk, end = bytes(_MIB), b""
    stream = _deflate_repeated(out[start:at] + creator + head, chunk, copies, end + out[at:])
    shape = f"{copies} fragments of 1 MiB, undefined length" if fragments else "one value"
    return out[:start] + stream + b"\0" * (len(stream) % 2), f"{_tag(tag)} OB, {copies} MiB of zeros in {shape}"


def _deflate_repeated(prefix: bytes, chunk: bytes, copies: int, suffix: bytes) -> bytes:
    """Raw deflate of ``prefix + chunk * copies + suffix``, built without the inflated bytes.

    A full flush empties the compressor's history, so ``chunk`` compressed after one gives the
    same bytes each time: it is compressed twice, compared, and the block repeated (each copy
    is compressed where the two differ).
    """
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)]
    blocks = [co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH) for _ in range(min(copies, 2))]
    if copies > 2 and blocks[0] == blocks[1]:
        parts.append(blocks[0] * copies)
    else:
        parts += blocks + [co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH) for _ in range(copies - 2)]
    parts.append(co.compress(suffix) + co.flush())
    return b"".join(parts)


MUTATORS: dict[str, Mutator] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "wrong_length": wrong_length,
    "undefined_length": undefined_length,
    "huge_length": huge_length,
    "deep_sequence": deep_sequence,
    "self_nested_sequence": self_nested_sequence,
    "absurd_geometry": absurd_geometry,
    "absurd_number": absurd_number,
    "bad_transfer_syntax": bad_transfer_syntax,
    "codestream_size": codestream_size,
    "zip_bomb": zip_bomb,
}
KINDS: tuple[str, ...] = tuple(MUTATORS)


def mutate(data: bytes, rng: np.random.Generator, *, kinds: Sequence[str] | None = None,
           zip_bomb_bytes: int = ZIP_BOMB_BYTES) -> tuple[bytes, str]:
    """Apply one mutation to a DICOM file's bytes; return the bytes and ``"<kind>:<detail>"``.

    Kinds are tried in a random order until one applies to the file (a deflated file has no
    Rows to make absurd); bit flips and truncation apply to any non-empty bytes. A zip bomb
    inflates past ``zip_bomb_bytes``.

    Raises:
        ValueError: An unknown kind, or no given kind applies to these bytes.
    """
    kinds = list(kinds) if kinds is not None else list(KINDS)
    unknown = [k for k in kinds if k not in MUTATORS]
    if unknown:
        raise ValueError(f"unknown mutation kinds {unknown}; valid: {', '.join(KINDS)}")
    mutators = {**MUTATORS, "zip_bomb": functools.partial(zip_bomb, inflated_bytes=zip_bomb_bytes)}
    try:
        layout: Layout | None = parse(data)
    except ValueError:
        layout = None
    for i in rng.permutation(len(kinds)):
        kind = kinds[int(i)]
        result = mutators[kind](data, layout, rng)
        if result is not None:
            return result[0], f"{kind}:{result[1]}"
    raise ValueError(f"none of the mutations {kinds} applies to this file")


def with_instance_uid(data: bytes, uid: str) -> bytes:
    """``data`` with a new top-level SOP Instance UID, so copies of one source are distinct instances.

    The ingest decodes one file per UID (others are duplicates); a corpus of unique UIDs makes
    every file reach the decoder. Deflated files and files without the element are returned as is.
    """
    try:
        layout = parse(data)
    except ValueError:
        return data
    e = layout.find(SOP_INSTANCE_UID)
    if e is None or layout.deflated:
        return data
    new = _encode(SOP_INSTANCE_UID, "UI", uid.encode("ascii"), implicit=layout.implicit, little=layout.little)
    return _replace(data, layout, e, new)


# ---------------------------------------------------------------------------------------------
# Sources and corpus.


def default_sources(*, max_bytes: int = MAX_SOURCE_BYTES, synth_n: int = 24, synth_seed: int = 0,
                    synth_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of valid DICOM files to mutate, in a fixed order.

    pydicom's test files and pydicom-data that are DICOM, parseable and at most ``max_bytes``
    (DICOMDIRs included: a mutated one must still end as an error row), then ``synth_n`` small
    synthetic radiographs (64 px, every transfer syntax the generator writes) made in
    ``synth_dir`` (a temporary folder when None).
    """
    from pydicom.data import get_testdata_files
    from pydicom.data.data_manager import DATA_ROOT

    sources: list[tuple[str, bytes]] = []
    test_root = Path(DATA_ROOT) / "test_files"
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if not path.is_file() or path.stat().st_size > max_bytes:
            continue
        data = path.read_bytes()
        try:
            parse(data)
        except ValueError:
            continue
        shown = f"pydicom:{path.relative_to(test_root).as_posix()}" if test_root in path.parents \
            else f"pydicom-data:{path.name}"
        sources.append((shown, data))
    if synth_n:
        sources += _synthetic_sources(synth_n, synth_seed, synth_dir)
    return sources


def _synthetic_sources(n: int, seed: int, where: str | os.PathLike[str] | None) -> list[tuple[str, bytes]]:
    from radaudit.pacs.synth import generate_export

    with tempfile.TemporaryDirectory(dir=where) as tmp:
        export = Path(tmp) / "export"
        generate_export(export, Path(tmp) / "truth.parquet", n=n, seed=seed, size=64, noise=0.0, missing=0.0,
                        ood=0.0)
        files = sorted(p for p in export.rglob("*") if p.is_file())
        return [(f"synth:{p.relative_to(export).as_posix()}", p.read_bytes()) for p in files]


def corpus_path(i: int) -> str:
    """Relative path of corpus file ``i``: plain export-style names, 1,000 per folder."""
    return f"{i // 1000:03d}/fz{i:06d}.dcm"


def write_corpus(
    out_dir: str | os.PathLike[str], n: int, seed: int, sources: Sequence[tuple[str, bytes]] | None = None, *,
    kinds: Sequence[str] | None = None, mutated: bool = True, zip_bomb_bytes: int = ZIP_BOMB_BYTES,
) -> pd.DataFrame:
    """Write ``n`` mutated DICOM files under ``out_dir`` (each atomically); one row per file.

    File ``i`` depends only on ``(seed, i)`` and the sources: its kind is ``kinds[i % len(kinds)]``
    (so every kind is present once ``n >= len(kinds)``), its source a seeded draw among those the
    kind applies to, and it gets a unique SOP Instance UID before the mutation.

    Args:
        out_dir: The export root to write into.
        n: Number of files.
        seed: Random seed.
        sources: (name, bytes) of valid DICOM files; None: :func:`default_sources`.
        kinds: Mutation kinds to cycle through; None: all of :data:`KINDS`.
        mutated: False writes the unique-UID copies unmutated (kind ``none``): a baseline corpus.
        zip_bomb_bytes: What each zip bomb inflates past (its file is about a thousandth of it):
            past half the ingest's ``worker_memory_mb`` for the bombs to be refused.

    Returns:
        Columns ``path`` (relative to ``out_dir``), ``source``, ``kind``, ``mutation``, ``size``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sources = list(sources) if sources is not None else default_sources()
    if not sources:
        raise ValueError("no sources to mutate: pass (name, bytes) pairs of valid DICOM files")
    kinds = list(kinds) if kinds is not None else list(KINDS)
    out = Path(out_dir)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        uid = generate_uid(entropy_srcs=[str(seed), str(i)])
        kind = kinds[i % len(kinds)]
        name, data, mutation = _draw(sources, rng, uid, kind if mutated else None, zip_bomb_bytes)
        rel = corpus_path(i)
        pio.write_bytes(out / rel, data)
        rows.append({"path": rel, "source": name, "kind": mutation.partition(":")[0], "mutation": mutation,
                     "size": len(data)})
    return pd.DataFrame(rows, columns=["path", "source", "kind", "mutation", "size"])


def _draw(sources: Sequence[tuple[str, bytes]], rng: np.random.Generator, uid: str,
          kind: str | None, zip_bomb_bytes: int = ZIP_BOMB_BYTES) -> tuple[str, bytes, str]:
    """A source, with ``uid``, and mutated with ``kind`` (redrawing the source up to 50 times where
    the kind does not apply, then any kind). Four draws in five are among the sources with Pixel
    Data, so that most files reach the decoder."""
    images = [s for s in sources if _has_pixels(s[1])]
    for attempt in range(51):
        pool = images if images and rng.random() < 0.8 else sources
        name, data = pool[int(rng.integers(len(pool)))]
        data = with_instance_uid(data, uid)
        if kind is None:
            return name, data, "none:"
        try:
            mutated, mutation = mutate(data, rng, kinds=[kind] if attempt < 50 else None,
                                       zip_bomb_bytes=zip_bomb_bytes)
        except ValueError:
            continue
        return name, mutated, mutation
    raise ValueError(f"mutation {kind} applies to none of {len(sources)} sources")


@functools.lru_cache(maxsize=4096)
def _has_pixels(data: bytes) -> bool:
    """Whether a source has a top-level Pixel Data element (memoized: sources are drawn again and again)."""
    try:
        return parse(data).find(PIXEL_DATA) is not None
    except ValueError:
        return False
