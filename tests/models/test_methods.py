"""Each method's training step, a few optimizer steps, and BYOL's momentum schedule."""

from __future__ import annotations

import math

import pytest
import torch

from radaudit.models.base import build_optimizer, scaled_lr
from radaudit.models.byol import BYOLModel
from radaudit.models.simclr import SimCLRModel
from radaudit.models.supcon import SupConModel

SMALL = {"simclr": {}, "supcon": {}, "byol": {"hidden_dim": 64, "projection_dim": 32}}
MODELS = {"simclr": SimCLRModel, "byol": BYOLModel, "supcon": SupConModel}


def make(method: str, **kwargs: object) -> torch.nn.Module:
    return MODELS[method]("resnet18", size=32, batch_size=8, **SMALL[method], **kwargs)


@pytest.mark.parametrize("method", list(MODELS))
def test_training_step_on_uint8_batch_is_finite(method: str) -> None:
    torch.manual_seed(0)
    model = make(method)
    images = torch.randint(0, 256, (8, 1, 40, 40), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, -1, -1, 2, 2])
    loss = model.training_step((images, labels), 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("method", list(MODELS))
def test_loss_decreases_on_a_fixed_batch(method: str) -> None:
    torch.manual_seed(0)
    model = make(method)
    images = torch.randint(0, 256, (8, 1, 40, 40), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, -1, -1, 2, 2])
    v1, v2 = model.make_views(images)  # fixed views: only the network changes
    opt = build_optimizer("adamw", model.trainable_modules(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(6):
        loss = model.compute_loss(v1, v2, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_views_are_on_the_batch_device_and_sized() -> None:
    model = make("simclr")
    v1, v2 = model.make_views(torch.randint(0, 256, (4, 1, 40, 40), dtype=torch.uint8))
    assert v1.shape == v2.shape == (4, 1, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)


def test_byol_momentum_schedule() -> None:
    model = make("byol", tau_base=0.9995)
    total = 100
    taus = [model.momentum_tau(step, total) for step in range(total)]
    assert taus[0] == pytest.approx(0.9995)
    assert taus[-1] == 1.0
    assert model.momentum_tau(total + 5, total) == 1.0
    assert all(a <= b for a, b in zip(taus, taus[1:]))
    # the paper's formula: 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, K = last step
    k = 37
    assert taus[k] == pytest.approx(1 - (1 - 0.9995) * (math.cos(math.pi * k / (total - 1)) + 1) / 2)


def test_byol_momentum_update_moves_target_towards_online() -> None:
    model = make("byol", tau_base=0.5)
    model.total_steps = lambda: 10  # type: ignore[method-assign]  # no trainer: step 0 of 10, tau = 0.5
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    online = [p.clone() for p in model.backbone.parameters()]
    before = [p.clone() for p in model.backbone_momentum.parameters()]
    model.after_optimizer_step()
    assert model.tau == pytest.approx(0.5)
    for o, b, a in zip(online, before, model.backbone_momentum.parameters()):
        assert torch.allclose(a, 0.5 * b + 0.5 * o)
    assert not any(p.requires_grad for p in model.backbone_momentum.parameters())


def test_paper_defaults_and_lr_scaling() -> None:
    assert (SimCLRModel.DEFAULT_OPTIMIZER, SimCLRModel.DEFAULT_LR) == ("lars", 0.3)
    assert (BYOLModel.DEFAULT_OPTIMIZER, BYOLModel.DEFAULT_LR) == ("lars", 0.2)
    assert (SupConModel.DEFAULT_OPTIMIZER, SupConModel.DEFAULT_LR) == ("sgd", 0.125)
    assert scaled_lr(0.3, 1024) == pytest.approx(1.2)
    assert make("simclr").lr == pytest.approx(0.3 * 8 / 256)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 1}, "batch_size"),
    ({"optimizer": "adam"}, "lars, sgd, adamw"),
    ({"lr": -1.0}, "lr"),
    ({"temperature": 0.0}, "temperature"),
    ({"size": 8}, "size"),
])
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"size": 32, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        SimCLRModel("resnet18", **args)


def test_byol_rejects_bad_tau() -> None:
    with pytest.raises(ValueError, match="tau_base"):
        BYOLModel("resnet18", size=32, tau_base=1.0)
