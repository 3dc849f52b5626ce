"""Bounded inflation of deflated datasets: the header walk, the cap, and the header reader's refusal."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radaudit.pacs import fuzz
from radaudit.pacs.header import HeaderError, read_header
from radaudit.pacs.inflate import (
    DEFLATED,
    InflationRefused,
    _TopLevelHeaders,
    check_inflation,
    deflated_dataset_start,
)


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _long(tag: int, vr: bytes, length: int, value: bytes = b"") -> bytes:
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, length) + value


def _deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return co.compress(data) + co.flush()


STREAM = (_short(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0") + _short(0x00090010, b"LO", b"VENDOR")
          + _long(0x00091000, b"OB", 40, bytes(40)) + _short(0x00100010, b"PN", b"Doe^Jane")
          + _long(0x7FE00010, b"OW", 1 << 30))
HUGE_AT = len(STREAM)  # the OW value would start where the stream ends


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 11, 12, 13, len(STREAM)])
def test_the_header_walk_finds_the_declared_lengths_however_the_stream_is_cut(piece):
    walk = _TopLevelHeaders()
    found = [walk.feed(STREAM[at : at + piece], at) for at in range(0, len(STREAM), piece)]
    ends = [sum(f) for f in found if f is not None]
    assert ends == sorted(ends) and ends[-1] == HUGE_AT + (1 << 30)
    assert [f for f in found if f is not None][-1] == (HUGE_AT, 1 << 30)


def test_the_header_walk_stops_at_an_undefined_length():
    walk = _TopLevelHeaders()
    stream = _long(0x00091000, b"OB", 0xFFFFFFFF) + _long(0x7FE00010, b"OW", 1 << 30)
    assert walk.feed(stream, 0) is None and walk.stopped


def test_a_deflated_dataset_within_the_cap_passes_and_one_past_it_is_refused():
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()  # 4.6 KB inflating to 262,682 bytes
    start = deflated_dataset_start(io.BytesIO(data), 132)
    assert start is not None and len(zlib.decompress(data[start:], -zlib.MAX_WBITS)) == 262_682
    check_inflation(io.BytesIO(data), start, 262_682)
    # Pixel Data, the last element, declares a value that ends one byte past the cap: refused at its header.
    with pytest.raises(InflationRefused, match=r"^an element of its deflated dataset declares 262,144 bytes: it "
                                               r"would inflate to more than 262,681 bytes$"):
        check_inflation(io.BytesIO(data), start, 262_681)


def test_an_element_declared_past_the_cap_is_refused_at_its_header():
    stream = _deflate(STREAM)
    with pytest.raises(InflationRefused, match=r"^an element of its deflated dataset declares 1,073,741,824 bytes: "
                                               r"it would inflate to more than 1 MiB$"):
        check_inflation(io.BytesIO(stream), 0, 1 << 20)
    check_inflation(io.BytesIO(stream), 0, HUGE_AT + (1 << 30))


def test_what_is_not_deflated_is_left_to_pydicom():
    check_inflation(io.BytesIO(b"not a deflate stream at all" * 10), 0, 16)
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert deflated_dataset_start(io.BytesIO(ct), 132) is None


def test_the_header_reader_refuses_a_zip_bomb_under_a_memory_limit_and_reads_a_real_deflated_file(tmp_path):
    bomb, _ = fuzz.mutate(Path(get_testdata_file("CT_small.dcm")).read_bytes(), np.random.default_rng(2),
                          kinds=["zip_bomb"], zip_bomb_bytes=300 << 20)
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    with pytest.raises(HeaderError) as refused:
        read_header(tmp_path / "bomb.dcm", key=b"k", memory_limit_mb=256)
    assert str(refused.value) == ("needs more than the 256 MiB memory limit to read: its deflated dataset "
                                  "inflates to more than 128 MiB")
    assert refused.value.stage == "header"
    real = get_testdata_file("image_dfl.dcm")
    assert read_header(real, key=b"k", memory_limit_mb=256) == read_header(real, key=b"k")


def test_the_header_reader_finds_pixel_data_in_a_deflated_dataset_with_one_inflation(tmp_path, monkeypatch):
    source = pydicom.dcmread(get_testdata_file("image_dfl.dcm"))
    del source.PixelData
    source.save_as(tmp_path / "no_pixels.dcm", enforce_file_format=True)
    with pytest.raises(HeaderError, match=r"^no Pixel Data element \(not an image\)$"):
        read_header(tmp_path / "no_pixels.dcm", key=b"k")
    inflations = []
    real = zlib.decompress
    monkeypatch.setattr(zlib, "decompress", lambda *args: inflations.append(1) or real(*args))
    row = read_header(get_testdata_file("image_dfl.dcm"), key=b"k", memory_limit_mb=256)
    assert (row["rows"], row["columns"], row["transfer_syntax_uid"], len(inflations)) == (512, 512, DEFLATED, 1)
