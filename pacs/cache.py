"""The image cache: decoded, normalized, border-cropped, upright, resized uint8 images.

Layout under the data dir::

    cache/manifest/<partition>.parquet  one row per cached instance (source file, geometry, params)
    cache/images/<hh>/<sop uid>.npy     uint8 2-D array, size x size

``<hh>`` is the first two hex digits of the SHA-1 of the UID, so no folder holds more than a
few thousand files. Aspect policy: the long side of the cropped image is scaled to ``size`` and
the image is centred on a black (0) square canvas; the manifest keeps the content box so that
nothing downstream mistakes the letterbox for anatomy. Images are plain ``.npy`` files so a
training data loader memory-maps them without any decoding work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from radaudit.pacs.layout import CACHE_IMAGES_DIR

CACHE_VERSION = 2  # 2: JPEG 2000 decoded at border.MIN_SIDE at least, so its field is found as in full

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sop_instance_uid", pa.string()),
        pa.field("path", pa.string()),
        pa.field("path_hash", pa.string()),
        pa.field("file_size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("params", pa.string()),
        pa.field("original_rows", pa.int64()),
        pa.field("original_columns", pa.int64()),
        pa.field("reduce", pa.int64()),
        pa.field("crop_top", pa.int64()),
        pa.field("crop_bottom", pa.int64()),
        pa.field("crop_left", pa.int64()),
        pa.field("crop_right", pa.int64()),
        pa.field("rot90", pa.int64()),
        pa.field("orientation_known", pa.bool_()),
        pa.field("content_height", pa.int64()),
        pa.field("content_width", pa.int64()),
        pa.field("frames_in_file", pa.int64()),
        pa.field("was_color", pa.bool_()),
        pa.field("window_source", pa.string()),
    ]
)


@dataclass(frozen=True)
class CacheParams:
    """What the cached pixels depend on; a change re-caches every image.

    Attributes:
        size: Side of the square cached image in pixels.
        remove_border: Crop collimator bands and uniform margins.
        correct_orientation: Rotate to upright using Patient Orientation where present.
    """

    size: int = 256
    remove_border: bool = True
    correct_orientation: bool = True

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"cache size must be between 16 and 4096 pixels, got {self.size}")

    def fingerprint(self) -> str:
        """A stable string identifying these parameters and the cache format version."""
        return json.dumps({**asdict(self), "version": CACHE_VERSION}, sort_keys=True)


def image_path(data_dir: str | os.PathLike[str], sop_instance_uid: str) -> Path:
    """Where the cached image of one instance lives."""
    shard = hashlib.sha1(sop_instance_uid.encode("ascii")).hexdigest()[:2]
    return Path(data_dir) / CACHE_IMAGES_DIR / shard / f"{sop_instance_uid}.npy"


def cached_uids(data_dir: str | os.PathLike[str]) -> set[str]:
    """The SOP Instance UIDs that have a cached image file, from one listing of each shard folder
    (at 100,000 images, asking :func:`image_path` for each took a third of a nightly rerun)."""
    root = Path(data_dir) / CACHE_IMAGES_DIR
    uids: set[str] = set()
    if not root.is_dir():
        return uids
    with os.scandir(root) as shards:
        for shard in shards:
            if shard.is_dir():
                with os.scandir(shard.path) as files:
                    uids.update(f.name[:-4] for f in files if f.name.endswith(".npy") and not f.name.startswith("."))
    return uids


def read(data_dir: str | os.PathLike[str], sop_instance_uid: str, *, mmap: bool = False) -> np.ndarray:
    """Return the cached image of one instance (uint8, 2-D).

    Raises:
        KeyError: If the instance is not in the cache.
    """
    path = image_path(data_dir, sop_instance_uid)
    if not path.exists():
        raise KeyError(f"{sop_instance_uid} is not in the image cache under {data_dir}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def preprocess(path: str | os.PathLike[str], patient_orientation: str | None, params: CacheParams,
               *, threads: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one file and turn it into the cached uint8 image; return it with its manifest facts.

    Decoding asks for the lowest resolution that still gives ``size`` pixels on the short side,
    and :data:`radaudit.pacs.border.MIN_SIDE` when borders are removed (so that every encoding of
    an image gets the same field), so JPEG 2000 files skip wavelet levels that the resize would
    throw away.
    """
    from radaudit.pacs.border import MIN_SIDE, find_exposed_field
    from radaudit.pacs.orientation import rotation_from_orientation
    from radaudit.pacs.pixels import decode_image

    decoded = decode_image(path, min_side=max(params.size, MIN_SIDE if params.remove_border else 1),
                           threads=threads)
    img = decoded.pixels
    top, bottom, left, right = 0, img.shape[0], 0, img.shape[1]
    if params.remove_border:
        top, bottom, left, right = find_exposed_field(img)
        img = img[top:bottom, left:right]
    k = 0
    rotation = None
    if params.correct_orientation:
        values = patient_orientation.split("\\") if patient_orientation else None
        rotation = rotation_from_orientation(values)
        if rotation is not None:
            k = rotation[0]
            img = np.rot90(img, k)
    out = letterbox(img, params.size)
    fit = params.size / max(img.shape)
    scale = 2 ** decoded.reduce
    rows, columns = decoded.original_shape
    facts = {
        "original_rows": rows,
        "original_columns": columns,
        "reduce": decoded.reduce,
        # A reduced image has ceil(side / scale) pixels: its last one ends at the original's edge.
        "crop_top": min(top * scale, rows),
        "crop_bottom": min(bottom * scale, rows),
        "crop_left": min(left * scale, columns),
        "crop_right": min(right * scale, columns),
        "rot90": k,
        "content_height": max(1, round(img.shape[0] * fit)),
        "content_width": max(1, round(img.shape[1] * fit)),
        "orientation_known": rotation is not None,
        "frames_in_file": decoded.frames,
        "was_color": decoded.was_color,
        "window_source": decoded.window_source,
    }
    return out, facts


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Scale a float [0, 1] image so its long side is ``size``, centre it on black; return uint8."""
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (nw, nh), Image.Resampling.BILINEAR
    )
    arr = np.asarray(resized, dtype=np.float32)
    out = np.zeros((size, size), dtype=np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def write_image(data_dir: str | os.PathLike[str], sop_instance_uid: str, img: np.ndarray) -> Path:
    """Store one cached image atomically."""
    from radaudit.pacs.io import atomic_path

    path = image_path(data_dir, sop_instance_uid)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(img, dtype=np.uint8), allow_pickle=False)
    return path


def cache_one(job: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: decode, preprocess and store one file; return its manifest row."""
    params = CacheParams(**job["params"])
    img, facts = preprocess(job["abs_path"], job["patient_orientation"], params, threads=job.get("threads", 1))
    write_image(job["data_dir"], job["sop_instance_uid"], img)
    return {
        "sop_instance_uid": job["sop_instance_uid"],
        "path": job["path"],
        "path_hash": job["path_hash"],
        "file_size": job["file_size"],
        "mtime_ns": job["mtime_ns"],
        "params": params.fingerprint(),
        **facts,
    }
