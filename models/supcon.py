"""Supervised contrastive learning: positives are the other view and every image of the same class.

Khosla et al., 2020, "Supervised Contrastive Learning", NeurIPS, https://arxiv.org/abs/2004.11362.

lightly has no SupCon loss; :class:`SupConLoss` implements the paper's L^sup_out (eq. 2),
averaging the log-likelihood over each anchor's positives outside the log. Recorded region labels
are used where present; an image whose label is null (-1) is its own class: its only positive is
its other view, exactly as in SimCLR. With every label null the loss equals NT-Xent.

Defaults follow the paper's reference code (github.com/HobbitLong/SupContrast): SGD with momentum
0.9, learning rate 0.5 at batch 1024 (0.125 per 256 images, linear scaling), weight decay 1e-4,
cosine decay with warmup, temperature 0.1, a 2-layer MLP head (hidden = feature width, 128
outputs, no BatchNorm). The reference code multiplies the loss by ``temperature /
base_temperature``; with its defaults that factor is 1 and it is left out here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist
from torch import nn

from radaudit.models.backbone import feature_dim
from radaudit.models.base import ContrastiveModule

__all__ = ["SupConLoss", "SupConModel"]


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., 2020, eq. 2, "L^sup_out").

    For the 2N embeddings of a batch (two views per image) and anchor i,

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    where z are L2-normalized, a runs over all other 2N - 1 embeddings and P(i) are those with
    the same label as i, its own other view always included. An image with a null label (-1) is
    its own class, so P(i) is its other view only. The loss is the mean of L_i over all 2N anchors.

    Args:
        temperature: Scales the logits by ``1 / temperature`` (paper: 0.1).
        gather_distributed: Gather embeddings and labels from all processes before the loss,
            so the positives and negatives of an anchor are those of the global batch.

    Raises:
        ValueError: ``temperature`` is not positive, or ``gather_distributed`` without
            torch.distributed support.

    Examples:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> z0, z1 = model(view0), model(view1)     # Shape: (batch_size, embedding_dim)
        >>> loss = loss_fn(z0, z1, labels)          # labels Shape: (batch_size,), -1 = null
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 1e-8:
            raise ValueError(f"temperature must be > 0 (paper: 0.1), got {temperature}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError("gather_distributed=True but torch.distributed is not available; "
                             "set gather_distributed=False or install a torch build with distributed support")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, out0: torch.Tensor, out1: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Supervised contrastive loss of two views.

        Args:
            out0: Embeddings of the first views. Shape: (batch_size, embedding_dim).
            out1: Embeddings of the second views. Shape: (batch_size, embedding_dim).
            labels: Class index per image, -1 for null. Shape: (batch_size,). None: all null
                (the loss is then NT-Xent).

        Returns:
            Scalar loss, the mean over the 2 * batch_size anchors of this process.

        Raises:
            ValueError: Mismatched shapes, non-integer labels or labels below -1.
        """
        if out0.ndim != 2 or out0.shape != out1.shape:
            raise ValueError(f"out0 and out1 must both have Shape (batch_size, embedding_dim), "
                             f"got {tuple(out0.shape)} and {tuple(out1.shape)}")
        n = out0.shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long, device=out0.device)
        if labels.shape != (n,):
            raise ValueError(f"labels must have Shape (batch_size,) = ({n},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices (-1 for null), got dtype {labels.dtype}")
        labels = labels.to(out0.device).long()
        if bool((labels < -1).any()):
            raise ValueError("labels must be class indices >= 0, or -1 for null")

        z0 = F.normalize(out0, dim=1)  # (n, d)
        z1 = F.normalize(out1, dim=1)  # (n, d)
        if self.gather_distributed and dist.world_size() > 1:
            z0_all = torch.cat(dist.gather(z0), 0)  # (m, d), m = n * world_size
            z1_all = torch.cat(dist.gather(z1), 0)  # (m, d)
            gathered = [torch.empty_like(labels) for _ in range(dist.world_size())]
            torch_dist.all_gather(gathered, labels)
            labels_all = torch.cat(gathered, 0)  # (m,)
            offset = dist.rank() * n
        else:
            z0_all, z1_all, labels_all, offset = z0, z1, labels, 0
        m = z0_all.shape[0]

        # A null label becomes a key no other image has: -1 - its global index.
        idx_all = torch.arange(m, device=labels_all.device)
        key_all = torch.where(labels_all >= 0, labels_all, -1 - idx_all)  # (m,)
        key_local = key_all[offset:offset + n]  # (n,)

        anchors = torch.cat([z0, z1], 0)  # (2n, d)
        contrast = torch.cat([z0_all, z1_all], 0)  # (2m, d)
        logits = anchors @ contrast.T / self.temperature  # (2n, 2m)

        rows = torch.arange(2 * n, device=logits.device)
        self_cols = torch.cat([rows[:n] + offset, rows[n:] - n + m + offset])  # (2n,)
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_cols] = True  # (2n, 2m)

        anchor_key = torch.cat([key_local, key_local])  # (2n,)
        contrast_key = torch.cat([key_all, key_all])  # (2m,)
        pos_mask = (anchor_key[:, None] == contrast_key[None, :]) & ~self_mask  # (2n, 2m)

        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (2n, 2m)
        pos_log_prob = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(1)  # (2n,)
        loss = -pos_log_prob / pos_mask.sum(1)  # (2n,), every anchor has >= 1 positive
        return loss.mean()


class SupConModel(ContrastiveModule):
    """Backbone + 2-layer MLP head + :class:`SupConLoss` with recorded labels.

    Args:
        backbone: A backbone module or a timm model name (see :class:`radaudit.models.base.ContrastiveModule`).
        temperature: Loss temperature (paper: 0.1).
        projection_dim: Output width of the head (paper: 128).
        hidden_dim: Hidden width of the head; None uses the feature width (paper).
        **kwargs: Options of :class:`radaudit.models.base.ContrastiveModule`.

    Raises:
        ValueError: A bad argument; the message says how to fix it.
    """

    METHOD = "supcon"
    CONFIG_FIELDS = ("temperature",)
    DEFAULT_OPTIMIZER = "sgd"
    DEFAULT_LR = 0.125
    DEFAULT_WEIGHT_DECAY = 1e-4
    DEFAULT_TEMPERATURE = 0.1

    def __init__(self, backbone: nn.Module | str = "resnet18", *, temperature: float | None = None,
                 projection_dim: int = 128, hidden_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        self.temperature = float(temperature) if temperature is not None else self.DEFAULT_TEMPERATURE
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 (paper: 128), got {projection_dim}")
        dim = feature_dim(self.backbone)
        self.projection_head = SimCLRProjectionHead(dim, hidden_dim or dim, projection_dim, batch_norm=False)
        self.criterion = SupConLoss(temperature=self.temperature, gather_distributed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of normalized images. Shape: (B, C, H, W) -> (B, projection_dim)."""
        return self.projection_head(self.embed(x))

    def compute_loss(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z1 = self(view1)  # (B, projection_dim)
        z2 = self(view2)  # (B, projection_dim)
        with torch.autocast(z1.device.type, enabled=False):
            return self.criterion(z1.float(), z2.float(), labels)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]
