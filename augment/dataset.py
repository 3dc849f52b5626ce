"""Datasets over the image cache that hand out uint8 tensors, and their DataLoader.

The cache stores each image as a plain uint8 ``.npy`` of the same square size, so a worker
only reads bytes: no decoding, no resizing, no float conversion. Augmentation happens later,
batched on the device (:mod:`radaudit.augment.pipeline`).

Two datasets:

- :class:`CacheDataset` reads one file per item, from a list of ``.npy`` paths or from a
  ``read(uid)`` callable such as ``functools.partial(radaudit.pacs.cache.read, data_dir)``;
- :class:`StackedCacheDataset` packs every image into one ``(N, H, W)`` ``.npy`` once and
  memory-maps it, so a batch is one fancy-indexed slice (``__getitems__``) and the page cache
  is shared by all workers.

Example::

    ds = CacheDataset.from_reader(functools.partial(radaudit.pacs.cache.read, data_dir), uids, labels)
    loader = make_loader(ds, batch_size=256, workers=8)
    for images, labels in loader:       # uint8 (B, 1, H, W), int64 (B,)
        v1, v2 = two_view(images.to("cuda", non_blocking=True))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

__all__ = ["CacheDataset", "StackedCacheDataset", "make_loader"]

Reader = Callable[[str], np.ndarray]


def _check_labels(labels: Sequence[int] | None, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"got {arr.shape[0] if arr.ndim else 'a scalar'} labels for {n} images; "
                         "give one int per image, -1 where the label is null")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be ints (-1 for null), got dtype {arr.dtype}")
    if (arr < -1).any():
        raise ValueError("labels must be class indices >= 0, or -1 for null")
    return arr.astype(np.int64)


def _as_item(img: np.ndarray, where: str) -> torch.Tensor:
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"{where}: expected a uint8 2-D cached image, got {img.dtype} {img.shape}; "
                         "rebuild the image cache")
    return torch.from_numpy(np.ascontiguousarray(img))[None]  # (1, H, W)


class CacheDataset(Dataset[tuple[torch.Tensor, int]]):
    """Cached images as uint8 tensors, one file read per item.

    Args:
        keys: ``.npy`` paths, or uids when ``read`` is given.
        labels: One class index per image, -1 for null; all -1 when None.
        read: ``read(uid) -> np.ndarray`` (uint8, 2-D), e.g. a partial of ``radaudit.pacs.cache.read``.
            When None, ``keys`` are paths loaded with ``np.load``.

    Shape:
        Item: ``(image, label)``, image (1, H, W) uint8.
    """

    def __init__(self, keys: Sequence[str | os.PathLike[str]], labels: Sequence[int] | None = None, *,
                 read: Reader | None = None) -> None:
        self.keys = [str(k) if read is not None else os.fspath(k) for k in keys]
        self.labels = _check_labels(labels, len(self.keys))
        self.read = read

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]],
                   labels: Sequence[int] | None = None) -> CacheDataset:
        """One ``.npy`` file per image."""
        return cls(paths, labels)

    @classmethod
    def from_reader(cls, read: Reader, uids: Sequence[str], labels: Sequence[int] | None = None) -> CacheDataset:
        """Images from ``read(uid)``, e.g. ``functools.partial(radaudit.pacs.cache.read, data_dir)``."""
        if not callable(read):
            raise TypeError(f"read must be a callable uid -> np.ndarray, got {type(read).__name__}")
        return cls(list(uids), labels, read=read)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key = self.keys[index]
        img = self.read(key) if self.read is not None else np.load(key, allow_pickle=False)
        return _as_item(np.asarray(img), key), int(self.labels[index])


class StackedCacheDataset(Dataset[tuple[torch.Tensor, int]]):
    """All cached images in one memory-mapped ``(N, H, W)`` uint8 array.

    Args:
        stack_path: ``.npy`` file written by :meth:`build`.
        labels: One class index per image, -1 for null.

    Shape:
        Item: ``(image, label)``, image (1, H, W) uint8.
    """

    def __init__(self, stack_path: str | os.PathLike[str], labels: Sequence[int] | None = None) -> None:
        self.stack_path = Path(stack_path)
        self._array: np.ndarray | None = None
        n = self.array.shape[0]
        self.labels = _check_labels(labels, n)

    @property
    def array(self) -> np.ndarray:
        """The memory map, opened lazily per process (a worker reopens it after fork or spawn)."""
        if self._array is None:
            arr = np.load(self.stack_path, mmap_mode="r", allow_pickle=False)
            if arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"{self.stack_path}: expected a uint8 (N, H, W) stack, got {arr.dtype} {arr.shape}")
            self._array = arr
        return self._array

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    @classmethod
    def build(cls, source: CacheDataset, stack_path: str | os.PathLike[str]) -> StackedCacheDataset:
        """Write every image of ``source`` into one ``.npy`` at ``stack_path`` and open it.

        Raises:
            ValueError: If the images do not all have the same shape.
        """
        if len(source) == 0:
            raise ValueError("cannot stack an empty dataset")
        first, _ = source[0]
        h, w = first.shape[-2:]
        path = Path(stack_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(source), h, w))
        for i in range(len(source)):
            img, _ = source[i]
            if img.shape[-2:] != (h, w):
                del out
                tmp.unlink(missing_ok=True)
                raise ValueError(f"image {source.keys[i]} is {tuple(img.shape[-2:])}, expected {(h, w)}; "
                                 "all cached images must have the same size")
            out[i] = img[0].numpy()
        out.flush()
        del out
        os.replace(tmp, path)
        return cls(path, source.labels)

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.array[index]))[None], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one read: images (B, 1, H, W) uint8 and labels (B,) int64."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)  # sorted reads are sequential on disk
        batch = np.empty((len(idx), *self.array.shape[1:]), dtype=np.uint8)
        batch[order] = self.array[idx[order]]
        return torch.from_numpy(batch)[:, None], torch.from_numpy(self.labels[idx])


def _collate_stacked(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def make_loader(dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool | None = None,
                shuffle: bool = True, drop_last: bool = True, seed: int | None = None,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader of uint8 batches for on-device augmentation.

    Args:
        dataset: :class:`CacheDataset`, :class:`StackedCacheDataset` or any dataset of
            ``(uint8 (1, H, W), int)`` items.
        batch_size: Images per batch.
        workers: Worker processes; 0 reads in the main process.
        pin_memory: Page-locked batches for fast, asynchronous copies to the GPU; default: on
            when CUDA is available.
        shuffle: Reshuffle every epoch.
        drop_last: Drop the last incomplete batch (contrastive losses prefer full batches).
        seed: Seed of the shuffling order and of the workers.
        prefetch_factor: Batches each worker keeps ready.

    Returns:
        Batches ``(images, labels)``: images (B, 1, H, W) uint8, labels (B,) int64. With ``shuffle``
        the loader's ``sampler`` is a :class:`~torch.utils.data.RandomSampler` with a generator of
        its own: its state after an epoch fixes the next epoch's order, so a checkpoint can save
        it (:func:`radaudit.models.train.pretrain` does). The loader's ``generator`` only seeds the
        workers; a shared one would draw the workers' base seed between two epochs' orders in
        one run and not in another (persistent workers draw it once per run, not per epoch).
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    def generator() -> torch.Generator | None:
        return torch.Generator().manual_seed(seed) if seed is not None else None

    kwargs: dict[str, object] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    if shuffle:
        kwargs.update(sampler=RandomSampler(dataset, generator=generator()))
    collate = _collate_stacked if isinstance(dataset, StackedCacheDataset) else None
    return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, num_workers=workers,
                      pin_memory=pin_memory, generator=generator(), collate_fn=collate, **kwargs)
