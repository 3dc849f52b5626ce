"""Tests of radaudit.models.ood: each piece of out-of-domain evidence on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radaudit.models.ood import (BLANK_FLATNESS, PIXEL_FEATURES, combine_evidence, flatness, header_evidence,
                                mahalanobis_evidence, pixel_evidence, pixel_features)


def test_header_evidence_names_modality_sop_class_and_colour() -> None:
    meta = pd.DataFrame({
        "modality": ["DX", "CR", "CT", "OT", None, "dx"],
        "sop_class_uid": ["1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.2",
                          "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"],
        "photometric_interpretation": ["MONOCHROME2", "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL_422",
                                       "MONOCHROME2"],
    })
    r = header_evidence(meta)
    assert r[0] == "" and r[1] == "" and r[5] == ""  # lower-case dx is still DX
    assert r[2] == "header: modality CT, SOP class 1.2.840.10008.5.1.4.1.1.2 (not CR/DX)"
    assert "modality OT" in r[3] and "secondary capture" in r[3] and "colour image (RGB)" in r[3]
    assert r[4] == "header: colour image (YBR_FULL_422)"  # an absent modality proves nothing
    assert header_evidence(pd.DataFrame({"x": [1, 2]})) == ["", ""]


def test_header_evidence_sees_through_a_relabelled_header() -> None:
    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    meta = pd.DataFrame({
        "modality": ["DX"] * 5, "sop_class_uid": [dx] * 5,
        "other_modality_attributes": [None, "SliceThickness,EchoTime", None, "ImageType=EMISSION", ""],
        "number_of_frames": [1, None, 10, None, 1],
    })
    assert header_evidence(meta) == [
        "", "header: attributes of another modality (SliceThickness, EchoTime)", "header: 10 frames",
        "header: attributes of another modality (ImageType=EMISSION)", "",
    ]


def test_pixel_features_known_values() -> None:
    blank = np.full((40, 40), 128, np.uint8)
    f = pixel_features(blank)
    assert f == {"peak_share": 1.0, "edge_share": 0.0, "flatness": pytest.approx(0.0, abs=1e-9)}
    checker = ((np.indices((40, 40)).sum(0) % 2) * 255).astype(np.uint8)
    f = pixel_features(checker)
    # Pixel-level alternation: sharp everywhere, two levels.
    assert f["peak_share"] == 0.5
    assert f["edge_share"] == 1 - 1 / 1600  # every pixel but the corner steps from its left or upper one
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))  # every level once per row: smooth, many levels
    f = pixel_features(ramp)
    assert f["edge_share"] == 0.0 and f["peak_share"] == pytest.approx(4 / 256)
    # The letterbox is ignored: a ramp centred in black reads like the ramp alone.
    boxed = np.zeros((256, 256), np.uint8)
    boxed[124:132] = ramp
    assert pixel_features(boxed, content=(8, 256)) == pixel_features(ramp)
    with pytest.raises(ValueError, match="uint8"):
        pixel_features(ramp.astype(np.float32))


def _plate(rng: np.random.Generator, side: int = 64, noise: float = 0.02) -> np.ndarray:
    """An exposure without anatomy: a heel-effect ramp through a gamma tone curve, plus noise."""
    t = np.linspace(0.0, 1.0, side)[:, None] * np.ones((1, side))
    return (0.3 + 0.4 * t ** 2.2 + rng.normal(0, noise, (side, side))).astype(np.float64)


def test_flatness_tells_a_plate_from_anatomy() -> None:
    rng = np.random.default_rng(0)
    plate = _plate(rng)
    # Any ramp through any tone curve is nothing; so is pure noise, and a stretched copy of either.
    assert flatness(plate) < BLANK_FLATNESS
    assert flatness(0.5 + rng.normal(0, 0.05, (64, 64))) < BLANK_FLATNESS
    assert flatness(10 * plate - 3) == pytest.approx(flatness(plate))
    # A lead letter and a date in the corners are left out (the worst-fitting 15% of the blocks).
    marked = plate.copy()
    marked[3:9, 3:8] = 1.0
    marked[56:61, 40:62] = 1.0
    assert flatness(marked) < BLANK_FLATNESS
    # Anatomy-like structure (bright rods, as bones, at block scale), even under the same noise and ramp.
    bones = plate.copy()
    for c in (12, 30, 48):
        bones[:, c - 3:c + 3] += 0.2
    bones[20:26] += 0.2
    assert flatness(bones) > 1.0
    # Too small an image says nothing.
    assert np.isnan(flatness(np.zeros((4, 40))))


def test_flatness_is_blank_evidence_with_its_reason() -> None:
    n = 6
    flat = np.array([2.0, 0.6, 0.31, 0.29, 0.1, np.nan])
    ev = combine_evidence([""] * n, np.zeros(n), np.zeros(n, np.int64), np.zeros(n), flat=flat)
    assert ev.flagged.tolist() == [False, False, False, True, True, False]
    assert ev.score[4] == pytest.approx(1 - 2 ** (-BLANK_FLATNESS / 0.1))
    assert "blank or nearly blank exposure" in ev.reason[3] and "flatness 0.29" in ev.reason[3]
    assert ev.reason[0] == ev.reason[5] == ""
    with pytest.raises(ValueError, match="one entry per image"):
        combine_evidence([""] * n, np.zeros(n), np.zeros(n, np.int64), np.zeros(n), flat=flat[:3])


def test_pixel_evidence_is_one_sided_robust_z() -> None:
    n = 101
    feats = pd.DataFrame({"peak_share": np.linspace(0.04, 0.06, n), "edge_share": np.linspace(0.01, 0.03, n)})
    feats.loc[0, "edge_share"] = 0.0    # fewer edges than all: not suspicious
    feats.loc[1, "edge_share"] = 0.5    # text-like strokes everywhere
    feats.loc[2, "peak_share"] = 0.9    # one level dominates
    z, which = pixel_evidence(feats, np.arange(n))
    names = list(PIXEL_FEATURES)
    ref = feats["edge_share"].to_numpy()
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med))
    assert z[1] == pytest.approx((0.5 - med) / max(mad, 0.01)) and names[which[1]] == "edge_share"
    assert z[0] == 0.0
    assert names[which[2]] == "peak_share" and z[2] > 50
    with pytest.raises(ValueError, match="edge_share"):
        pixel_evidence(feats.drop(columns="edge_share"), np.arange(n))


def test_mahalanobis_finds_the_point_off_every_class() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    centres = np.eye(8)[:3] * 6
    x = centres[y] + rng.standard_normal((300, 8))
    x = np.vstack([x, np.full((1, 8), 3.0)])  # between the classes, on none
    y = np.append(y, -1)
    d = mahalanobis_evidence(x, y, np.arange(300), dim=8)
    assert d.shape == (301,)
    assert d[-1] > np.quantile(d[:300], 0.999)
    # Reference rows are scored out of fold: their distances are not the in-sample ones.
    assert np.median(d[:300]) > 0
    with pytest.raises(ValueError, match="labelled"):
        mahalanobis_evidence(x, y, np.array([300, 1, 2, 3]))


def test_combine_evidence_score_and_reason() -> None:
    header = ["", "header: modality CT", "", ""]
    pz = np.array([0.0, 0.0, 12.0, 3.0])
    which = np.array([0, 0, 1, 0])  # 1: edge_share
    ez = np.array([6.0, 0.0, 0.0, 7.0])
    ev = combine_evidence(header, pz, which, ez, z_threshold=6.0, pixel_threshold=8.0)
    assert ev.score[0] == pytest.approx(0.5) and not ev.flagged[0]  # exactly at the threshold: not above
    assert ev.score[1] >= 0.99 and ev.reason[1] == "header: modality CT"
    # Pixel z 12 against its threshold 8: ratio 1.5, score 1 - 2 ** -1.5.
    assert ev.score[2] == pytest.approx(1 - 2 ** -1.5) and "text-like" in ev.reason[2] and "z 12.0" in ev.reason[2]
    assert ev.flagged[3] and ev.reason[3].startswith("embedding:")
    assert (ev.score < 1).all()
    with pytest.raises(ValueError, match="z_threshold"):
        combine_evidence(header, pz, which, ez, z_threshold=0)
