"""Contrastive pretraining (SimCLR, BYOL, SupCon), embeddings, evaluation and checkpoints.

Modules load on first attribute access, so ``import models`` stays cheap::

    from models import PretrainConfig, pretrain, embed, load_backbone

- :mod:`models.backbone`: ``create_backbone`` (timm), ``feature_dim``
- :mod:`models.simclr`, :mod:`models.byol`, :mod:`models.supcon`: one LightningModule per method
  (and ``SupConLoss``)
- :mod:`models.train`: ``PretrainConfig``, ``pretrain``
- :mod:`models.checkpoint`: safetensors checkpoints, ``load_backbone``
- :mod:`models.embed`: ``embed``; :mod:`models.probe`: kNN / linear-probe accuracy, loss-curve PNG

No module here imports dagster. Importing the package imports :mod:`augment` first, which sets
torch's OpenMP threads to wait passively (after a short spin) before torch loads
(:func:`augment.passive_openmp`).
"""

from __future__ import annotations

import importlib
from typing import Any

import augment  # noqa: F401  (before any torch import: OMP_WAIT_POLICY)

_LAZY = {
    "create_backbone": "models.backbone",
    "feature_dim": "models.backbone",
    "SimCLRModel": "models.simclr",
    "BYOLModel": "models.byol",
    "SupConModel": "models.supcon",
    "SupConLoss": "models.supcon",
    "PretrainConfig": "models.train",
    "PretrainResult": "models.train",
    "pretrain": "models.train",
    "knn_monitor": "models.train",
    "save_checkpoint": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
    "load_backbone": "models.checkpoint",
    "embed": "models.embed",
    "knn_accuracy": "models.probe",
    "linear_probe_accuracy": "models.probe",
    "plot_loss_curve": "models.probe",
    "ArrayDataset": "models.data",
}

# Methods that learn from the recorded labels: cross-fitted by patient fold, whose folds keep
# near-duplicate groups on one side.
LABEL_TRAINED: tuple[str, ...] = ("supcon",)

__all__ = [*_LAZY, "LABEL_TRAINED"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
