"""Contrastive pretraining (SimCLR, BYOL, SupCon), embeddings, evaluation and checkpoints.

Modules load on first attribute access, so ``from radaudit import models`` stays cheap::

    from radaudit.models import PretrainConfig, pretrain, embed, load_backbone

- :mod:`radaudit.models.backbone`: ``create_backbone`` (timm), ``feature_dim``
- :mod:`radaudit.models.methods`: the registry of the SSL methods (``METHODS``, ``make_two_view``)
- :mod:`radaudit.models.simclr`, :mod:`radaudit.models.byol`, :mod:`radaudit.models.supcon`: one LightningModule per method
  (and ``SupConLoss``)
- :mod:`radaudit.models.train`: ``PretrainConfig``, ``pretrain``
- :mod:`radaudit.models.checkpoint`: safetensors checkpoints, ``load_backbone``
- :mod:`radaudit.models.embed`: ``embed``; :mod:`radaudit.models.probe`: kNN / linear-probe accuracy, loss-curve PNG
- :mod:`radaudit.models.heads`, :mod:`radaudit.models.ensemble`, :mod:`radaudit.models.ood`,
  :mod:`radaudit.models.audit`: linear heads, ensemble, out-of-domain evidence, the cleanlab audit
- :mod:`radaudit.models.validation`: the input checks all of them share

No module here imports dagster or reads the data dir (:mod:`radaudit.pipelines.stages` does).
Importing the package imports :mod:`radaudit.augment` first, which sets torch's OpenMP threads
to wait passively (after a short spin) before torch loads (:func:`radaudit.augment.passive_openmp`).
"""

from __future__ import annotations

import importlib
from typing import Any

from radaudit import augment  # noqa: F401  (before any torch import: OMP_WAIT_POLICY)

_LAZY = {
    "create_backbone": "radaudit.models.backbone",
    "feature_dim": "radaudit.models.backbone",
    "SimCLRModel": "radaudit.models.simclr",
    "BYOLModel": "radaudit.models.byol",
    "SupConModel": "radaudit.models.supcon",
    "SupConLoss": "radaudit.models.supcon",
    "PretrainConfig": "radaudit.models.train",
    "PretrainResult": "radaudit.models.train",
    "pretrain": "radaudit.models.train",
    "knn_monitor": "radaudit.models.train",
    "save_checkpoint": "radaudit.models.checkpoint",
    "load_checkpoint": "radaudit.models.checkpoint",
    "load_backbone": "radaudit.models.checkpoint",
    "embed": "radaudit.models.embed",
    "knn_accuracy": "radaudit.models.probe",
    "linear_probe_accuracy": "radaudit.models.probe",
    "plot_loss_curve": "radaudit.models.probe",
    "ArrayDataset": "radaudit.models.data",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
