"""Bounded inflation of a deflated dataset (Deflated Explicit VR Little Endian), before pydicom inflates it.

pydicom reads a deflated dataset with one ``zlib.decompress`` of the whole stream, so a file of a
megabyte can ask for a gigabyte (a zip bomb: deflate packs zeros about 1,000 to 1). The
reader then holds the inflated stream and a copy of its values: about twice the inflated size.
:func:`check_inflation` inflates the stream in 1 MiB steps, keeping none of it, and refuses it
once it passes a cap; it reads the top-level element headers as they come, so an element that
declares more bytes than the cap is refused at its header, without inflating its value.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from pydicom.filereader import data_element_generator

__all__ = ["DEFLATED", "DEFLATED_BYTES", "InflationRefused", "check_inflation", "deflated_dataset_start"]

DEFLATED = "1.2.840.10008.1.2.1.99"
DEFLATED_BYTES = DEFLATED.encode("ascii")
_TRANSFER_SYNTAX = 0x00020010
_STEP = 1 << 20  # inflated bytes per step: the most the check holds at once
_READ = 1 << 16  # compressed bytes read per step
# Explicit VRs with a 4-byte length after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF


class InflationRefused(ValueError):
    """A deflated dataset that inflates, or declares an element, past the cap; the message says which."""


def deflated_dataset_start(fp: BinaryIO, meta_start: int) -> int | None:
    """Offset of the dataset where the file meta at ``meta_start`` declares a deflated transfer syntax, else None.

    None also where the file meta cannot be walked: pydicom's own reading then says why.
    """
    fp.seek(meta_start)
    ts = None
    try:
        for elem in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2):
            if elem.tag == _TRANSFER_SYNTAX and isinstance(elem.value, bytes):
                ts = elem.value.rstrip(b"\0 ")
    except (EOFError, OSError, ValueError, KeyError, struct.error, NotImplementedError, TypeError):
        return None
    return fp.tell() if ts == DEFLATED_BYTES else None


def check_inflation(fp: BinaryIO, dataset_start: int, max_bytes: int) -> None:
    """Inflate the deflated dataset from ``dataset_start`` to its end, keeping none of it; refuse it past ``max_bytes``.

    A stream that is not valid deflate is left to pydicom, which says why it cannot read it.

    Raises:
        InflationRefused: The dataset inflates to more than ``max_bytes``, or one of its top-level
            elements declares a value that would end past ``max_bytes``.
    """
    fp.seek(dataset_start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    headers = _TopLevelHeaders()
    total = 0
    try:
        while not inflater.eof:
            pending = fp.read(_READ)
            if not pending:
                return
            while True:
                out = inflater.decompress(pending, _STEP)
                pending = inflater.unconsumed_tail
                declared = headers.feed(out, total)
                total += len(out)
                if declared is not None and declared[0] + declared[1] > max_bytes:
                    raise InflationRefused(f"an element of its deflated dataset declares {declared[1]:,} bytes: "
                                           f"it would inflate to more than {_size(max_bytes)}")
                if total > max_bytes:
                    raise InflationRefused(f"its deflated dataset inflates to more than {_size(max_bytes)}")
                if inflater.eof or (not pending and len(out) < _STEP):
                    break
    except zlib.error:
        return


class _TopLevelHeaders:
    """Walks the top-level element headers of an Explicit VR Little Endian stream that arrives in pieces.

    Values are skipped, never kept. The walk stops at an undefined length (a sequence or
    encapsulated data: its items are not walked) or at bytes that are not an explicit VR header.
    """

    def __init__(self) -> None:
        self.next = 0  # stream offset of the next element header
        self.tail = b""  # bytes from self.next on that arrived before the header was complete
        self.stopped = False

    def feed(self, out: bytes, at: int) -> tuple[int, int] | None:
        """Take the stream bytes ``out`` that start at offset ``at``; return (value offset, declared
        length) of the value that ends last among the headers completed in them, or None."""
        last: tuple[int, int] | None = None
        end = at + len(out)
        while not self.stopped and self.next < end:
            # At most one header's bytes: slicing the rest of ``out`` for each element would be quadratic.
            head = (self.tail + out[:12])[:12] if self.tail else out[self.next - at : self.next - at + 12]
            vr = head[4:6]
            if len(head) < 8 or (vr in _LONG_VRS and len(head) < 12):
                self.tail = head  # all that is left of ``out``: the header goes on in the next piece
                break
            self.tail = b""
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                self.stopped = True
                break
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<L", head, 8)
                value_at = self.next + 12
            else:
                (length,) = struct.unpack_from("<H", head, 6)
                value_at = self.next + 8
            if length == _UNDEFINED:
                self.stopped = True
                break
            if last is None or value_at + length > sum(last):
                last = (value_at, length)
            self.next = value_at + length
        return last


def _size(n: int) -> str:
    """"128 MiB" for whole MiB, else "1,000 bytes"."""
    return f"{n >> 20:,} MiB" if n and not n % _STEP else f"{n:,} bytes"
