"""Views per second of the on-device two-view pipeline against lightly's SimCLRTransform.

Both run in one process on the same synthetic 256 x 256 radiograph-like images, at the same
output size and batch size, fed by a DataLoader with the same number of CPU workers:

- ours, augmentation only: :func:`radaudit.models.methods.make_two_view` ("simclr") on a batch already on
  ``--device`` (the cheapest figure, measured first);
- on CUDA: a ResNet18 (timm, 1 input channel) SimCLR training step (forward, NT-Xent loss,
  backward, SGD) on both views of the same batch, fp32 and bf16, and the augmentation's share
  of it (goal: <= 10 %);
- ours: uint8 batches from :class:`radaudit.augment.dataset.StackedCacheDataset` (no work in the
  workers), copied to ``--device``, then the two-view pipeline there;
- kornia: the same loader, then a chain of ``kornia.augmentation`` modules with the same ops
  (crop, flip, rotation, brightness, contrast, gamma, blur, noise; no gauges) per view;
- lightly: the standard ``lightly.transforms.SimCLRTransform(input_size=size)`` on PIL RGB
  images inside the workers (how lightly is used), default collate.

The three loader-fed pipelines run in interleaved rounds (``--rounds``), each one's best kept.
Every figure is printed the moment it is measured and appended to a JSON file (``--json``;
default ``$OUT/augment.json`` where ``OUT`` is set, else ``benchmarks/out/augment.json``).

Run (CPU: tiny, seconds; the second about a minute on 2 cores)::

    python benchmarks/augment.py --device cpu --size 64 --workers 1 --batch 8 --images 32
    python benchmarks/augment.py --device cpu --size 224 --workers 2 --batch 64

On a GPU machine (sized for a first figure within 30 s and all within a minute; not yet timed
on a GPU)::

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

# This file is named augment.py: put the repository root, not benchmarks/, first on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from radaudit import augment  # noqa: E402,F401  (before torch, as the pipeline: OpenMP waits passively, see radaudit.augment.passive_openmp)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from radaudit.augment.dataset import CacheDataset, StackedCacheDataset, make_loader  # noqa: E402
from radaudit.models.methods import make_two_view  # noqa: E402
from benchmarks._figures import Figures  # noqa: E402


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
    ap.add_argument("--rounds", type=int, default=2, help="repeat the loader-fed pipelines; report each one's best")
    ap.add_argument("--no-kornia", action="store_true", help="skip the kornia.augmentation chain")
    ap.add_argument("--json", type=Path, help="figures file (default: $OUT/augment.json, else benchmarks/out/)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    for name in ("size", "batch", "batches", "images", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        ap.error(f"--workers must be >= 0, got {args.workers}")
    device = torch.device(args.device)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    else:
        machine = f"{os.cpu_count()} CPU cores, load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    figures = Figures("augment", args.json, {**{k: v for k, v in vars(args).items() if k != "json"},
                                              "machine": machine, "torch_threads": torch.get_num_threads()})
    images = synthetic_radiographs(max(args.images, args.batch))
    print(f"device={device} ({machine}) size={args.size} batch={args.batch} workers={args.workers} "
          f"images={len(images)} torch_threads={torch.get_num_threads()}", flush=True)
    vps = lambda t: 2 * args.batch / t  # noqa: E731

    # 1. The augmentation alone on a batch already on the device: the cheapest figure, first.
    two_view = make_two_view("simclr", size=args.size, seed=0).to(device)
    x_dev = torch.from_numpy(images[: args.batch])[:, None].to(device)  # (B, 1, 256, 256) uint8
    t_aug = time_loop(lambda: two_view(x_dev), args.batches, device)
    figures.add("augmentation", "ours, augmentation only (batch on device)", vps(t_aug), "views/s",
                ms_per_batch=1000 * t_aug)

    # 2. On CUDA: the augmentation's share of a ResNet18 SimCLR training step on its views.
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

        for amp in (True, False):
            t_step = time_loop(train_step(amp), args.batches, device, warmup=3)
            label = "bf16 autocast" if amp else "fp32"
            figures.add("training step", f"ResNet18 SimCLR step ({label}, {2 * args.batch} views)", 1000 * t_step,
                        "ms", precision=label)
            figures.add("training step", f"augmentation / step ({label})", 100 * t_aug / t_step, "%",
                        precision=label, goal="<= 10 %")
        del model, opt, v1, v2

    # 3. The loader-fed pipelines, interleaved rounds.
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

    def ours_step() -> None:
        x, _ = next(it)
        two_view(x.to(device, non_blocking=True))

    kv = None if args.no_kornia else kornia_two_view(args.size)

    def kornia_step() -> None:
        x, _ = next(it)
        kv(x.to(device, non_blocking=True))

    # Warm-ups drain the batches the workers prefetched, so the timed part sees steady production.
    # Rounds repeat the pipelines in turn and keep each one's best, against other load on the machine.
    pipelines: dict[str, tuple[str, Callable[[], float]]] = {
        "ours": (f"ours (loader + two-view on {device.type})",
                 lambda: time_loop(ours_step, args.batches, device, warmup=4 * args.workers + 1)),
    }
    if kv is not None:
        pipelines["kornia"] = ("kornia.augmentation chain, same loader",
                               lambda: time_loop(kornia_step, max(2, args.batches // 2), device, warmup=1))
    pipelines["lightly"] = (f"lightly SimCLRTransform, {args.workers} workers", time_lightly)
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for key, (label, measure) in pipelines.items():
            t = measure()
            best[key] = min(t, best.get(key, float("inf")))
            figures.add("pipelines", f"{label}, round {r + 1}", vps(t), "views/s", pipeline=key, round=r + 1)
    del it
    tmp.cleanup()

    t_ours, t_lightly = best["ours"], best["lightly"]
    figures.add("pipelines", "ours / lightly (best rounds)", t_lightly / t_ours, "x",
                shown=f"{t_lightly / t_ours:10.2f}")
    if "kornia" in best:
        figures.add("pipelines", "ours / kornia (best rounds)", best["kornia"] / t_ours, "x",
                    shown=f"{best['kornia'] / t_ours:10.2f}")
    figures.note(f"done in {time.perf_counter() - figures.t0:.0f} s")


if __name__ == "__main__":
    main()
