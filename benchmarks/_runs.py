"""What the site and gauge benchmarks share: a data dir from a synthetic export, a backbone with its
embeddings and heads, and figures of class probabilities against the export's truth.

The steps are the library stages that ``benchmarks/quality.py`` drives (no Dagster); the figures
are computed from probabilities directly, so heads fit on one data dir can be scored on another.
Import it as ``benchmarks._runs`` with the repository root on ``sys.path`` (as the scripts put it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radaudit.models.presets import AuditPreset
from radaudit.pipelines import stages

if TYPE_CHECKING:
    from radaudit.models.heads import OOFResult

__all__ = ["Trained", "accuracy", "accuracy_by", "add_run_options", "embed_with", "ingest", "mislabel_list",
           "precision_at_k", "train", "truth_frame", "work_dir"]


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options every such benchmark takes: export shards, decode workers, work dir, JSON file, log."""
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 1, help="parallel export processes")
    ap.add_argument("--ingest-workers", type=int, default=0, help="decode workers (0: all cores)")
    ap.add_argument("--workdir", type=Path, help="keep the exports and data dirs here (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="figures file (see the module docstring)")
    ap.add_argument("--verbose", action="store_true", help="print the pretraining log")


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep``, or a temporary folder removed afterwards (also when the run fails)."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def ingest(export: Path, data: Path, cache_size: int, workers: int = 0) -> int:
    """Index and cache ``export`` into ``data``, map its labels and group its near duplicates.

    Returns:
        The images the models see (:func:`radaudit.pipelines.stages.load_training_set`).
    """
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest

    run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=cache_size), workers=workers))
    stages.map_labels(data)
    stages.find_near_duplicates(data)
    return len(stages.load_training_set(data).uids)


@dataclass(frozen=True)
class Trained:
    """One backbone pretrained on a data dir, with its embeddings and out-of-fold heads.

    Attributes:
        pretrain_s: Seconds of pretraining.
        heads_s: Seconds of embedding every image and fitting the heads.
        epochs, steps: Epochs and optimizer steps trained.
        monitor: The training monitor's last figures (kNN and linear probe on the true regions).
        oof: :func:`radaudit.pipelines.stages.compute_oof`'s result on the recorded labels
            (``head``: the head fit on every labelled image).
        uids: The data dir's training set, in the order of ``oof.probabilities``' rows.
    """

    pretrain_s: float
    heads_s: float
    epochs: int
    steps: int
    monitor: dict[str, float]
    oof: OOFResult
    uids: list[str]


def train(data: Path, truth: Path, preset: AuditPreset, method: str, seed: int,
          log: Callable[[str], None] | None = None, **config: Any) -> Trained:
    """Pretrain ``method`` from scratch with ``preset``'s settings (``config``: other fields of
    :class:`radaudit.models.train.PretrainConfig`), embed every image, fit the heads."""
    t = time.perf_counter()
    settings = preset.pretrain_config(method, seed=seed, progress_bar=False, **config)
    result = stages.train_backbone(data, method, settings, truth_path=str(truth), from_scratch=True, log=log)
    pretrain_s = time.perf_counter() - t
    t = time.perf_counter()
    stages.compute_embeddings(data, method, reuse=False, crop=preset.embed_crop)
    oof = stages.compute_oof(data, method, seed=seed)
    monitor = {k: v for k, v in (result.metrics[-1] if result.metrics else {}).items() if k != "epoch"}
    return Trained(pretrain_s, time.perf_counter() - t, len(result.history), result.steps, monitor, oof,
                   stages.load_training_set(data).uids)


def embed_with(backbone_data: Path, method: str, data: Path, size: int, crop: float | None) -> np.ndarray:
    """Features of ``data``'s training set from the backbone trained on ``backbone_data``.

    Returns:
        Shape: (N, D), float32, in ``data``'s training-set order.
    """
    from radaudit.models.checkpoint import load_backbone
    from radaudit.models.embed import embed
    from radaudit.pacs.layout import checkpoint_dir

    ts = stages.load_training_set(data)
    return embed(load_backbone(checkpoint_dir(backbone_data, method)), ts.dataset(data), size=size,
                 crop=crop).astype(np.float32)


def accuracy(probs: np.ndarray, true: np.ndarray) -> float:
    """Share of the in-domain rows (``true`` >= 0) whose most probable class is the true one.

    Args:
        probs: Shape: (N, K).
        true: Shape: (N,), true class, -1 out of domain.
    """
    rows = true >= 0
    return float((probs[rows].argmax(1) == true[rows]).mean()) if rows.any() else float("nan")


def accuracy_by(probs: np.ndarray, true: np.ndarray, groups: np.ndarray) -> dict[str, tuple[float, int]]:
    """:func:`accuracy` per group (e.g. acquisition device), with its in-domain row count."""
    out = {}
    for g in sorted(set(groups[true >= 0].tolist())):
        rows = (groups == g) & (true >= 0)
        out[str(g)] = (accuracy(probs[rows], true[rows]), int(rows.sum()))
    return out


def mislabel_list(probs: np.ndarray, recorded: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The ``k`` labelled in-domain rows with the lowest probability of their recorded label, ``k``
    being how many of those rows carry a wrong label: the list a radiologist would read.

    Unlike :func:`radaudit.pipelines.stages.score_issues` (its rows not reported out of domain by
    the audit), the candidates are the truly in-domain labelled rows and the ranking is the bare
    probability of the recorded label: a figure of the heads alone, for heads fit on another data dir too.

    Args:
        probs: Shape: (N, K).
        recorded: Shape: (N,), recorded class, -1 for a null label.
        true: Shape: (N,), true class, -1 out of domain.

    Returns:
        Shape: (N,), bool.
    """
    rows = np.flatnonzero((recorded >= 0) & (true >= 0))
    k = int((recorded[rows] != true[rows]).sum())
    listed = np.zeros(len(recorded), dtype=bool)
    listed[rows[np.argsort(probs[rows, recorded[rows]], kind="stable")[:k]]] = True
    return listed


def precision_at_k(probs: np.ndarray, recorded: np.ndarray, true: np.ndarray) -> tuple[float, int]:
    """Of the :func:`mislabel_list`, the share whose recorded label is wrong, and its length ``k``
    (NaN and 0 when no label is wrong)."""
    listed = mislabel_list(probs, recorded, true)
    wrong = (recorded >= 0) & (true >= 0) & (recorded != true)
    return stages.precision_at_k(np.flatnonzero(listed), wrong), int(wrong.sum())


def truth_frame(truth: Path, uids: list[str]) -> pd.DataFrame:
    """The truth rows of ``uids``, in their order."""
    return stages.read_truth(truth).reindex(uids)
