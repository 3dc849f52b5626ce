"""Pretraining benchmark: throughput, peak GPU memory and linear-probe quality, with baselines.

1. Image pairs/s of one training step (SimCLR, ResNet18 by default), three ways, in one run:
   - full pipeline: uint8 ``.npy`` cache files -> DataLoader workers -> device (pinned,
     non-blocking) -> two-view augmentation on the device -> forward/backward -> optimizer step;
   - compute bound: the same step on views already on the device (no loading, no augmentation);
   - lightly's standard example: lightly's CPU ``SimCLRTransform`` on PIL images in DataLoader
     workers, float32 (its default precision), 3-channel input as its loader makes.
2. Peak GPU memory of one step at batch 1024 for each method (skipped on CPU).
3. Linear-probe (and kNN) accuracy on the synthetic export's true regions: each method's
   backbone against a supervised-from-scratch ResNet18 (cross-entropy on the recorded labels,
   the same augmentation, the same steps) and a randomly initialized ResNet18. All images are
   used for (pre)training, as the pipeline does; the probe is fit on half the in-domain images
   and scored on the other half.

Run from the repository root::

    # CPU, small settings (a few minutes on 2 cores; quality figures are not meaningful here)
    python benchmarks/pretrain.py

    # GPU (H100/H200): the issue's settings, 224 px, batch 1024, bf16
    python benchmarks/pretrain.py --gpu
    # = --size 224 --batch-size 1024 --precision bf16-mixed --cache-size 256 --workers 16
    #   --steps 20 --warmup-steps 5 --rounds 3 --images 8192 --probe-images 4200 --probe-epochs 30
    #   --probe-batch-size 256
    # add --compile to torch.compile the backbone in both the full pipeline and the compute bound
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from augment.dataset import CacheDataset, make_loader  # noqa: E402
from augment.pipeline import make_two_view  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.base import ContrastiveModule, build_optimizer  # noqa: E402
from models.embed import embed  # noqa: E402
from models.probe import knn_accuracy, linear_probe_accuracy  # noqa: E402
from models.train import METHODS, PretrainConfig, build_model, pretrain  # noqa: E402

GPU_PRESET = dict(size=224, batch_size=1024, precision="bf16-mixed", cache_size=256, workers=16, steps=20,
                  warmup_steps=5, rounds=3, images=8192, probe_images=4200, probe_epochs=30, probe_batch_size=256)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="the issue's GPU settings (overrides the numbers below)")
    p.add_argument("--method", default="simclr", choices=list(METHODS), help="method of the throughput section")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="view side in pixels")
    p.add_argument("--cache-size", type=int, default=80, help="side of the cached uint8 images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed"])
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (full pipeline and lightly)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps before each timing")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds; the best round counts")
    p.add_argument("--images", type=int, default=256, help="cached images for the throughput section")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--probe-images", type=int, default=140, help="synthetic export size (0 skips the probe)")
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--probe-batch-size", type=int, default=32)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.gpu:
        for k, v in GPU_PRESET.items():
            setattr(args, k, v)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def write_cache(root: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` smooth random uint8 images as ``.npy`` files, as the image cache stores them."""
    rng = np.random.default_rng(seed)
    paths = []
    base = rng.integers(0, 256, (n, size // 8, size // 8), dtype=np.uint8)
    for i in range(n):
        img = np.kron(base[i], np.ones((8, 8), dtype=np.uint8))[:size, :size]
        path = root / f"{i:06d}.npy"
        np.save(path, np.ascontiguousarray(img))
        paths.append(path)
    return paths


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


def cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def throughput(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, float]:
    torch.manual_seed(args.seed)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="radaudit-bench-") as tmp:
        paths = write_cache(Path(tmp), args.images, args.cache_size, args.seed)
        ds = CacheDataset.from_paths(paths)

        def model_and_opt(in_chans: int = 1) -> tuple[ContrastiveModule, torch.optim.Optimizer]:
            cfg = PretrainConfig(method=args.method, backbone=args.backbone, in_chans=in_chans, size=args.size,
                                 batch_size=args.batch_size, compile=args.compile and in_chans == 1,
                                 seed=args.seed, epochs=1, warmup_epochs=0)
            model = build_model(cfg).to(device).train()
            opt = build_optimizer(model.optimizer_name, model.trainable_modules(), lr=model.lr,
                                  weight_decay=model.weight_decay)
            return model, opt

        def update(model: ContrastiveModule, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_optimizer_step()

        # full pipeline
        model, opt = model_and_opt()
        loader = make_loader(ds, args.batch_size, workers=args.workers, pin_memory=device.type == "cuda",
                             seed=args.seed)
        it = cycle(loader)

        def full_step() -> None:
            images, labels = next(it)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = model.shared_step(images, labels)
            update(model, opt, loss)

        # compute bound: same model and step, views already on the device
        images, labels = next(it)
        images, labels = images.to(device), labels.to(device)
        v1, v2 = model.make_views(images)

        def compute_step() -> None:
            with autocast(device, precision):
                loss = model.compute_loss(v1, v2, labels)
            update(model, opt, loss)

        # lightly's standard example: CPU transforms in workers, float32, RGB
        from lightly.transforms import SimCLRTransform

        model3, opt3 = model_and_opt(in_chans=3)
        lightly_ds = _LightlyExampleDataset(paths, SimCLRTransform(input_size=args.size))
        lightly_loader = DataLoader(lightly_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                    num_workers=args.workers, pin_memory=device.type == "cuda",
                                    persistent_workers=args.workers > 0)
        it3 = cycle(lightly_loader)

        def lightly_step() -> None:
            (x0, x1), _ = next(it3)
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
            loss = model3.compute_loss(x0, x1, torch.full((x0.shape[0],), -1, device=device))
            update(model3, opt3, loss)

        variants = {"full pipeline": full_step, "compute bound (views on device)": compute_step,
                    "lightly example (CPU SimCLRTransform, fp32)": lightly_step}
        for _ in range(args.rounds):  # interleaved rounds, best of each: fairer on a shared machine
            for name, step in variants.items():
                seconds = timed(step, device, args.warmup_steps, args.steps)
                results[name] = min(results.get(name, float("inf")), seconds)
        del it, it3, loader, lightly_loader
    return {k: args.batch_size * args.steps / v for k, v in results.items()}


class _LightlyExampleDataset(Dataset[tuple[list[torch.Tensor], int]]):
    """The cached images as RGB PIL images through a lightly transform, as lightly's examples load them."""

    def __init__(self, paths: list[Path], transform: Callable[[Any], list[torch.Tensor]]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        from PIL import Image

        img = Image.fromarray(np.load(self.paths[i])).convert("RGB")
        return self.transform(img), 0


def peak_memory(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, float]:
    """Peak allocated GPU memory (GiB) of two training steps at batch 1024, per method."""
    out = {}
    for method in METHODS:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cfg = PretrainConfig(method=method, backbone=args.backbone, size=224, batch_size=1024, epochs=1,
                             warmup_epochs=0)
        model = build_model(cfg).to(device).train()
        opt = build_optimizer(model.optimizer_name, model.trainable_modules(), lr=model.lr,
                              weight_decay=model.weight_decay)
        images = torch.randint(0, 256, (1024, 1, 256, 256), dtype=torch.uint8, device=device)
        labels = torch.randint(-1, 14, (1024,), device=device)
        for _ in range(2):
            with autocast(device, precision):
                loss = model.shared_step(images, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_optimizer_step()
        sync(device)
        out[method] = torch.cuda.max_memory_allocated(device) / 2**30
        del model, opt, images, loss
    return out


def synthetic_export(args: argparse.Namespace, root: Path) -> tuple[CacheDataset, np.ndarray, list[str]]:
    """Generate, ingest and load the synthetic export: dataset with recorded labels, true labels."""
    import functools

    import pandas as pd

    from pacs import cache
    from pacs.cache import CacheParams
    from pacs.ingest import IngestConfig, run_ingest
    from pacs.synth import REGIONS, generate_export

    generate_export(root / "export", root / "truth.parquet", n=args.probe_images, seed=args.seed,
                    size=max(args.cache_size, 128))
    run_ingest(IngestConfig(root / "export", root / "data", cache=CacheParams(size=args.cache_size),
                            workers=min(os.cpu_count() or 1, 8)))
    truth = pd.read_parquet(root / "truth.parquet")
    cached = {p.stem for p in (root / "data" / "cache" / "images").rglob("*.npy")}
    truth = truth[truth["sop_instance_uid"].isin(cached)].reset_index(drop=True)
    regions = list(REGIONS)
    index = {r: i for i, r in enumerate(regions)}
    recorded = [index.get(r, -1) if isinstance(r, str) else -1 for r in truth["recorded_region"]]
    true = np.array([index.get(r, -1) if isinstance(r, str) and not ood else -1
                     for r, ood in zip(truth["true_region"], truth["is_ood"])], dtype=np.int64)
    ds = CacheDataset.from_reader(functools.partial(cache.read, root / "data"), list(truth["sop_instance_uid"]),
                                  recorded)
    return ds, true, regions


def supervised_baseline(ds: CacheDataset, cfg: PretrainConfig, n_classes: int, device: torch.device,
                        precision: str) -> nn.Module:
    """ResNet18 from scratch with cross-entropy on the recorded labels (nulls skipped), same views and steps."""
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone).to(device)
    head = nn.Linear(512, n_classes).to(device)
    view = make_two_view("supcon", size=cfg.size, seed=cfg.seed).view1.to(device)
    loader = make_loader(ds, cfg.batch_size, workers=cfg.num_workers, seed=cfg.seed)
    steps = cfg.epochs * len(loader)
    opt = build_optimizer("sgd", [backbone, head], lr=0.1 * cfg.batch_size / 256, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(cfg.epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            with torch.no_grad():
                x = view(images)  # (B, 1, size, size)
            with autocast(device, precision):
                logits = head(backbone(x))  # (B, n_classes)
            loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return backbone.eval()


def probe(args: argparse.Namespace, device: torch.device, precision: str) -> tuple[dict[str, tuple[float, float]], str]:
    with tempfile.TemporaryDirectory(prefix="radaudit-probe-") as tmp:
        t0 = time.perf_counter()
        ds, true, regions = synthetic_export(args, Path(tmp))
        note = f"{len(ds)} images ({int((true >= 0).sum())} in-domain), {time.perf_counter() - t0:.0f} s to generate+ingest"
        batch = min(args.probe_batch_size, len(ds))
        base = PretrainConfig(backbone=args.backbone, size=args.size, batch_size=batch, epochs=args.probe_epochs,
                              warmup_epochs=min(1.0, args.probe_epochs / 2), precision=precision,
                              num_workers=min(args.workers, 8), seed=args.seed, on_cpu="as_is", progress_bar=False)
        backbones: dict[str, nn.Module] = {}
        for method in METHODS:
            t = time.perf_counter()
            res = pretrain(base.replace(method=method), ds)
            backbones[method] = res.backbone
            print(f"  pretrained {method}: {res.steps} steps in {time.perf_counter() - t:.0f} s, "
                  f"loss {res.history[0]:.3f} -> {res.history[-1]:.3f}", flush=True)
        t = time.perf_counter()
        backbones["supervised from scratch"] = supervised_baseline(ds, base, len(regions), device, precision)
        print(f"  trained supervised baseline in {time.perf_counter() - t:.0f} s", flush=True)
        torch.manual_seed(args.seed)
        backbones["random init"] = create_backbone(args.backbone).eval()

        rng = np.random.default_rng(args.seed)
        labelled = np.flatnonzero(true >= 0)
        rng.shuffle(labelled)
        train_idx, test_idx = np.sort(labelled[: len(labelled) // 2]), np.sort(labelled[len(labelled) // 2:])
        out = {}
        for name, backbone in backbones.items():
            feats = embed(backbone, ds, batch_size=256, device=device, size=args.size)
            tx, ty, vx, vy = feats[train_idx], true[train_idx], feats[test_idx], true[test_idx]
            out[name] = (linear_probe_accuracy(tx, ty, vx, vy), knn_accuracy(tx, ty, vx, vy, k=min(20, len(tx))))
    return out, note


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        where = f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    else:
        where = f"CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {where}")
    print(f"settings: {args.backbone}, {args.size} px views from {args.cache_size} px cache, batch {args.batch_size}, "
          f"{precision}, {args.workers} workers, best of {args.rounds} rounds of {args.steps} timed steps after "
          f"{args.warmup_steps}"
          f"{', compiled' if args.compile else ''}")

    print(f"\n1. training throughput ({args.method}), image pairs/s")
    pairs = throughput(args, device, precision)
    full, bound = pairs["full pipeline"], pairs["compute bound (views on device)"]
    lightly_rate = pairs["lightly example (CPU SimCLRTransform, fp32)"]
    for name, rate in pairs.items():
        print(f"  {name:<46} {rate:10.1f}")
    print(f"  full pipeline / compute bound                  {full / bound:10.1%}  (goal on H100/H200 at 224 px, bf16: >= 90%)")
    print(f"  full pipeline / lightly example                {full / lightly_rate:10.2f}x")
    if not cuda:
        print("  (CPU: the step is compute bound and the augmentation a small part of it; on a shared machine step "
              "times vary by 30 % or more between rounds, so ratios near 100 % are noise; GPU figures pending)")

    print("\n2. peak GPU memory, one step at batch 1024, 224 px")
    if not cuda:
        print("  skipped: no GPU (pending: run `python benchmarks/pretrain.py --gpu` on an H100/H200)")
    elif args.skip_memory:
        print("  skipped: --skip-memory")
    else:
        for method, gib in peak_memory(args, device, precision).items():
            print(f"  {method:<8} {gib:6.1f} GiB")

    print("\n3. linear-probe / kNN accuracy on the synthetic export's true regions")
    if args.probe_images <= 0:
        print("  skipped: --probe-images 0")
        return
    results, note = probe(args, device, precision)
    print(f"  data: {note}; {args.probe_epochs} epochs at batch {min(args.probe_batch_size, args.probe_images)}")
    print(f"  {'backbone':<26} {'linear probe':>12} {'kNN (k=20)':>11}")
    for name, (lin, knn) in results.items():
        print(f"  {name:<26} {lin:12.1%} {knn:11.1%}")
    if not cuda:
        print("  (CPU settings: a few steps at 64 px; these figures only show the pipeline runs, not what the "
              "methods reach; GPU figures pending)")


if __name__ == "__main__":
    main()
