"""The two-view augmentation pipeline for contrastive pretraining, batched on the device.

Input is a uint8 batch straight from the image cache loader, already on the device; output is
two float views per image, normalized, at ``size`` x ``size``. Every image gets its own random
parameters (crop, flip, angle, jitter factors, blur sigma, noise level, gauges, solarize),
so the views of one batch never share an augmentation.

Per view, in this order:

1. one affine warp, uint8 source to ``size`` x ``size``: random resized crop (area share
   ``crop_scale``, aspect ``crop_ratio``), horizontal flip, small rotation about the crop
   centre; outside the image is black, like the cache's letterbox;
2. gauge insertion (:class:`radaudit.augment.gauges.GaugeInsertion`), before the intensity changes so
   that gauges are jittered, blurred and noised like the anatomy around them;
3. with probability ``jitter_p``: brightness (multiplicative), contrast (about the image
   mean) and gamma, each factor drawn per image; grey images, so no saturation or hue;
4. Gaussian blur with per-image sigma (kornia's per-sample kernels, ``filter2d_separable``);
5. additive Gaussian noise with per-image standard deviation;
6. solarize (``x >= 0.5`` becomes ``1 - x``) and inversion, each with its probability;
7. ``(x - mean) / std``.

Why not torchvision v2 or a chain of ``kornia.augmentation`` modules: torchvision's v2
transforms draw one parameter set per call, so on a batch tensor every image would get the
same crop and the same jitter, which makes the positives of a batch alike and weakens the
contrastive task; per-image calls in CPU workers are exactly the baseline we replace (lightly's
``SimCLRTransform``, see ``benchmarks/augment.py``). ``kornia.augmentation`` does draw
per-sample parameters and runs on the device, but its RandomResizedCrop, RandomHorizontalFlip
and RandomRotation each resample the image (three interpolations, three passes over memory),
and it draws from torch's global generator. Here the three geometric steps are composed into
one affine matrix per image and applied with a single ``grid_sample``, and all parameters are
drawn on the CPU from the module's own ``torch.Generator``: ``seed`` makes the parameters
identical on CPU and GPU and leaves the global random state alone (noise pixels come from a
device generator seeded from it: reproducible per device). kornia supplies the per-sample
Gaussian kernels and the separable filter. ``benchmarks/augment.py`` also times the equivalent
``kornia.augmentation`` chain (measured on 2 CPU cores at 224 px: this pipeline 1.56x faster).

Defaults per method (:func:`radaudit.models.methods.make_two_view`), adapted to radiographs: crop area from 20 % (the
cache letterboxes images on black, so smaller crops are often empty; SimCLR used 8 %), rotation
within 10 degrees, jitter strength 0.4 as in SupCon's SimCLR augmentation, gamma 0.7 to 1.4.

- ``simclr``: SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations", appendix A): both views alike, blur p = 0.5.
- ``byol``: BYOL (Grill et al., 2020, "Bootstrap Your Own Latent", table 6): asymmetric views,
  view 1 always blurred and never solarized, view 2 blurred with p = 0.1 and solarized with
  p = 0.2.
- ``supcon``: SupCon (Khosla et al., 2020, "Supervised Contrastive Learning", reference code's
  SimCLR augmentation): both views alike, no blur.

All methods add noise (p = 0.5, std up to 0.03) and gauges (0, 1, 2 per view with p = 0.5,
0.3, 0.2); inversion is available (``invert_p``) but off by default.

Example::

    from radaudit.models.methods import make_two_view   # the registry picks each method's transform

    two_view = make_two_view("byol", size=224, seed=0).to("cuda")
    for images, labels in loader:            # uint8, Shape: (B, 1, 256, 256)
        v1, v2 = two_view(images.to("cuda", non_blocking=True))   # Shape: (B, 1, 224, 224) each
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import nn

from radaudit.augment import DEFAULT_IMAGE_SIZE
from radaudit.augment._warp import affine_grid
from radaudit.augment.gauges import GaugeBank, GaugeInsertion

__all__ = [
    "ViewConfig", "RadiographViewTransform", "TwoViewTransform", "SimCLRTwoViewTransform",
    "BYOLTwoViewTransform", "SupConTwoViewTransform",
]


def _pair(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got {(a, b)}")
    return a, b


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of one view. Probabilities are per image.

    Attributes:
        size: Output side in pixels.
        crop_scale: Range of the crop's area as a share of the image.
        crop_ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip_p: Probability of a horizontal flip.
        rotation: Largest rotation in degrees; the angle is uniform in [-rotation, rotation].
        jitter_p: Probability of brightness, contrast and gamma jitter (all three together).
        brightness: Brightness factor range is [1 - brightness, 1 + brightness].
        contrast: Contrast factor range is [1 - contrast, 1 + contrast].
        gamma: Range of the gamma exponent, sampled log-uniformly.
        blur_p: Probability of a Gaussian blur.
        blur_sigma: Range of the blur sigma in pixels at 224 px output (scaled with ``size``).
        noise_p: Probability of additive Gaussian noise.
        noise_std: Range of the noise standard deviation, in [0, 1] intensity units.
        gauge_count_probs: Probabilities of 0, 1, 2, ... gauges; ``(1.0,)`` turns gauges off.
        gauge_scale: Range of the gauge size as a share of the output side.
        gauge_intensity: Range of the gauge brightness.
        solarize_p: Probability of solarization (values >= 0.5 become 1 - value).
        invert_p: Probability of inverting the image (1 - value).
        mean: Subtracted after augmentation.
        std: Divides after subtracting ``mean``.
    """

    size: int = DEFAULT_IMAGE_SIZE
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotation: float = 10.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.03)
    gauge_count_probs: tuple[float, ...] = (0.5, 0.3, 0.2)
    gauge_scale: tuple[float, float] = (0.04, 0.15)
    gauge_intensity: tuple[float, float] = (0.75, 1.0)
    solarize_p: float = 0.0
    invert_p: float = 0.0
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            raise ValueError(f"size must be a positive int (output side in pixels), got {self.size!r}")
        for name in ("hflip_p", "jitter_p", "blur_p", "noise_p", "solarize_p", "invert_p"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {p}")
        def set_(name: str, value: Any) -> None:  # normalizes fields of the frozen dataclass
            object.__setattr__(self, name, value)

        set_("crop_scale", _pair("crop_scale", self.crop_scale, 1e-4, 1.0))
        if self.crop_scale[0] <= 0:
            raise ValueError(f"crop_scale min must be > 0, got {self.crop_scale}")
        set_("crop_ratio", _pair("crop_ratio", self.crop_ratio, 1e-2, 1e2))
        set_("gamma", _pair("gamma", self.gamma, 1e-2, 1e2))
        set_("blur_sigma", _pair("blur_sigma", self.blur_sigma, 0.0, 50.0))
        set_("noise_std", _pair("noise_std", self.noise_std, 0.0, 1.0))
        set_("gauge_scale", _pair("gauge_scale", self.gauge_scale, 1e-3, 2.0))
        set_("gauge_intensity", _pair("gauge_intensity", self.gauge_intensity, 0.0, 1.0))
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation is the largest angle in degrees and must be in [0, 180], got {self.rotation}")
        for name in ("brightness", "contrast"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (factor range 1 +- {name}), got {v}")
        probs = tuple(float(p) for p in self.gauge_count_probs)
        if not probs or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError("gauge_count_probs must be non-negative probabilities of 0, 1, 2, ... gauges "
                             f"summing to 1, e.g. (0.5, 0.3, 0.2), or (1.0,) for none; got {self.gauge_count_probs}")
        set_("gauge_count_probs", probs)
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def replace(self, **changes: Any) -> ViewConfig:
        """A copy with some fields changed; unknown names raise a TypeError listing the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown view option(s) {sorted(unknown)}; valid: {_field_names()}")
        return dataclasses.replace(self, **changes)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ViewConfig)]


class RadiographViewTransform(nn.Module):
    """One augmented view of a batch of grey radiographs, per-sample parameters.

    Args:
        config: The view's parameters.
        gauge_bank: Sprites for gauge insertion; default :meth:`GaugeBank.default`.
        seed: Seed of the parameter generator; None uses torch's global generator.

    Shape:
        Input: (B, 1, H, W) or (B, H, W), uint8 (0..255) or float in [0, 1].
        Output: (B, 1, size, size), float32, normalized with ``config.mean`` and ``config.std``.
    """

    def __init__(self, config: ViewConfig | None = None, *, gauge_bank: GaugeBank | None = None,
                 seed: int | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ViewConfig()
        c = self.config
        self.gauges = GaugeInsertion(gauge_bank, count_probs=c.gauge_count_probs, scale=c.gauge_scale,
                                     intensity=c.gauge_intensity)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sigma_max = c.blur_sigma[1] * c.size / 224
        self.blur_kernel = 2 * math.ceil(3 * sigma_max) + 1

    def sample_params(self, batch_size: int) -> dict[str, Any]:
        """Draw every per-image parameter of one call on the CPU.

        Returns:
            Tensors of leading dimension B: ``crop`` (B, 4) as (cx, cy, w, h) shares of the image,
            ``flip`` (B,) bool, ``angle`` (B,) radians, ``brightness``, ``contrast``, ``gamma``,
            ``sigma``, ``noise_std`` (B,) (identity values where not applied), ``solarize``,
            ``invert`` (B,) bool, ``gauges`` (dict, see :meth:`GaugeInsertion.sample_params`),
            and ``noise_seed``, an int.
        """
        c, g, b = self.config, self.generator, batch_size
        u = torch.rand(b, 16, generator=g, dtype=torch.float64)
        area = c.crop_scale[0] + u[:, 0] * (c.crop_scale[1] - c.crop_scale[0])
        log_r = math.log(c.crop_ratio[0]) + u[:, 1] * (math.log(c.crop_ratio[1]) - math.log(c.crop_ratio[0]))
        ratio = torch.exp(log_r)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = w / 2 + u[:, 2] * (1 - w)
        cy = h / 2 + u[:, 3] * (1 - h)
        jitter = u[:, 4] < c.jitter_p
        brightness = torch.where(jitter, 1 - c.brightness + 2 * c.brightness * u[:, 5], 1.0)
        contrast = torch.where(jitter, 1 - c.contrast + 2 * c.contrast * u[:, 6], 1.0)
        log_g = math.log(c.gamma[0]) + u[:, 7] * (math.log(c.gamma[1]) - math.log(c.gamma[0]))
        gamma = torch.where(jitter, torch.exp(log_g), 1.0)
        blur = u[:, 8] < c.blur_p
        sigma = torch.where(blur, (c.blur_sigma[0] + u[:, 9] * (c.blur_sigma[1] - c.blur_sigma[0])) * c.size / 224,
                            0.0)
        noisy = u[:, 10] < c.noise_p
        noise_std = torch.where(noisy, c.noise_std[0] + u[:, 11] * (c.noise_std[1] - c.noise_std[0]), 0.0)
        return {
            "crop": torch.stack([cx, cy, w, h], 1).float(),
            "flip": u[:, 12] < c.hflip_p,
            "angle": ((2 * u[:, 13] - 1) * math.radians(c.rotation)).float(),
            "brightness": brightness.float(), "contrast": contrast.float(), "gamma": gamma.float(),
            "sigma": sigma.float(), "noise_std": noise_std.float(),
            "solarize": u[:, 14] < c.solarize_p,
            "invert": u[:, 15] < c.invert_p,
            "gauges": self.gauges.sample_params(b, g),
            "noise_seed": int(torch.randint(0, 2**62, (1,), generator=g)),
        }

    def forward(self, x: torch.Tensor, params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Make one view of every image.

        Args:
            x: Images. Shape: (B, 1, H, W) or (B, H, W); uint8 or float in [0, 1].
            params: From :meth:`sample_params`; drawn when None.

        Returns:
            The view. Shape: (B, 1, size, size), float32.
        """
        x = _as_batch(x)
        b, dev = x.shape[0], x.device
        c = self.config
        p = params if params is not None else self.sample_params(b)
        scalars = torch.stack([p["brightness"], p["contrast"], p["gamma"], p["noise_std"],
                               p["solarize"].float(), p["invert"].float()], 1).to(dev, non_blocking=True)
        brightness, contrast, gamma, noise_std, solarize, invert = (s.view(b, 1, 1, 1) for s in scalars.unbind(1))

        theta = _crop_flip_rotate_theta(p["crop"], p["flip"], p["angle"], x.shape[-2], x.shape[-1])
        grid = affine_grid(theta.to(dev, non_blocking=True), c.size, c.size)
        src = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        v = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B,1,S,S)

        v = self.gauges(v, params=p["gauges"])

        v = (v * brightness).clamp_(0, 1)
        m = v.mean(dim=(2, 3), keepdim=True)
        v = ((v - m) * contrast + m).clamp_(0, 1)
        v = v.pow(gamma)

        # Blur and noise only the images drawn for them: the masks live on the CPU, so no sync.
        blurred = p["sigma"].nonzero().squeeze(1)
        if len(blurred):
            k = min(self.blur_kernel, 2 * ((c.size - 1) // 2) + 1)
            kernel = get_gaussian_kernel1d(k, p["sigma"][blurred, None])  # (n, k)
            # Tail weights of small sigmas are float32 denormals, which slow CPU convolution ~5x.
            kernel = torch.where(kernel < 1e-6, 0.0, kernel)
            kernel = (kernel / kernel.sum(1, keepdim=True)).to(dev, non_blocking=True)
            idx = blurred.to(dev, non_blocking=True)
            sub = filter2d_separable(v.index_select(0, idx), kernel, kernel, border_type="reflect")
            v = v.index_copy(0, idx, sub)

        if bool((p["noise_std"] > 0).any()):
            gen = torch.Generator(device=dev).manual_seed(p["noise_seed"])
            v = v + noise_std * torch.randn(v.shape, generator=gen, device=dev, dtype=v.dtype)
            v = v.clamp_(0, 1)

        v = torch.where(solarize.bool() & (v >= 0.5), 1 - v, v)
        v = torch.where(invert.bool(), 1 - v, v)
        return (v - c.mean) / c.std


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grey images of shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"expected uint8 (0..255) or float (0..1) images, got {x.dtype}")
    return x


def _crop_flip_rotate_theta(crop: torch.Tensor, flip: torch.Tensor, angle: torch.Tensor,
                            h: int, w: int) -> torch.Tensor:
    """Affine matrices from output grid to input grid for crop, flip and rotation in one warp.

    An output point (u, v) in [-1, 1]^2 goes to the input pixel position
    ``centre + R(angle) diag(+-1, 1) (u * cw / 2, v * ch / 2)`` (in pixels, so rotation is
    isotropic on non-square inputs), then to the input grid ``2 p / (W, H) - 1``.

    Args:
        crop: (cx, cy, w, h) as shares of the input. Shape: (B, 4).
        flip: Shape: (B,). angle: radians, Shape: (B,).

    Returns:
        Shape: (B, 2, 3), float32.
    """
    cx, cy, cw, ch = (crop[:, i].double() for i in range(4))
    cx, cy, cw, ch = cx * w, cy * h, cw * w, ch * h  # pixels
    s = torch.where(flip, -1.0, 1.0).double()
    cos, sin = torch.cos(angle.double()), torch.sin(angle.double())
    # rows of R diag(s, 1) scaled by the crop half-sizes, then to the normalized input grid
    a11, a12 = cos * s * cw / 2, -sin * ch / 2
    a21, a22 = sin * s * cw / 2, cos * ch / 2
    theta = torch.stack([
        torch.stack([2 * a11 / w, 2 * a12 / w, 2 * cx / w - 1], -1),
        torch.stack([2 * a21 / h, 2 * a22 / h, 2 * cy / h - 1], -1),
    ], 1)
    return theta.float()


class TwoViewTransform(nn.Module):
    """Two independently augmented views of every image of a batch.

    Args:
        view1: Parameters of the first view.
        view2: Parameters of the second view; same as ``view1`` when None.
        gauge_bank: Sprites for gauge insertion, shared by both views.
        seed: Makes both views reproducible (view 1 uses ``seed``, view 2 ``seed + 1``).

    Shape:
        Input: (B, 1, H, W) or (B, H, W), uint8 or float in [0, 1].
        Output: two tensors of Shape: (B, 1, size, size), float32.
    """

    def __init__(self, view1: ViewConfig | None = None, view2: ViewConfig | None = None, *,
                 gauge_bank: GaugeBank | None = None, seed: int | None = None) -> None:
        super().__init__()
        view1 = view1 if view1 is not None else ViewConfig()
        view2 = view2 if view2 is not None else view1
        if view1.size != view2.size:
            raise ValueError(f"both views must have the same size, got {view1.size} and {view2.size}")
        bank = gauge_bank if gauge_bank is not None else GaugeBank.default()
        self.view1 = RadiographViewTransform(view1, gauge_bank=bank, seed=seed)
        self.view2 = RadiographViewTransform(view2, gauge_bank=bank, seed=None if seed is None else seed + 1)

    @property
    def size(self) -> int:
        return self.view1.config.size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(view1, view2)``, each Shape: (B, 1, size, size)."""
        x = _as_batch(x)
        return self.view1(x), self.view2(x)


def _method_views(base: ViewConfig, view1: dict[str, Any], view2: dict[str, Any],
                  overrides: Mapping[str, Any], size: int) -> tuple[ViewConfig, ViewConfig]:
    common = {"size": size, **overrides}
    v1 = base.replace(**view1).replace(**common)
    v2 = base.replace(**view2).replace(**common)
    return v1, v2


class SimCLRTwoViewTransform(TwoViewTransform):
    """SimCLR views (Chen et al., 2020): both views alike, blur p = 0.5.

    Args:
        size: Output side in pixels.
        seed: See :class:`TwoViewTransform`.
        gauge_bank: See :class:`TwoViewTransform`.
        view1: Field changes for view 1 only. view2: for view 2 only.
        **overrides: :class:`ViewConfig` fields changed in both views.
    """

    VIEW1: dict[str, Any] = {"blur_p": 0.5}
    VIEW2: dict[str, Any] = {"blur_p": 0.5}

    def __init__(self, *, size: int = DEFAULT_IMAGE_SIZE, seed: int | None = None, gauge_bank: GaugeBank | None = None,
                 view1: Mapping[str, Any] | None = None, view2: Mapping[str, Any] | None = None,
                 **overrides: Any) -> None:
        v1, v2 = _method_views(ViewConfig(), {**self.VIEW1, **(view1 or {})}, {**self.VIEW2, **(view2 or {})},
                               overrides, size)
        super().__init__(v1, v2, gauge_bank=gauge_bank, seed=seed)


class BYOLTwoViewTransform(SimCLRTwoViewTransform):
    """BYOL views (Grill et al., 2020, table 6): view 1 always blurred; view 2 blur p = 0.1, solarize p = 0.2."""

    VIEW1 = {"blur_p": 1.0, "solarize_p": 0.0}
    VIEW2 = {"blur_p": 0.1, "solarize_p": 0.2}


class SupConTwoViewTransform(SimCLRTwoViewTransform):
    """SupCon views (Khosla et al., 2020, reference code's SimCLR augmentation): both alike, no blur."""

    VIEW1 = {"blur_p": 0.0}
    VIEW2 = {"blur_p": 0.0}
