"""The two-view pipeline: shapes, ranges, per-sample randomness, determinism, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from radaudit.augment.pipeline import (
    BYOLTwoViewTransform, RadiographViewTransform, TwoViewTransform, ViewConfig, _crop_flip_rotate_theta,
)
from radaudit.models.methods import METHODS, make_two_view


def _batch(b: int = 6, size: int = 48) -> torch.Tensor:
    """A non-symmetric uint8 'radiograph', repeated: identical samples in the batch."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = (40 + 150 * (xx / size) + 60 * ((yy - size / 3).abs() < size / 8)).clamp(0, 255).to(torch.uint8)
    return img[None, None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_shapes_dtypes_and_ranges(method: str) -> None:
    two_view = make_two_view(method, size=32, seed=0)
    v1, v2 = two_view(_batch(5, 48))
    for v in (v1, v2):
        assert v.shape == (5, 1, 32, 32) and v.dtype == torch.float32
        assert v.min() >= -1 - 1e-6 and v.max() <= 1 + 1e-6  # (x - 0.5) / 0.5 of x in [0, 1]
        assert torch.isfinite(v).all()
    # (B, H, W) input and float input in [0, 1] work too
    v1b, _ = make_two_view(method, size=32, seed=0)(_batch(5, 48)[:, 0])
    assert torch.equal(v1, v1b)
    v1f, _ = make_two_view(method, size=32, seed=0)(_batch(5, 48).float() / 255)
    assert torch.allclose(v1, v1f, atol=1e-5)


def test_identical_samples_get_different_views() -> None:
    v1, v2 = make_two_view("simclr", size=32, seed=1)(_batch(8))
    flat = v1.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(flat[i], flat[j])
    assert not torch.allclose(v1, v2)


def test_parameters_are_drawn_per_sample() -> None:
    view = RadiographViewTransform(ViewConfig(size=32), seed=0)
    p = view.sample_params(64)
    for key in ("angle", "brightness", "contrast", "gamma"):
        assert p[key].unique().numel() > 10, key
    assert p["crop"].unique(dim=0).shape[0] == 64
    assert 10 < int(p["flip"].sum()) < 54


def test_seed_makes_it_deterministic_and_leaves_global_rng_alone() -> None:
    x = _batch()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = make_two_view("byol", size=32, seed=7)(x)
    assert torch.equal(torch.get_rng_state(), state)
    b = make_two_view("byol", size=32, seed=7)(x)
    c = make_two_view("byol", size=32, seed=8)(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # successive calls of one transform differ
    t = make_two_view("byol", size=32, seed=7)
    assert not torch.equal(t(x)[0], t(x)[0])


def test_identity_config_reproduces_the_image() -> None:
    identity = ViewConfig(size=48, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, rotation=0.0,
                          jitter_p=0.0, blur_p=0.0, noise_p=0.0, gauge_count_probs=(1.0,), mean=0.0, std=1.0)
    x = _batch(3, 48)
    out = RadiographViewTransform(identity, seed=0)(x)
    assert torch.allclose(out, x.float() / 255, atol=1e-5)
    flipped = RadiographViewTransform(identity.replace(hflip_p=1.0), seed=0)(x)
    assert torch.allclose(flipped, x.float().flip(-1) / 255, atol=1e-5)


def test_crop_flip_rotate_matrix_against_a_hand_written_reference() -> None:
    # crop centred at (0.25, 0.5) of a 100 x 200 (H x W) image, 0.5 x 0.5 of it, rotated 90 degrees
    theta = _crop_flip_rotate_theta(torch.tensor([[0.25, 0.5, 0.5, 0.5]]), torch.tensor([False]),
                                    torch.tensor([math.pi / 2]), h=100, w=200)[0].double()
    # output (u, v) = (1, 0), the right edge midpoint, maps to centre + R(90) (cw / 2, 0) in pixels
    cx, cy, cw = 50.0, 50.0, 100.0
    px, py = cx + 0.0, cy + cw / 2  # R(90) (x, 0) = (0, x)
    got = theta @ torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(got, torch.tensor([2 * px / 200 - 1, 2 * py / 100 - 1], dtype=torch.float64))


def test_byol_views_are_asymmetric() -> None:
    t = BYOLTwoViewTransform(size=32)
    c1, c2 = t.view1.config, t.view2.config
    assert (c1.blur_p, c1.solarize_p) == (1.0, 0.0)
    assert (c2.blur_p, c2.solarize_p) == (0.1, 0.2)
    simclr = make_two_view("simclr", size=32)
    assert simclr.view1.config == simclr.view2.config


def test_overrides_apply_to_both_or_one_view() -> None:
    t = make_two_view("simclr", size=40, invert_p=0.3, view2={"blur_p": 0.0})
    assert t.size == 40 and t.view1.config.invert_p == t.view2.config.invert_p == 0.3
    assert (t.view1.config.blur_p, t.view2.config.blur_p) == (0.5, 0.0)


def test_inversion_inverts() -> None:
    base = ViewConfig(size=48, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, rotation=0.0,
                      jitter_p=0.0, blur_p=0.0, noise_p=0.0, gauge_count_probs=(1.0,), invert_p=1.0, mean=0.0, std=1.0)
    x = _batch(2, 48)
    assert torch.allclose(RadiographViewTransform(base)(x), 1 - x.float() / 255, atol=1e-5)


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="simclr, byol, supcon"):
        make_two_view("moco")
    assert isinstance(make_two_view("SimCLR", size=32), TwoViewTransform)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "size must be a positive int"),
    ({"size": -3}, "size must be a positive int"),
    ({"blur_p": -0.1}, "blur_p is a probability"),
    ({"hflip_p": 1.5}, "hflip_p is a probability"),
    ({"gauge_count_probs": (0.5, -0.5, 1.0)}, "non-negative"),
    ({"crop_scale": (0.9, 0.1)}, "crop_scale"),
    ({"rotation": -5}, "rotation"),
    ({"brightness": 1.2}, "brightness"),
    ({"std": 0}, "std"),
])
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_two_view("simclr", **kwargs)


def test_rejects_unknown_options_and_bad_input() -> None:
    with pytest.raises(TypeError, match="valid:.*blur_p"):
        make_two_view("simclr", blur_probability=0.3)
    t = make_two_view("simclr", size=32)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        t(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        t(torch.zeros(2, 1, 32, 32, dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_geometry() -> None:
    x = _batch(4)
    cfg = ViewConfig(size=32, noise_p=0.0)
    cpu = RadiographViewTransform(cfg, seed=0)(x)
    gpu = RadiographViewTransform(cfg, seed=0).cuda()(x.cuda())
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-3)


def test_augment_exposes_the_torch_api_lazily() -> None:
    from radaudit import augment

    assert augment.GaugeInsertion.__name__ == "GaugeInsertion"
    assert augment.CacheDataset.__module__ == "radaudit.augment.dataset"
    with pytest.raises(AttributeError, match="no attribute"):
        augment.not_a_thing  # noqa: B018
