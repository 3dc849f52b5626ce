"""Safetensors checkpoints: round trip, atomic layout, pruning, backbone loading."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from radaudit.models.checkpoint import (
    LATEST_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, latest_checkpoint, load_backbone, load_checkpoint,
    save_checkpoint,
)
from radaudit.models.simclr import SimCLRModel
from radaudit.pacs.io import remove_stale_temps


@pytest.fixture
def model() -> SimCLRModel:
    torch.manual_seed(0)
    return SimCLRModel("resnet18", size=32, batch_size=8)  # channels_last backbone


def test_round_trip(tmp_path: Path, model: SimCLRModel) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    folder = save_checkpoint(tmp_path, model, 1, {"optimizer_states": [opt.state_dict()]}, metadata={"note": "x"})
    assert folder == tmp_path / "epoch-0001"
    assert {p.name for p in folder.iterdir()} == {WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE}
    assert json.loads((tmp_path / LATEST_FILE).read_text()) == {"name": "epoch-0001", "epoch": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    ckpt = load_checkpoint(tmp_path)
    assert ckpt.epoch == 1 and ckpt.state["method"] == "simclr" and ckpt.state["backbone"] == "resnet18"
    expected = model.state_dict()
    assert set(ckpt.state_dict) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ckpt.state_dict[k], v), k
    momentum = ckpt.optimizer_state["optimizer_states"][0]["state"]
    assert any("momentum_buffer" in s for s in momentum.values())

    backbone = load_backbone(tmp_path / "epoch-0001" / WEIGHTS_FILE)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    assert not backbone.training


def test_keeps_last_and_points_latest(tmp_path: Path, model: SimCLRModel) -> None:
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, model, epoch, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003", LATEST_FILE]
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0003"
    (tmp_path / LATEST_FILE).unlink()  # a crash before latest.json was written: fall back to a scan
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0003"
    save_checkpoint(tmp_path, model, 3)  # re-saving an epoch replaces it
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0003"


def test_incomplete_folder_is_ignored(tmp_path: Path, model: SimCLRModel) -> None:
    save_checkpoint(tmp_path, model, 1)
    (tmp_path / "epoch-0002").mkdir()
    (tmp_path / "epoch-0002" / WEIGHTS_FILE).write_bytes(b"partial")  # no state.json: never completed
    (tmp_path / LATEST_FILE).unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0001"


def test_a_writer_killed_mid_save_leaves_the_last_checkpoint_and_only_swept_temps(tmp_path: Path,
                                                                                   model: SimCLRModel) -> None:
    save_checkpoint(tmp_path, model, 1)
    pid = os.fork()
    if pid == 0:  # the child dies by SIGKILL after the weights, before the optimizer state
        torch.save = lambda *_a, **_k: os.kill(os.getpid(), signal.SIGKILL)
        save_checkpoint(tmp_path, model, 2, {"step": 1})
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".epoch-0002.")]
    assert (left / WEIGHTS_FILE).is_file() and not (left / OPTIMIZER_FILE).exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0001"
    assert remove_stale_temps(tmp_path) == [left]  # the next run's sweep of the data dir removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", LATEST_FILE]


def test_weights_are_plain_safetensors(tmp_path: Path, model: SimCLRModel) -> None:
    folder = save_checkpoint(tmp_path, model, 4)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    assert "backbone.conv1.weight" in tensors and "projection_head.layers.0.weight" in tensors


def test_errors(tmp_path: Path, model: SimCLRModel) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_backbone(tmp_path)
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path, model, -1)
