"""Pretraining benchmark: step rates, peak GPU memory and linear-probe quality, with baselines.

Sections, cheapest first; every figure is printed the moment it is measured and appended to a
JSON file (``--json``; default ``$OUT/pretrain.json`` where ``OUT`` is set, else
``benchmarks/out/pretrain.json``), so a run stopped early keeps what it measured:

1. Compute-bound step rate of each method (SimCLR, BYOL, SupCon; ResNet18 by default): one
   training step (forward, loss, backward, optimizer, BYOL's momentum update) on two views
   already on the device, in views/s (2 x batch per step), at each ``--compute-sizes``.
2. Peak GPU memory of two training steps at batch 1024, 224 px, per method, augmentation
   included (skipped on CPU).
3. Image pairs/s of one training step of ``--method``, three ways, interleaved rounds:
   - full pipeline: uint8 ``.npy`` cache files -> DataLoader workers -> device (pinned,
     non-blocking) -> two-view augmentation on the device -> forward/backward -> optimizer step;
   - compute bound: the same step on views already on the device (no loading, no augmentation);
   - lightly's standard example: lightly's CPU ``SimCLRTransform`` on PIL images in DataLoader
     workers, float32 (its default precision), 3-channel input as its loader makes.
4. Linear-probe (and kNN) accuracy on the synthetic export's true regions: each method's
   backbone against a supervised-from-scratch ResNet18 (cross-entropy on the recorded labels,
   the same augmentation, the same steps) and a randomly initialized ResNet18. All images are
   used for (pre)training, as the pipeline does; the probe is fit on half the in-domain images
   and scored on the other half. Optional: ``--probe-images 0`` skips it (the ``--gpu`` default).

Run from the repository root::

    # CPU, small settings: sections 1 and 3 in well under a minute on 2 cores; the probe
    # section adds a few minutes (quality figures are not meaningful at these settings)
    python benchmarks/pretrain.py --probe-images 0
    python benchmarks/pretrain.py

    # GPU (H100/H200), sized for a short device session: first figure within 30 s, all within
    # 3 minutes (an estimate from the 2026-11-30 H200 step rates; not yet timed on a GPU)
    python benchmarks/pretrain.py --gpu
    # = --size 224 --compute-sizes 128 224 --batch-size 1024 --precision bf16-mixed --cache-size 256
    #   --workers 16 --steps 10 --warmup-steps 3 --rounds 1 --images 8192 --probe-images 0
    # quality on a GPU (minutes): --gpu --probe-images 4200 --probe-epochs 30 --probe-batch-size 256
    # add --compile to torch.compile the backbone in both the full pipeline and the compute bound

Any option given explicitly overrides the preset.
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

from radaudit import augment  # noqa: E402,F401  (before torch, as the pipeline: OpenMP waits passively, see radaudit.augment.passive_openmp)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from radaudit.augment.dataset import CacheDataset, make_loader  # noqa: E402
from radaudit.models.methods import make_two_view  # noqa: E402
from benchmarks._figures import Figures  # noqa: E402
from radaudit.models.backbone import create_backbone  # noqa: E402
from radaudit.models.base import ContrastiveModule, build_optimizer  # noqa: E402
from radaudit.models.embed import embed  # noqa: E402
from radaudit.models.probe import knn_accuracy, linear_probe_accuracy  # noqa: E402
from radaudit.models.methods import METHODS  # noqa: E402
from radaudit.models.train import PretrainConfig, build_model, pretrain  # noqa: E402

# Without --gpu: small settings that finish on 2 CPU cores in well under a minute (without the probe).
CPU_DEFAULTS: dict[str, Any] = dict(size=64, compute_sizes=None, batch_size=32, precision="auto", cache_size=80,
                                    workers=2, steps=3, warmup_steps=1, rounds=1, images=256, probe_images=140,
                                    probe_epochs=2, probe_batch_size=32)
# --gpu: the settings (224 px, batch 1024, bf16), with step counts that fit a short session.
GPU_PRESET: dict[str, Any] = dict(size=224, compute_sizes=[128, 224], batch_size=1024, precision="bf16-mixed",
                                  cache_size=256, workers=16, steps=10, warmup_steps=3, rounds=1, images=8192,
                                  probe_images=0, probe_epochs=30, probe_batch_size=256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="the GPU preset (options given explicitly still win)")
    p.add_argument("--method", default="simclr", choices=list(METHODS), help="method of the pipeline section")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, help="view side in pixels (CPU default 64)")
    p.add_argument("--compute-sizes", type=int, nargs="+", help="view sides of the compute-bound section "
                   "(default: --size; --gpu: 128 224)")
    p.add_argument("--cache-size", type=int, help="side of the cached uint8 images (CPU default 80)")
    p.add_argument("--batch-size", type=int, help="CPU default 32")
    p.add_argument("--precision", choices=["auto", "32-true", "bf16-mixed"])
    p.add_argument("--workers", type=int, help="DataLoader workers (full pipeline and lightly; CPU default 2)")
    p.add_argument("--steps", type=int, help="timed steps per variant and round (CPU default 3)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before each timing (CPU default 1)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the pipeline section; the best counts")
    p.add_argument("--images", type=int, help="cached images for the pipeline section (CPU default 256)")
    p.add_argument("--lightly-batch-size", type=int, help="batch of lightly's example (default: --batch-size, at "
                   "most 256: its workers hold float32 RGB views, 1.2 GB per batch of 1024 at 224 px)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--probe-images", type=int, help="synthetic export size (0 skips the probe; CPU default 140, "
                   "--gpu 0)")
    p.add_argument("--probe-epochs", type=int)
    p.add_argument("--probe-batch-size", type=int)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json", type=Path, help="figures file (default: $OUT/pretrain.json, else benchmarks/out/)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for k, v in (GPU_PRESET if args.gpu else CPU_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.compute_sizes is None:
        args.compute_sizes = [args.size]
    if args.lightly_batch_size is None:
        args.lightly_batch_size = min(args.batch_size, 256)
    for name in ("size", "cache_size", "batch_size", "lightly_batch_size", "steps", "rounds", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.images < args.batch_size:
        p.error(f"--images ({args.images}) must be at least one batch (--batch-size {args.batch_size})")
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


def make_model(args: argparse.Namespace, device: torch.device, method: str, size: int, batch_size: int,
               in_chans: int = 1) -> tuple[ContrastiveModule, torch.optim.Optimizer]:
    """A method's module in training mode on ``device`` and its optimizer (the paper's)."""
    cfg = PretrainConfig(method=method, backbone=args.backbone, in_chans=in_chans, size=size, batch_size=batch_size,
                         compile=args.compile and in_chans == 1, seed=args.seed, epochs=1, warmup_epochs=0)
    model = build_model(cfg).to(device).train()
    opt = build_optimizer(model.optimizer_name, model.trainable_modules(), lr=model.lr,
                          weight_decay=model.weight_decay)
    return model, opt


def update(model: ContrastiveModule, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backward, optimizer step, and the method's after-step work (BYOL's momentum update)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.after_optimizer_step()


def compute_bound(args: argparse.Namespace, device: torch.device, precision: str, figures: Figures) -> None:
    """Section 1: views/s of each method's training step on views already on the device."""
    b = args.batch_size
    for size in args.compute_sizes:
        for method in METHODS:
            torch.manual_seed(args.seed)
            model, opt = make_model(args, device, method, size, b)
            images = torch.randint(0, 256, (b, 1, args.cache_size, args.cache_size), dtype=torch.uint8, device=device)
            labels = torch.randint(-1, 14, (b,), device=device)
            v1, v2 = model.make_views(images)  # (B, 1, size, size) each

            def step() -> None:
                with autocast(device, precision):
                    loss = model.compute_loss(v1, v2, labels)
                update(model, opt, loss)

            seconds = timed(step, device, args.warmup_steps, args.steps)
            figures.add("compute bound", f"{method} {size} px, batch {b}", 2 * b * args.steps / seconds, "views/s",
                        method=method, size=size, batch_size=b, steps_per_s=args.steps / seconds)
            del model, opt, images, v1, v2
            if device.type == "cuda":
                torch.cuda.empty_cache()


def throughput(args: argparse.Namespace, device: torch.device, precision: str, figures: Figures) -> dict[str, float]:
    """Section 3: image pairs/s of the full pipeline, the compute bound and lightly's example, best of rounds."""
    torch.manual_seed(args.seed)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="radaudit-bench-") as tmp:
        paths = write_cache(Path(tmp), args.images, args.cache_size, args.seed)
        ds = CacheDataset.from_paths(paths)

        # full pipeline
        model, opt = make_model(args, device, args.method, args.size, args.batch_size)
        # Two batches prefetched per worker, drained by the warm-up: the timed steps see the loader's
        # steady production, not a queue filled while the other variants ran.
        loader = make_loader(ds, args.batch_size, workers=args.workers, pin_memory=device.type == "cuda",
                             seed=args.seed, prefetch_factor=2)
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

        # lightly's standard example: CPU transforms in workers, float32, RGB. One batch prefetched
        # per worker, and a warm-up that drains them, so the timed steps see steady production.
        # Its batch is capped (--lightly-batch-size): the workers' float32 RGB batches live in
        # shared memory, 16 x 1.2 GB at batch 1024 and 224 px; its rate is set by the CPU transforms.
        from lightly.transforms import SimCLRTransform

        lb = args.lightly_batch_size
        model3, opt3 = make_model(args, device, args.method, args.size, lb, in_chans=3)
        lightly_ds = _LightlyExampleDataset(paths, SimCLRTransform(input_size=args.size))
        lightly_loader = DataLoader(lightly_ds, batch_size=lb, shuffle=True, drop_last=True,
                                    num_workers=args.workers, pin_memory=device.type == "cuda",
                                    persistent_workers=args.workers > 0,
                                    prefetch_factor=1 if args.workers > 0 else None)
        it3 = cycle(lightly_loader)

        def lightly_step() -> None:
            (x0, x1), _ = next(it3)
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
            loss = model3.compute_loss(x0, x1, torch.full((x0.shape[0],), -1, device=device))
            update(model3, opt3, loss)

        variants: dict[str, tuple[Callable[[], None], int, int]] = {  # step, warm-up steps, batch
            "full pipeline": (full_step, max(args.warmup_steps, 2 * args.workers + 1), args.batch_size),
            "compute bound (views on device)": (compute_step, args.warmup_steps, args.batch_size),
            "lightly example (CPU SimCLRTransform, fp32)": (lightly_step, max(args.warmup_steps, args.workers + 1), lb),
        }
        for r in range(args.rounds):  # interleaved rounds, best of each: fairer on a shared machine
            for name, (step, warmup, batch) in variants.items():
                seconds = timed(step, device, warmup, args.steps)
                rate = batch * args.steps / seconds
                results[name] = max(results.get(name, 0.0), rate)
                figures.add("pipeline", f"{name}, batch {batch}, round {r + 1}", rate, "pairs/s", variant=name,
                            round=r + 1, method=args.method, size=args.size, batch_size=batch)
        del it, it3, loader, lightly_loader
    return results


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


def peak_memory(args: argparse.Namespace, device: torch.device, precision: str, figures: Figures) -> None:
    """Section 2: peak allocated GPU memory (GiB) of two training steps at batch 1024, 224 px, per method."""
    for method in METHODS:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        model, opt = make_model(args, device, method, 224, 1024)
        images = torch.randint(0, 256, (1024, 1, 256, 256), dtype=torch.uint8, device=device)
        labels = torch.randint(-1, 14, (1024,), device=device)
        for _ in range(2):
            with autocast(device, precision):
                loss = model.shared_step(images, labels)
            update(model, opt, loss)
        sync(device)
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        figures.add("peak memory", f"{method}, batch 1024, 224 px", gib, "GiB", shown=f"{gib:10.2f}", method=method)
        del model, opt, images, loss


def synthetic_export(args: argparse.Namespace, root: Path) -> tuple[CacheDataset, np.ndarray, list[str]]:
    """Generate, ingest and load the synthetic export: dataset with recorded labels, true labels."""
    import functools

    import pandas as pd

    from radaudit.pacs import cache
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import REGIONS, generate_export

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


def probe(args: argparse.Namespace, device: torch.device, precision: str, figures: Figures) -> None:
    """Section 4: linear-probe and kNN accuracy of each backbone on the synthetic export's true regions."""
    with tempfile.TemporaryDirectory(prefix="radaudit-probe-") as tmp:
        t0 = time.perf_counter()
        ds, true, regions = synthetic_export(args, Path(tmp))
        batch = min(args.probe_batch_size, len(ds))
        figures.note(f"  data: {len(ds)} images ({int((true >= 0).sum())} in-domain), "
                     f"{time.perf_counter() - t0:.0f} s to generate+ingest; "
                     f"{args.probe_epochs} epochs at batch {batch}")
        base = PretrainConfig(backbone=args.backbone, size=args.size, batch_size=batch, epochs=args.probe_epochs,
                              warmup_epochs=min(1.0, args.probe_epochs / 2), precision=precision,
                              num_workers=min(args.workers, 8), seed=args.seed, on_cpu="as_is", progress_bar=False)
        rng = np.random.default_rng(args.seed)
        labelled = np.flatnonzero(true >= 0)
        rng.shuffle(labelled)
        train_idx, test_idx = np.sort(labelled[: len(labelled) // 2]), np.sort(labelled[len(labelled) // 2:])

        def score(name: str, backbone: nn.Module) -> None:
            feats = embed(backbone, ds, batch_size=256, device=device, size=args.size)
            tx, ty, vx, vy = feats[train_idx], true[train_idx], feats[test_idx], true[test_idx]
            lin, knn = linear_probe_accuracy(tx, ty, vx, vy), knn_accuracy(tx, ty, vx, vy, k=min(20, len(tx)))
            figures.add("probe", f"{name}: linear probe", 100 * lin, "%", backbone=name)
            figures.add("probe", f"{name}: kNN (k=20)", 100 * knn, "%", backbone=name)

        torch.manual_seed(args.seed)
        score("random init", create_backbone(args.backbone).eval())
        for method in METHODS:
            t = time.perf_counter()
            res = pretrain(base.replace(method=method), ds)
            print(f"  pretrained {method}: {res.steps} steps in {time.perf_counter() - t:.0f} s, "
                  f"loss {res.history[0]:.3f} -> {res.history[-1]:.3f}", flush=True)
            score(method, res.backbone)
        t = time.perf_counter()
        supervised = supervised_baseline(ds, base, len(regions), device, precision)
        print(f"  trained supervised baseline in {time.perf_counter() - t:.0f} s", flush=True)
        score("supervised from scratch", supervised)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        where = f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    else:
        where = (f"CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
                 + " ".join(f"{v:.1f}" for v in os.getloadavg()) + ")")
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    figures = Figures("pretrain", args.json, {**settings, "device": where, "resolved_precision": precision})
    print(f"device: {where}")
    print(f"settings: {args.backbone}, batch {args.batch_size}, {precision}, {args.steps} timed steps after "
          f"{args.warmup_steps}{', compiled' if args.compile else ''}", flush=True)

    print(f"\n1. compute-bound training step (views on the device), views/s at {args.compute_sizes} px", flush=True)
    compute_bound(args, device, precision, figures)

    print("\n2. peak GPU memory, two steps at batch 1024, 224 px", flush=True)
    if not cuda:
        figures.note("  skipped: no GPU (pending: run `python benchmarks/pretrain.py --gpu` on an H100/H200)")
    elif args.skip_memory:
        figures.note("  skipped: --skip-memory")
    else:
        peak_memory(args, device, precision, figures)

    print(f"\n3. training throughput ({args.method}, {args.size} px from a {args.cache_size} px cache, "
          f"{args.workers} workers, {args.images} images), image pairs/s, best of {args.rounds} round(s)", flush=True)
    pairs = throughput(args, device, precision, figures)
    full, bound = pairs["full pipeline"], pairs["compute bound (views on device)"]
    lightly_rate = pairs["lightly example (CPU SimCLRTransform, fp32)"]
    figures.add("pipeline", "full pipeline / compute bound", 100 * full / bound, "%",
                shown=f"{100 * full / bound:10.1f}", goal="on H100/H200 at 224 px, bf16: >= 90 %")
    figures.add("pipeline", "full pipeline / lightly example", full / lightly_rate, "x",
                shown=f"{full / lightly_rate:10.2f}")
    if not cuda:
        figures.note("  (CPU: the step is compute bound and the augmentation a small part of it; on a shared machine "
                     "step times vary by 30 % or more between rounds, so ratios near 100 % are noise; GPU figures "
                     "pending)")

    print("\n4. linear-probe / kNN accuracy on the synthetic export's true regions", flush=True)
    if args.probe_images <= 0:
        figures.note("  skipped: --probe-images 0" + (" (the --gpu default; give --probe-images N to run it)"
                                                     if args.gpu else ""))
    else:
        probe(args, device, precision, figures)
        if not cuda:
            figures.note("  (CPU settings: a few steps at 64 px; these figures only show the pipeline runs, not what "
                         "the methods reach; GPU figures pending)")
    figures.note(f"done in {time.perf_counter() - figures.t0:.0f} s")


if __name__ == "__main__":
    main()
