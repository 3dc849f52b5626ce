"""radaudit.pacs.pixels on real files: pydicom's test files and pydicom-data's CR radiographs.

Equivalence tolerances: lossless re-encodings (big endian, RLE, JPEG-LS, J2K lossless, deflate,
MONOCHROME1 vs inverted MONOCHROME2, sign and rescale variants) hold the same modality values,
so they must agree to float32 rounding (1e-6). Lossy J2K and 8-bit requantization differ by
their quantization error: a few 1/255 at most, much less on average.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from radaudit.pacs import pixels
from radaudit.pacs.pixels import (
    DecodedImage,
    PixelDataError,
    check_pixel_plausibility,
    choose_reduce,
    decode_image,
    j2k_decomposition_levels,
    read_image,
)

EXACT = 1e-6
needs_openjp2 = pytest.mark.skipif(not pixels.j2k_reduce_available(), reason="no libopenjp2 found")


def data(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.fixture(scope="module")
def rg1() -> Dataset:
    """CR radiograph, 1955 x 1841, 15 bits stored, MONOCHROME1, window 15000/30000."""
    return pydicom.dcmread(data("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def rg3() -> Dataset:
    """CR radiograph, 1760 x 1760, 10 bits stored, MONOCHROME1, window 550/1024."""
    return pydicom.dcmread(data("RG3_UNCR.dcm"))


def variant(ds: Dataset, path: Path, arr: np.ndarray | None = None, *, photometric: str | None = None,
            bits_stored: int | None = None, **tags: object) -> Path:
    """Save a copy of ``ds`` with new pixels and tags; a tag set to None is deleted."""
    out = copy.deepcopy(ds)  # Dataset.copy() shares the elements with the module-scoped fixture
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in out:
            del out[keyword]
    if arr is not None:
        out.set_pixel_data(arr, photometric or str(ds.PhotometricInterpretation), bits_stored or int(ds.BitsStored))
    for keyword, value in tags.items():
        if value is None:
            if keyword in out:
                delattr(out, keyword)
        elif keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):  # VR US or SS: say which
            out.add_new(keyword, "SS" if out.PixelRepresentation else "US", value)
        else:
            setattr(out, keyword, value)
    out.save_as(path)
    return path


def fallback_reference(values: np.ndarray) -> np.ndarray:
    """Hand-written percentile window: 0.5 % -> 0, 99.5 % -> 1."""
    lo, hi = np.percentile(values, (0.5, 99.5))
    return np.clip((values - lo) / (hi - lo), 0, 1)


def resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img, mode="F").resize((shape[1], shape[0]), Image.Resampling.BOX))


# ---------------------------------------------------------------------------------------------
# Output contract and references.


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "US1_J2KR.dcm", "OT-PAL-8-face.dcm",
     "mlut_18.dcm", "vlut_04.dcm", "JPEG2000.dcm", "693_J2KR.dcm", "J2K_pixelrep_mismatch.dcm",
     "JPEG-LL.dcm", "GDCMJ2K_TextGBR.dcm", "liver.dcm"],
)
def test_output_contract(name: str) -> None:
    img = read_image(data(name))
    assert img.dtype == np.float32 and img.ndim == 2
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    assert img.max() > img.min()


def test_decoded_image_facts() -> None:
    d = decode_image(data("emri_small.dcm"))
    assert isinstance(d, DecodedImage)
    assert (d.frames, d.frame_index, d.reduce, d.original_shape) == (10, 0, 0, (64, 64))
    assert (d.was_color, d.photometric, d.window_source) == (False, "MONOCHROME2", "fallback")
    with pytest.raises(AttributeError):
        d.reduce = 1  # type: ignore[misc]


def test_fallback_matches_hand_written_reference_on_first_frame() -> None:
    stored = pydicom.dcmread(data("emri_small.dcm")).pixel_array[0].astype(np.float64)
    np.testing.assert_allclose(read_image(data("emri_small.dcm")), fallback_reference(stored), atol=EXACT)


def test_modality_lut_sequence_before_fallback() -> None:
    ds = pydicom.dcmread(data("mlut_18.dcm"))
    expected = fallback_reference(apply_modality_lut(ds.pixel_array, ds).astype(np.float64))
    np.testing.assert_allclose(read_image(data("mlut_18.dcm")), expected, atol=EXACT)


def test_voi_lut_sequence() -> None:
    ds = pydicom.dcmread(data("vlut_04.dcm"))
    d = decode_image(data("vlut_04.dcm"))
    assert d.window_source == "voi_lut"
    np.testing.assert_allclose(d.pixels, apply_voi_lut(ds.pixel_array, ds) / 65535.0, atol=EXACT)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_the_standard(function: str, tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    c, w = 40.0, 400.0
    path = variant(ds, tmp_path / "w.dcm", WindowCenter=c, WindowWidth=w, VOILUTFunction=function)
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if function == "LINEAR":  # PS3.3 C.11.2.1.2.1
        expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    elif function == "LINEAR_EXACT":
        expected = np.clip((x - c) / w + 0.5, 0, 1)
    else:
        expected = 1 / (1 + np.exp(-4 * (x - c) / w))
    d = decode_image(path)
    assert d.window_source == "window"
    np.testing.assert_allclose(d.pixels, expected, atol=1e-5)


def test_zero_window_width_falls_back(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("MR_small.dcm"))
    assert decode_image(variant(ds, tmp_path / "w0.dcm", WindowWidth=0)).window_source == "fallback"


# ---------------------------------------------------------------------------------------------
# The same image, stored another way.


@pytest.mark.parametrize(
    ("reference", "other"),
    [
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("MR_small.dcm", "MR_small_implicit.dcm"),
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("emri_small.dcm", "emri_small_big_endian.dcm"),
        ("emri_small.dcm", "emri_small_RLE.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
        ("SC_rgb.dcm", "SC_rgb_expb.dcm"),
        ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
        ("US1_UNCR.dcm", "US1_J2KR.dcm"),
        ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
        ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
    ],
)
def test_lossless_encodings_give_the_same_image(reference: str, other: str) -> None:
    np.testing.assert_allclose(read_image(data(other)), read_image(data(reference)), atol=EXACT)


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_lossy_j2k_is_close(name: str) -> None:
    diff = np.abs(read_image(data(f"{name}_J2KI.dcm")) - read_image(data(f"{name}_UNCR.dcm")))
    assert diff.mean() < 1 / 255 and diff.max() < 8 / 255


def test_colour_becomes_luminance() -> None:
    rgb = decode_image(data("SC_rgb.dcm"))
    assert rgb.was_color and rgb.pixels.ndim == 2
    ybr = decode_image(data("SC_ybr_full_uncompressed.dcm"))
    assert ybr.was_color and ybr.photometric == "YBR_FULL"
    assert np.abs(ybr.pixels - rgb.pixels).max() < 3 / 255  # YBR <-> RGB rounding in 8 bits


def test_deflated_equals_uncompressed(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("image_dfl.dcm"))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "plain.dcm")
    np.testing.assert_allclose(read_image(data("image_dfl.dcm")), read_image(tmp_path / "plain.dcm"), atol=EXACT)


@pytest.mark.parametrize("window", [True, False])
def test_monochrome1_equals_inverted_monochrome2(rg3: Dataset, tmp_path: Path, window: bool) -> None:
    top = 2 ** int(rg3.BitsStored) - 1
    inverted = (top - rg3.pixel_array.astype(np.int32)).astype(np.uint16)
    tags: dict[str, object] = {"WindowCenter": top + 1 - float(rg3.WindowCenter)} if window else {
        "WindowCenter": None, "WindowWidth": None}
    mono2 = variant(rg3, tmp_path / "m2.dcm", inverted, photometric="MONOCHROME2", **tags)
    mono1 = data("RG3_UNCR.dcm") if window else variant(rg3, tmp_path / "m1.dcm", WindowCenter=None,
                                                           WindowWidth=None)
    a, b = decode_image(mono1), decode_image(mono2)
    assert a.window_source == b.window_source == ("window" if window else "fallback")
    np.testing.assert_allclose(b.pixels, a.pixels, atol=EXACT)


def test_signed_pixels_with_intercept(rg3: Dataset, tmp_path: Path) -> None:
    signed = (rg3.pixel_array.astype(np.int32) - 512).astype(np.int16)
    path = variant(rg3, tmp_path / "s.dcm", signed, RescaleIntercept=512, RescaleSlope=1, RescaleType="US")
    assert pydicom.dcmread(path).PixelRepresentation == 1
    np.testing.assert_allclose(read_image(path), read_image(data("RG3_UNCR.dcm")), atol=EXACT)


def test_rescale_slope(rg3: Dataset, tmp_path: Path) -> None:
    doubled = (rg3.pixel_array.astype(np.uint16) * 2).astype(np.uint16)
    path = variant(rg3, tmp_path / "slope.dcm", doubled, bits_stored=11, RescaleSlope=0.5, RescaleIntercept=0,
                   RescaleType="US")
    np.testing.assert_allclose(read_image(path), read_image(data("RG3_UNCR.dcm")), atol=EXACT)


def test_8_bits_match_15_bits(rg1: Dataset, tmp_path: Path) -> None:
    stored = rg1.pixel_array.astype(np.float64)
    lo, hi = stored.min(), stored.max()
    eight = np.rint((stored - lo) * 255 / (hi - lo)).astype(np.uint8)
    # Rescaled back to the 15-bit values: the tag window applies unchanged.
    windowed = variant(rg1, tmp_path / "8w.dcm", eight, bits_stored=8, RescaleSlope=(hi - lo) / 255,
                       RescaleIntercept=lo, RescaleType="US")
    diff = np.abs(read_image(windowed) - read_image(data("RG1_UNCR.dcm")))
    assert diff.max() <= 1 / 255
    # No window at all: both fall back to their own percentiles.
    plain15 = variant(rg1, tmp_path / "15.dcm", WindowCenter=None, WindowWidth=None)
    plain8 = variant(rg1, tmp_path / "8.dcm", eight, bits_stored=8, WindowCenter=None, WindowWidth=None)
    a, b = decode_image(plain15), decode_image(plain8)
    assert a.window_source == b.window_source == "fallback"
    diff = np.abs(a.pixels - b.pixels)
    assert diff.mean() < 1 / 255 and diff.max() < 3 / 255


def test_padding_is_black_and_excluded_from_the_fallback(rg1: Dataset, tmp_path: Path) -> None:
    stored = rg1.pixel_array.copy()
    rng = np.random.default_rng(0)
    stored[:, :400] = rng.integers(0, 101, size=(stored.shape[0], 400))  # below the data (min 874)
    padded = variant(rg1, tmp_path / "pad.dcm", stored, PixelPaddingValue=0, PixelPaddingRangeLimit=100,
                     WindowCenter=None, WindowWidth=None)
    interior = variant(rg1, tmp_path / "interior.dcm", np.ascontiguousarray(stored[:, 400:]),
                       WindowCenter=None, WindowWidth=None)
    img = read_image(padded)
    assert (img[:, :400] == 0).all()  # MONOCHROME1: padding stays black, it is not inverted
    np.testing.assert_allclose(img[:, 400:], read_image(interior), atol=EXACT)


def test_single_padding_value_with_signed_pixels() -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    assert ds.PixelPaddingValue == -2000 and ds.PixelRepresentation == 1
    img = read_image(data("CT_small.dcm"))
    np.testing.assert_array_equal(img[ds.pixel_array == -2000], 0)


# ---------------------------------------------------------------------------------------------
# Reduced-resolution JPEG 2000.


def test_choose_reduce() -> None:
    assert choose_reduce(1955, 1841, 256, 5) == 2
    assert choose_reduce(1955, 1841, 256, 1) == 1
    assert choose_reduce(1955, 1841, 2000, 5) == 0
    assert choose_reduce(4096, 4096, 16, 5) == 5


def test_decomposition_levels_from_the_codestream() -> None:
    ds = pydicom.dcmread(data("RG1_J2KR.dcm"))
    assert j2k_decomposition_levels(get_frame(ds.PixelData, 0, number_of_frames=1)) == 5
    assert j2k_decomposition_levels(b"not a codestream") is None


@needs_openjp2
def test_reduced_decode_matches_full_decode() -> None:
    full = read_image(data("RG1_J2KR.dcm"))
    d = decode_image(data("RG1_J2KR.dcm"), min_side=256)
    assert d.reduce == 2 and d.original_shape == (1955, 1841)
    assert d.pixels.shape == (489, 461)  # OpenJPEG's ceil(size / 4)
    assert d.pixels.dtype == np.float32 and 0 <= d.pixels.min() and d.pixels.max() <= 1
    diff = np.abs(d.pixels - resize(full, d.pixels.shape))
    assert diff.mean() < 0.01 and np.percentile(diff, 99) < 0.06  # only sharp edges differ more
    threaded = decode_image(data("RG1_J2KR.dcm"), min_side=256, threads=2)
    np.testing.assert_array_equal(threaded.pixels, d.pixels)


@needs_openjp2
@pytest.mark.parametrize("name", ["693_J2KR.dcm", "US1_J2KR.dcm", "J2K_pixelrep_mismatch.dcm",
                                  "JPEG2000.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_jp2klossless.dcm"])
def test_openjpeg_binding_equals_pydicom_at_full_resolution(name: str) -> None:
    # threads=2 takes the ctypes path without reducing: it must equal pydicom's decode exactly.
    np.testing.assert_array_equal(decode_image(data(name), threads=2).pixels, read_image(data(name)))


@needs_openjp2
def test_lossy_and_colour_j2k_reduce() -> None:
    d = decode_image(data("RG3_J2KI.dcm"), min_side=200)
    assert d.reduce == 3 and d.pixels.shape == (220, 220)
    c = decode_image(data("US1_J2KR.dcm"), min_side=200)
    assert c.was_color and c.reduce == 1 and c.pixels.shape == (240, 320)


def test_min_side_on_other_syntaxes_decodes_in_full() -> None:
    d = decode_image(data("CT_small.dcm"), min_side=16)
    assert d.reduce == 0 and d.pixels.shape == (128, 128)


def test_full_decode_when_openjpeg_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pixels, "_openjp2", lambda: None)
    d = decode_image(data("693_J2KR.dcm"), min_side=128)
    assert d.reduce == 0 and d.pixels.shape == (512, 512)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_side"):
        decode_image(data("CT_small.dcm"), min_side=0)
    with pytest.raises(ValueError, match="threads"):
        decode_image(data("CT_small.dcm"), threads=0)


def test_dataset_argument_avoids_a_second_read() -> None:
    ds = pydicom.dcmread(data("MR_small.dcm"))
    np.testing.assert_array_equal(decode_image(data("MR_small.dcm"), ds=ds).pixels, read_image(data("MR_small.dcm")))


# ---------------------------------------------------------------------------------------------
# Damaged and foreign files.


def test_truncated_uncompressed(tmp_path: Path) -> None:
    raw = data("RG3_UNCR.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(PixelDataError, match=r"truncated pixel data: \d+ of 6195200 bytes"):
        read_image(path)
    path.write_bytes(raw[: len(raw) // 2])
    header = pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(PixelDataError, match="truncated pixel data: the file has"):
        check_pixel_plausibility(header, path.stat().st_size)


def test_truncated_j2k(tmp_path: Path) -> None:
    raw = data("RG3_J2KR.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PixelDataError, match="truncated"):
        decode_image(path, min_side=256)


def test_corrupt_j2k_codestream(tmp_path: Path) -> None:
    raw = bytearray(data("MR_small_jp2klossless.dcm").read_bytes())
    start = raw.index(b"\xff\x4f\xff\x51")
    raw[start + 2 : start + 40] = bytes(range(200, 238))
    path = tmp_path / "bad.dcm"
    path.write_bytes(bytes(raw))
    for kwargs in ({}, {"min_side": 16}, {"threads": 2}):
        with pytest.raises(PixelDataError, match="cannot decode pixel data"):
            decode_image(path, **kwargs)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 300, "not a DICOM file")],
)
def test_foreign_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "image.dcm"
    path.write_bytes(content)
    with pytest.raises(PixelDataError, match=reason):
        read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PixelDataError, match="cannot read file"):
        read_image(tmp_path / "nope.dcm")


def test_no_pixel_data() -> None:
    with pytest.raises(PixelDataError, match="no Pixel Data element"):
        read_image(data("rtplan.dcm"))


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"Rows": 60000, "Columns": 60000, "NumberOfFrames": 100}, r"declared pixel data size .* GB .* exceeds"),
        ({"Rows": 0}, "Rows is 0"),
        ({"Columns": None}, "no Columns"),
        ({"BitsAllocated": 12}, "Bits Allocated is 12"),
        ({"BitsStored": 17}, r"Bits Stored \(17\) exceeds"),
        ({"NumberOfFrames": "ab"}, "Number of Frames is not a number"),
        ({"SamplesPerPixel": 2}, "Samples per Pixel is 2"),
    ],
)
def test_implausible_headers(tmp_path: Path, tags: dict[str, object], reason: str) -> None:
    ds = pydicom.dcmread(data("MR_small.dcm"))
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        elif isinstance(value, str):
            setattr(ds, keyword, 99)  # pydicom refuses to write a bad IS: patch the bytes below
        else:
            setattr(ds, keyword, value)
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    if "NumberOfFrames" in tags and isinstance(tags["NumberOfFrames"], str):
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"\x28\x00\x08\x00IS\x02\x0099", b"\x28\x00\x08\x00IS\x02\x00ab"))
    with pytest.raises(PixelDataError, match=reason):
        read_image(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(PixelDataError, match=reason):
        check_pixel_plausibility(header, path.stat().st_size)


def test_plausible_header_passes() -> None:
    path = data("RG1_UNCR.dcm")
    check_pixel_plausibility(pydicom.dcmread(path, stop_before_pixels=True), path.stat().st_size)
    with pytest.raises(PixelDataError, match="exceeds the 1.0 MB limit"):
        check_pixel_plausibility(pydicom.dcmread(path, stop_before_pixels=True), path.stat().st_size,
                                 max_bytes=1 << 20)


def test_missing_decoder_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10"]

    monkeypatch.setattr(pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(PixelDataError, match=r"1\.2\.840\.10008\.1\.2\.4\.80 \(JPEG-LS Lossless.*\) cannot "
                                             "be decoded: install python-gdcm"):
        read_image(data("MR_small_jpeg_ls_lossless.dcm"))


def test_undecodable_syntax_variant() -> None:
    with pytest.raises(PixelDataError, match="cannot decode pixel data"):
        read_image(data("JPEG-lossy.dcm"))  # 12-bit JPEG Extended: no BSD plugin decodes it


def test_raw_dataset_without_preamble(tmp_path: Path) -> None:
    raw = data("MR_small_implicit.dcm").read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) value: file meta length
    path = tmp_path / "raw"
    path.write_bytes(raw[144 + group_length :])
    np.testing.assert_allclose(read_image(path), read_image(data("MR_small.dcm")), atol=EXACT)
