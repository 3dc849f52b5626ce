"""SupConLoss against a hand-written per-pair reference (Khosla et al., 2020, eq. 2)."""

from __future__ import annotations

import math

import pytest
import torch
from lightly.loss import NTXentLoss

from radaudit.models.supcon import SupConLoss


def reference_supcon(out0: torch.Tensor, out1: torch.Tensor, labels: list[int], temperature: float) -> float:
    """L^sup_out with explicit loops over anchors, positives and the denominator."""
    z = [v / v.norm() for v in torch.cat([out0, out1]).double()]
    n = len(labels)
    image = list(range(n)) * 2  # which image each of the 2n embeddings comes from
    total = 0.0
    for i in range(2 * n):
        denom = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(2 * n) if a != i)
        positives = [p for p in range(2 * n) if p != i and (
            image[p] == image[i] or (labels[image[i]] >= 0 and labels[image[p]] == labels[image[i]]))]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denom) for p in positives) / len(positives)
    return total / (2 * n)


PATTERNS = {
    "all distinct": [0, 1, 2, 3, 4, 5],
    "all same": [2, 2, 2, 2, 2, 2],
    "mixed with nulls": [0, 1, 0, -1, 1, -1],
    "one null": [3, 3, -1, 3, 0, 0],
    "all null": [-1, -1, -1, -1, -1, -1],
}


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_reference(name: str, temperature: float) -> None:
    gen = torch.Generator().manual_seed(hash(name) % 1000)
    out0, out1 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    labels = PATTERNS[name]
    got = SupConLoss(temperature)(out0, out1, torch.tensor(labels))
    assert got.item() == pytest.approx(reference_supcon(out0, out1, labels, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_all_null_is_ntxent(temperature: float) -> None:
    gen = torch.Generator().manual_seed(1)
    out0, out1 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    ours = SupConLoss(temperature)(out0, out1, torch.full((8,), -1))
    assert ours.item() == pytest.approx(NTXentLoss(temperature)(out0, out1).item(), rel=1e-5)
    assert SupConLoss(temperature)(out0, out1).item() == pytest.approx(ours.item())


def test_gradient_flows_and_is_finite() -> None:
    out0 = torch.randn(4, 3, requires_grad=True)
    out1 = torch.randn(4, 3, requires_grad=True)
    SupConLoss()(out0, out1, torch.tensor([0, 0, -1, 1])).backward()
    assert out0.grad is not None and torch.isfinite(out0.grad).all()


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0, 1, 2]), r"Shape \(batch_size,\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer"),
    (torch.tensor([0, -2, 1, 1]), ">= 0, or -1"),
])
def test_rejects_bad_labels(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SupConLoss()(torch.randn(4, 3), torch.randn(4, 3), labels)


def test_rejects_bad_temperature_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        SupConLoss()(torch.randn(4, 3), torch.randn(4, 2))
