"""Tiny data for the models tests: random uint8 images, 40 px, a few labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radaudit.models.data import ArrayDataset


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_images() -> np.ndarray:
    """16 random grey images, 40 x 40, uint8."""
    return np.random.default_rng(0).integers(0, 256, (16, 40, 40), dtype=np.uint8)


@pytest.fixture
def tiny_dataset(tiny_images: np.ndarray) -> ArrayDataset:
    """The tiny images with labels 0..2 and some nulls (-1)."""
    labels = np.array([0, 1, 2, -1] * 4, dtype=np.int64)
    return ArrayDataset(tiny_images, labels)
