"""Orientation correction from Patient Orientation, on a non-symmetric test image."""

from __future__ import annotations

import numpy as np
import pytest

from radaudit.pacs.orientation import correct_orientation, rotation_from_orientation


def _upright() -> np.ndarray:
    """A 'patient' stored as ["L", "F"]: head at the top, its left side on the viewer's right.

    Non-symmetric: a head marker at the top, and a marker on the patient's left only, so every
    rotation and mirror of it is distinct.
    """
    img = np.zeros((6, 4), dtype=np.int32)
    img[0, 1:3] = 5  # head
    img[2:4, 3] = 7  # patient's left (viewer's right)
    img[5, 0] = 9  # right foot
    return img


# Storage as the modality would write it, and the value it would put in (0020,0020).
STORED = {
    ("L", "F"): lambda up: up,
    ("H", "L"): lambda up: np.rot90(up, -1),  # 90 degrees clockwise: head on the right
    ("R", "H"): lambda up: np.rot90(up, 2),  # 180 degrees
    ("F", "R"): lambda up: np.rot90(up, 1),  # 270 degrees
}


def test_rot90_convention_matches_the_stored_values() -> None:
    up = _upright()
    # ["H", "L"]: increasing column index points to the head, increasing row index to the left.
    stored = STORED[("H", "L")](up)
    assert stored[:, -1].tolist().count(5) == 2  # the head is in the last column
    assert (stored[-1] == 7).sum() == 2  # the patient's left is at the bottom row


@pytest.mark.parametrize("orientation", list(STORED))
def test_rotated_storage_ends_up_like_upright(orientation: tuple[str, str]) -> None:
    up = _upright()
    stored = STORED[orientation](up)
    np.testing.assert_array_equal(correct_orientation(stored, list(orientation)), up)


@pytest.mark.parametrize(("value", "expected"), [
    (["L", "F"], (0, False)),
    (["H", "L"], (1, False)),
    (["R", "H"], (2, False)),
    (["F", "R"], (3, False)),
    (["A", "F"], (0, False)),  # lateral, already upright
    (["P", "H"], (2, False)),  # lateral, upside down
    ("H\\L", (1, False)),  # one backslash-separated string, as in a raw header
    (("LF", "FR"), (0, False)),  # combined letters: the first one rules
    (["h", "l"], (1, False)),
])
def test_rotation_from_orientation(value: object, expected: tuple[int, bool]) -> None:
    assert rotation_from_orientation(value) == expected


@pytest.mark.parametrize("value", [None, "", [], ["L"], ["A", "L"], ["L", "R"], ["X", "F"], ["L", "F", "A"]])
def test_unknown_orientation_is_none_and_image_left_as_is(value: object) -> None:
    assert rotation_from_orientation(value) is None
    img = _upright()
    assert correct_orientation(img, value) is img


def test_mirrored_frontal_views_are_not_flipped_by_default() -> None:
    up = _upright()
    mirrored = up[:, ::-1]  # ["R", "F"]
    assert rotation_from_orientation(["R", "F"]) == (0, False)
    np.testing.assert_array_equal(correct_orientation(mirrored, ["R", "F"]), mirrored)
    # Transposed storage is the same mirror: it is rotated upright, and stays mirrored.
    transposed = up.T  # ["F", "L"]
    np.testing.assert_array_equal(correct_orientation(transposed, ["F", "L"]), mirrored)


def test_allow_flip_restores_the_display_convention() -> None:
    up = _upright()
    assert rotation_from_orientation(["R", "F"], allow_flip=True) == (0, True)
    np.testing.assert_array_equal(correct_orientation(up[:, ::-1], ["R", "F"], allow_flip=True), up)
    np.testing.assert_array_equal(correct_orientation(up.T, ["F", "L"], allow_flip=True), up)
    # Lateral views have no convention to restore: never flipped.
    assert rotation_from_orientation(["P", "F"], allow_flip=True) == (0, False)


def test_works_on_channels_last_images() -> None:
    up = np.stack([_upright()] * 3, axis=-1)
    stored = np.rot90(up, -1, axes=(0, 1))
    np.testing.assert_array_equal(correct_orientation(stored, ["H", "L"]), up)


def test_border_and_orientation_do_not_import_torch(tmp_path) -> None:
    """The ingest's decode workers crop borders and turn images upright without loading torch."""
    import subprocess
    import sys

    code = ("import sys, radaudit.pacs.border, radaudit.pacs.orientation, radaudit.pacs.cache; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"
