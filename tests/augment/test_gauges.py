"""Gauge sprites and batched gauge insertion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from radaudit.augment.gauges import GaugeBank, GaugeInsertion, draw_ball, draw_ring, draw_ruler


def test_drawn_sprites_are_opacity_maps() -> None:
    for sprite in (draw_ball(32), draw_ring(32), draw_ruler(32)):
        assert sprite.shape == (32, 32) and sprite.dtype == np.float32
        assert sprite.min() >= 0 and 0.9 <= sprite.max() <= 1
    ball, ring = draw_ball(32), draw_ring(32)
    assert ball[16, 16] > 0.9 and ring[16, 16] == 0  # a filled disc, a hollow ring
    assert ball[0, 0] == 0 and ring[0, 0] == 0


def test_bank_from_folder_adds_user_crops(tmp_path) -> None:
    crop = np.full((20, 30), 40, dtype=np.uint8)
    crop[5:15, 10:20] = 230  # a bright gauge on a darker background
    Image.fromarray(crop).save(tmp_path / "real_ball.png")
    (tmp_path / "notes.txt").write_text("ignored")
    bank = GaugeBank.from_folder(tmp_path, size=32)
    assert bank.names[-1] == "real_ball" and len(bank) == len(GaugeBank.default(32)) + 1
    user = bank.sprites[-1, 0]
    assert user.shape == (32, 32) and user.max() == 1 and user[0, 0] == 0 and user[16, 16] == 1
    only = GaugeBank.from_folder(tmp_path, size=32, include_drawn=False)
    assert only.names == ["real_ball"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GaugeBank.from_folder(tmp_path / "missing")


def _place(b: int, **kw: float) -> dict[str, torch.Tensor]:
    """All images get one ball at a given centre, size and intensity."""
    return {
        "active": torch.tensor([[True, False]] * b),
        "sprite": torch.zeros(b, 2, dtype=torch.long),
        "size": torch.full((b, 2), kw.get("size", 0.25)),
        "angle": torch.zeros(b, 2),
        "centre": torch.tensor([[[kw.get("cx", 0.5), kw.get("cy", 0.5)]] * 2] * b),
        "intensity": torch.full((b, 2), kw.get("intensity", 1.0)),
    }


def test_gauge_is_visible_where_inserted() -> None:
    x = torch.full((3, 1, 64, 64), 0.2)
    insert = GaugeInsertion(count_probs=(0.0, 1.0))
    out = insert(x, params=_place(3, cx=0.25, cy=0.75, size=0.25))
    # the ball is centred at (x, y) = (16, 48) px with radius ~8 px
    assert (out[:, 0, 46:50, 14:18] > 0.9).all()
    assert torch.equal(out[:, :, :32, 32:], x[:, :, :32, 32:])  # far away: untouched
    assert (out >= x).all()  # max blend never darkens


def test_alpha_blend_and_intensity() -> None:
    x = torch.full((2, 1, 48, 48), 0.9)
    out = GaugeInsertion(count_probs=(0.0, 1.0), blend="alpha")(x, params=_place(2, intensity=0.3))
    assert out[:, 0, 24, 24].max() < 0.35  # a dim gauge replaces a bright background


def test_random_insertion_changes_some_images_and_is_seeded() -> None:
    x = torch.zeros(32, 1, 48, 48)
    out1 = GaugeInsertion(seed=3)(x)
    out2 = GaugeInsertion(seed=3)(x)
    assert torch.equal(out1, out2)
    changed = (out1 > 0).flatten(1).any(1)
    assert 5 < int(changed.sum()) < 32  # count_probs (0.5, 0.3, 0.2): about half get gauges
    assert out1.shape == x.shape and out1.dtype == x.dtype and out1.max() <= 1


def test_accepts_3d_batches_and_no_gauges() -> None:
    x = torch.rand(4, 16, 16)
    assert GaugeInsertion(seed=0)(x).shape == (4, 16, 16)
    assert torch.equal(GaugeInsertion(count_probs=(1.0,))(x), x)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"count_probs": (0.5, -0.1, 0.6)}, "non-negative"),
    ({"count_probs": (0.5, 0.3)}, "sum to 1"),
    ({"scale": (0.3, 0.1)}, "scale"),
    ({"intensity": (0.5, 1.5)}, "intensity"),
    ({"blend": "add"}, "blend"),
])
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GaugeInsertion(**kwargs)


def test_bank_rejects_bad_sprites() -> None:
    with pytest.raises(ValueError, match="square"):
        GaugeBank([np.zeros((4, 5), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GaugeBank([np.full((8, 8), 2.0, dtype=np.float32)])
