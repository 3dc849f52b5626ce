"""BYOL: an online network predicts a momentum (target) network's projection of the other view.

Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
https://arxiv.org/abs/2006.07733.

Paper settings used as defaults: LARS, base learning rate 0.2 per 256 images (linear scaling),
weight decay 1.5e-6, 10 warmup epochs then cosine decay; projection and prediction MLPs with
4096 hidden and 256 output units. The target network's decay rate follows
``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` over the K steps of the run, from
``tau_base`` to 1 (lightly's ``cosine_schedule``). BYOL used ``tau_base = 0.996`` at batch 4096;
the default here, 0.9995, is the value used at batch 896 in the radiograph setting this project
follows (a smaller batch means more steps per epoch, so a slower target).

The target network is updated after every optimizer step with lightly's ``update_momentum``
(an exponential moving average of the online weights); its BatchNorm statistics come from its
own forward passes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from radaudit.models.backbone import feature_dim
from radaudit.models.base import ContrastiveModule

__all__ = ["BYOLModel"]


class BYOLModel(ContrastiveModule):
    """Online backbone + lightly's BYOL projection and prediction heads; momentum target copy.

    Args:
        backbone: A backbone module or a timm model name (see :class:`radaudit.models.base.ContrastiveModule`).
        tau_base: Target decay rate at the first step, in [0, 1); rises to 1 by the last step.
        projection_dim: Output width of the projection and prediction heads (paper: 256).
        hidden_dim: Hidden width of both MLPs (paper: 4096).
        **kwargs: Options of :class:`radaudit.models.base.ContrastiveModule`.

    Raises:
        ValueError: A bad argument; the message says how to fix it.
    """

    METHOD = "byol"
    CONFIG_FIELDS = ("tau_base",)
    DEFAULT_OPTIMIZER = "lars"
    DEFAULT_LR = 0.2
    DEFAULT_WEIGHT_DECAY = 1.5e-6

    def __init__(self, backbone: nn.Module | str = "resnet18", *, tau_base: float = 0.9995,
                 projection_dim: int = 256, hidden_dim: int = 4096, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if not 0.0 <= tau_base < 1.0:
            raise ValueError(f"tau_base must be in [0, 1) (BYOL: 0.996 at batch 4096), got {tau_base}")
        if projection_dim < 1 or hidden_dim < 1:
            raise ValueError(f"projection_dim and hidden_dim must be >= 1 (paper: 256 and 4096), "
                             f"got {projection_dim} and {hidden_dim}")
        self.tau_base = float(tau_base)
        dim = feature_dim(self.backbone)
        self.projection_head = BYOLProjectionHead(dim, hidden_dim, projection_dim)
        self.prediction_head = BYOLPredictionHead(projection_dim, hidden_dim, projection_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.tau = self.tau_base

    def momentum_tau(self, step: int, total_steps: int) -> float:
        """The target decay rate at optimizer step ``step`` of ``total_steps``.

        Returns ``tau_base`` at step 0 and 1.0 at the last step (``total_steps - 1``) and beyond.
        """
        return cosine_schedule(min(step, total_steps), total_steps, self.tau_base, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Online prediction of normalized images. Shape: (B, C, H, W) -> (B, projection_dim)."""
        return self.prediction_head(self.projection_head(self.embed(x)))

    @torch.no_grad()
    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        """Target projection. Shape: (B, C, H, W) -> (B, projection_dim)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def compute_loss(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p1, p2 = self(view1), self(view2)  # (B, projection_dim) each
        z1, z2 = self.forward_momentum(view1), self.forward_momentum(view2)  # (B, projection_dim) each
        with torch.autocast(p1.device.type, enabled=False):
            return 0.5 * (self.criterion(p1.float(), z2.float()) + self.criterion(p2.float(), z1.float()))

    def after_optimizer_step(self) -> None:
        # global_step already counts the step just taken: step k (from 0) uses tau(k).
        self.tau = self.momentum_tau(max(0, self.global_step - 1), self.total_steps())
        update_momentum(self.backbone, self.backbone_momentum, m=self.tau)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.tau)
        if self._trainer is not None:
            self.log("tau", self.tau, on_step=True, on_epoch=False)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head, self.prediction_head]

    def momentum_modules(self) -> list[nn.Module]:
        return [self.backbone_momentum, self.projection_head_momentum]
