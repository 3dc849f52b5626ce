"""The SSL methods: one registry, from a method's name to its model class, view transform and defaults.

Everything that takes a method name (the training config, the Dagster assets, the CLI, the
benchmarks) looks it up here, and nothing outside a method's own file branches on its name.
A method's paper settings (optimizer, learning rate, weight decay) and the config fields it takes
are class attributes of its model (:mod:`radaudit.models.simclr`, :mod:`radaudit.models.byol`,
:mod:`radaudit.models.supcon`). The classes load on first use, so this module stays cheap to import
(the Dagster definitions list the methods without loading torch)::

    from radaudit.models.methods import METHODS, make_two_view, method

    method("byol").model_class()          # BYOLModel
    make_two_view("byol", size=64)        # its two-view transform
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from radaudit.augment import DEFAULT_IMAGE_SIZE

if TYPE_CHECKING:
    from radaudit.augment.pipeline import TwoViewTransform
    from radaudit.models.base import ContrastiveModule

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_METHODS", "LABEL_TRAINED", "METHODS", "MethodSpec", "make_two_view",
           "method"]


@dataclass(frozen=True)
class MethodSpec:
    """One SSL method.

    Attributes:
        name: The key used everywhere (configs, asset keys, file names).
        model: ``module:Class`` of its LightningModule.
        transform: ``module:Class`` of its two-view transform.
        label_trained: It learns from the recorded labels, so it is cross-fitted by patient fold
            (and its folds keep near-duplicate groups on one side).
    """

    name: str
    model: str
    transform: str
    label_trained: bool = False

    def model_class(self) -> type[ContrastiveModule]:
        """The LightningModule class (imports torch and lightly)."""
        return _load(self.model)

    def transform_class(self) -> type[TwoViewTransform]:
        """The two-view transform class (imports torch)."""
        return _load(self.transform)


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("simclr", "radaudit.models.simclr:SimCLRModel", "radaudit.augment.pipeline:SimCLRTwoViewTransform"),
    MethodSpec("byol", "radaudit.models.byol:BYOLModel", "radaudit.augment.pipeline:BYOLTwoViewTransform"),
    MethodSpec("supcon", "radaudit.models.supcon:SupConModel", "radaudit.augment.pipeline:SupConTwoViewTransform",
               label_trained=True),
)}
# The paper's three, pretrained and ensembled by default (the GPU audit).
DEFAULT_METHODS: tuple[str, ...] = tuple(METHODS)
LABEL_TRAINED: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.label_trained)


def method(name: str) -> MethodSpec:
    """The registry entry of a method (case-insensitive).

    Raises:
        ValueError: Unknown method; the message lists the valid ones.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[key]


def make_two_view(name: str, *, size: int = DEFAULT_IMAGE_SIZE, **overrides: Any) -> TwoViewTransform:
    """The two-view transform of an SSL method with its documented defaults.

    Args:
        name: One of :data:`METHODS` (case-insensitive).
        size: Output side in pixels.
        **overrides: ``seed``, ``gauge_bank``, ``view1`` / ``view2`` (dicts of per-view changes),
            or any :class:`radaudit.augment.pipeline.ViewConfig` field, changed in both views.

    Raises:
        ValueError: Unknown method (the message lists the valid ones) or a bad option value.
        TypeError: Unknown option name (the message lists the valid ones).
    """
    return method(name).transform_class()(size=size, **overrides)
