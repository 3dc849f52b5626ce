"""Frozen-backbone embeddings of cached images.

Input normalization is the training pipeline's, applied without augmentation
(:func:`normalize_images`): uint8 -> float / 255, optional bilinear (antialiased) resize to
``size`` x ``size``, then ``(x - mean) / std`` with the mean and std of
:class:`radaudit.augment.pipeline.ViewConfig` (0.5 and 0.5), the last step of every training view.

Pass ``size`` = the pretraining view size (``PretrainConfig.size``) to embed whole images at the
scale the backbone was trained at; with ``size=None`` images keep the cache's resolution.

Example::

    from radaudit.models.checkpoint import load_backbone

    backbone = load_backbone("runs/simclr")                # a checkpoint dir
    feats = embed(backbone, dataset, size=224)             # Shape: (N, 512), float32
    feats = embed(backbone, dataset, size=32, crop=0.875)  # the mean over ten crops (test-time augmentation)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import ten_crop

from radaudit.augment.pipeline import ViewConfig
from radaudit.models.backbone import feature_dim
from radaudit.models.data import ArrayDataset
from radaudit.models.validation import check_share

__all__ = ["embed", "default_workers", "normalize_images", "MEAN", "STD"]

_VIEW = ViewConfig()
MEAN: float = _VIEW.mean
STD: float = _VIEW.std


def normalize_images(images: torch.Tensor, *, size: int | None = None, mean: float = MEAN,
                     std: float = STD) -> torch.Tensor:
    """uint8 images to the backbone's input, as in training but without augmentation.

    Args:
        images: Shape: (B, 1, H, W) or (B, H, W), uint8 (float input is taken as [0, 1]).
        size: Resize to ``size`` x ``size`` (bilinear, antialiased); None keeps H x W.
        mean: Subtracted after scaling to [0, 1].
        std: Divides after subtracting ``mean``.

    Returns:
        Shape: (B, 1, size, size) (or (B, 1, H, W)), float32.
    """
    x = images[:, None] if images.ndim == 3 else images
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (B, 1, H, W) in [0, 1]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - mean) / std


def _as_dataset(data: Any) -> Dataset:
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return ArrayDataset(data)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data
    raise TypeError(f"expected a Dataset of (uint8 image, label) items or a uint8 array (N, H, W), "
                    f"got {type(data).__name__}")


def _images_of(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def default_workers(device: torch.device) -> int:
    """Loader workers for :func:`embed` when none are given: up to 8 beside a GPU, none on the CPU.

    On the CPU the forward pass needs every core and reading a cached image costs far less than
    embedding it, so workers only take cores from it.
    """
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def _batches(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """uint8 image batches (B, 1, H, W) in dataset order; in-memory arrays are sliced, not collated."""
    if isinstance(dataset, ArrayDataset):
        images = torch.from_numpy(dataset.images)  # (N, H, W), shares memory
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size, None]
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=4 if num_workers > 0 else None)
    for batch in loader:
        yield _images_of(batch)


# Features stay on the GPU for this many batches before one copy to the host: no sync per batch.
_FLUSH_BATCHES = 32


@torch.no_grad()
def embed(backbone: nn.Module, data: Dataset | np.ndarray | torch.Tensor, *, batch_size: int = 256,
          device: str | torch.device | None = None, size: int | None = None, num_workers: int | None = None,
          in_chans: int | None = None, crop: float | None = None) -> np.ndarray:
    """Features of every image from a frozen backbone, in dataset order.

    The backbone runs in eval mode (BatchNorm uses its running statistics) and is put back in
    the mode and on the device it had. On CUDA: bf16 autocast, channels-last, pinned batches
    copied asynchronously, every batch padded to ``batch_size`` (one input shape, so cuDNN's
    autotuning and ``torch.compile`` see no new shape at the last batch), and features copied
    to the host every few dozen batches rather than after each.

    Args:
        backbone: Maps (B, C, H, W) to (B, D).
        data: A dataset of ``(uint8 image (1, H, W), label)`` items (or bare images), or a uint8
            array of Shape (N, H, W) / (N, 1, H, W). Arrays (and :class:`radaudit.models.data.ArrayDataset`)
            are sliced into batches directly, without a DataLoader.
        batch_size: Images per forward pass.
        device: Default: CUDA when available, else CPU.
        size: See :func:`normalize_images`.
        num_workers: DataLoader workers reading a dataset; None: :func:`default_workers`.
        in_chans: Input channels of the backbone; grey images are repeated to fill them.
            Default: the first convolution's input channels.
        crop: Test-time augmentation: each image's features are the mean over its ten crops
            (torchvision's ``ten_crop``: the centre and the four corners, and the same of the
            mirror image) of this share of its side, each resized to ``size``; ten forward
            passes per image. The backbone was trained on random crops (20-100% of the area)
            and mirror images, so such crops are closer to its training views than the whole
            image. None: the whole image.

    Returns:
        Shape: (N, D), float32.

    Raises:
        ValueError: ``batch_size`` < 1, ``num_workers`` < 0 or ``crop`` outside (0, 1].
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise ValueError(f"num_workers must be an int >= 0 or None (default for the device), got {num_workers!r}")
    crop = None if crop is None else check_share(crop, "crop (of the image side)", "0.875")
    dataset = _as_dataset(data)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    workers = default_workers(dev) if num_workers is None else num_workers
    if in_chans is None:
        conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = conv.in_channels if conv is not None else 1
    param = next(backbone.parameters(), None)
    old_device = param.device if param is not None else dev
    was_training = backbone.training
    backbone.to(dev).eval()
    pad = cuda and len(dataset) > batch_size  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        x = normalize_images(x, size=size)  # (B, 1, S, S)
        if in_chans != 1:
            x = x.expand(-1, in_chans, -1, -1)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            return backbone(x).float()  # (B, D)

    try:
        for images in _batches(dataset, batch_size, workers, pin_memory=cuda):
            n = images.shape[0]
            x = images.to(dev, non_blocking=True)
            if pad and n < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])  # (batch_size, 1, H, W)
            if crop is None:
                pending.append(features(x)[:n])  # (n, D)
            else:
                side = [max(1, round(crop * s)) for s in x.shape[-2:]]
                pending.append(torch.stack([features(v) for v in ten_crop(x, side)]).mean(0)[:n])  # (n, D)
            if len(pending) >= _FLUSH_BATCHES:
                out.append(torch.cat(pending).cpu().numpy())
                pending.clear()
        if pending:
            out.append(torch.cat(pending).cpu().numpy())
    finally:
        backbone.train(was_training)
        backbone.to(old_device)
    if not out:
        return np.zeros((0, feature_dim(backbone)), dtype=np.float32)
    return np.concatenate(out, 0).astype(np.float32, copy=False)
