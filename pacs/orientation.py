"""Orientation correction from DICOM Patient Orientation (0020,0020).

numpy only (no torch): this runs inside the image cache's CPU decode workers.

Patient Orientation holds two values: the patient direction of the rows (increasing column
index, screen right) and of the columns (increasing row index, screen down), each made of the
letters A P R L H F, the most significant first ("LF" is mostly left, somewhat feet). Only the
first letter of each value is used.

Upright means the column direction points to the feet (head at the top). Exactly one of the
four rotations ``np.rot90(img, k)`` achieves that whenever one of the two first letters is H or
F; otherwise (extremity views such as ["A", "L"], missing or malformed values) the orientation
is unknown and :func:`rotation_from_orientation` returns ``None``: leave the image as it is.

Mirror policy: rotate only, never flip, by default. After the rotation a frontal view reads
either ["L", "F"] (as radiographs are displayed: the patient's left on the viewer's right) or
["R", "F"], a mirror image. Mirrored storage (["R", "F"]) and transposed storage (["F", "L"],
which is ["L", "F"] with its axes swapped) are the same case: the pixel data is the mirror of
the displayed convention, and only a flip could change that. We do not flip, because

- the tag is set by the operator or a default on many CR/DX systems and a mirrored pair is
  more often a wrong tag than mirrored pixels; a flip would then fake laterality, and the lead
  side markers burnt into the image would read backwards;
- the two-view pipeline flips horizontally at random anyway, so the model gets no laterality
  cue from handedness, while the upright rotation is something it cannot learn away cheaply.

``allow_flip=True`` turns mirrored frontal views into ["L", "F"]. Lateral views (rows A or P
after the rotation) are never flipped: there is no display convention for them to restore.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rotation_from_orientation", "correct_orientation"]

_OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}
_AXIS = {"A": 0, "P": 0, "R": 1, "L": 1, "H": 2, "F": 2}


def _parse(patient_orientation: Sequence[str] | str | None) -> tuple[str, str] | None:
    """First letters (row direction, column direction), or None when missing or malformed."""
    if patient_orientation is None:
        return None
    if isinstance(patient_orientation, bytes):
        patient_orientation = patient_orientation.decode("ascii", "replace")
    if isinstance(patient_orientation, str):
        text = patient_orientation
        values = text.split("\\") if "\\" in text else text.split()
    else:
        values = [str(v) for v in patient_orientation]
    if len(values) != 2:
        return None
    first = [v.strip().upper()[:1] for v in values]
    if not all(f in _OPPOSITE for f in first) or _AXIS[first[0]] == _AXIS[first[1]]:
        return None
    return first[0], first[1]


def _rot90_once(right: str, down: str) -> tuple[str, str]:
    """Directions after ``np.rot90(img, 1)``: new right is the old down, new down the old left."""
    return down, _OPPOSITE[right]


def rotation_from_orientation(
    patient_orientation: Sequence[str] | str | None, *, allow_flip: bool = False
) -> tuple[int, bool] | None:
    """Return how to turn an image upright: ``(k, flip_lr)``, or None when unknown.

    Apply as ``img = np.rot90(img, k)`` then, if ``flip_lr``, ``img = img[:, ::-1]``
    (see :func:`correct_orientation`).

    Args:
        patient_orientation: Patient Orientation, as two values (a pydicom MultiValue or any
            sequence of two strings) or one backslash-separated string such as ``"H\\\\L"``.
        allow_flip: Also flip mirrored frontal views to the displayed convention
            (["R", "F"] to ["L", "F"]). Off by default; see the module docstring.

    Returns:
        ``(k, flip_lr)`` with ``k`` in 0..3, or None if the value is missing, malformed, or
        has neither H nor F as the first letter of one of its values.

    Examples:
        >>> rotation_from_orientation(["L", "F"])
        (0, False)
        >>> rotation_from_orientation(["H", "L"])
        (1, False)
        >>> rotation_from_orientation(["A", "L"]) is None
        True
    """
    parsed = _parse(patient_orientation)
    if parsed is None or "H" not in parsed and "F" not in parsed:
        return None
    right, down = parsed
    for k in range(4):
        if down == "F":
            flip = allow_flip and right == "R"
            return k, flip
        right, down = _rot90_once(right, down)
    raise AssertionError("unreachable: one of four rotations points the columns to the feet")


def correct_orientation(
    img: np.ndarray, patient_orientation: Sequence[str] | str | None, *, allow_flip: bool = False
) -> np.ndarray:
    """Rotate (and with ``allow_flip`` flip) an image upright; return it unchanged if unknown.

    Args:
        img: Image with rows and columns as stored. Shape: (H, W) or (H, W, C).
        patient_orientation: See :func:`rotation_from_orientation`.
        allow_flip: See :func:`rotation_from_orientation`.

    Returns:
        A view of ``img``, upright. Shape: (H, W) or (W, H) (plus channels).
    """
    rotation = rotation_from_orientation(patient_orientation, allow_flip=allow_flip)
    if rotation is None:
        return img
    k, flip = rotation
    out = np.rot90(img, k, axes=(0, 1))
    return out[:, ::-1] if flip else out
