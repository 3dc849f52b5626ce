"""Views per second of the on-device two-view pipeline against lightly's SimCLRTransform.

Both run in one process on the same synthetic 256 x 256 radiograph-like images, at the same
output size and batch size, fed by a DataLoader with the same number of CPU workers:

- lightly: the standard ``lightly.transforms.SimCLRTransform(input_size=size)`` on PIL RGB
  images inside the workers (how lightly is used), default collate;
- ours: uint8 batches from :class:`augment.dataset.StackedCacheDataset` (no work in the
  workers), copied to ``--device``, then :func:`augment.make_two_view` ("simclr") there;
- kornia: the same loader, then a chain of ``kornia.augmentation`` modules with the same ops
  (crop, flip, rotation, brightness, contrast, gamma, blur, noise; no gauges) per view.

On CUDA it also times a ResNet18 (timm, 1 input channel) SimCLR training step (forward,
NT-Xent loss, backward, SGD) on both views of the same batch and prints the augmentation's
share of it (goal: <= 10 %).

Run (CPU, about a minute on 2 cores)::

    python benchmarks/augment.py --device cpu --size 224 --workers 2 --batch 64

On a GPU machine::

    python benchmarks/augment.py --device cuda --size 224 --workers 16 --batch 256 --batches 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

# This file is named augment.py: put the repository root, not benchmarks/, first on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from augment.dataset import CacheDataset, StackedCacheDataset, make_loader  # noqa: E402
from augment.pipeline import make_two_view  # noqa: E402


def synthetic_radiographs(n: int, side: int = 256, seed: int = 0) -> np.ndarray:
    """Letterboxed, limb-like uint8 images: a soft-tissue band, two 'bones', noise. Shape: (n, side, side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = np.empty((n, side, side), dtype=np.uint8)
    for i in range(n):
        tilt = rng.uniform(-0.2, 0.2)
        x = xx - 0.5 - tilt * (yy - 0.5)
        tissue = np.exp(-(x / rng.uniform(0.15, 0.3)) ** 4) * 0.45
        bones = sum(np.exp(-((x - o) / w) ** 2) * 0.4 for o, w in ((-0.05, 0.04), (0.07, 0.025)))
        img = 0.05 + tissue + bones + rng.normal(0, 0.02, (side, side))
        margin = int(rng.uniform(0, 0.2) * side)
        img[:, :margin] = 0
        img[:, side - margin :] = 0
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


class _PILDataset(torch.utils.data.Dataset):
    """The images as PIL RGB, through a per-image transform in the workers (lightly's way)."""

    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]).convert("RGB")), 0


def _cycle(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(step: Callable[[], None], batches: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / batches


def kornia_two_view(size: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The same ops as a kornia.augmentation chain (one warp per geometric op)."""
    import kornia.augmentation as K

    def view() -> torch.nn.Module:
        return K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
            K.RandomHorizontalFlip(),
            K.RandomRotation(10.0, p=1.0),
            K.RandomBrightness((0.6, 1.4), p=0.8),
            K.RandomContrast((0.6, 1.4), p=0.8),
            K.RandomGamma((0.7, 1.4), p=0.8),
            K.RandomGaussianBlur((2 * int(np.ceil(6 * size / 224)) + 1,) * 2, (0.1, 2.0 * size / 224), p=0.5),
            K.RandomGaussianNoise(std=0.03, p=0.5),
        )

    v1, v2 = view(), view()

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = x.float() / 255
        return (v1(f) - 0.5) / 0.5, (v2(f) - 0.5) / 0.5

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--size", type=int, default=224, help="output side of each view")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4, help="timed batches per pipeline")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="repeat all pipelines; report each one's best")
    ap.add_argument("--no-kornia", action="store_true", help="skip the kornia.augmentation chain")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    images = synthetic_radiographs(max(args.images, args.batch))
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{os.cpu_count()} CPU cores, load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"device={device} ({machine}) size={args.size} batch={args.batch} workers={args.workers} "
          f"images={len(images)} torch_threads={torch.get_num_threads()}")

    # lightly: per-image PIL transforms in the workers
    from lightly.transforms import SimCLRTransform

    lightly_data = _PILDataset(images, SimCLRTransform(input_size=args.size))

    def time_lightly() -> float:
        # A fresh loader per round, shut down after: its workers would otherwise refill their
        # prefetch queue while the other pipelines are being timed.
        loader = torch.utils.data.DataLoader(lightly_data, batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers, drop_last=True,
                                             pin_memory=device.type == "cuda")
        lightly_it = _cycle(loader)

        def lightly_step() -> None:
            views, _ = next(lightly_it)
            for v in views:
                v.to(device, non_blocking=True)

        t = time_loop(lightly_step, args.batches, device, warmup=2 * args.workers + 1)
        del lightly_it, loader
        return t

    tmp = tempfile.TemporaryDirectory()
    paths = []
    for i, img in enumerate(images):
        paths.append(Path(tmp.name) / f"{i}.npy")
        np.save(paths[-1], img)
    stacked = StackedCacheDataset.build(CacheDataset.from_paths(paths), Path(tmp.name) / "stack.npy")
    it = _cycle(make_loader(stacked, args.batch, workers=args.workers, seed=0))
    two_view = make_two_view("simclr", size=args.size, seed=0).to(device)

    def ours_step() -> None:
        x, _ = next(it)
        two_view(x.to(device, non_blocking=True))

    kv = None if args.no_kornia else kornia_two_view(args.size)

    def kornia_step() -> None:
        x, _ = next(it)
        kv(x.to(device, non_blocking=True))

    x_dev = next(it)[0].to(device)
    # Warm-ups drain the batches the workers prefetched, so the timed part sees steady production.
    # Rounds repeat all pipelines in turn and keep each one's best, against other load on the machine.
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        timings = {
            "lightly": time_lightly(),
            "ours": time_loop(ours_step, args.batches, device, warmup=4 * args.workers + 1),
            "aug": time_loop(lambda: two_view(x_dev), args.batches, device),
        }
        if kv is not None:
            timings["kornia"] = time_loop(kornia_step, max(2, args.batches // 2), device, warmup=1)
        best = {k: min(v, best.get(k, float("inf"))) for k, v in timings.items()}
    del it
    tmp.cleanup()
    t_lightly, t_ours, t_aug, t_kornia = best["lightly"], best["ours"], best["aug"], best.get("kornia")

    vps = lambda t: 2 * args.batch / t  # noqa: E731
    rows = [(f"lightly SimCLRTransform, {args.workers} workers", t_lightly, ""),
            (f"ours (loader + two-view on {device.type})", t_ours, f"ours/lightly = {t_lightly / t_ours:.2f}x")]
    if t_kornia is not None:
        rows.append(("kornia.augmentation chain, same loader", t_kornia, f"ours/kornia = {t_kornia / t_ours:.2f}x"))
    rows.append(("ours, augmentation only (batch on device)", t_aug,
                 f"{1000 * t_aug:.1f} ms per batch of {args.batch} x 2 views"))
    for name, t, note in rows:
        print(f"{name:<44} {vps(t):9.1f} views/s   {note}")

    if device.type == "cuda":
        import timm
        from lightly.loss import NTXentLoss

        model = timm.create_model("resnet18", in_chans=1, num_classes=128)
        model = model.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
        loss_fn = NTXentLoss()
        v1, v2 = two_view(x_dev)

        def train_step(amp: bool) -> Callable[[], None]:
            def run() -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    z = model(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))
                    loss = loss_fn(z[: args.batch].float(), z[args.batch :].float())
                loss.backward()
                opt.step()
            return run

        for amp in (False, True):
            t_step = time_loop(train_step(amp), args.batches, device, warmup=3)
            print(f"ResNet18 SimCLR step ({'bf16 autocast' if amp else 'fp32'}, {2 * args.batch} views): "
                  f"{1000 * t_step:.1f} ms; augmentation = {100 * t_aug / t_step:.1f} % of the step")


if __name__ == "__main__":
    main()
