"""Gauge insertion: paste calibration gauges (planning balls, rings, rulers) into radiographs.

Surgical planning gauges show on hip and pelvis films and nowhere else, so a network can learn
"metal ball means pelvis" instead of anatomy. Inserting 0 to 2 gauges at random position, scale
and intensity into every view, whatever the region, takes that shortcut away.

A :class:`GaugeBank` holds the sprites: ones drawn here (:func:`draw_ball`, :func:`draw_ring`,
:func:`draw_ruler`) plus grey crops of real gauges that a user puts in a folder. Each sprite
is an opacity map in [0, 1] (1 = metal). :class:`GaugeInsertion` draws per-sample parameters
on the CPU from its own generator (reproducible, same parameters on every device) and pastes
all gauges of a batch with one batched ``grid_sample``: each gauge slot gets an affine map
from the image grid to its sprite, so there is no Python loop over images.

Example::

    bank = GaugeBank.default()                      # or GaugeBank.from_folder("gauges/")
    insert = GaugeInsertion(bank, count_probs=(0.5, 0.3, 0.2), seed=0)
    x = insert(x)                                   # float in [0, 1], Shape: (B, 1, H, W)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radaudit.augment._warp import affine_grid

__all__ = ["draw_ball", "draw_ring", "draw_ruler", "GaugeBank", "GaugeInsertion"]

_IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}


def _radius_grid(size: int) -> np.ndarray:
    """Distance of each pixel centre from the sprite centre, in units of the sprite half-size."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.hypot(c[None, :], c[:, None])


def draw_ball(size: int = 48, *, edge: float = 0.08) -> np.ndarray:
    """A metal ball: a filled disc with a soft edge, slightly denser in the middle.

    Args:
        size: Side of the sprite in pixels.
        edge: Width of the soft edge as a share of the radius.

    Returns:
        Opacity map in [0, 1]. Shape: (size, size).
    """
    r = _radius_grid(size) / 0.95
    disc = np.clip((1 - r) / edge, 0, 1)
    thickness = np.sqrt(np.clip(1 - r * r, 0, 1))  # chord length through a sphere
    return (disc * (0.75 + 0.25 * thickness)).astype(np.float32)


def draw_ring(size: int = 48, *, width: float = 0.18, edge: float = 0.08) -> np.ndarray:
    """A metal ring (annulus) with soft edges.

    Args:
        size: Side of the sprite in pixels.
        width: Ring width as a share of the outer radius.
        edge: Width of the soft edges as a share of the outer radius.

    Returns:
        Opacity map in [0, 1]. Shape: (size, size).
    """
    r = _radius_grid(size) / 0.95
    outer = np.clip((1 - r) / edge, 0, 1)
    inner = np.clip((r - (1 - width)) / edge, 0, 1)
    return (outer * inner).astype(np.float32)


def draw_ruler(size: int = 48, *, ticks: int = 8, thickness: float = 0.12) -> np.ndarray:
    """A radiopaque ruler: a horizontal bar with ticks, centred in a square sprite.

    Args:
        size: Side of the sprite in pixels (the bar's length).
        ticks: Number of tick marks.
        thickness: Bar thickness as a share of ``size``.

    Returns:
        Opacity map in [0, 1]. Shape: (size, size).
    """
    img = np.zeros((size, size), dtype=np.float32)
    half = max(1, round(thickness * size / 2))
    mid = size // 2
    x0, x1 = round(0.04 * size), size - round(0.04 * size)
    img[mid - half : mid + half, x0:x1] = 0.9
    tick_len = max(2, round(2.5 * half))
    for x in np.linspace(x0, x1 - 1, ticks).round().astype(int):
        img[mid - half - tick_len : mid - half, x : x + 1] = 1.0
    return img


def _sprite_from_crop(crop: np.ndarray, size: int) -> np.ndarray:
    """Turn a grey crop of a real gauge into an opacity map on a square canvas.

    The background (2nd percentile) goes to 0 and the metal (99.5th percentile) to 1; the crop
    is scaled so its long side is ``size`` and centred.
    """
    from PIL import Image

    a = crop.astype(np.float32)
    lo, hi = np.percentile(a, [2.0, 99.5])
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    h, w = a.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), dtype=np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = np.clip(a, 0, 1)
    return out


class GaugeBank:
    """A fixed stack of gauge sprites, loaded once.

    Args:
        sprites: Opacity maps in [0, 1], all square of the same side.
            Shape: (N, S, S), or a sequence of (S, S) arrays.
        names: One name per sprite, for reports.

    Attributes:
        sprites: Shape: (N, 1, S, S), float32 on the CPU (moved with :meth:`to`).
    """

    def __init__(self, sprites: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
                 names: Sequence[str] | None = None) -> None:
        t = torch.as_tensor(np.stack([np.asarray(s, dtype=np.float32) for s in sprites])
                            if not isinstance(sprites, torch.Tensor) else sprites, dtype=torch.float32)
        if t.ndim == 4 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 3 or t.shape[0] == 0 or t.shape[1] != t.shape[2]:
            raise ValueError(f"sprites must be a non-empty stack of square 2-D maps, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise ValueError("sprite values must be finite opacities in [0, 1]; rescale them first")
        self.sprites = t[:, None].contiguous()
        self.names = list(names) if names is not None else [f"sprite{i}" for i in range(len(t))]
        if len(self.names) != len(t):
            raise ValueError(f"got {len(self.names)} names for {len(t)} sprites")

    def __len__(self) -> int:
        return self.sprites.shape[0]

    @property
    def size(self) -> int:
        """Side of the sprites in pixels."""
        return self.sprites.shape[-1]

    def to(self, device: torch.device | str) -> GaugeBank:
        """Return a bank whose sprites live on ``device`` (self if already there)."""
        if self.sprites.device == torch.device(device):
            return self
        bank = GaugeBank.__new__(GaugeBank)
        bank.sprites, bank.names = self.sprites.to(device), self.names
        return bank

    def pyramid(self) -> torch.Tensor:
        """The sprites at 1, 1/2, 1/4 resolution (area-averaged), each centred on the full canvas.

        Small gauges are sampled from a reduced level, so thin rings do not alias into dots.

        Returns:
            Level-major stack. Shape: (L * N, 1, S, S).
        """
        levels = [self.sprites]
        size = self.size
        while len(levels) < 3 and size % (2 ** len(levels)) == 0 and size // 2 ** len(levels) >= 8:
            f = 2 ** len(levels)
            small = F.avg_pool2d(self.sprites, f)
            pad = (size - small.shape[-1]) // 2
            levels.append(F.pad(small, (pad, pad, pad, pad)))
        return torch.cat(levels)

    @classmethod
    def default(cls, size: int = 48) -> GaugeBank:
        """The drawn sprites: two balls (hard and soft edge), two rings (thin, thick), a ruler."""
        if size < 8:
            raise ValueError(f"sprite size must be at least 8 pixels, got {size}")
        sprites = [draw_ball(size), draw_ball(size, edge=0.3), draw_ring(size), draw_ring(size, width=0.35),
                   draw_ruler(size)]
        return cls(sprites, ["ball", "ball_soft", "ring", "ring_thick", "ruler"])

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], *, size: int = 48,
                    include_drawn: bool = True) -> GaugeBank:
        """Drawn sprites plus every grey image (PNG, TIFF, JPEG, BMP) in ``folder``.

        Crops should show one gauge, bright on a darker background, cut tight.

        Raises:
            FileNotFoundError: If ``folder`` does not exist.
            ValueError: If the folder holds no image and ``include_drawn`` is False.
        """
        from PIL import Image

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"gauge folder {folder} does not exist; create it and put grey crops in it")
        sprites: list[np.ndarray] = []
        names: list[str] = []
        if include_drawn:
            drawn = cls.default(size)
            sprites += [s[0].numpy() for s in drawn.sprites]
            names += drawn.names
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            with Image.open(path) as im:
                crop = np.asarray(im.convert("F") if im.mode in ("I", "I;16", "F") else im.convert("L"))
            sprites.append(_sprite_from_crop(crop, size))
            names.append(path.stem)
        if not sprites:
            raise ValueError(f"no gauge images in {folder} (looked for {sorted(_IMAGE_SUFFIXES)})")
        return cls(sprites, names)


def _check_range(name: str, value: Iterable[float], lo: float, hi: float) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must be a (min, max) pair with {lo} <= min <= max <= {hi}, got {(a, b)}")
    return a, b


class GaugeInsertion(nn.Module):
    """Insert 0 to ``max_gauges`` gauges per image, batched, with per-sample parameters.

    Per image and slot: whether the slot is used (from ``count_probs``), which sprite, its size
    (a share of the image side), rotation, centre (anywhere, so gauges may be cut by the edge)
    and intensity. Bright is metal: with ``blend="max"`` the gauge shows as
    ``max(image, intensity * opacity)``, with ``"alpha"`` as
    ``image * (1 - opacity) + intensity * opacity``.

    Args:
        bank: The sprites; default :meth:`GaugeBank.default`.
        count_probs: Probabilities of 0, 1, ..., ``max_gauges`` gauges per image; sums to 1.
        scale: Range of the gauge size as a share of the image's shorter side.
        intensity: Range of the gauge brightness in [0, 1].
        blend: ``"max"`` or ``"alpha"``.
        seed: Seed of the parameter generator; None draws from torch's global generator.

    Shape:
        Input: (B, 1, H, W) or (B, H, W), float in [0, 1].
        Output: same shape and dtype.
    """

    def __init__(self, bank: GaugeBank | None = None, *, count_probs: Sequence[float] = (0.5, 0.3, 0.2),
                 scale: tuple[float, float] = (0.04, 0.15), intensity: tuple[float, float] = (0.75, 1.0),
                 blend: str = "max", seed: int | None = None) -> None:
        super().__init__()
        probs = [float(p) for p in count_probs]
        if len(probs) < 1 or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError("count_probs must be non-negative probabilities of 0, 1, 2, ... gauges "
                             f"that sum to 1, e.g. (0.5, 0.3, 0.2); got {tuple(count_probs)}")
        if blend not in ("max", "alpha"):
            raise ValueError(f"blend must be 'max' or 'alpha', got {blend!r}")
        self.bank = bank if bank is not None else GaugeBank.default()
        self.count_probs = tuple(probs)
        self.max_gauges = len(probs) - 1
        self.scale = _check_range("scale", scale, 1e-3, 2.0)
        self.intensity = _check_range("intensity", intensity, 0.0, 1.0)
        self.blend = blend
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._cum_probs = torch.tensor(probs).cumsum(0)[:-1]  # stays on the CPU with the generator
        self._pyramid: torch.Tensor | None = None

    def sample_params(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw the per-slot parameters on the CPU.

        Returns:
            ``active`` (B, K) bool, ``sprite`` (B, K) long, ``size`` (B, K) share of the short side,
            ``angle`` (B, K) radians, ``centre`` (B, K, 2) (x, y) as shares of (W, H),
            ``intensity`` (B, K); K = ``max_gauges``.
        """
        g = generator if generator is not None else self.generator
        b, k = batch_size, max(self.max_gauges, 1)
        count = torch.bucketize(torch.rand(b, generator=g), self._cum_probs, right=True)  # (B,)
        u = torch.rand(b, k, 6, generator=g)
        lo, hi = self.scale
        ilo, ihi = self.intensity
        return {
            "active": torch.arange(k)[None, :] < count[:, None],
            "sprite": (u[..., 0] * len(self.bank)).long().clamp_max(len(self.bank) - 1),
            # log-uniform size: small and large gauges equally likely per octave
            "size": torch.exp(math.log(lo) + u[..., 1] * (math.log(hi) - math.log(lo))),
            "angle": u[..., 2] * 2 * math.pi,
            "centre": u[..., 3:5],
            "intensity": ilo + u[..., 5] * (ihi - ilo),
        }

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Insert gauges.

        Args:
            x: Images in [0, 1]. Shape: (B, 1, H, W) or (B, H, W).
            params: Parameters from :meth:`sample_params`; drawn when None.
            generator: Overrides the module's generator for this call.

        Returns:
            Images with gauges. Shape: as ``x``.
        """
        squeeze = x.ndim == 3
        if squeeze:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected grey images of shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
        if self.max_gauges == 0:
            return x[:, 0] if squeeze else x
        b, _, h, w = x.shape
        p = params if params is not None else self.sample_params(b, generator)
        layer_alpha, layer_value = self.render(p, h, w, device=x.device, dtype=x.dtype)
        if self.blend == "max":
            out = torch.maximum(x, layer_value * layer_alpha)
        else:
            out = x * (1 - layer_alpha) + layer_value * layer_alpha
        return out[:, 0] if squeeze else out

    def render(self, p: dict[str, torch.Tensor], h: int, w: int, *, device: torch.device,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Rasterize the gauges of a batch: per image, the opacity and the brightness under it.

        Overlapping gauges keep the larger opacity and the brightness of the last slot.

        Returns:
            ``(alpha, value)``, each Shape: (B, 1, H, W).
        """
        pyramid = self._pyramid_on(device)
        n = len(self.bank)
        levels = pyramid.shape[0] // n
        b, k = p["active"].shape
        short = min(h, w)
        half = p["size"] * short / 2  # (B, K) sprite half-side in pixels
        # Reduced level l holds the sprite in the central 1 / 2**l of the canvas.
        level = torch.log2(self.bank.size / (2 * half)).floor().clamp(0, levels - 1)
        half = half * 2**level
        cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
        cx, cy = p["centre"][..., 0] * w, p["centre"][..., 1] * h
        # Image grid (u, v) in [-1, 1] to sprite grid q: q = R(-angle) (pixel(u, v) - centre) / half,
        # with pixel(u, v) = ((u + 1) w / 2, (v + 1) h / 2) (align_corners=False).
        ax, ay = w / 2 / half, h / 2 / half
        tx, ty = (w / 2 - cx) / half, (h / 2 - cy) / half
        theta = torch.stack([
            torch.stack([cos * ax, sin * ay, cos * tx + sin * ty], -1),
            torch.stack([-sin * ax, cos * ay, -sin * tx + cos * ty], -1),
        ], -2).reshape(b * k, 2, 3)
        index = (level.long() * n + p["sprite"]).reshape(-1)
        # Render only the slots in use: they are known on the CPU, so this costs no device sync.
        used = p["active"].reshape(-1).nonzero().squeeze(1)
        alpha = torch.zeros(b * k, h, w, device=device, dtype=torch.float32)
        if len(used):
            theta_used = theta[used].to(device=device, dtype=torch.float32, non_blocking=True)
            sprites = pyramid.index_select(0, index[used].to(device, non_blocking=True))
            grid = affine_grid(theta_used, h, w)
            rendered = F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            alpha.index_copy_(0, used.to(device, non_blocking=True), rendered[:, 0])
        alpha = alpha.reshape(b, k, h, w)
        value = p["intensity"].to(device=device, dtype=alpha.dtype, non_blocking=True)[..., None, None]
        a = alpha.amax(1, keepdim=True)  # (B, 1, H, W)
        v = (alpha * value).amax(1, keepdim=True) / a.clamp_min(1e-6)
        return a.to(dtype), v.clamp(0, 1).to(dtype)

    def _pyramid_on(self, device: torch.device) -> torch.Tensor:
        if self._pyramid is None:
            self._pyramid = self.bank.pyramid()
        if self._pyramid.device != device:
            self._pyramid = self._pyramid.to(device)
        return self._pyramid

    def extra_repr(self) -> str:
        return (f"sprites={len(self.bank)}, count_probs={self.count_probs}, scale={self.scale}, "
                f"intensity={self.intensity}, blend={self.blend!r}")
