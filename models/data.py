"""In-memory image datasets for pretraining, embedding and tests.

Production data comes from the image cache (:mod:`radaudit.augment.dataset`); :class:`ArrayDataset`
wraps arrays already in memory with the same item contract: ``(uint8 tensor (1, H, W), int label)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset"]


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images in an array, with integer labels (-1 = null).

    Args:
        images: Shape: (N, H, W) or (N, 1, H, W), uint8.
        labels: One class index per image, -1 for null; all -1 when None. Shape: (N,).

    Shape:
        Item: ``(image, label)``, image (1, H, W) uint8.

    Raises:
        ValueError: Wrong dtype or shape, or labels that do not match the images.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | None = None) -> None:
        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of Shape (N, H, W) or (N, 1, H, W), got {arr.dtype} {arr.shape}")
        n = arr.shape[0]
        lab = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels)
        if lab.shape != (n,) or lab.dtype.kind not in "iu":
            raise ValueError(f"labels must be {n} ints (one per image, -1 for null), got {lab.dtype} {lab.shape}")
        if (lab < -1).any():
            raise ValueError("labels must be class indices >= 0, or -1 for null")
        # numpy, not a tensor: pickles by value into spawned processes (DDP, loader workers)
        self.images = np.ascontiguousarray(arr)  # (N, H, W) uint8
        self.labels = lab.astype(np.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index][None]), int(self.labels[index])  # (1, H, W)
