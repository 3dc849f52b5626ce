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

from radaudit.models.checkpoint import load_backbone
from radaudit.models.data import ArrayDataset
from radaudit.models.supcon import SupConLoss
from radaudit.models.train import PretrainConfig, _bad_input_in_rank, pretrain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _BadCacheDataset(ArrayDataset):
    """A dataset whose images cannot be read, as a damaged cache file would be (picklable for the ranks)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise ValueError(f"cached image {index} is damaged")


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


@pytest.mark.slow
def test_bad_input_inside_a_spawned_process_arrives_as_the_same_error() -> None:
    images = np.zeros((16, 40, 40), dtype=np.uint8)
    config = PretrainConfig(method="simclr", epochs=1, batch_size=8, size=32, warmup_epochs=0, num_workers=0,
                            progress_bar=False, devices=2, on_cpu="as_is")
    # Not ProcessRaisedException: the asset must see a ValueError to fail without retrying.
    with pytest.raises(ValueError, match=r"in a training process: cached image \d+ is damaged"):
        pretrain(config, _BadCacheDataset(images, np.zeros(16, np.int64)))


def test_only_bad_input_errors_of_a_rank_are_rebuilt() -> None:
    def raised(last_line: str) -> mp.ProcessRaisedException:
        text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
                '  File "train.py", line 3, in step\n    raise Error("x: y")\n' + last_line + "\n")
        return mp.ProcessRaisedException(text, 1, 4242)

    rebuilt = _bad_input_in_rank(raised("FileNotFoundError: [Errno 2] No such file: 'cache/a.npy'"))
    assert isinstance(rebuilt, FileNotFoundError) and "cache/a.npy" in str(rebuilt)
    assert isinstance(_bad_input_in_rank(raised("ValueError: bad: size")), ValueError)
    assert _bad_input_in_rank(raised("torch.OutOfMemoryError: CUDA out of memory")) is None  # transient: retried
    assert _bad_input_in_rank(ValueError("not from a rank")) is None


def test_num_nodes_reaches_lightnings_trainer(monkeypatch) -> None:
    """Training over several machines is Lightning's DDP over nodes: the option must reach its Trainer,
    with the global batch split over every process of every node. (Not run on several nodes here.)"""
    import radaudit.models.train as train

    class Stop(Exception):
        pass

    seen: dict = {}

    def trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    loaders: list[int] = []
    make_loader = train.make_loader
    monkeypatch.setattr(train, "make_loader", lambda ds, batch, **kw: loaders.append(batch) or make_loader(ds, batch, **kw))
    monkeypatch.setattr(train.pl, "Trainer", trainer)
    config = PretrainConfig(method="simclr", epochs=1, batch_size=16, size=32, warmup_epochs=0, num_workers=0,
                            progress_bar=False, devices=2, num_nodes=2, on_cpu="as_is")
    with pytest.raises(Stop):
        pretrain(config, ArrayDataset(np.zeros((32, 40, 40), np.uint8), np.zeros(32, np.int64)))
    assert seen["num_nodes"] == 2 and seen["devices"] == 2 and seen["strategy"] == "ddp_spawn"
    assert seen["use_distributed_sampler"] is True
    assert loaders == [16 // 4]  # each of the 2 x 2 processes loads a quarter of the global batch
    with pytest.raises(ValueError, match=r"divide evenly over the 6 processes \(devices=2 x num_nodes=3\)"):
        config.replace(num_nodes=3)
    assert config.for_cpu().num_nodes == 1


def test_the_cli_passes_num_nodes_to_the_pretraining() -> None:
    from radaudit.pipelines.cli import _audit_config, _parser

    args = _parser().parse_args(["audit", "--devices", "4", "--num-nodes", "2", "--batch-size", "1024"])
    config = _audit_config(args).pretrain_config("simclr")
    assert (config.devices, config.num_nodes, config.world_size) == (4, 2, 8)
