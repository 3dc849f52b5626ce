"""Tests of radaudit.pacs.duplicates: fingerprints, shift correlation, candidates, verification and groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from radaudit.pacs.cache import letterbox
from radaudit.pacs.duplicates import (
    DuplicatePairs,
    candidate_pairs,
    duplicate_groups,
    find_duplicates,
    fingerprint,
    gradient_magnitude,
    pixel_digest,
    shift_correlation,
)


def radiograph(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random float [0, 1] image with fine structure (a stand-in for anatomy)."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.random((size, size)), 8)
    fine = ndimage.gaussian_filter(rng.random((size, size)), 1.5)
    img = (coarse - coarse.min()) / np.ptp(coarse) * 0.8 + (fine - fine.min()) / np.ptp(fine) * 0.2
    return img.astype(np.float32)


def cached(img: np.ndarray, crop: tuple[int, int, int, int], size: int = 64) -> tuple[np.ndarray, dict[str, int]]:
    """What the image cache holds for ``img`` cropped to ``crop`` (top, bottom, left, right), and its geometry."""
    top, bottom, left, right = crop
    box = img[top:bottom, left:right]
    out = letterbox(box, size)
    fit = size / max(box.shape)
    return out, {"content_height": max(1, round(box.shape[0] * fit)), "content_width": max(1, round(box.shape[1] * fit)),
                 "rot90": 0, "crop_top": top, "crop_bottom": bottom, "crop_left": left, "crop_right": right,
                 "original_rows": img.shape[0], "original_columns": img.shape[1]}


def test_pixel_digest_is_equal_only_for_identical_pixels() -> None:
    a = (radiograph(0) * 255).astype(np.uint8)
    assert pixel_digest(a) == pixel_digest(a.copy())
    b = a.copy()
    b[5, 5] ^= 1
    assert pixel_digest(a) != pixel_digest(b)
    assert pixel_digest(a) != pixel_digest(a.astype(np.uint16))  # dtype counts


def test_fingerprints_of_differently_cropped_copies_line_up() -> None:
    # Border removal crops a copy differently; put back into the original field they agree.
    img = radiograph(1)
    a, ga = cached(img, (10, 120, 8, 118))
    b, gb = cached(img, (0, 128, 0, 128))
    fa, fb = fingerprint(a, ga), fingerprint(b, gb)
    assert fa.shape == (64, 64) and np.isnan(fa[:3]).all() and not np.isnan(fb).any()
    assert shift_correlation(fa, fb, 0) > 0.99
    # Compared as cached (content boxes scaled differently) they do not.
    assert np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1] < 0.95


def test_flat_images_have_no_fingerprint_and_bad_geometry_is_named() -> None:
    assert np.isnan(fingerprint(np.full((32, 32), 7, np.uint8))).all()
    with pytest.raises(ValueError, match="crop_top"):
        fingerprint(np.zeros((32, 32), np.uint8), {"content_height": 32})
    with pytest.raises(ValueError, match="2-D"):
        fingerprint(np.zeros((3, 32, 32), np.uint8))


def test_shift_correlation_finds_a_shift_within_reach() -> None:
    img = radiograph(2, 64)
    moved = np.roll(img, (2, -1), axis=(0, 1))
    moved[:2], moved[:, -1:] = np.nan, np.nan  # rolled-in edges are unknown
    assert shift_correlation(img, moved, 2) > 0.999
    assert shift_correlation(img, moved, 0) < shift_correlation(img, moved, 2) - 0.02
    other = radiograph(3, 64)
    assert abs(shift_correlation(img, img, 0) - 1.0) < 1e-6
    assert shift_correlation(img, other, 2) < 0.6
    pair = shift_correlation(np.stack([img, img]), np.stack([moved, other]), 2)
    assert pair.shape == (2,) and pair[0] > 0.999 > pair[1]
    tiny = np.full((64, 64), np.nan, np.float32)
    tiny[:4, :4] = img[:4, :4]
    assert shift_correlation(tiny, img, 0) == -1.0  # too little shared field to judge
    with pytest.raises(ValueError, match="Shape"):
        shift_correlation(img, img[:10])


def test_gradient_magnitude_is_unknown_at_the_field_edge() -> None:
    f = radiograph(4, 32)
    f[:, :8] = np.nan
    g = gradient_magnitude(f)
    assert np.isnan(g[:, :9]).all() and not np.isnan(g[1:-1, 10:-1]).any()
    assert gradient_magnitude(np.stack([f, f])).shape == (2, 32, 32)


def _set() -> tuple[np.ndarray, list[str], list[str], list[str], dict[str, int]]:
    """Fingerprints of a small archive with one of each kind of copy and look-alike."""
    rng = np.random.default_rng(0)
    imgs, patients, names = [], [], []

    def add(name: str, img: np.ndarray, patient: str, crop=(0, 128, 0, 128)) -> None:
        imgs.append(cached(np.clip(img, 0, 1).astype(np.float32), crop))
        patients.append(patient)
        names.append(name)

    base = [radiograph(10 + i) for i in range(12)]
    for i, b in enumerate(base):
        add(f"orig{i}", b, f"p{i}")
    add("copy", base[0], "p0")
    add("reencoded", np.round(base[1] * 63) / 63, "p1")  # 6 bits instead of 8
    shifted = np.roll(base[2], (3, 2), axis=(0, 1)) + rng.normal(0, 0.01, base[2].shape)
    add("shifted", shifted, "p2", crop=(3, 128, 2, 128))
    add("other_patient", base[3], "p99")
    add("contralateral", base[4][:, ::-1], "p4")
    add("follow_up", ndimage.rotate(base[5], 7, reshape=False, mode="nearest"), "p5")
    # The same re-exposure under another patient: not a plausible copy of a file.
    add("moved_other_patient", np.roll(base[6], (3, 2), axis=(0, 1)) + rng.normal(0, 0.01, base[6].shape), "p98",
        crop=(3, 128, 2, 128))
    add("blank1", np.full((128, 128), 0.5), "p7")
    add("blank2", np.full((128, 128), 0.5), "p8")
    fps = np.stack([fingerprint(a, g) for a, g in imgs])
    digests = [pixel_digest(a) for a, _ in imgs]
    return fps, digests, patients, names, {n: i for i, n in enumerate(names)}


def test_find_duplicates_groups_copies_and_leaves_look_alikes_alone() -> None:
    fps, digests, patients, names, at = _set()
    pairs = find_duplicates(fps, digests, None, patients)
    found = {frozenset((names[i], names[j])): (s, e) for i, j, s, e in
             zip(pairs.i, pairs.j, pairs.similarity, pairs.exact)}
    assert found[frozenset(("orig0", "copy"))] == (1.0, True)
    assert found[frozenset(("orig3", "other_patient"))] == (1.0, True)  # exact copies cross patients
    assert frozenset(("orig1", "reencoded")) in found and frozenset(("orig2", "shifted")) in found
    assert not found[frozenset(("orig2", "shifted"))][1]
    # Not duplicates: the other side, a follow-up, blank exposures, and a re-exposure under another
    # patient (only a near-perfect copy crosses patients).
    assert len(found) == 4, sorted(tuple(sorted(k)) for k in found)
    loose = find_duplicates(fps, digests, None, patients, grey_threshold=0.5, gradient_threshold=0.5,
                            cross_patient_threshold=0.5)
    assert frozenset((at["orig6"], at["moved_other_patient"])) in {frozenset(p) for p in zip(loose.i, loose.j)}
    with pytest.raises(ValueError, match="grey_threshold"):
        find_duplicates(fps, digests, grey_threshold=1.5)
    with pytest.raises(ValueError, match="one entry per fingerprint"):
        find_duplicates(fps, digests[:-1])


def test_candidates_stay_within_a_bucket() -> None:
    fps, *_ = _set()
    i, j = candidate_pairs(fps, k=3)
    assert (i < j).all() and len(set(zip(i, j))) == i.size
    buckets = ["a"] * 6 + ["b"] * (len(fps) - 6)
    i, j = candidate_pairs(fps, buckets, k=3)
    assert all((a < 6) == (b < 6) for a, b in zip(i, j))
    flat = np.flatnonzero(np.isnan(fps).reshape(len(fps), -1).all(axis=1))
    assert flat.size == 2 and not np.isin(np.concatenate([i, j]), flat).any()


def test_duplicate_groups_name_an_original_and_put_cross_patient_groups_first() -> None:
    pairs = DuplicatePairs(np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([1.0, 0.97, 0.99]),
                           np.array([True, False, False]))
    uids = ["u0", "u1", "u2", "u3", "u4", "u5"]
    groups = duplicate_groups(pairs, uids, ["a", "a", "a", "b", "c", "d"], order_keys=["3", "1", "2", "1", "2", "0"])
    assert list(groups.columns) == ["group", "sop_instance_uid", "duplicate_of", "similarity", "exact",
                                    "cross_patient", "other_patient", "group_size"]
    first = groups[groups["group"] == 1].set_index("sop_instance_uid")
    assert list(first.index) == ["u3", "u4"] and bool(first.loc["u4", "other_patient"])  # across patients: first
    assert first["cross_patient"].all() and first.loc["u4", "duplicate_of"] == "u3"
    second = groups[groups["group"] == 2].set_index("sop_instance_uid")
    assert second.loc["u1", "duplicate_of"] is None  # first seen
    assert second.loc["u0", "duplicate_of"] == "u1" and second.loc["u0", "exact"]
    assert second.loc["u2", "similarity"] == pytest.approx(0.97) and not second.loc["u2", "exact"]
    assert (second["group_size"] == 3).all() and not second["cross_patient"].any()
    assert "u5" not in set(groups["sop_instance_uid"])
    empty = duplicate_groups(DuplicatePairs(*(np.zeros(0, t) for t in (int, int, float, bool))), uids, [None] * 6)
    assert empty.empty and list(empty.columns) == list(groups.columns)
    assert isinstance(empty, pd.DataFrame)


def test_an_empty_archive_and_unknown_patients() -> None:
    empty = find_duplicates(np.zeros((0, 64, 64), np.float32), [], [], [])
    assert empty.i.size == 0 and candidate_pairs(np.zeros((0, 64, 64), np.float32))[0].size == 0
    assert duplicate_groups(empty, [], []).empty
    fps, digests, patients, names, at = _set()
    unknown = [pd.NA] * len(patients)  # no patient key anywhere: every pair is treated as two patients
    pairs = find_duplicates(fps, digests, None, unknown)
    found = {frozenset((names[i], names[j])) for i, j in zip(pairs.i, pairs.j)}
    assert frozenset(("orig0", "copy")) in found and frozenset(("orig2", "shifted")) not in found
    with pytest.raises(ValueError, match="at least the one-patient"):
        find_duplicates(fps, digests, cross_patient_threshold=0.5)


def test_searching_only_the_new_images_finds_every_pair_a_full_search_finds_with_a_new_image() -> None:
    from radaudit.pacs.duplicates import search_candidates

    rng = np.random.default_rng(5)
    z = rng.standard_normal((120, 16)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    buckets = rng.integers(0, 3, 120).tolist()
    live = np.ones(120, dtype=bool)
    live[7] = False  # a flat image: never a candidate
    full_i, full_j, full_top = search_candidates(z, buckets, live, k=5)
    new = np.zeros(120, dtype=bool)
    new[rng.choice(120, 15, replace=False)] = True
    # The last run saw only the old images: their nearest among themselves.
    old_rows = np.flatnonzero(~new)
    _, _, old_top = search_candidates(z[old_rows], [buckets[r] for r in old_rows], live[old_rows], k=5)
    stored = np.full((120, 5), -np.inf, dtype=np.float32)
    stored[old_rows] = old_top
    inc_i, inc_j, inc_top = search_candidates(z, buckets, live, new, stored, k=5)

    with_new = {(a, b) for a, b in zip(full_i.tolist(), full_j.tolist()) if new[a] or new[b]}
    assert with_new and {(a, b) for a, b in zip(inc_i.tolist(), inc_j.tolist())} == with_new
    np.testing.assert_allclose(inc_top[live], full_top[live], rtol=0, atol=1e-6)
    assert 7 not in set(inc_i.tolist()) | set(inc_j.tolist())
    assert all(buckets[a] == buckets[b] for a, b in with_new)
