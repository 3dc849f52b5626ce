"""Contrastive pretraining of one backbone: config in, trained backbone and loss history out.

One :class:`PretrainConfig` runs on CPU, one GPU or N GPUs (DDP with SyncBatchNorm and
negatives gathered across devices; ``batch_size`` is global, so the learning rate and the loss see
the same batch on 1 or N GPUs). Every epoch ends with a checkpoint (:mod:`radaudit.models.checkpoint`),
written before the epoch's log line; a crashed run started again with the same ``checkpoint_dir``
resumes after the last complete epoch, with optimizer, schedule, loss history, step count and
random state restored: on the CPU it trains the remaining epochs bitwise as the uninterrupted run
would (same machine, thread count and library versions; ``tests/models/test_train.py``).

Without a GPU the same code runs on the CPU; with ``on_cpu="shrink"`` (default) it first shrinks
the settings (:meth:`PretrainConfig.for_cpu`), and either way it logs
``no GPU: training on CPU with ...``.

Example::

    from radaudit.models.data import ArrayDataset
    from radaudit.models.train import PretrainConfig, pretrain

    ds = ArrayDataset(images, labels)   # uint8 (N, H, W); the stages pass a dataset over the image cache
    result = pretrain(PretrainConfig(method="byol", epochs=100, batch_size=1024,
                                     checkpoint_dir="runs/byol"), ds, log=print)
    result.backbone        # nn.Module, CPU, eval mode
    result.history         # mean loss per epoch
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset

from radaudit.augment import DEFAULT_IMAGE_SIZE
from radaudit.augment.dataset import make_loader
from radaudit.models.base import OPTIMIZERS, ContrastiveModule
from radaudit.models.checkpoint import SafetensorsCheckpointIO, latest_checkpoint, load_checkpoint
from radaudit.models.embed import embed
from radaudit.models.methods import method
from radaudit.models.probe import knn_accuracy, quick_probe_accuracy

__all__ = ["MONITOR_MAX_IMAGES", "MONITOR_MAX_IMAGES_CPU", "PRECISIONS", "PretrainConfig", "PretrainResult",
           "build_model", "knn_monitor", "monitor_options", "pretrain"]

# torch.compile costs about a minute up front; below this many steps it does not pay back.
COMPILE_MIN_STEPS = 2000

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
ON_CPU = ("shrink", "as_is", "fail")

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run depends on.

    Attributes:
        method: ``simclr``, ``byol`` or ``supcon``.
        backbone: timm model name.
        in_chans: Backbone input channels (1: grey radiographs).
        epochs: Epochs to train in total (a resumed run trains the rest).
        batch_size: Global batch size, all devices of all nodes together (papers: 1024; BYOL's 896 fits too).
        lr: Base learning rate per 256 images, scaled linearly with ``batch_size``; None: the
            method's paper value (SimCLR 0.3, BYOL 0.2, SupCon 0.125).
        optimizer: ``lars``, ``sgd`` or ``adamw``; None: the paper's (LARS, LARS, SGD).
        weight_decay: None: the paper's (1e-6, 1.5e-6, 1e-4).
        size: Side of the augmented views in pixels.
        warmup_epochs: Linear learning-rate warmup before the cosine decay.
        tau_base: BYOL's starting target decay rate (cosine-scheduled to 1).
        temperature: SimCLR/SupCon temperature; None: 0.1.
        devices: GPUs to use on each node (DDP when > 1).
        num_nodes: Machines that train together (Lightning's DDP over nodes; every node runs the
            same training with ``MASTER_ADDR``, ``MASTER_PORT`` and its ``NODE_RANK`` set).
        precision: ``auto`` (bf16-mixed on GPU, 32-true on CPU), ``32-true``, ``bf16-mixed``, ``16-mixed``.
        compile: ``torch.compile`` the backbone; None (default): on for GPU runs of at least
            ``COMPILE_MIN_STEPS`` optimizer steps, where the minute it takes to compile pays
            back, off otherwise (always off on CPU).
        channels_last: Channels-last memory format for the backbone.
        num_workers: DataLoader workers per device (they only read uint8 arrays).
        seed: Seeds Python, numpy, torch, the loader's shuffling and the augmentations; a resumed
            run takes their states from the checkpoint.
        checkpoint_dir: Where the per-epoch checkpoints go; None: no checkpoints, no resume.
        keep_checkpoints: Newest epoch checkpoints to keep.
        max_steps: Stop after this many optimizer steps in total (None: run all epochs); the
            schedules then span ``max_steps``.
        on_cpu: Without a GPU: ``shrink`` to :meth:`for_cpu` settings, ``as_is``, or ``fail``.
        progress_bar: Show Lightning's progress bar.
        gauge_dir: A folder of grey crops of real calibration gauges, inserted beside the drawn
            ones (:meth:`radaudit.augment.gauges.GaugeBank.from_folder`); None: drawn gauges only.
        augment: Overrides for :func:`radaudit.models.methods.make_two_view`, as ``(name, value)`` pairs.

    Raises:
        ValueError: A bad value; the message says which and how to fix it.
    """

    method: str = "simclr"
    backbone: str = "resnet18"
    in_chans: int = 1
    epochs: int = 100
    batch_size: int = 1024
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    size: int = DEFAULT_IMAGE_SIZE
    warmup_epochs: float = 10.0
    tau_base: float = 0.9995
    temperature: float | None = None
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    compile: bool | None = None
    channels_last: bool = True
    num_workers: int = 8
    seed: int = 0
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 2
    max_steps: int | None = None
    on_cpu: str = "shrink"
    progress_bar: bool = True
    gauge_dir: str | None = None
    augment: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")

        method(self.method)  # raises for an unknown one, listing the valid ones
        for name in ("in_chans", "epochs", "devices", "num_nodes", "keep_checkpoints"):
            positive_int(name)
        positive_int("batch_size", 2)
        positive_int("size", 16)
        positive_int("num_workers", 0)
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size ({self.batch_size}) is global and must divide evenly over the "
                             f"{self.world_size} processes (devices={self.devices} x num_nodes={self.num_nodes}); "
                             f"use e.g. batch_size={self.batch_size // self.world_size * self.world_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr (base learning rate per 256 images) must be > 0 or None for the paper's, got {self.lr}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)} or None")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if not 0 <= self.tau_base < 1:
            raise ValueError(f"tau_base must be in [0, 1) (BYOL: 0.996 at batch 4096), got {self.tau_base}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 or None (0.1), got {self.temperature}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.max_steps is not None:
            positive_int("max_steps")
        if self.on_cpu not in ON_CPU:
            raise ValueError(f"unknown on_cpu {self.on_cpu!r}; valid: {', '.join(ON_CPU)}")
        object.__setattr__(self, "augment", tuple((str(k), v) for k, v in dict(self.augment).items()))

    @property
    def world_size(self) -> int:
        """Training processes in all: devices on each node times nodes."""
        return self.devices * self.num_nodes

    def replace(self, **changes: Any) -> PretrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def for_cpu(self) -> PretrainConfig:
        """Small settings for a CPU run: at most 64 px, batch 64, 2 epochs (1 warmup), fp32, 1 device on 1 node.

        BYOL's target decay drops to at most 0.99: from the paper's 0.9995 the target network would
        hardly leave its random initialization in so few steps.
        """
        epochs = min(self.epochs, 2)
        return self.replace(size=min(self.size, 64), batch_size=min(self.batch_size, 64), epochs=epochs,
                            tau_base=min(self.tau_base, 0.99),
                            warmup_epochs=min(self.warmup_epochs, epochs / 2), precision="32-true", compile=False,
                            devices=1, num_nodes=1, num_workers=min(self.num_workers, 2))


@dataclass
class PretrainResult:
    """What a pretraining run gives back.

    Attributes:
        method: The method trained.
        backbone: The trained backbone, on the CPU, eval mode.
        history: Mean training loss per epoch, from epoch 1 (including epochs of a crashed run).
        device: What it ran on, e.g. ``cpu`` or ``cuda (1 x NVIDIA H100 80GB HBM3)``.
        wall_time_s: Seconds this call spent training.
        steps: Optimizer steps in total (including those before a resume).
        steps_this_run: Optimizer steps taken by this call.
        resumed_from_epoch: Completed epochs found in the checkpoint (0: a fresh run).
        checkpoint: The last epoch folder written, or None without ``checkpoint_dir``.
        config: The settings actually used (after :meth:`PretrainConfig.for_cpu` where it applied).
        metrics: One dict per evaluation of ``eval_fn``: ``{"epoch": n, <name>: value, ...}``.
    """

    method: str
    backbone: nn.Module
    history: list[float]
    device: str
    wall_time_s: float
    steps: int
    steps_this_run: int
    resumed_from_epoch: int
    checkpoint: Path | None
    config: PretrainConfig
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's state dict (CPU tensors)."""
        return self.backbone.state_dict()


def build_model(config: PretrainConfig) -> ContrastiveModule:
    """The method's LightningModule for a config (the settings a paper fixes are the defaults)."""
    augment = dict(config.augment)
    if config.gauge_dir is not None and "gauge_bank" not in augment:
        from radaudit.augment.gauges import GaugeBank

        augment["gauge_bank"] = GaugeBank.from_folder(config.gauge_dir)
    common: dict[str, Any] = dict(
        in_chans=config.in_chans, size=config.size, batch_size=config.batch_size, lr=config.lr,
        optimizer=config.optimizer, weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
        channels_last=config.channels_last, compile=bool(config.compile), seed=config.seed, augment=augment,
    )
    cls = method(config.method).model_class()
    own = {name: getattr(config, name) for name in cls.CONFIG_FIELDS}
    return cls(config.backbone, **own, **common)


EvalFn = Callable[[nn.Module], dict[str, float]]


# The monitor's subsample. On a GPU: accuracies within about +-1 point (binomial SE at 0.9 with
# 1,000 test images: 0.9 points) for well under a second per evaluation. On 2 CPU cores embedding
# costs 2.5 ms per 64 px image (8 ms when another job shares them), so 256 images keep the five
# evaluations of the 10-epoch demo at 3-4 % of its training time (measured; SE about 4 points).
MONITOR_MAX_IMAGES = 2000
MONITOR_MAX_IMAGES_CPU = 256


def monitor_options(config: PretrainConfig) -> dict[str, Any]:
    """:func:`knn_monitor`'s ``size`` and ``max_images`` for a run of ``config`` on this machine.

    ``size``: the view size :func:`pretrain` will train at (after :meth:`PretrainConfig.for_cpu`
    where it shrinks the run); ``max_images``: ``MONITOR_MAX_IMAGES`` with a GPU,
    ``MONITOR_MAX_IMAGES_CPU`` without.
    """
    cuda = torch.cuda.is_available()
    used = config.for_cpu() if not cuda and config.on_cpu == "shrink" else config
    return {"size": used.size, "max_images": MONITOR_MAX_IMAGES if cuda else MONITOR_MAX_IMAGES_CPU}


def _stratified_split(y: np.ndarray, max_images: int | None, test_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Test and train indices of a class-stratified subsample of the labelled rows (``y >= 0``).

    Each class keeps its share of at most ``max_images`` rows (largest remainders round up, ties
    at random), and within each class ``test_fraction`` of its rows (at least one each side
    when it has two or more) are scored.

    Returns:
        ``(test, train)``, sorted row indices into ``y``.
    """
    idx = np.flatnonzero(y >= 0)
    classes, counts = np.unique(y[idx], return_counts=True)
    n = len(idx) if max_images is None else min(max_images, len(idx))
    quota = counts * n / max(len(idx), 1)
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))  # largest remainder first
    take[order[: n - int(take.sum())]] += 1
    test, train = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c, t in zip(classes, take):
        members = rng.permutation(idx[y[idx] == c])[:t]
        n_test = int(round(t * test_fraction))
        if t >= 2:
            n_test = min(max(n_test, 1), t - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(test)), np.sort(np.concatenate(train))


def knn_monitor(dataset: Dataset, labels: Sequence[int] | np.ndarray, *, size: int | None = None, k: int = 20,
                test_fraction: float = 0.5, seed: int = 0, batch_size: int = 256,
                linear_probe: bool = False, max_images: int | None = MONITOR_MAX_IMAGES,
                probe_steps: int = 100) -> EvalFn:
    """An ``eval_fn`` for :func:`pretrain`: kNN (and linear-probe) accuracy of the current backbone.

    Cheap enough to run during training: it scores a fixed, seeded, class-stratified subsample of
    at most ``max_images`` labelled images (all of them when there are fewer), read from
    ``dataset`` once, at the first evaluation, and kept in memory as uint8 (``max_images`` x H x W
    bytes). Each evaluation embeds them on the backbone's GPU (a GPU if any, for a CPU backbone;
    else the CPU, :func:`radaudit.models.embed.embed`), then runs the kNN and the probe with torch there.

    Args:
        dataset: Images to embed (``(uint8 image, label)`` items); the items' labels are ignored.
        labels: Ground-truth class per image (e.g. the synthetic export's true regions), -1 = none.
        size: Embedding input size (see :func:`radaudit.models.embed.embed`); use the pretraining size.
        k: Neighbours.
        test_fraction: Share of each class's sampled images scored; the rest are the kNN memory
            and the probe's training set.
        seed: Seed of the subsample and the split.
        batch_size: Embedding batch size.
        linear_probe: Also fit a logistic-regression probe on the same split with a fixed budget
            of ``probe_steps`` L-BFGS iterations (:func:`radaudit.models.probe.quick_probe_accuracy`),
            the paper's linear evaluation, not fitted to convergence.
        max_images: Labelled images evaluated at most (:func:`monitor_options` gives the number
            for the machine: 2,000 with a GPU, 256 without); None: all of them (slow on large sets:
            each evaluation then embeds every labelled image).
        probe_steps: L-BFGS iterations of the probe.

    Returns:
        ``eval_fn(backbone) -> {"knn_accuracy": float[, "linear_probe_accuracy": float]}``.

    Raises:
        ValueError: A bad argument, or fewer than 2 labelled images.
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(dataset),):  # type: ignore[arg-type]
        raise ValueError(f"labels must have one entry per image ({len(dataset)}), got Shape {y.shape}")  # type: ignore[arg-type]
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2):
        raise ValueError(f"max_images must be an int >= 2 (images evaluated) or None for all, got {max_images!r}")
    if isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or probe_steps < 1:
        raise ValueError(f"probe_steps must be an int >= 1 (L-BFGS iterations), got {probe_steps!r}")
    test, train = _stratified_split(y, max_images, test_fraction, np.random.default_rng(seed))
    if len(train) == 0 or len(test) == 0:
        raise ValueError("need at least 2 labelled images for a kNN monitor")
    rows = np.concatenate([train, test])  # the images read, in this order
    n_train = len(train)
    y_train, y_test = y[train], y[test]
    images: list[torch.Tensor] = []  # filled at the first evaluation: (n, 1, H, W) uint8

    def evaluate(backbone: nn.Module) -> dict[str, float]:
        if not images:
            images.append(torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in rows]))
        # Where the backbone trains; a CPU backbone (e.g. back from DDP ranks) still uses a GPU if there is one.
        param = next(backbone.parameters(), None)
        device = param.device if param is not None and param.device.type != "cpu" else None
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        feats = embed(backbone, images[0], batch_size=batch_size, size=size, device=device)  # (n, D)
        scores = {"knn_accuracy": knn_accuracy(feats[:n_train], y_train, feats[n_train:], y_test, k=k,
                                               device=device)}
        if linear_probe:
            scores["linear_probe_accuracy"] = quick_probe_accuracy(feats[:n_train], y_train, feats[n_train:], y_test,
                                                                   steps=probe_steps, device=device)
        return scores

    return evaluate


class _EpochEnd(Callback):
    """Closes the epoch's loss, runs the evaluation, writes the checkpoint, then logs the epoch."""

    def __init__(self, config: PretrainConfig, log: Log, eval_fn: EvalFn | None = None, eval_every: int = 1,
                 *, tf32: bool = False) -> None:
        self.config = config
        self.tf32 = tf32
        self.emit = log  # not self.log: Lightning overwrites callbacks' .log with the module's
        self.t0 = time.perf_counter()
        self.last_checkpoint: Path | None = None
        self.eval_fn = eval_fn
        self.eval_every = eval_every
        self.metrics: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Again in each process that ddp_spawn starts: a spawned rank inherits no process settings.
        _guard_broken_omegaconf()
        if self.tf32:
            torch.set_float32_matmul_precision("high")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, ContrastiveModule)
        loss = pl_module.close_epoch()
        epoch = trainer.current_epoch + 1
        evaluated = ""
        if trainer.is_global_zero and self.eval_fn is not None and (
                epoch % self.eval_every == 0 or epoch == self.config.epochs):
            metrics = {k: float(v) for k, v in self.eval_fn(pl_module.backbone).items()}
            self.metrics.append({"epoch": epoch, **metrics})
            evaluated = ", " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        # The checkpoint is on disk (fsynced) before the line says the epoch is done: a run
        # killed at that line resumes after this epoch, not before it.
        if self.config.checkpoint_dir is not None:
            trainer.save_checkpoint(self.config.checkpoint_dir, weights_only=False)
            self.last_checkpoint = latest_checkpoint(self.config.checkpoint_dir)
        if trainer.is_global_zero:
            shown = f"{loss:.4f}" if loss is not None else "n/a"
            self.emit(f"{self.config.method} epoch {epoch}/{self.config.epochs}: loss {shown}, "
                      f"step {trainer.global_step}, {time.perf_counter() - self.t0:.1f} s{evaluated}")


class _RandomState(Callback):
    """Keeps the random state in every checkpoint, so that a resumed run replays the epochs it missed.

    Saved at each checkpoint and restored before training resumes: Python's, numpy's, torch's
    and CUDA's global generators (Lightning's ``_collect_rng_states``, as its ``ddp_spawn``
    launcher hands them to the ranks) and the generator of the loader's sampler, whose state
    after epoch ``e`` fixes the order of epoch ``e + 1``. The augmentations need nothing here:
    :class:`radaudit.models.base.ContrastiveModule` reseeds them at every epoch start from
    ``(seed, epoch, rank)``. The workers need nothing either: they only read bytes, and the
    loader's own generator, which seeds them once per run, starts from the seed in every run.
    A DDP run's sampler is Lightning's ``DistributedSampler``, which shuffles by ``(seed, epoch)``.
    """

    def __init__(self, loader: DataLoader) -> None:
        gen = getattr(loader.sampler, "generator", None)
        self.sampler_generator = gen if isinstance(gen, torch.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # Checkpoints are read with torch.load(weights_only=True), which refuses numpy arrays.
        kind, keys, pos, has_gauss, gauss = states.pop("numpy")
        states["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
        if self.sampler_generator is not None:
            states["sampler"] = self.sampler_generator.get_state()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict)
        sampler = states.pop("sampler", None)
        if sampler is not None and self.sampler_generator is not None:
            self.sampler_generator.set_state(sampler)
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
        # A GPU run resumed on the CPU, or on fewer GPUs: the states of the devices there are.
        states["torch.cuda"] = states.get("torch.cuda", [])[:torch.cuda.device_count()]
        _set_rng_states(states)


def _guard_broken_omegaconf() -> None:
    """Keep Lightning from importing a broken omegaconf when it writes a checkpoint.

    lightly pulls in hydra-core and omegaconf, whose grammar needs antlr 4.9; Dagster needs antlr
    >= 4.10 (README, "Quick start"), and with it ``import omegaconf`` raises. Lightning's
    ``dump_checkpoint`` imports omegaconf whenever it is installed, only to recognise omegaconf
    hyper-parameter containers, which these modules never use: tell it omegaconf is absent.
    """
    try:
        import omegaconf  # noqa: F401
    except Exception:  # the antlr mismatch raises a bare Exception, not ImportError
        from pytorch_lightning.trainer.connectors import checkpoint_connector

        checkpoint_connector._OMEGACONF_AVAILABLE = False


def should_compile(cuda: bool, steps: int) -> bool:
    """Whether ``compile=None`` (auto) compiles: GPU runs of at least ``COMPILE_MIN_STEPS`` steps."""
    return cuda and steps >= COMPILE_MIN_STEPS


def _print(line: str) -> None:
    print(line, flush=True)


# Errors of bad input or configuration: the same on every attempt, so callers do not retry them.
_BAD_INPUT_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}


def _bad_input_in_rank(error: BaseException) -> Exception | None:
    """The ValueError or FileNotFoundError a spawned rank raised, rebuilt from its traceback text.

    ``ddp_spawn`` reports a rank's exception as ``ProcessRaisedException`` carrying only the
    formatted traceback; without this, a bad cached image inside a rank looks transient and is
    retried.
    """
    if not isinstance(error, torch.multiprocessing.ProcessRaisedException):
        return None
    lines = [line for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        name, sep, message = line.partition(": ")
        if not sep or line.startswith(" "):
            continue
        kind = _BAD_INPUT_ERRORS.get(name.rsplit(".", 1)[-1])
        return kind(f"in a training process: {message}") if kind is not None else None
    return None


def _strategy(world_size: int) -> str:
    """DDP for several processes (devices or nodes): ``ddp`` under torchrun, else ``ddp_spawn``.

    Lightning's plain ``ddp`` starts the other ranks by running ``sys.argv`` again, which inside
    a Dagster step, a notebook or the ``radaudit`` CLI is the wrong program (and imports hydra,
    broken by the newer antlr, see the README's "Quick start"); ``ddp_spawn`` starts them from this process.
    """
    if world_size == 1:
        return "auto"
    return "ddp" if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ else "ddp_spawn"


def _describe_device(cuda: bool, devices: int, num_nodes: int = 1) -> str:
    if not cuda:
        return "cpu"
    nodes = f"{num_nodes} nodes x " if num_nodes > 1 else ""
    return f"cuda ({nodes}{devices} x {torch.cuda.get_device_name(0)})"


def pretrain(config: PretrainConfig, dataset: Dataset, *, resume: bool = True, log: Log | None = None,
             callbacks: Sequence[Callback] = (), eval_fn: EvalFn | None = None, eval_every: int = 1) -> PretrainResult:
    """Train a backbone with a contrastive method.

    Args:
        config: The run's settings.
        dataset: Items ``(uint8 image (1, H, W), int label)`` with -1 for null labels, all the same
            size, e.g. :class:`radaudit.augment.dataset.CacheDataset` or :class:`radaudit.models.data.ArrayDataset`.
            Only ``supcon`` uses the labels.
        resume: Continue from the latest checkpoint in ``config.checkpoint_dir`` if there is one.
        log: Receives one line per event (device choice, resume, each epoch); default: discard.
        callbacks: Extra Lightning callbacks.
        eval_fn: Called with the backbone every ``eval_every`` epochs and after the last (rank 0
            only), e.g. :func:`knn_monitor`; its numbers are logged and returned in
            ``PretrainResult.metrics`` (not kept across a resume).
        eval_every: Epochs between evaluations.

    Returns:
        The trained backbone, loss history and run facts.

    Raises:
        ValueError: The dataset is smaller than one batch, the checkpoint belongs to another
            method or backbone, or there is no GPU and ``on_cpu="fail"``.
    """
    emit: Log = log if log is not None else (lambda _msg: None)
    cuda = torch.cuda.is_available()
    if not cuda:
        if config.on_cpu == "fail":
            raise ValueError("no GPU found and on_cpu='fail'; use on_cpu='shrink' or 'as_is' to train on the CPU")
        if config.on_cpu == "shrink":
            config = config.for_cpu()
        precision = "32-true" if config.precision == "auto" else config.precision
        config = config.replace(precision=precision)
        emit(f"no GPU: training on CPU with size={config.size}, batch_size={config.batch_size}, "
             f"epochs={config.epochs}, precision={config.precision}, devices={config.devices} "
             f"(on_cpu={config.on_cpu!r})")
    else:
        if config.devices > torch.cuda.device_count():
            raise ValueError(f"devices={config.devices} but only {torch.cuda.device_count()} GPU(s) are visible")
        if config.precision == "auto":
            config = config.replace(precision="bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
        torch.set_float32_matmul_precision("high")

    n = len(dataset)  # type: ignore[arg-type]
    if n < config.batch_size:
        raise ValueError(f"the dataset has {n} images, fewer than one batch (batch_size={config.batch_size}); "
                         "lower batch_size or add images")
    if config.compile is None:
        steps = config.max_steps or config.epochs * (n // config.batch_size)
        config = config.replace(compile=should_compile(cuda, steps))
        if config.compile:
            emit(f"compiling the backbone with torch.compile ({steps} steps to train)")

    ckpt_path: Path | None = None
    resumed_from = 0
    if resume and config.checkpoint_dir is not None:
        ckpt_path = latest_checkpoint(config.checkpoint_dir)
        if ckpt_path is not None:
            state = load_checkpoint(ckpt_path).state
            for key, want in (("method", config.method), ("backbone", config.backbone)):
                if state.get(key) not in (None, want):
                    raise ValueError(f"{ckpt_path} is a {key}={state.get(key)!r} checkpoint but the config says "
                                     f"{key}={want!r}; use another checkpoint_dir or resume=False")
            resumed_from = int(state.get("epoch", 0))
            emit(f"resuming from {ckpt_path} ({resumed_from} epoch(s) done, step {state.get('global_step', '?')})")

    pl.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config)

    if ckpt_path is not None and resumed_from >= config.epochs:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt.state_dict)
        emit(f"nothing to train: the checkpoint already has {resumed_from} of {config.epochs} epochs")
        history = [float(v) for v in ckpt.state.get("history", [])]
        return PretrainResult(config.method, model.backbone.cpu().eval(), history,
                              _describe_device(cuda, config.devices, config.num_nodes),
                              0.0, int(ckpt.state.get("global_step", 0)), 0, resumed_from, ckpt_path, config)

    _guard_broken_omegaconf()
    per_device = config.batch_size // config.world_size
    loader = make_loader(dataset, per_device, workers=config.num_workers, pin_memory=cuda, shuffle=True,
                         drop_last=True, seed=config.seed)
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1 (epochs), got {eval_every!r}")
    spawn = _strategy(config.world_size) == "ddp_spawn"
    # Spawned ranks get a copy of the callbacks: the caller's log and eval_fn may not pickle
    # (a Dagster logger, a closure), so there they print, and the evaluation runs here afterwards.
    root = config.checkpoint_dir or tempfile.mkdtemp(prefix="radaudit-pretrain-")
    # Spawned ranks return only the weights: the loss history comes from rank 0's last checkpoint,
    # so they always write one (to a temporary folder when the caller asked for none).
    written = config.replace(checkpoint_dir=root) if spawn else config
    epoch_end = _EpochEnd(written, _print if spawn else emit, None if spawn else eval_fn, eval_every, tf32=cuda)
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=_strategy(config.world_size),
        sync_batchnorm=config.world_size > 1 and cuda,  # CPU DDP (gloo) runs the tests; it has no SyncBatchNorm
        precision=config.precision,  # type: ignore[arg-type]
        max_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        callbacks=[epoch_end, _RandomState(loader), *callbacks,
                   *([TQDMProgressBar(refresh_rate=10)] if config.progress_bar else [])],
        plugins=[SafetensorsCheckpointIO(keep_last=config.keep_checkpoints)],
        default_root_dir=root,
        benchmark=cuda,
        num_sanity_val_steps=0,
        use_distributed_sampler=config.world_size > 1,
    )
    sharing = torch.multiprocessing.get_sharing_strategy()
    if spawn:
        # Spawning pickles the module with its CPU tensors; the default file-descriptor sharing
        # passes one descriptor per tensor and the spawn fails ("bad value(s) in fds_to_keep").
        torch.multiprocessing.set_sharing_strategy("file_system")
    start_step = 0
    if ckpt_path is not None:
        start_step = int(load_checkpoint(ckpt_path).state.get("global_step", 0))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*exceeds max_steps.*")
            trainer.fit(model, loader, ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
    except BaseException as error:
        if config.checkpoint_dir is None:
            shutil.rmtree(root, ignore_errors=True)  # the temporary folder, with the ranks' weights
        bad_input = _bad_input_in_rank(error)
        if bad_input is not None:
            raise bad_input from error
        raise
    finally:
        torch.multiprocessing.set_sharing_strategy(sharing)  # the caller's data loaders keep theirs
    wall = time.perf_counter() - t0
    backbone = model.backbone.to("cpu").eval()
    history, steps, metrics, last = list(model.history), int(trainer.global_step), epoch_end.metrics, epoch_end.last_checkpoint
    if spawn:
        # The ranks trained in child processes: Lightning brought the weights back; the rest is in
        # rank 0's last checkpoint, and the evaluation runs here once on the final backbone.
        last = latest_checkpoint(root)
        state = load_checkpoint(last).state if last is not None else {}
        history = [float(v) for v in state.get("history", [])]
        steps = int(state.get("global_step", 0))
        metrics = [{"epoch": len(history), **eval_fn(backbone)}] if eval_fn is not None else []
    if config.checkpoint_dir is None:
        shutil.rmtree(root, ignore_errors=True)
        last = None
    return PretrainResult(
        method=config.method, backbone=backbone, history=history,
        device=_describe_device(cuda, config.devices, config.num_nodes), wall_time_s=wall, steps=steps,
        steps_this_run=steps - start_step, resumed_from_epoch=resumed_from,
        checkpoint=last, config=config, metrics=metrics,
    )
