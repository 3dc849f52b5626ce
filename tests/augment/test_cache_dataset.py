"""Datasets over the image cache and their loader."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from radaudit.augment.dataset import CacheDataset, StackedCacheDataset, make_loader


@pytest.fixture()
def npy_cache(tmp_path):
    rng = np.random.default_rng(0)
    paths, images = [], []
    for i in range(10):
        img = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
        path = tmp_path / f"uid{i}.npy"
        np.save(path, img)
        paths.append(path)
        images.append(img)
    return paths, images


def test_cache_dataset_from_paths(npy_cache) -> None:
    paths, images = npy_cache
    ds = CacheDataset.from_paths(paths, labels=[i % 3 - 1 for i in range(10)])
    img, label = ds[4]
    assert img.dtype == torch.uint8 and img.shape == (1, 16, 16)
    assert np.array_equal(img[0].numpy(), images[4]) and label == 0
    assert CacheDataset.from_paths(paths)[0][1] == -1


def test_cache_dataset_from_reader(npy_cache, tmp_path) -> None:
    paths, images = npy_cache

    def read(data_dir, uid: str) -> np.ndarray:  # stands in for radaudit.pacs.cache.read
        return np.load(data_dir / f"{uid}.npy")

    ds = CacheDataset.from_reader(functools.partial(read, tmp_path), [f"uid{i}" for i in range(10)])
    assert np.array_equal(ds[7][0][0].numpy(), images[7])


def test_loader_batches_uint8(npy_cache) -> None:
    paths, _ = npy_cache
    loader = make_loader(CacheDataset.from_paths(paths, labels=list(range(10))), 4, workers=0, seed=0)
    batches = list(loader)
    assert len(batches) == 2  # drop_last
    images, labels = batches[0]
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8 and labels.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 1])
def test_the_samplers_state_after_an_epoch_gives_the_next_epochs_order(npy_cache, workers: int) -> None:
    """What a checkpoint saves: a fresh loader given that state shuffles as the next epoch would."""
    paths, _ = npy_cache
    ds = CacheDataset.from_paths(paths, labels=list(range(10)))

    def order(loader) -> list[int]:
        return torch.cat([labels for _, labels in loader]).tolist()

    running = make_loader(ds, 2, workers=workers, seed=0)
    first = order(running)
    state = running.sampler.generator.get_state()
    second = order(running)
    fresh = make_loader(ds, 2, workers=workers, seed=0)
    fresh.sampler.generator.set_state(state)
    assert order(fresh) == second != first  # with workers too, whose base seed is drawn once per loader
    assert order(make_loader(ds, 2, workers=workers, seed=0)) == first


def test_stacked_dataset_matches_and_batches(npy_cache, tmp_path) -> None:
    paths, images = npy_cache
    source = CacheDataset.from_paths(paths, labels=list(range(10)))
    stacked = StackedCacheDataset.build(source, tmp_path / "stack" / "images.npy")
    assert len(stacked) == 10 and np.array_equal(stacked[3][0][0].numpy(), images[3])
    batch, labels = stacked.__getitems__([5, 1, 8])
    assert batch.shape == (3, 1, 16, 16) and labels.tolist() == [5, 1, 8]
    assert np.array_equal(batch[0, 0].numpy(), images[5])
    loader = make_loader(stacked, 5, workers=1, seed=0)
    seen = torch.cat([lab for _, lab in loader])
    assert sorted(seen.tolist()) == list(range(10))


def test_rejects_bad_inputs(npy_cache, tmp_path) -> None:
    paths, _ = npy_cache
    with pytest.raises(ValueError, match="one int per image"):
        CacheDataset.from_paths(paths, labels=[0, 1])
    with pytest.raises(ValueError, match="-1 for null"):
        CacheDataset.from_paths(paths, labels=[-2] * 10)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 2-D"):
        CacheDataset.from_paths([bad])[0]
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(CacheDataset.from_paths(paths), 0)
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="same size"):
        StackedCacheDataset.build(CacheDataset.from_paths([*paths, odd]), tmp_path / "s.npy")
