"""DDP on the CPU (gloo, 2 processes): gathered SupCon negatives, and pretrain() with devices=2.

The GPU machines run the same code with NCCL; these tests prove the distributed paths on CI.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from models.checkpoint import load_backbone
from models.data import ArrayDataset
from models.supcon import SupConLoss
from models.train import PretrainConfig, pretrain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss(rank: int, world: int, port: int, z0: torch.Tensor, z1: torch.Tensor, labels: torch.Tensor,
               out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = z0.shape[0] // world
        part = slice(rank * n, (rank + 1) * n)
        a, b = z0[part].clone().requires_grad_(), z1[part].clone().requires_grad_()
        loss = SupConLoss(gather_distributed=True)(a, b, labels[part])
        loss.backward()
        out[rank] = (loss.item(), a.grad.clone(), b.grad.clone())
    finally:
        torch_dist.destroy_process_group()


def test_gathered_supcon_loss_equals_the_loss_on_the_whole_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    labels = torch.tensor([0, 1, 0, -1, 2, 1, -1, 0])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_loss, args=(2, _free_port(), z0, z1, labels, out), nprocs=2, join=True)
        results = dict(out)
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    whole = SupConLoss()(a, b, labels)
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(whole.item(), rel=1e-5)
    assert results[0][0] != pytest.approx(results[1][0])  # each rank scores its own anchors
    # DDP averages the ranks' gradients, so each rank's rows must get the gradient of the sum of
    # both ranks' losses (the gather hands gradients back across processes), i.e. of 2 x whole.
    (2 * whole).backward()
    for rank, (_, grad0, grad1) in results.items():
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(grad0, a.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad1, b.grad[rows], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_pretrain_on_two_processes(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (32, 40, 40), dtype=np.uint8)
    dataset = ArrayDataset(images, np.array([0, 1, 2, -1] * 8))
    lines: list[str] = []
    config = PretrainConfig(method="supcon", epochs=1, batch_size=8, size=32, warmup_epochs=0, num_workers=0,
                            progress_bar=False, devices=2, on_cpu="as_is", checkpoint_dir=str(tmp_path))
    result = pretrain(config, dataset, log=lines.append, eval_fn=lambda backbone: {"ran_here": 1.0})
    assert result.steps == 32 // 8  # the global batch is split over the processes
    assert len(result.history) == 1 and np.isfinite(result.history[0])
    assert result.checkpoint == tmp_path / "epoch-0001"
    assert result.metrics == [{"epoch": 1, "ran_here": 1.0}]
    saved = load_backbone(tmp_path).state_dict()
    for name, tensor in result.backbone.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])  # the main process got rank 0's trained weights


@pytest.mark.slow
def test_two_processes_without_a_checkpoint_dir_still_return_the_loss_history() -> None:
    images = np.random.default_rng(1).integers(0, 256, (16, 40, 40), dtype=np.uint8)
    sharing = torch.multiprocessing.get_sharing_strategy()
    config = PretrainConfig(method="simclr", epochs=2, batch_size=8, size=32, warmup_epochs=0, num_workers=0,
                            progress_bar=False, devices=2, on_cpu="as_is")
    result = pretrain(config, ArrayDataset(images, np.zeros(16, np.int64)))
    assert len(result.history) == 2 and all(np.isfinite(result.history))
    assert result.steps == 2 * 16 // 8 and result.checkpoint is None  # the temporary checkpoints are gone
    assert torch.multiprocessing.get_sharing_strategy() == sharing
