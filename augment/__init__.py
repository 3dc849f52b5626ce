"""Radiograph transforms and the two-view SSL augmentation pipeline.

``border`` and ``orientation`` import numpy only, for CPU decode workers; the torch modules
(``gauges``, ``pipeline``, ``dataset``) load on first attribute access, so ``import augment``
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from augment.border import find_exposed_field, remove_border
from augment.orientation import correct_orientation, rotation_from_orientation

_LAZY = {
    **dict.fromkeys(["GaugeBank", "GaugeInsertion", "draw_ball", "draw_ring", "draw_ruler"], "augment.gauges"),
    **dict.fromkeys(["ViewConfig", "RadiographViewTransform", "TwoViewTransform", "SimCLRTwoViewTransform",
                     "BYOLTwoViewTransform", "SupConTwoViewTransform", "METHODS", "make_two_view"],
                    "augment.pipeline"),
    **dict.fromkeys(["CacheDataset", "StackedCacheDataset", "make_loader"], "augment.dataset"),
}

__all__ = ["find_exposed_field", "remove_border", "correct_orientation", "rotation_from_orientation",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")
