"""Backbone factory: any timm model, randomly initialized, as a feature extractor.

Every backbone has timm's interface: ``forward`` returns pooled features (``num_classes=0``),
``num_features`` is their width. Radiographs are grey, so the stem takes one channel by default
(timm sums the RGB stem filters when ``in_chans=1``; with random init that is just a 1-channel
stem).

Pretrained weights are never fetched: the registry has none that can be downloaded at run time,
so every method starts from random initialization (the machines it runs on have no internet).

Example::

    backbone = create_backbone("resnet18")            # 1 input channel
    feats = backbone(torch.zeros(8, 1, 224, 224))     # Shape: (8, 512)
    assert feature_dim(backbone) == 512
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["create_backbone", "feature_dim"]


def create_backbone(name: str = "resnet18", *, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Create a randomly initialized timm backbone that returns pooled features.

    Args:
        name: A timm model name, e.g. ``resnet18``, ``resnet50``, ``convnext_tiny``; a pretrained
            tag (``resnet18.a1_in1k``) is accepted but only selects the architecture.
        in_chans: Input channels (1 for grey radiographs).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Returns:
        The backbone. ``forward`` maps (B, in_chans, H, W) to Shape: (B, feature_dim).

    Raises:
        ValueError: Unknown model name (the message lists close matches and how to list all),
            a bad ``in_chans``, or an attempt to load pretrained weights.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string such as 'resnet18', got {name!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int (1 for grey radiographs), got {in_chans!r}")
    if kwargs.get("pretrained"):
        raise ValueError("pretrained weights cannot be downloaded here; backbones start from random "
                         "initialization (drop pretrained=True)")
    for reserved in ("num_classes", "in_chans"):
        kwargs.pop(reserved, None)
    kwargs.pop("pretrained", None)
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}.{hint} List valid names with "
                         "`python -c \"import timm; print(timm.list_models('resnet*'))\"` "
                         "(any pattern works, e.g. 'convnext*').")
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


def feature_dim(backbone: nn.Module) -> int:
    """Width of the backbone's pooled features.

    Uses timm's ``num_features``; for another module, runs one tiny dummy batch.

    Args:
        backbone: A module mapping (B, C, H, W) to (B, D).

    Returns:
        D.
    """
    dim = getattr(backbone, "num_features", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = first.in_channels if first is not None else 1
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(2, in_chans, 64, 64, device=device))
    backbone.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"backbone returns Shape {tuple(out.shape)}, expected (B, D) pooled features; "
                         "create it with num_classes=0 (create_backbone does)")
    return int(out.shape[1])
