"""What the contrastive methods share: on-device two-view augmentation, optimizer and schedule.

A method (:mod:`radaudit.models.simclr`, :mod:`radaudit.models.byol`, :mod:`radaudit.models.supcon`) subclasses
:class:`ContrastiveModule` and implements :meth:`ContrastiveModule.compute_loss` on two float
views. ``training_step`` receives the DataLoader's uint8 batch already on the device, makes both
views there (:func:`radaudit.models.methods.make_two_view`), and calls ``compute_loss``: the loader
moves one byte per pixel, the GPU does every augmentation.

Learning rate: ``lr`` is the base rate per 256 images and scales linearly with the global batch
(``lr * batch_size / 256``, Goyal et al., 2017, as SimCLR and BYOL do). The schedule is a
per-step linear warmup over ``warmup_epochs`` followed by cosine decay to 0 (Loshchilov &
Hutter, 2017), lightly's :class:`~lightly.utils.scheduler.CosineWarmupScheduler`. Biases and
normalization weights are excluded from weight decay and, with LARS, from the trust-ratio
scaling (as in SimCLR and BYOL).

Precision: the Trainer's autocast (``bf16-mixed`` on GPU) covers the backbone and heads; the
augmentation and the loss run in float32 (autocast off), so the logits of the contrastive
softmax keep their precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from radaudit.augment import DEFAULT_IMAGE_SIZE
from radaudit.models.backbone import create_backbone
from radaudit.models.methods import make_two_view

__all__ = ["ContrastiveModule", "OPTIMIZERS", "build_optimizer", "scaled_lr"]

OPTIMIZERS = ("lars", "sgd", "adamw")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """Linear scaling rule: ``base_lr * batch_size / 256`` (``batch_size`` is global)."""
    return base_lr * batch_size / 256


def build_optimizer(name: str, modules: Iterable[nn.Module], *, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """An optimizer over the trainable parameters of ``modules``, no decay on biases and norms.

    Args:
        name: ``lars`` (You et al., 2017, lightly's implementation), ``sgd`` (with momentum) or
            ``adamw`` (Loshchilov & Hutter, 2019).
        modules: The modules to optimize; parameters with ``requires_grad=False`` are skipped.
        lr: Learning rate (already scaled with the batch size).
        weight_decay: Weight decay of the weights (not biases or normalization parameters).
        momentum: Momentum of LARS and SGD.

    Raises:
        ValueError: Unknown optimizer name (the message lists the valid ones) or bad numbers.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = get_weight_decay_parameters(list(modules))
    groups = [
        {"name": "decay", "params": [p for p in decay if p.requires_grad], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
    ]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` or ``images`` -> images (B, 1, H, W), labels (B,) int64 (-1 = null)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"expected a batch (images, labels), got a sequence of {len(batch)} items")
        images, labels = batch
    else:
        images, labels = batch, None
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a tensor of images, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[:, None]  # (B, 1, H, W)
    if labels is None:
        labels = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
    return images, torch.as_tensor(labels, device=images.device).long()


class ContrastiveModule(pl.LightningModule):
    """Base class of the contrastive methods: backbone, two-view augmentation, optimization.

    Args:
        backbone: A backbone module, or a timm model name for :func:`radaudit.models.backbone.create_backbone`.
        in_chans: Input channels when ``backbone`` is a name.
        size: Side of the augmented views in pixels.
        batch_size: Global batch size (all devices together), for the learning-rate scaling.
        lr: Base learning rate per 256 images; None uses the method's paper value.
        optimizer: ``lars``, ``sgd`` or ``adamw``; None uses the method's paper choice.
        weight_decay: None uses the method's paper value.
        warmup_epochs: Epochs of linear learning-rate warmup (fractions allowed).
        channels_last: Run the backbone in channels-last memory format (faster convolutions on
            tensor cores).
        compile: ``torch.compile`` the backbone in place (state-dict keys stay unchanged).
        seed: Seed of the augmentation's parameter generator; reseeded every epoch with
            ``(seed, epoch, rank)`` so a resumed run draws the same views as an uninterrupted one
            would from that epoch on. None draws from torch's global generator.
        augment: Overrides for :func:`radaudit.models.methods.make_two_view` (ViewConfig fields,
            ``view1``/``view2`` dicts, ``gauge_bank``).

    Raises:
        ValueError: A bad argument; the message says which and how to fix it.
    """

    METHOD: ClassVar[str] = ""
    # The PretrainConfig fields this method takes beside the common ones (radaudit.models.train.build_model).
    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ()
    DEFAULT_OPTIMIZER: ClassVar[str] = "lars"
    DEFAULT_LR: ClassVar[float] = 0.3
    DEFAULT_WEIGHT_DECAY: ClassVar[float] = 1e-6

    def __init__(self, backbone: nn.Module | str = "resnet18", *, in_chans: int = 1, size: int = DEFAULT_IMAGE_SIZE,
                 batch_size: int = 256, lr: float | None = None, optimizer: str | None = None,
                 weight_decay: float | None = None, warmup_epochs: float = 10.0, channels_last: bool = True,
                 compile: bool = False, seed: int | None = 0,
                 augment: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 2:
            raise ValueError(f"batch_size must be an int >= 2 (contrastive losses need negatives), got {batch_size!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 16:
            raise ValueError(f"size (view side in pixels) must be an int >= 16, got {size!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.optimizer_name = optimizer if optimizer is not None else self.DEFAULT_OPTIMIZER
        if self.optimizer_name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        self.base_lr = float(lr) if lr is not None else self.DEFAULT_LR
        if not self.base_lr > 0:
            raise ValueError(f"lr (base learning rate per 256 images) must be > 0, got {lr}")
        self.weight_decay = float(weight_decay) if weight_decay is not None else self.DEFAULT_WEIGHT_DECAY
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if isinstance(backbone, str):
            self.backbone_name: str | None = backbone
            backbone = create_backbone(backbone, in_chans=in_chans)
        elif isinstance(backbone, nn.Module):
            self.backbone_name = None
        else:
            raise TypeError(f"backbone must be an nn.Module or a timm model name, got {type(backbone).__name__}")
        self.in_chans = in_chans
        self.backbone = backbone
        self.size = size
        self.batch_size = batch_size
        self.warmup_epochs = float(warmup_epochs)
        self.channels_last = channels_last
        self.seed = seed
        self.two_view = make_two_view(self.METHOD, size=size, seed=seed, **dict(augment or {}))
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # Compiled in configure_model, in every process that trains: a compiled module loses its
        # compiled call when pickled, as ddp_spawn pickles the module for its ranks.
        self.compile_backbone = compile
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self.history: list[float] = []
        self.completed_epochs = 0

    # ---- to implement per method -------------------------------------------------------------

    def configure_model(self) -> None:
        """Lightning calls this in each training process, before the optimizers."""
        if self.compile_backbone and getattr(self.backbone, "_compiled_call_impl", None) is None:
            self.backbone.compile()

    def compute_loss(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The method's loss on two augmented views.

        Args:
            view1: Shape: (B, C, size, size), float, normalized.
            view2: Shape: (B, C, size, size).
            labels: Class indices, -1 for null. Shape: (B,).

        Returns:
            Scalar loss.
        """
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """Modules the optimizer updates (the backbone and the method's heads)."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (BYOL updates its momentum encoder here)."""

    # ---- shared ------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """Peak learning rate: the base rate scaled to the global batch size."""
        return scaled_lr(self.base_lr, self.batch_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of normalized images. Shape: (B, C, H, W) -> (B, D)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def make_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of a uint8 batch, on the batch's device, in float32.

        Args:
            images: Shape: (B, 1, H, W), uint8.

        Returns:
            Two tensors of Shape: (B, in_chans, size, size).
        """
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            v1, v2 = self.two_view(images)  # (B, 1, size, size) each
        if self.in_chans != 1:
            v1, v2 = v1.expand(-1, self.in_chans, -1, -1), v2.expand(-1, self.in_chans, -1, -1)
        return v1, v2

    def shared_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Augment on the device, then the loss. images: (B, 1, H, W) uint8; labels: (B,)."""
        v1, v2 = self.make_views(images)
        return self.compute_loss(v1, v2, labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = _unpack(batch)  # (B, 1, H, W) uint8, (B,) int64
        loss = self.shared_step(images, labels)
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1
        if self._trainer is not None:
            self.log("loss", detached, prog_bar=True, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = None, 0
        if self.seed is not None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            for i, view in enumerate((self.two_view.view1, self.two_view.view2)):
                gen = getattr(view, "generator", None)
                if isinstance(gen, torch.Generator):
                    gen.manual_seed(hash((self.seed, self.current_epoch, rank, i)) % 2**63)

    def close_epoch(self) -> float | None:
        """Append this epoch's mean loss (averaged over devices) to :attr:`history`; idempotent."""
        if self._loss_sum is None or self._loss_count == 0:
            return None
        mean = self._loss_sum / self._loss_count
        if self._trainer is not None:
            mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
        value = float(mean)
        self.history.append(value)
        self.completed_epochs = self.current_epoch + 1
        self._loss_sum, self._loss_count = None, 0
        return value

    def on_train_epoch_end(self) -> None:
        self.close_epoch()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_optimizer_step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["history"] = list(self.history)
        checkpoint["radaudit"] = {  # SafetensorsCheckpointIO moves this into state.json
            "method": self.METHOD, "backbone": self.backbone_name, "in_chans": self.in_chans,
            "size": self.size, "epoch": self.completed_epochs, "history": list(self.history),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [float(v) for v in checkpoint.get("history", [])]
        info = checkpoint.get("radaudit", {})
        self.completed_epochs = int(info.get("epoch", len(self.history)))

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (all epochs, or ``max_steps``)."""
        if self._trainer is None:
            return 1
        return max(1, int(self.trainer.estimated_stepping_batches))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_name, self.trainable_modules(), lr=self.lr,
                                    weight_decay=self.weight_decay)
        total = self.total_steps()
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        per_epoch = self.trainer.num_training_batches if self._trainer is not None else total
        if not isinstance(per_epoch, int) or per_epoch <= 0:  # inf for iterable datasets
            per_epoch = total // max(1, epochs or 1)
        warmup = min(total, int(round(self.warmup_epochs * per_epoch)))
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup, max_epochs=total, end_value=0.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def momentum_modules(self) -> list[nn.Module]:
        """Modules that are not optimized but kept in checkpoints (BYOL's momentum encoder)."""
        return []
