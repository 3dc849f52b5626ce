"""Is the synthetic data hard enough to mean something? Three classifiers on clean labels.

    python benchmarks/synth_difficulty.py                      # CPU defaults, about 30 minutes on 2 cores
    python benchmarks/synth_difficulty.py --per-class 1000 --size 128 --epochs 30 --device cuda
    python benchmarks/synth_difficulty.py --via-export /tmp/difficulty   # through DICOM and the ingest

1. Logistic regression on raw 32x32 pixels            -> should stay well below 80 %
2. Linear probe on a randomly initialised ResNet18    -> should stay well below 80 %
3. ResNet18 trained on the clean labels               -> should exceed 95 %

(1) and (2) show that no shortcut (global brightness, framing, a fixed layout) gives the class
away; (3) shows that the anatomy does. Images come from the generator's renderer with the same
pose, exposure and artefact randomness as an export; stored rotations are applied where the
export would leave them uncorrectable (no Patient Orientation tag). No out-of-domain images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The repository before this folder: benchmarks/augment.py would shadow the augment package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch import nn  # noqa: E402

from radaudit.pacs.synth.anatomy import REGIONS  # noqa: E402
from radaudit.pacs.synth.render import render_radiograph  # noqa: E402

UNCORRECTABLE_ROTATION = 0.1 * 0.25  # stored rotated x Patient Orientation missing, as in the export


def make_dataset(per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``per_class`` images of each region. Shape: (n, size, size) float32, (n,) int64."""
    xs, ys = [], []
    for c, region in enumerate(REGIONS):
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            img = render_radiograph(region, rng, size, size, text=["12.03.2021", "ST-RAD2"]).pixels
            if rng.random() < UNCORRECTABLE_ROTATION:
                img = np.rot90(img, int(rng.integers(1, 4)))
            xs.append(np.ascontiguousarray(img))
            ys.append(c)
    return np.stack(xs).astype(np.float32), np.array(ys)


def make_dataset_via_export(per_class: int, size: int, seed: int, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same classes through the whole ingest path: a synthetic export (DICOM, all its transfer
    syntaxes and artefacts, clean labels, no out-of-domain images) is ingested into an image cache of
    side ``size``, as the audit sees it. Shape: (n, size, size) float32, (n,) int64."""
    import pandas as pd

    from radaudit.pacs.cache import CacheParams, read
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    export, data, truth_path = workdir / "export", workdir / "data", workdir / "truth.parquet"
    generate_export(export, truth_path, n=per_class * len(REGIONS), seed=seed, noise=0, missing=0, ood=0,
                    size=max(2 * size, 128), force=True)
    run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=size)))
    truth = pd.read_parquet(truth_path)
    xs, ys, lost = [], [], 0
    for uid, region in zip(truth["sop_instance_uid"], truth["true_region"]):
        try:
            xs.append(read(data, uid).astype(np.float32) / 255.0)
            ys.append(REGIONS.index(region))
        except KeyError:
            lost += 1  # an ingest error row: counted, not hidden
    if lost:
        print(f"  {lost} of {len(truth)} images did not reach the cache (see {data}/index/ingest_errors/)")
    return np.stack(xs), np.array(ys)


def small(a: np.ndarray) -> np.ndarray:
    """Mean-pool (n, s, s) images to 32x32 and flatten. Shape: (n, 1024)."""
    n, s = len(a), a.shape[1]
    return a.reshape(n, 32, s // 32, 32, s // 32).mean((2, 4)).reshape(n, -1)


def logreg(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Standardised multinomial logistic regression; test accuracy."""
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=500, C=0.5).fit(scaler.transform(train), y_train)
    return float(clf.score(scaler.transform(test), y_test))


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x[:, None] - 0.5) / 0.25)  # (n, 1, size, size)


@torch.no_grad()
def features(model: nn.Module, x: np.ndarray, device: str) -> np.ndarray:
    """Pooled features of a backbone. Shape: (n, 512)."""
    model.eval()
    out = [model(to_tensor(x[i:i + 256]).to(device)).cpu() for i in range(0, len(x), 256)]
    return torch.cat(out).numpy()


def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A standard supervised recipe: mirror half the batch (left and right sides are one class) and
    shift each image by up to 1/16 of its side (reflect padding, random crop)."""
    n, _, s, _ = xb.shape
    flip = torch.rand(n, generator=gen) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    pad = max(1, s // 16)
    padded = nn.functional.pad(xb, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])


def train_supervised(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, epochs: int, device: str,
                     seed: int) -> float:
    """Train a ResNet18 from scratch with cross-entropy (flips and shifts, one-cycle AdamW); test accuracy."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=len(REGIONS)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * (-(-len(x) // 128))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.2)
    xs, ys = to_tensor(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), 128):
            idx = perm[i:i + 128]
            xb, yb = augment(xs[idx], gen).to(device), ys[idx].to(device)
            loss = nn.functional.cross_entropy(model(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1:2d}/{epochs}: train loss {total / len(xs):.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(to_tensor(xt[i:i + 256]).to(device)).cpu() for i in range(0, len(xt), 256)])
    pred = logits.argmax(1).numpy()
    for c, region in enumerate(REGIONS):  # where the remaining errors are
        wrong = np.bincount(pred[yt == c], minlength=len(REGIONS))
        wrong[c] = 0
        if wrong.sum():
            print(f"  {region:15s} -> {', '.join(f'{REGIONS[k]}:{v}' for k, v in enumerate(wrong) if v)}")
    return float((pred == yt).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=300, help="images per region (default 300)")
    ap.add_argument("--size", type=int, default=64, help="rendered image side in px (default 64)")
    ap.add_argument("--epochs", type=int, default=30, help="supervised training epochs (default 30)")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: raw,probe,supervised")
    ap.add_argument("--via-export", type=Path, metavar="WORKDIR",
                    help="write a synthetic export under WORKDIR and ingest it: classify the cached images the "
                    "audit sees (DICOM encode/decode, windowing, border crop, orientation) instead of renders")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.via_export:
        x, y = make_dataset_via_export(args.per_class, args.size, args.seed, args.via_export)
        print(f"exported and ingested {len(x)} images, cached at {args.size} px, in {time.perf_counter() - t0:.0f} s")
    else:
        x, y = make_dataset(args.per_class, args.size, args.seed)
        print(f"rendered {len(x)} images at {args.size} px in {time.perf_counter() - t0:.0f} s")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=args.test_fraction, stratify=y,
                                              random_state=args.seed)
    skip = set(filter(None, args.skip.split(",")))
    acc_raw = acc_rand = acc_sup = float("nan")
    if "raw" not in skip:
        t1 = time.perf_counter()
        acc_raw = logreg(small(x_tr), y_tr, small(x_te), y_te)
        print(f"raw 32x32 pixels, logistic regression : {acc_raw:6.1%}  ({time.perf_counter() - t1:.0f} s)")
    if "probe" not in skip:
        t1 = time.perf_counter()
        torch.manual_seed(args.seed)
        rand = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0).to(args.device)
        acc_rand = logreg(features(rand, x_tr, args.device), y_tr, features(rand, x_te, args.device), y_te)
        print(f"random ResNet18 features, linear probe: {acc_rand:6.1%}  ({time.perf_counter() - t1:.0f} s)")
    if "supervised" not in skip:
        t1 = time.perf_counter()
        acc_sup = train_supervised(x_tr, y_tr, x_te, y_te, args.epochs, args.device, args.seed)
        print(f"supervised ResNet18 ({args.epochs} epochs)     : {acc_sup:6.1%}  ({time.perf_counter() - t1:.0f} s)")
    print(f"summary: raw={acc_raw:.3f} random_probe={acc_rand:.3f} supervised={acc_sup:.3f} "
          f"(n={len(x)}, size={args.size}, test={len(x_te)}, total {time.perf_counter() - t0:.0f} s)")
    ok = acc_raw < 0.8 and acc_rand < 0.8 and acc_sup > 0.95  # NaN (skipped) compares False
    print("difficulty target " + ("met" if ok else "NOT met") + ": raw < 80 %, random probe < 80 %, supervised > 95 %")


if __name__ == "__main__":
    main()
