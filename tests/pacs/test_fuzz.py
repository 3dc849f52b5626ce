"""The DICOM fuzzer's mutators hit what they mean to hit, and the ingest survives a seeded corpus of them.

Regression tests hold the mutations (mutator and seed) that found each ingest bug.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import time
import warnings
import zlib

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radaudit.pacs import fuzz
from radaudit.pacs import index as ix
from radaudit.pacs.cache import CacheParams
from radaudit.pacs.ingest import IngestConfig, run_ingest
from radaudit.pacs.pixels import PixelDataError, _codestream_size, _first_fragment, decode_image
from radaudit.pacs.pseudo import load_or_create_key, path_key

TIMEOUT_S = 10.0


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def _read(data: bytes, **kw) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True, **kw)


def _field(data: bytes, e: fuzz.Element, little: bool = True) -> int:
    return int.from_bytes(data[e.length_at : e.length_at + e.length_size], "little" if little else "big")


# ---------------------------------------------------------------------------------------------
# The parse the mutators are guided by.


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm", "JPEG2000.dcm",
                                  "UN_sequence.dcm", "SC_rgb_jpeg.dcm"])
def test_parse_finds_every_element_where_pydicom_reads_it(name):
    data = _file(name)
    layout = fuzz.parse(data)
    endian = "<" if layout.little else ">"
    for e in layout.elements:
        group, elem = struct.unpack_from("<HH" if e.meta else endian + "HH", data, e.start)
        assert group << 16 | elem == e.tag
        assert _field(data, e, e.meta or layout.little) == e.length
    ds = _read(data)
    assert {e.tag for e in layout.elements if e.depth == 0 and not e.meta} == {int(t) for t in ds.keys()}
    rows = layout.find(0x00280010)
    if rows is not None:
        assert int.from_bytes(data[rows.value_at : rows.value_at + 2], "little" if layout.little else "big") == ds.Rows


def test_parse_walks_nested_items_and_fragments():
    layout = fuzz.parse(_file("rtplan.dcm"))
    assert max(e.depth for e in layout.elements) >= 2
    j2k = fuzz.parse(_file("JPEG2000.dcm"))
    pixel = j2k.find(fuzz.PIXEL_DATA)
    fragments = [e for e in j2k.elements if e.tag == fuzz.ITEM and pixel.start < e.start < pixel.end]
    assert pixel.length == fuzz.UNDEFINED and len(fragments) >= 2


def test_parse_refuses_bytes_that_are_not_dicom():
    with pytest.raises(ValueError, match="not a DICOM file"):
        fuzz.parse(b"%PDF-1.4 " + bytes(200))


# ---------------------------------------------------------------------------------------------
# Each mutator on small inputs, with known effects.


def test_bit_flip_flips_exactly_the_bits_it_names():
    data = _file("CT_small.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(1), kinds=["bit_flip"])
    flipped = int(np.unpackbits(np.frombuffer(data, np.uint8) ^ np.frombuffer(out, np.uint8)).sum())
    assert name == f"bit_flip:{flipped} bits" and 1 <= flipped <= 16 and len(out) == len(data)


def test_truncate_cuts_at_the_length_it_names():
    data = _file("CT_small.dcm")
    for seed in range(5):
        out, name = fuzz.mutate(data, np.random.default_rng(seed), kinds=["truncate"])
        assert name == f"truncate:{len(out)} of {len(data)} bytes"
        assert 0 < len(out) < len(data) and data.startswith(out)


def test_wrong_length_changes_one_length_field_only():
    data = _file("CT_small.dcm")
    layout = fuzz.parse(data)
    out, name = fuzz.mutate(data, np.random.default_rng(3), kinds=["wrong_length"])
    changed = [e for e in layout.elements if _field(out, e, e.meta or layout.little) != e.length]
    assert len(changed) == 1
    e = changed[0]
    assert name == (f"wrong_length:({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) length {e.length} -> "
                    f"{_field(out, e, e.meta or layout.little)}")
    diff = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(out, np.uint8))
    assert e.length_at <= diff.min() and diff.max() < e.length_at + e.length_size


def test_undefined_length_lands_on_an_element_that_is_not_a_sequence():
    data = _file("CT_small.dcm")
    layout = fuzz.parse(data)
    out, _ = fuzz.mutate(data, np.random.default_rng(0), kinds=["undefined_length"])
    [e] = [e for e in layout.elements if _field(out, e, e.meta or layout.little) != e.length]
    assert _field(out, e, e.meta or layout.little) == 0xFFFFFFFF and e.vr != "SQ" and e.length_size == 4


def test_huge_length_lands_on_an_ob_ow_or_un_element():
    data = _file("CT_small.dcm")
    layout = fuzz.parse(data)
    out, name = fuzz.mutate(data, np.random.default_rng(0), kinds=["huge_length"])
    [e] = [e for e in layout.elements if _field(out, e, e.meta or layout.little) != e.length]
    assert e.vr in ("OB", "OW", "UN", "OB or OW") and _field(out, e, e.meta or layout.little) >= 0x40000000
    assert name.endswith(f"0x{_field(out, e, e.meta or layout.little):08X}")


@pytest.mark.parametrize("defined", [False, True])
def test_nest_builds_sequences_pydicom_reads_to_the_given_depth(defined):
    content = fuzz._encode(0x00081150, "UI", b"1.2.3", implicit=False, little=True)
    nested = fuzz._nest(0x00081140, 4, content, implicit=False, little=True, defined=defined)
    layout = fuzz.parse(_file("CT_small.dcm"))
    ds = _read(fuzz._insert(_file("CT_small.dcm"), layout, 0x00081140, nested))
    item, depth = ds, 0
    while "ReferencedImageSequence" in item:
        item = item.ReferencedImageSequence[0]
        depth += 1
        assert item.ReferencedSOPClassUID == "1.2.3"
    assert depth == 4


def test_deep_sequence_nests_thousands_of_levels():
    data = _file("CT_small.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(0), kinds=["deep_sequence"])
    depth = int(name.split("depth ")[1].split(",")[0])
    assert 2_000 <= depth <= 12_000
    assert out.count(struct.pack("<HH", 0x0008, 0x1140) + b"SQ") == depth  # CT_small has no such sequence


def test_self_nested_sequence_copies_an_item_into_itself():
    data = _file("rtplan.dcm")
    layout = fuzz.parse(data)
    out, name = fuzz.mutate(data, np.random.default_rng(0), kinds=["self_nested_sequence"])
    copies = int(name.rsplit("x ", 1)[1])
    seq = next(e for e in layout.elements if e.depth == 0 and e.vr == "SQ" and e.length)
    item = next(i for i in layout.elements if i.tag == fuzz.ITEM and seq.start < i.start < seq.end)
    content = data[item.value_at : item.end - 8] if item.length == fuzz.UNDEFINED \
        else data[item.value_at : item.value_at + item.length]
    assert copies >= 1 and out.count(content) == copies


@pytest.mark.parametrize("seed", range(8))
def test_absurd_geometry_writes_the_value_it_names(seed):
    data = _file("CT_small.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(seed), kinds=["absurd_geometry"])
    ds = _read(out, stop_before_pixels=True)
    detail = name.split(":", 1)[1]
    if detail.startswith("Rows=65535 "):
        assert (ds.Rows, ds.Columns, ds["NumberOfFrames"].value) == (65535, 65535, 99999)
    elif detail.startswith("NumberOfFrames="):
        raw = ds.get_item("NumberOfFrames").value
        assert raw.rstrip(b" ") == detail.split("=", 1)[1].strip("'").encode().rstrip(b" ")
    else:
        keyword, value = detail.split("=")
        assert ds[keyword].value == int(value)


def test_absurd_number_writes_the_value_it_names():
    out, name = fuzz.mutate(_file("CT_small.dcm"), np.random.default_rng(11), kinds=["absurd_number"])
    assert name == "absurd_number:InstanceNumber=99999999999999999999"
    assert _read(out).get_item("InstanceNumber").value == b"99999999999999999999"


@pytest.mark.parametrize("seed", range(10))
def test_bad_transfer_syntax_rewrites_the_meta_consistently(seed):
    data = _file("CT_small.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(seed), kinds=["bad_transfer_syntax"])
    layout = fuzz.parse(out)  # the meta still parses: group length and offsets stay right
    group = layout.find(fuzz.GROUP_LENGTH)
    meta_end = max(e.end for e in layout.elements if e.meta)
    assert int.from_bytes(out[group.value_at : group.value_at + 4], "little") == meta_end - group.end
    ts = layout.find(fuzz.TRANSFER_SYNTAX)
    variant = name.split(":")[1].split(" ")[0]
    if variant == "missing":
        assert ts is None
    elif variant == "empty":
        assert ts.length == 0
    elif variant in ("unknown", "contradicting"):
        written = out[ts.value_at : ts.value_at + ts.length].rstrip(b"\0").decode()
        assert written != pydicom.uid.ExplicitVRLittleEndian and name.endswith(f"{written!r}")
    else:
        assert variant == "garbage"


def test_codestream_size_edits_the_jpeg_2000_size_only():
    data = _file("MR_small_jp2klossless.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(24), kinds=["codestream_size"])
    assert name == "codestream_size:JPEG 2000 SIZ 46341 x 46341, one tile"
    assert _codestream_size(_first_fragment(_read(out).PixelData), j2k=True) == ("JPEG 2000", 46341, 46341)
    assert _read(out).Rows == 64 and len(out) == len(data)


def _inflated_size(data: bytes, start: int, cap: int) -> int:
    """Bytes the raw deflate stream at ``data[start:]`` inflates to, counted 1 MiB at a time up to ``cap``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[start:], 0
    while total <= cap and not inflater.eof:
        out = inflater.decompress(pending, 1 << 20)
        pending, total = inflater.unconsumed_tail, total + len(out)
        if not out and not pending:
            break
    return total


# zip_bomb draws its shape: seed 0 one OB value, seed 2 1 MiB fragments of an undefined-length value.
@pytest.mark.parametrize(("seed", "shape"), [(0, "one value"), (2, "257 fragments of 1 MiB, undefined length")])
def test_zip_bomb_is_a_small_deflated_file_that_inflates_past_the_requested_size(seed, shape):
    data = _file("CT_small.dcm")
    requested = 256 << 20
    out, name = fuzz.mutate(data, np.random.default_rng(seed), kinds=["zip_bomb"], zip_bomb_bytes=requested + 1)
    assert name == f"zip_bomb:(0013,1000) OB, 257 MiB of zeros in {shape}"
    assert len(out) < requested // 800
    layout = fuzz.parse(out)
    assert layout.transfer_syntax == fuzz.DEFLATED
    assert requested < _inflated_size(out, layout.dataset_start, cap=requested + (2 << 20)) <= requested + (2 << 20)


@pytest.mark.parametrize("seed", [0, 2])
def test_zip_bomb_keeps_the_dataset_and_adds_a_private_element_of_zeros(seed):
    data = _file("CT_small.dcm")
    out, name = fuzz.mutate(data, np.random.default_rng(seed), kinds=["zip_bomb"], zip_bomb_bytes=3 << 20)
    before, after = _read(data), _read(out)
    assert after.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert after[0x00130010].value == "RADAUDIT ZIP BOMB"
    zeros = after[0x00131000].value
    if "fragments" in name:  # pydicom keeps an undefined-length OB value's items as they are
        item = struct.pack("<HHL", 0xFFFE, 0xE000, 1 << 20) + bytes(1 << 20)
        assert zeros == item * 3
    else:
        assert zeros == bytes(3 << 20)
    del after[0x00130010], after[0x00131000]
    assert after == before
    assert fuzz.zip_bomb(out, fuzz.parse(out), np.random.default_rng(0)) is None  # deflated already


def test_mutate_rejects_unknown_kinds_and_is_deterministic():
    data = _file("CT_small.dcm")
    with pytest.raises(ValueError, match="unknown mutation kinds"):
        fuzz.mutate(data, np.random.default_rng(0), kinds=["nonsense"])
    assert fuzz.mutate(data, np.random.default_rng(7)) == fuzz.mutate(data, np.random.default_rng(7))


def test_with_instance_uid_changes_the_uid_only():
    data = _file("CT_small.dcm")
    out = fuzz.with_instance_uid(data, "2.25.1234")
    before, after = _read(data), _read(out)
    assert after.SOPInstanceUID == "2.25.1234"
    after.SOPInstanceUID = before.SOPInstanceUID
    assert after == before


# ---------------------------------------------------------------------------------------------
# Regressions: each found by the fuzzer, held by its mutator and seed.


def _ingest(export, data, **kw) -> tuple[pd.DataFrame, pd.DataFrame, bytes]:
    result = run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=64), workers=2,
                                     file_timeout_s=TIMEOUT_S, pseudonym_key="k", **kw))
    return result.index, result.errors, load_or_create_key(data, "k")


def test_out_of_range_instance_number_is_missing_not_a_crash(tmp_path):
    # absurd_number (seed 11) made run_ingest raise OverflowError: a 20-digit IS reached the int64 column.
    out, name = fuzz.mutate(_file("CT_small.dcm"), np.random.default_rng(11), kinds=["absurd_number"])
    assert name == "absurd_number:InstanceNumber=99999999999999999999"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "im1.dcm").write_bytes(out)
    index, errors, _ = _ingest(tmp_path / "export", tmp_path / "data")
    assert len(index) == 1 and errors.empty
    assert pd.isna(index["instance_number"].iloc[0]) and index["rows"].iloc[0] == 128


@pytest.mark.parametrize(("name", "kind", "seed", "mutation"), [
    ("SC_rgb_jpeg_gdcm.dcm", "absurd_geometry", 113, "absurd_geometry:BitsAllocated=64"),
    ("rtdose_rle.dcm", "bad_transfer_syntax", 15, "bad_transfer_syntax:contradicting '1.2.840.10008.1.2.4.50'"),
])
def test_jpeg_with_more_than_16_bits_allocated_is_an_error_row_not_a_decoder_abort(tmp_path, name, kind, seed,
                                                                                   mutation):
    # Found by the 10,000-file run: GDCM's JPEG codec threw an uncaught C++ exception (SIGABRT) on a JPEG
    # frame with Bits Allocated 64, or on 32-bit RT dose data declared JPEG Baseline.
    got, outcome, _, out = _decode_mutated(tmp_path, name, seed, kind)
    assert got == mutation
    ds = _read(out, stop_before_pixels=True)
    assert outcome == (f"Bits Allocated is {ds.BitsAllocated} with {ds.file_meta.TransferSyntaxUID.name}: "
                         "JPEG holds at most 16 bits per sample")


def _decode_peak(path: str) -> tuple[str, float]:
    """Decode in this (worker) process: (outcome, RSS growth in MiB over the decode)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decode_image(path)
        outcome = "decoded"
    except PixelDataError as exc:
        outcome = str(exc)
    return outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _decode_mutated(tmp_path, source: str, seed: int, kind: str, **isolated) -> tuple[str, str, float, bytes]:
    """Mutate ``source`` and decode it in a worker, as the ingest does (a regression that aborts the
    decoder kills that worker, not the test session): (mutation, outcome, RSS growth in MiB, bytes)."""
    out, mutation = fuzz.mutate(_file(source), np.random.default_rng(seed), kinds=[kind])
    path = tmp_path / "mutated.dcm"
    path.write_bytes(out)
    [result] = ix.run_isolated(_decode_peak, [str(path)], workers=1, timeout_s=30, action="decoding", actor="decoder",
                               **isolated)
    assert not isinstance(result, ix.JobFailure), result.reason
    return mutation, *result, out


def test_jpeg_ls_rows_beyond_the_codestream_is_an_error_row_not_a_decoder_abort(tmp_path):
    # absurd_geometry (seed 23): GDCM threw an uncaught C++ exception and aborted its worker (SIGABRT).
    name, outcome, _, _ = _decode_mutated(tmp_path, "JPEGLSNearLossless_08.dcm", 23, "absurd_geometry")
    assert name == "absurd_geometry:Rows=65535"
    assert outcome.startswith("the JPEG-LS codestream declares 45 x 10 pixels (rows x columns), the header 65535 x 10")


def test_jpeg_2000_size_beyond_rows_is_refused_before_any_allocation(tmp_path):
    # codestream_size (seed 11, 20000 x 20000 in one tile on a 64 x 64 image): OpenJPEG touched ~0.9 GB,
    # 40000 x 40000 6 GB, before failing.
    name, outcome, grown, _ = _decode_mutated(tmp_path, "MR_small_jp2klossless.dcm", 11, "codestream_size")
    assert name == "codestream_size:JPEG 2000 SIZ 20000 x 20000, one tile"
    assert "JPEG 2000 codestream declares 20000 x 20000 pixels" in outcome and grown < 50


def test_worker_memory_limit_bounds_a_decoder_that_allocates_what_the_codestream_says(tmp_path, monkeypatch):
    # The same file with the codestream check off: the worker's address-space limit stops OpenJPEG.
    from radaudit.pacs import pixels

    monkeypatch.setattr(pixels, "_check_codestream_size", lambda ds, ts: None)  # workers are forked: they see it
    _, outcome, grown, _ = _decode_mutated(tmp_path, "MR_small_jp2klossless.dcm", 11, "codestream_size",
                                           memory_limit_mb=384)
    assert outcome.startswith("cannot decode pixel data") and grown < 384


def _header_in_worker(path, memory_limit_mb: int = 256) -> str:
    """The header reader's outcome for one file, read as the ingest reads it: in a worker under a memory limit."""
    [result] = ix.run_isolated(ix._read_one, [(str(path), b"k", memory_limit_mb)], workers=1, timeout_s=30,
                               action="reading the header", actor="header reader", memory_limit_mb=memory_limit_mb)
    return str(result) if isinstance(result, Exception) else "read"


def test_huge_length_on_a_file_meta_element_is_refused_without_allocating_it(tmp_path):
    # huge_length (seed 133): pydicom reads file meta values whole, and read(n) allocates n bytes first:
    # 4 GB, "unexpected MemoryError while reading the header" under the worker limit.
    out, name = fuzz.mutate(_file("CT_small.dcm"), np.random.default_rng(133), kinds=["huge_length"])
    assert name == "huge_length:(0002,0001) OB -> 0xFFFFFFF0"
    path = tmp_path / "meta.dcm"
    path.write_bytes(out)
    assert _header_in_worker(path) == (f"unreadable DICOM header: EOFError: an element declares 4294967280 bytes "
                                       f"where {len(out) - 156} remain in the file (a damaged length or a truncated file)")


def test_deferred_value_longer_than_the_file_is_refused_without_allocating_it(tmp_path):
    # wrong_length (seed 400): a UN Patient ID declaring 4 GB is deferred, then read for the patient key.
    out, name = fuzz.mutate(_file("explicit_VR-UN.dcm"), np.random.default_rng(400), kinds=["wrong_length"])
    assert name == "wrong_length:(0010,0020) length 14 -> 4294967294"
    path = tmp_path / "un.dcm"
    path.write_bytes(out)
    assert _header_in_worker(path).startswith("unreadable DICOM header: EOFError: an element declares 4294967294 bytes")


def test_a_rust_decoder_panic_is_a_reason_not_an_unpicklable_exception(tmp_path):
    # absurd_geometry (seed 121): pylibjpeg-rle panicked; pyo3's PanicException is a BaseException, escaped the
    # decoder's error handling and reached the ingest as "PicklingError: Can't pickle ... PanicException".
    name, outcome, _, _ = _decode_mutated(tmp_path, "rtdose_rle_1frame.dcm", 121, "absurd_geometry")
    assert name == "absurd_geometry:Columns=1"
    assert outcome.startswith("cannot decode pixel data (RLE Lossless): PanicException: index out of bounds")


def test_unknown_transfer_syntax_and_deep_nesting_have_reasons_that_say_so(tmp_path):
    # bad_transfer_syntax (seed 11) gave "unexpected ValueError while reading the header: UID is not a transfer
    # syntax."; deep_sequence (seed 1) "unexpected RecursionError while reading the header: ...".
    data = _file("CT_small.dcm")
    unknown, name = fuzz.mutate(data, np.random.default_rng(11), kinds=["bad_transfer_syntax"])
    assert name == "bad_transfer_syntax:unknown '1.2.840.10008.1.2.4.2157'"
    deep, name = fuzz.mutate(data, np.random.default_rng(1), kinds=["deep_sequence"])
    assert name == "deep_sequence:depth 6732, undefined lengths"
    (tmp_path / "unknown.dcm").write_bytes(unknown)
    (tmp_path / "deep.dcm").write_bytes(deep)
    assert _header_in_worker(tmp_path / "unknown.dcm") == (
        "unknown transfer syntax '1.2.840.10008.1.2.4.2157': how the pixel data are encoded is unknown")
    assert _header_in_worker(tmp_path / "deep.dcm").startswith(
        "unreadable DICOM header: RecursionError: maximum recursion depth exceeded")


def _allocate(mb: int) -> int:
    return int(np.ones(mb << 20, dtype=np.uint8).sum() >> 20)


def test_run_isolated_memory_limit_turns_a_large_allocation_into_a_reason():
    results = ix.run_isolated(_allocate, [16, 1024], workers=2, timeout_s=30, action="allocating",
                              actor="allocator", memory_limit_mb=256)
    assert results[0] == 16
    assert isinstance(results[1], ix.JobFailure)
    assert results[1].reason == "allocating needs more than the 256 MiB memory limit"
    unlimited = ix.run_isolated(_allocate, [16], workers=1, timeout_s=30, action="allocating", actor="allocator")
    assert unlimited == [16]


def test_ingest_config_checks_the_worker_memory_limit(tmp_path):
    with pytest.raises(ValueError, match="worker_memory_mb must be at least 256"):
        IngestConfig(export_dir=tmp_path, data_dir=tmp_path, worker_memory_mb=10)
    assert IngestConfig(export_dir=tmp_path, data_dir=tmp_path, worker_memory_mb=None).worker_memory_mb is None


# ---------------------------------------------------------------------------------------------
# The short seeded fuzz run.


def test_ingest_survives_a_seeded_corpus_of_every_mutation(tmp_path):
    sources = fuzz.default_sources(synth_n=8, synth_dir=tmp_path)
    n = 15 * len(fuzz.KINDS)
    # Zip bombs past the workers' memory limit, the least allowed (300 KB each on disk): the header reader
    # refuses them.
    bombs = {"zip_bomb_bytes": 300 << 20}
    corpus = fuzz.write_corpus(tmp_path / "export", n, seed=1, sources=sources, **bombs)
    assert set(corpus["kind"]) == set(fuzz.KINDS) and corpus["kind"].value_counts().min() >= 14
    assert fuzz.write_corpus(tmp_path / "again", 12, seed=1, sources=sources, **bombs).equals(corpus.head(12))
    fifth = corpus["path"][5]
    assert (tmp_path / "again" / fifth).read_bytes() == (tmp_path / "export" / fifth).read_bytes()

    t0 = time.perf_counter()
    # An escaping exception fails here.
    index, errors, key = _ingest(tmp_path / "export", tmp_path / "data", worker_memory_mb=256)
    wall = time.perf_counter() - t0
    hashes = {path_key(p, key): p for p in corpus["path"]}
    in_index, in_errors = set(index["path_hash"]), set(errors["path_hash"])
    assert in_index.isdisjoint(in_errors)
    assert in_index | in_errors == set(hashes)
    assert len(errors) == len(in_errors)  # one row per failed file
    hangs = errors[errors["reason"].str.contains("took longer than")]
    assert hangs["reason"].str.contains(f"took longer than {TIMEOUT_S:g} s").all()
    assert wall < 60 + len(hangs) * TIMEOUT_S
    assert len(in_index) > n // 10  # mutations that leave a file readable (absurd numbers, deep sequences)
    assert errors["reason"].str.len().min() > 5
    bomb_reasons = errors.set_index("path_hash")["reason"].reindex(
        [path_key(p, key) for p in corpus.loc[corpus["kind"] == "zip_bomb", "path"]])
    assert bomb_reasons.str.startswith("needs more than the 256 MiB memory limit to read: ").all()
    # Every written cached image belongs to an index row.
    assert (tmp_path / "data" / "cache").exists() and os.listdir(tmp_path / "data" / "cache" / "images")


def test_rle_data_that_happens_to_hold_a_jpeg_2000_marker_still_decodes(tmp_path):
    """Found at 100,000 files (benchmarks/scale.py): a valid RLE image whose data held the bytes of a
    JPEG 2000 SOC + SIZ marker was refused as a damaged JPEG 2000 codestream."""
    from pydicom.uid import RLELossless

    from radaudit.pacs.pixels import read_image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, (32, 32), dtype=np.uint16)
    # Low bytes: SOC + SIZ, then a size (x, y, x0, y0) that parses, no two equal neighbours (a literal run).
    low = [0xFF, 0x4F, 0xFF, 0x51, 0x01, 0x29, 0x02, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 0, 4, 5, 6]
    arr.flat[:len(low)] = [0x0A00 + b for b in low]
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 16, 12, 11, 0
    ds.compress(RLELossless, arr, generate_instance_uid=False)
    assert b"\xff\x4f\xff\x51\x01\x29\x02\x03\x01\x02\x03\x04" in ds.PixelData
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert read_image(tmp_path / "rle.dcm").shape == (32, 32)
