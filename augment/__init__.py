"""Radiograph augmentations and the two-view SSL augmentation pipeline.

The torch modules (``gauges``, ``pipeline``, ``dataset``) load on first attribute access, so
``from radaudit import augment`` stays cheap. The ingest's preprocessing (border removal,
orientation) is :mod:`radaudit.pacs.border` and :mod:`radaudit.pacs.orientation`; which view
transform each SSL method uses is :mod:`radaudit.models.methods`.

Importing this package (``models`` imports it first) makes torch's OpenMP threads wait
passively after a short spin, unless the environment already chooses: see :func:`passive_openmp`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def passive_openmp() -> bool:
    """Make torch's OpenMP threads sleep soon, not spin, while they wait; True if it can take effect.

    torch's CPU kernels run on a GNU OpenMP pool whose threads spin for 300,000 rounds at every
    barrier. When the cores are shared (another training job, a test run, the DataLoader
    workers), a spinning thread burns the time slice its partner needs to reach the barrier.
    Measured on 2 shared cores, one BYOL step (batch 64, 64 px; median of 5): default 3.9-11.1 s,
    ``OMP_WAIT_POLICY=PASSIVE`` 1.8-2.8 s, PASSIVE after 1,000 spins 1.9-2.2 s; on the same
    cores free: ACTIVE 1.0-1.2 s, PASSIVE 1.3 s, PASSIVE after 1,000 spins 1.0 s. So this sets
    ``OMP_WAIT_POLICY=PASSIVE`` (any OpenMP runtime) and ``GOMP_SPINCOUNT=1000`` (GNU's: spin
    that long first), unless either is set already (the user's choice is kept as it is).

    libgomp reads them once, when torch loads it: this must run before the first ``import torch``.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["GOMP_SPINCOUNT"] = "1000"
    return "torch" not in sys.modules


passive_openmp()

# Side of the training views and of the embedding input, unless a run says otherwise.
DEFAULT_IMAGE_SIZE = 224

_LAZY = {
    **dict.fromkeys(["GaugeBank", "GaugeInsertion", "draw_ball", "draw_ring", "draw_ruler"], "radaudit.augment.gauges"),
    **dict.fromkeys(["ViewConfig", "RadiographViewTransform", "TwoViewTransform", "SimCLRTwoViewTransform",
                     "BYOLTwoViewTransform", "SupConTwoViewTransform"],
                    "radaudit.augment.pipeline"),
    **dict.fromkeys(["CacheDataset", "StackedCacheDataset", "make_loader"], "radaudit.augment.dataset"),
}

__all__ = ["DEFAULT_IMAGE_SIZE", "passive_openmp", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")
