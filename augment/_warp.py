"""Batched affine sampling grids, cheaper than ``F.affine_grid`` (which runs a bmm per pixel on CPU)."""

from __future__ import annotations

import torch


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Same as ``F.affine_grid(theta, [B, C, h, w], align_corners=False)``, by broadcasting.

    Args:
        theta: Output grid to input grid, normalized coordinates. Shape: (B, 2, 3).

    Returns:
        Sampling grid for ``F.grid_sample``. Shape: (B, h, w, 2).
    """
    dtype = theta.dtype if theta.is_floating_point() else torch.float32
    u = (torch.arange(w, device=theta.device, dtype=dtype) * 2 + 1) / w - 1
    v = (torch.arange(h, device=theta.device, dtype=dtype) * 2 + 1) / h - 1
    grid = torch.empty(theta.shape[0], h, w, 2, device=theta.device, dtype=dtype)
    for i in range(2):
        row = (theta[:, i, 1, None] * v + theta[:, i, 2, None])[:, :, None]  # (B, h, 1)
        col = (theta[:, i, 0, None] * u)[:, None, :]  # (B, 1, w)
        torch.add(row, col, out=grid[..., i])
    return grid
