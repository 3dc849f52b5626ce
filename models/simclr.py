"""SimCLR: contrastive learning with in-batch negatives (NT-Xent).

Chen, Kornblith, Norouzi & Hinton, 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", https://arxiv.org/abs/2002.05709.

Paper settings used as defaults: LARS, base learning rate 0.3 per 256 images (linear scaling),
weight decay 1e-6, 10 warmup epochs then cosine decay, temperature 0.1, a 2-layer projection
head (hidden width = feature width, 128 outputs). Negatives are gathered from all devices
(``gather_distributed=True``), so N GPUs see the same 2(B-1) negatives per pair as one GPU with
the whole batch.

Example::

    model = SimCLRModel("resnet18", size=224, batch_size=1024)
    trainer = pl.Trainer(max_epochs=100, precision="bf16-mixed")
    trainer.fit(model, loader)           # loader yields uint8 (B, 1, H, W), labels (B,)
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from radaudit.models.backbone import feature_dim
from radaudit.models.base import ContrastiveModule

__all__ = ["SimCLRModel"]


class SimCLRModel(ContrastiveModule):
    """Backbone + lightly's ``SimCLRProjectionHead`` + ``NTXentLoss``.

    Args:
        backbone: A backbone module or a timm model name (see :class:`radaudit.models.base.ContrastiveModule`).
        temperature: NT-Xent temperature (paper: 0.1 for large batches).
        projection_dim: Output width of the projection head (paper: 128).
        hidden_dim: Hidden width of the projection head; None uses the feature width.
        **kwargs: Options of :class:`radaudit.models.base.ContrastiveModule` (``size``, ``batch_size``,
            ``lr``, ``optimizer``, ``weight_decay``, ``warmup_epochs``, ``compile``, ``seed``, ...).

    Raises:
        ValueError: A bad argument; the message says how to fix it.
    """

    METHOD = "simclr"
    CONFIG_FIELDS = ("temperature",)
    DEFAULT_OPTIMIZER = "lars"
    DEFAULT_LR = 0.3
    DEFAULT_WEIGHT_DECAY = 1e-6
    DEFAULT_TEMPERATURE = 0.1

    def __init__(self, backbone: nn.Module | str = "resnet18", *, temperature: float | None = None,
                 projection_dim: int = 128, hidden_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        self.temperature = float(temperature) if temperature is not None else self.DEFAULT_TEMPERATURE
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (paper: 0.1), got {temperature}")
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 (paper: 128), got {projection_dim}")
        dim = feature_dim(self.backbone)
        self.projection_head = SimCLRProjectionHead(dim, hidden_dim or dim, projection_dim)
        self.criterion = NTXentLoss(temperature=self.temperature, gather_distributed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of normalized images. Shape: (B, C, H, W) -> (B, projection_dim)."""
        return self.projection_head(self.embed(x))

    def compute_loss(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z1 = self(view1)  # (B, projection_dim)
        z2 = self(view2)  # (B, projection_dim)
        with torch.autocast(z1.device.type, enabled=False):
            return self.criterion(z1.float(), z2.float())

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]
