from __future__ import annotations

import numpy as np
import pytest
import torch

from radaudit.models.backbone import create_backbone
from radaudit.models.data import ArrayDataset
from radaudit.models.embed import embed, normalize_images


@pytest.fixture
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("resnet18")


def test_shapes_dtype_and_determinism(backbone: torch.nn.Module, tiny_dataset: ArrayDataset) -> None:
    backbone.train()
    a = embed(backbone, tiny_dataset, batch_size=5, size=32)
    b = embed(backbone, tiny_dataset, batch_size=16, size=32)
    assert a.shape == (16, 512) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # eval mode: no batch dependence
    np.testing.assert_array_equal(a, embed(backbone, tiny_dataset, batch_size=5, size=32))
    assert backbone.training  # mode restored


def test_array_input_matches_dataset(backbone: torch.nn.Module, tiny_images: np.ndarray,
                                     tiny_dataset: ArrayDataset) -> None:
    np.testing.assert_array_equal(embed(backbone, tiny_images, batch_size=8),
                                  embed(backbone, tiny_dataset, batch_size=8))
    assert embed(backbone, tiny_images[:, None], batch_size=8).shape == (16, 512)


class _PlainDataset(torch.utils.data.Dataset):
    """Not an ArrayDataset: embed() reads it through a DataLoader."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i])[None], -1


def test_loader_workers_give_the_same_features(backbone: torch.nn.Module, tiny_images: np.ndarray) -> None:
    sliced = embed(backbone, tiny_images, batch_size=6, size=32)  # in memory: sliced, no loader
    np.testing.assert_array_equal(embed(backbone, _PlainDataset(tiny_images), batch_size=6, size=32), sliced)
    np.testing.assert_array_equal(embed(backbone, _PlainDataset(tiny_images), batch_size=6, size=32, num_workers=2),
                                  sliced)


def test_normalization_matches_training_views() -> None:
    x = torch.tensor([[[[0, 255], [128, 64]]]], dtype=torch.uint8)
    out = normalize_images(x)
    assert torch.allclose(out, (x.float() / 255 - 0.5) / 0.5)
    assert normalize_images(torch.zeros(2, 40, 40, dtype=torch.uint8), size=32).shape == (2, 1, 32, 32)


def test_rejects_bad_input(backbone: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8"):
        embed(backbone, np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        embed(backbone, np.zeros((2, 8, 8), dtype=np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        embed(backbone, np.zeros((2, 8, 8), dtype=np.uint8), num_workers=-1)


class _TopLeft(torch.nn.Module):
    """A 'backbone' whose one feature is the top-left pixel of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, 0, 0]


def test_ten_crop_features_are_the_mean_over_the_crops_and_their_mirrors() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    # Crops of side 2: centre [5 6; 9 10], corners [0 1; ..], [2 3; ..], [8 9; ..], [10 11; ..];
    # their top-left pixels 5, 0, 2, 8, 10, and of their mirror images 6, 1, 3, 9, 11: mean 5.5.
    got = embed(_TopLeft(), image, crop=0.5, in_chans=1)
    np.testing.assert_allclose(got, [[(5.5 / 255 - 0.5) / 0.5]], rtol=1e-6)
    np.testing.assert_allclose(embed(_TopLeft(), image, in_chans=1), [[(0 / 255 - 0.5) / 0.5]], rtol=1e-6)


def test_ten_crop_embedding_equals_the_mean_of_each_crops_embedding(backbone: torch.nn.Module,
                                                                     tiny_images: np.ndarray) -> None:
    n, h, w = tiny_images.shape
    s = round(0.75 * h)
    corners = [((h - s) // 2, (w - s) // 2), (0, 0), (0, w - s), (h - s, 0), (h - s, w - s)]
    crops = [tiny_images[:, y:y + s, x:x + s] for y, x in corners]
    crops += [c[:, :, ::-1] for c in crops]
    by_crop = [embed(backbone, np.ascontiguousarray(c), batch_size=8, size=32) for c in crops]
    got = embed(backbone, tiny_images, batch_size=8, size=32, crop=0.75)
    np.testing.assert_allclose(got, np.mean(by_crop, axis=0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, embed(backbone, tiny_images, batch_size=8, size=32), atol=1e-3)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="crop"):
            embed(backbone, tiny_images, crop=bad)
