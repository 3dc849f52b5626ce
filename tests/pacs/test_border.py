"""Border removal on the real RG3 radiograph (pydicom-data) and on synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest

from radaudit.pacs.border import find_exposed_field, remove_border


def _read_rg3() -> np.ndarray:
    """RG3_UNCI.dcm: CR tibia/ankle, MONOCHROME1, 1760 x 1760, collimator bands left and right."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_UNCI.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    try:
        from radaudit.pacs import read_image
    except ImportError:
        read_image = None
    if read_image is not None:
        return read_image(path)
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min())
    return 1.0 - v if ds.PhotometricInterpretation == "MONOCHROME1" else v


@pytest.fixture(scope="module")
def rg3() -> np.ndarray:
    return _read_rg3()


def test_rg3_keeps_field_and_drops_collimator_bands(rg3: np.ndarray) -> None:
    # Looked at: shutter bands (white, then a light grey scatter ramp) at columns 0..~445 and
    # ~1250..1760; the shutter edges (step midpoints) lie at column ~450 and at ~1230-1255
    # (the right shutter is slightly tilted). The field spans the full height.
    assert rg3.shape == (1760, 1760)
    top, bottom, left, right = find_exposed_field(rg3)
    assert top <= 10 and bottom >= 1750
    assert 450 <= left <= 520
    assert 1170 <= right <= 1235
    field = rg3[top:bottom, left:right]
    # The outermost kept columns are mostly dark air, not light grey band.
    assert np.median(field[:, :10]) < 0.3 and np.median(field[:, -10:]) < 0.3
    # The dropped strips are the bands: bright on average.
    assert rg3[:, :440].mean() > 0.9 and rg3[:, 1260:].mean() > 0.9


def test_rg3_at_reduced_resolution_gives_the_same_field(rg3: np.ndarray) -> None:
    small = rg3.reshape(440, 4, 440, 4).mean(axis=(1, 3))
    top, bottom, left, right = find_exposed_field(small)
    full = np.array(find_exposed_field(rg3)) / 4
    assert np.abs(np.array([top, bottom, left, right]) - full).max() <= 6


def _anatomy(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-uniform 'field' with noise: blobs on a ramp, values in about [0.1, 0.7]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.15 + 0.25 * xx / w + 0.1 * yy / h
    for _ in range(6):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        img += 0.2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    img += rng.normal(0, 0.03, size=(h, w))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_constant_margins_are_cropped_exactly(value: float) -> None:
    img = np.full((300, 400), value, dtype=np.float32)
    img[20:260, 35:390] = _anatomy(240, 355)
    assert find_exposed_field(img) == (20, 260, 35, 390)
    assert remove_border(img).shape == (240, 355)


def test_bands_with_noise_in_the_field() -> None:
    h, w = 400, 500
    img = _anatomy(h, w, seed=1)
    img[:, :60] = 0.9  # left shutter
    img[:, 430:] = 0.85  # right shutter
    img[:50, :] = 0.88  # top shutter
    top, bottom, left, right = find_exposed_field(img)
    assert 50 <= top <= 56 and bottom == h
    assert 60 <= left <= 66 and 424 <= right <= 430


def test_noisy_light_grey_bands_with_a_ramp_and_a_soft_edge() -> None:
    from scipy.ndimage import gaussian_filter

    h, w = 600, 600
    rng = np.random.default_rng(2)
    img = _anatomy(h, w, seed=2) * 0.5  # darker field, as with much direct exposure
    xx = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    img = np.where(xx < 120, 0.95 - 0.1 * xx / 120, img)  # left band with a scatter ramp
    img = np.where(xx >= 500, 0.8 + 0.1 * (xx - 500) / 100, img)
    img = gaussian_filter(img, 2.0) + rng.normal(0, 0.01, size=(h, w))
    top, bottom, left, right = find_exposed_field(np.clip(img, 0, 1).astype(np.float32))
    assert (top, bottom) == (0, h)
    assert 120 <= left <= 135 and 485 <= right <= 500


def test_tilted_shutter_is_removed_whole() -> None:
    h, w = 500, 500
    img = _anatomy(h, w, seed=3)
    yy, xx = np.mgrid[0:h, 0:w]
    edge = 80 + 0.07 * yy  # about 4 degrees: column 80 at the top, 115 at the bottom
    img[xx < edge] = 0.9
    top, bottom, left, right = find_exposed_field(img)
    assert 115 <= left <= 125
    assert (top, bottom, right) == (0, h, w)


def test_image_without_border_is_not_cropped() -> None:
    for seed in range(5):
        img = _anatomy(256, 320, seed=10 + seed)
        top, bottom, left, right = find_exposed_field(img)
        assert top <= 2 and left <= 2 and bottom >= 254 and right >= 318, (seed, (top, bottom, left, right))


def test_dark_air_beside_the_field_is_kept() -> None:
    # Direct exposure (air) at the edges is dark and noisy: it is field, not a band.
    img = _anatomy(300, 300, seed=4)
    rng = np.random.default_rng(4)
    img[:, :80] = 0.03 + rng.normal(0, 0.01, size=(300, 80))
    assert find_exposed_field(np.clip(img, 0, 1)) == (0, 300, 0, 300)


def test_never_crops_to_nothing() -> None:
    flat = np.zeros((100, 100), dtype=np.float32)
    assert find_exposed_field(flat) == (0, 100, 0, 100)
    tiny_field = np.zeros((100, 100), dtype=np.float32)
    tiny_field[45:55, 45:55] = _anatomy(10, 10)
    assert find_exposed_field(tiny_field) == (0, 100, 0, 100)
    assert find_exposed_field(np.zeros((4, 4), dtype=np.float32)) == (0, 4, 0, 4)


def test_rejects_non_2d_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        find_exposed_field(np.zeros((3, 8, 8), dtype=np.float32))
