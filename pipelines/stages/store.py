"""The digest-paired array store: an ``.npy`` array beside the parquet table of its rows.

Embeddings (``embeddings/<name>.npy`` + ``<name>.uids.parquet``) and probabilities
(``probabilities/<name>.npy`` + ``<name>.rows.parquet``) are stored this way. The table carries
the array's digest, so a crash between the two writes (a new array beside the old rows) is found
on reading instead of pairing features with the wrong images.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from radaudit.pacs import io as pio
from radaudit.pacs.index import read_manifest
from radaudit.pacs.layout import EMBED_DIR, PROB_DIR

__all__ = ["array_digest", "cache_keys", "file_digest", "load_embeddings", "load_probabilities", "load_rows",
           "previous_rows", "save_array", "save_embeddings", "save_rows"]


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def array_digest(array: np.ndarray) -> str:
    """The first 16 hex digits of the SHA-256 of an array's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def save_array(array: np.ndarray, path: Path) -> None:
    """Write an array as ``.npy``, atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    pio.write_bytes(path, buffer.getvalue())


def save_rows(array: np.ndarray, path: Path, rows: pd.DataFrame, rows_path: Path) -> None:
    """Write an array and the table of its rows, each atomically; the table carries the array's digest."""
    save_array(array, path)
    pio.write_parquet_frame(rows.assign(array_digest=array_digest(array)), rows_path)


def load_rows(path: Path, rows_path: Path, *, mmap: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """An array written by :func:`save_rows` and its rows (without the digest); ``mmap``: memory-mapped,
    for callers that take a subset of the rows of a large array.

    Raises:
        ValueError: If the two files come from different runs (an interrupted write).
    """
    array, rows = np.load(path, mmap_mode="r" if mmap else None), pd.read_parquet(rows_path)
    stored = rows.pop("array_digest") if "array_digest" in rows else None  # older files have none
    if len(rows) != array.shape[0] or (stored is not None and len(rows) and stored.iloc[0] != array_digest(array)):
        raise ValueError(f"{path} and {rows_path.name} were written by different runs (one was interrupted): "
                         f"re-materialize the asset that writes {path.parent.name}/{path.name}")
    return array, rows


def cache_keys(data_dir: str | os.PathLike[str], uids: Sequence[str]) -> list[str]:
    """Per image, what its cached pixels depend on: source file identity, size, mtime, cache settings."""
    manifest = read_manifest(data_dir).set_index("sop_instance_uid").loc[list(uids)]
    return [f"{h}:{s}:{t}:{p}" for h, s, t, p in zip(manifest["path_hash"], manifest["file_size"],
                                                      manifest["mtime_ns"], manifest["params"])]


def previous_rows(data_dir: str | os.PathLike[str], name: str, model_key: str, uids: Sequence[str],
                  keys: Sequence[str]) -> np.ndarray | None:
    """The stored embeddings ``name`` that still hold (same weights and size ``model_key``, same
    cached pixels ``keys``), in ``uids`` order with NaN rows elsewhere; None if nothing holds."""
    npy = Path(data_dir) / EMBED_DIR / f"{name}.npy"
    rows_path = Path(data_dir) / EMBED_DIR / f"{name}.uids.parquet"
    if not (npy.exists() and rows_path.exists()):
        return None
    try:
        old, rows = load_rows(npy, rows_path, mmap=True)
    except ValueError:
        return None  # the pair is from two runs: embed everything again
    if "model_key" not in rows or not (rows["model_key"] == model_key).all():
        return None
    position = pd.Series(np.arange(len(rows)), index=rows["sop_instance_uid"] + "|" + rows["cache_key"])
    where = position.reindex([f"{u}|{k}" for u, k in zip(uids, keys)]).to_numpy()
    features = np.full((len(uids), old.shape[1]), np.nan, np.float32)
    hit = ~np.isnan(where)
    features[hit] = old[where[hit].astype(np.int64)]
    return features


def save_embeddings(data_dir: str | os.PathLike[str], name: str, features: np.ndarray, uids: Sequence[str]) -> None:
    """Store features computed elsewhere (e.g. a baseline backbone) as ``embeddings/<name>``, for the heads and the audit."""
    data_dir = Path(data_dir)
    save_rows(np.asarray(features, dtype=np.float32), data_dir / EMBED_DIR / f"{name}.npy",
              pd.DataFrame({"sop_instance_uid": list(uids), "cache_key": "", "model_key": "external"}),
              data_dir / EMBED_DIR / f"{name}.uids.parquet")


def load_embeddings(data_dir: str | os.PathLike[str], method: str, uids: Sequence[str]) -> np.ndarray:
    """A method's embeddings in the order of ``uids``.

    Raises:
        ValueError: If some uid has no embedding (the embeddings are older than the image cache).
    """
    data_dir = Path(data_dir)
    features, table = load_rows(data_dir / EMBED_DIR / f"{method}.npy", data_dir / EMBED_DIR / f"{method}.uids.parquet",
                                mmap=True)
    rows = table["sop_instance_uid"]
    position = pd.Series(np.arange(len(rows)), index=rows.to_numpy())
    where = position.reindex(list(uids))
    if where.isna().any():
        raise ValueError(f"{int(where.isna().sum())} images have no {method} embedding: re-materialize "
                         f"embeddings/{method} after the image cache changed")
    return features[where.to_numpy(dtype=np.int64)]


def load_probabilities(data_dir: str | os.PathLike[str], name: str) -> tuple[np.ndarray, pd.DataFrame]:
    """A method's (or ``ensemble``'s) probabilities and their rows."""
    data_dir = Path(data_dir)
    return load_rows(data_dir / PROB_DIR / f"{name}.npy", data_dir / PROB_DIR / f"{name}.rows.parquet")
