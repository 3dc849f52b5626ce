"""pretrain(): every method end to end on tiny data, checkpoints every epoch, resume after a crash."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from radaudit.models.checkpoint import (WEIGHTS_FILE, backbone_state, latest_checkpoint, load_backbone,
                                       load_checkpoint)
from radaudit.models.data import ArrayDataset
from radaudit.models.train import PretrainConfig, knn_monitor, pretrain

TINY = dict(epochs=1, batch_size=8, size=32, warmup_epochs=0, num_workers=0, progress_bar=False)


@pytest.mark.parametrize("method", ["simclr", "byol", "supcon"])
def test_pretrain_runs_each_method(method: str, tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    lines: list[str] = []
    result = pretrain(PretrainConfig(method=method, checkpoint_dir=str(tmp_path), **TINY), tiny_dataset,
                      log=lines.append)
    assert len(result.history) == 1 and math.isfinite(result.history[0])
    assert result.steps == result.steps_this_run == 2  # 16 images, batch 8, drop_last
    assert result.device == ("cpu" if not torch.cuda.is_available() else result.device)
    assert result.backbone(torch.zeros(2, 1, 32, 32)).shape == (2, 512)
    assert result.checkpoint == tmp_path / "epoch-0001"
    if not torch.cuda.is_available():
        assert lines[0].startswith("no GPU: training on CPU with size=32, batch_size=8, epochs=1")
    assert any(line.startswith(f"{method} epoch 1/1: loss") for line in lines)


class _CrashAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class _Record(pl.Callback):
    """What the model looks like when training (re)starts."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(self, "epoch"):
            self.epoch = trainer.current_epoch
            self.step = trainer.global_step
            self.backbone = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_after_crash(tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    config = PretrainConfig(method="simclr", checkpoint_dir=str(tmp_path), **{**TINY, "epochs": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, tiny_dataset, callbacks=[_CrashAtEpoch(1)])
    first = latest_checkpoint(tmp_path)
    assert first == tmp_path / "epoch-0001"
    saved = backbone_state(load_file(str(first / WEIGHTS_FILE)))

    record, lines = _Record(), []
    result = pretrain(config, tiny_dataset, callbacks=[record], log=lines.append)
    assert record.epoch == 1  # started at the second epoch
    assert record.step == 2  # with the first epoch's steps counted
    for k, v in saved.items():
        assert torch.equal(record.backbone[k], v), k  # the first epoch's weights were loaded
    assert result.resumed_from_epoch == 1
    assert len(result.history) == 2 and all(math.isfinite(v) for v in result.history)
    assert (result.steps, result.steps_this_run) == (4, 2)
    assert any(line.startswith("resuming from") for line in lines)
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0002"
    loaded = load_backbone(tmp_path)
    for k, v in result.backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    again = pretrain(config, tiny_dataset, log=lines.append)  # all epochs done: nothing to train
    assert again.steps_this_run == 0 and again.history == result.history
    assert lines[-1].startswith("nothing to train")

    # The resumed epoch is the one an uninterrupted run trains: the same order, views and weights.
    straight = pretrain(config.replace(checkpoint_dir=str(tmp_path / "straight")), tiny_dataset)
    assert straight.history == result.history
    theirs = load_checkpoint(tmp_path / "straight").state_dict
    for k, v in load_checkpoint(tmp_path).state_dict.items():
        assert torch.equal(theirs[k], v), k


def resume_case(checkpoint_dir: str) -> tuple[PretrainConfig, ArrayDataset]:
    """The run the kill test trains: BYOL, one loader worker, 24 images, batch 8 (3 steps an epoch),
    3 epochs. The killed child processes import this, so they train what the test compares."""
    images = np.random.default_rng(1).integers(0, 256, (24, 40, 40), dtype=np.uint8)
    dataset = ArrayDataset(images, np.array([0, 1, 2, -1] * 6, dtype=np.int64))
    config = PretrainConfig(method="byol", checkpoint_dir=checkpoint_dir, on_cpu="as_is",
                            **{**TINY, "epochs": 3, "warmup_epochs": 1, "num_workers": 1})
    return config, dataset


# Trains resume_case in a child process and, right after printing the line the test waits for
# (an epoch's log line, or "step N" after optimizer step N), stops to wait for the test's SIGKILL.
KILLED_CHILD = """
import sys, time
import pytorch_lightning as pl, torch
sys.path.insert(0, sys.argv[1])
from test_train import resume_case
from radaudit.models.train import pretrain

torch.set_num_threads(1)
checkpoint_dir, wanted = sys.argv[2], sys.argv[3]


def log(line):
    print(line, flush=True)
    if line.startswith(wanted):
        time.sleep(600)


class StopAtStep(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        log(f"step {trainer.global_step}")


config, dataset = resume_case(checkpoint_dir)
pretrain(config, dataset, log=log, callbacks=[StopAtStep()])
"""


def _train_until_killed(checkpoint_dir: Path, wanted: str, log: Path) -> None:
    """Run KILLED_CHILD and SIGKILL it as soon as it prints a line starting with ``wanted``."""
    with open(log, "w") as errors:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(Path(__file__).parent), str(checkpoint_dir),
                                 wanted], stdout=subprocess.PIPE, stderr=errors, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(120, proc.kill)  # a child that never prints fails the test instead of hanging it
    watchdog.start()
    for line in proc.stdout:
        if line.startswith(wanted):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    rc = proc.wait()
    watchdog.cancel()
    assert rc == -signal.SIGKILL, f"the child ended (rc {rc}) before printing {wanted!r}:\n{log.read_text()[-3000:]}"


def test_runs_killed_at_an_epoch_line_and_mid_epoch_resume_into_the_uninterrupted_one(tmp_path: Path) -> None:
    """kill -9 at epoch 1's log line, then again in epoch 3 (after its first step); the rerun's
    weights, momentum encoder and loss history equal an uninterrupted run's, bit for bit."""
    straight_config, dataset = resume_case(str(tmp_path / "straight"))
    straight = pretrain(straight_config, dataset)

    killed = tmp_path / "killed"
    _train_until_killed(killed, "byol epoch 1/3", tmp_path / "stderr.log")
    # The epoch's line comes after its checkpoint is on disk.
    assert latest_checkpoint(killed) == killed / "epoch-0001"
    _train_until_killed(killed, "step 7", tmp_path / "stderr.log")  # resumed at step 3, killed mid epoch 3
    assert latest_checkpoint(killed) == killed / "epoch-0002"
    config, dataset = resume_case(str(killed))
    lines: list[str] = []
    resumed = pretrain(config, dataset, log=lines.append)

    assert resumed.resumed_from_epoch == 2 and (resumed.steps, resumed.steps_this_run) == (9, 3)
    assert any(line.startswith("resuming from") for line in lines)
    assert resumed.history == straight.history
    ours, theirs = load_checkpoint(killed), load_checkpoint(tmp_path / "straight")
    assert ours.epoch == theirs.epoch == 3 and ours.state_dict.keys() == theirs.state_dict.keys()
    for k, v in theirs.state_dict.items():  # backbone, projection and prediction heads, momentum encoder
        assert torch.equal(ours.state_dict[k], v), k
    for k, v in straight.backbone.state_dict().items():
        assert torch.equal(resumed.backbone.state_dict()[k], v), k


def test_resume_refuses_another_method(tiny_dataset: ArrayDataset, tmp_path: Path) -> None:
    pretrain(PretrainConfig(method="simclr", checkpoint_dir=str(tmp_path), **TINY), tiny_dataset)
    with pytest.raises(ValueError, match="method='simclr' checkpoint"):
        pretrain(PretrainConfig(method="supcon", checkpoint_dir=str(tmp_path), **{**TINY, "epochs": 2}), tiny_dataset)


def test_seed_makes_runs_identical(tiny_dataset: ArrayDataset) -> None:
    config = PretrainConfig(method="simclr", **TINY)
    a, b = pretrain(config, tiny_dataset), pretrain(config, tiny_dataset)
    assert a.history == b.history
    for k, v in a.backbone.state_dict().items():
        assert torch.equal(b.backbone.state_dict()[k], v), k


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="valid methods: simclr, byol, supcon"):
        PretrainConfig(method="moco")
    with pytest.raises(ValueError, match=r"divide evenly over the 3 processes \(devices=3 x num_nodes=1\)"):
        PretrainConfig(batch_size=1000, devices=3)
    with pytest.raises(ValueError, match="precision"):
        PretrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="warmup_epochs"):
        PretrainConfig(epochs=2, warmup_epochs=5)
    small = PretrainConfig().for_cpu()
    assert (small.size, small.batch_size, small.epochs, small.precision) == (64, 64, 2, "32-true")
    assert small.tau_base == 0.99 and PretrainConfig(tau_base=0.9).for_cpu().tau_base == 0.9


def test_dataset_smaller_than_a_batch(tiny_dataset: ArrayDataset) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain(PretrainConfig(**{**TINY, "batch_size": 32}, on_cpu="as_is"), tiny_dataset)


def test_knn_monitor_during_training(tiny_dataset: ArrayDataset) -> None:
    lines: list[str] = []
    monitor = knn_monitor(tiny_dataset, tiny_dataset.labels, size=32, k=3)
    result = pretrain(PretrainConfig(method="byol", **{**TINY, "epochs": 2}), tiny_dataset, log=lines.append,
                      eval_fn=monitor)
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert all(0.0 <= m["knn_accuracy"] <= 1.0 for m in result.metrics)
    assert "knn_accuracy" in lines[-1]


def test_a_gauge_folder_joins_the_drawn_gauges(tmp_path: Path) -> None:
    from PIL import Image

    from radaudit.augment.gauges import GaugeBank
    from radaudit.models.train import build_model

    ring = np.zeros((40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    ring[np.abs(np.hypot(yy - 20, xx - 20) - 14) < 3] = 255
    Image.fromarray(ring).save(tmp_path / "ring.png")
    drawn = len(GaugeBank.default())
    model = build_model(PretrainConfig(method="simclr", gauge_dir=str(tmp_path), **TINY))
    assert len(model.two_view.view1.gauges.bank) == drawn + 1
    with pytest.raises(FileNotFoundError, match="gauge folder"):
        build_model(PretrainConfig(method="simclr", gauge_dir=str(tmp_path / "absent"), **TINY))


def test_compile_is_decided_by_the_run_length(tiny_dataset: ArrayDataset) -> None:
    result = pretrain(PretrainConfig(method="simclr", **TINY), tiny_dataset)
    assert result.config.compile is False  # 2 steps: compiling would not pay
    from radaudit.models.train import COMPILE_MIN_STEPS, should_compile

    assert should_compile(True, COMPILE_MIN_STEPS) and not should_compile(True, COMPILE_MIN_STEPS - 1)
    assert not should_compile(False, 10 * COMPILE_MIN_STEPS)


def test_the_monitor_also_fits_a_linear_probe(tiny_dataset: ArrayDataset) -> None:
    monitor = knn_monitor(tiny_dataset, tiny_dataset.labels, size=32, k=3, linear_probe=True)
    scores = monitor(pretrain(PretrainConfig(method="simclr", **TINY), tiny_dataset).backbone)
    assert set(scores) == {"knn_accuracy", "linear_probe_accuracy"}
    assert 0.0 <= scores["linear_probe_accuracy"] <= 1.0


class _CountingDataset(ArrayDataset):
    """Records every index read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(images, labels)
        self.read: list[int] = []

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.read.append(int(index))
        return super().__getitem__(index)


def test_the_monitor_evaluates_a_bounded_stratified_subsample() -> None:
    from radaudit.models.backbone import create_backbone

    images = np.random.default_rng(0).integers(0, 256, (120, 24, 24), dtype=np.uint8)
    labels = np.repeat([0, 1, 2, -1], [60, 30, 20, 10])
    dataset = _CountingDataset(images, labels)
    monitor = knn_monitor(dataset, labels, size=16, k=3, max_images=20, linear_probe=True, probe_steps=5)
    torch.manual_seed(0)
    backbone = create_backbone("resnet18")
    rows: list[int] = []
    backbone.register_forward_hook(lambda _m, inputs, _out: rows.append(inputs[0].shape[0]))
    first, second = monitor(backbone), monitor(backbone)
    assert first == second and set(first) == {"knn_accuracy", "linear_probe_accuracy"}
    assert sum(rows) == 2 * 20  # 20 images embedded per evaluation, not the 110 labelled ones
    assert len(dataset.read) == len(set(dataset.read)) == 20  # read once, kept for later evaluations
    # class shares kept (60:30:20 of 110 -> 10.9, 5.5, 3.6 -> 11, 5, 4), null labels never drawn
    assert np.bincount(labels[dataset.read], minlength=3).tolist() == [11, 5, 4]
    # the same seed draws the same images; all labelled images when max_images is None
    again = _CountingDataset(images, labels)
    knn_monitor(again, labels, size=16, k=3, max_images=20)(backbone)
    assert sorted(again.read) == sorted(dataset.read)
    everything = _CountingDataset(images, labels)
    knn_monitor(everything, labels, size=16, k=3, max_images=None)(backbone)
    assert sorted(everything.read) == np.flatnonzero(labels >= 0).tolist()


def test_monitor_options_follow_the_run() -> None:
    from radaudit.models.train import MONITOR_MAX_IMAGES, MONITOR_MAX_IMAGES_CPU, monitor_options

    options = monitor_options(PretrainConfig(size=224))
    if torch.cuda.is_available():
        assert options == {"size": 224, "max_images": MONITOR_MAX_IMAGES}
    else:  # pretrain shrinks a CPU run to 64 px: the monitor embeds at that size
        assert options == {"size": 64, "max_images": MONITOR_MAX_IMAGES_CPU}
        assert monitor_options(PretrainConfig(size=224, on_cpu="as_is"))["size"] == 224


@pytest.mark.parametrize("option, match", [
    ({"max_images": 1}, "max_images"), ({"max_images": 2.5}, "max_images"),
    ({"probe_steps": 0}, "probe_steps"), ({"test_fraction": 1.0}, "test_fraction"),
])
def test_monitor_validation(option: dict[str, float], match: str, tiny_dataset: ArrayDataset) -> None:
    with pytest.raises(ValueError, match=match):
        knn_monitor(tiny_dataset, tiny_dataset.labels, **option)  # type: ignore[arg-type]


def test_a_pickled_module_compiles_in_the_process_that_trains() -> None:
    """ddp_spawn pickles the module, which drops a compiled call: compiling happens in configure_model."""
    import pickle

    from radaudit.models.simclr import SimCLRModel

    module = pickle.loads(pickle.dumps(SimCLRModel("resnet18", size=32, batch_size=4, compile=True)))
    assert getattr(module.backbone, "_compiled_call_impl", None) is None
    module.configure_model()
    assert module.backbone._compiled_call_impl is not None
    plain = SimCLRModel("resnet18", size=32, batch_size=4)
    plain.configure_model()
    assert getattr(plain.backbone, "_compiled_call_impl", None) is None
