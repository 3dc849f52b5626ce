"""Evaluation of frozen features: kNN and linear-probe accuracy, and the loss curve as a PNG.

numpy in, numpy out; data positional, options keyword-only. Rows whose label is null (-1) are
left out of both the fit and the score (they have no ground truth to score against).

- :func:`knn_accuracy`: weighted kNN on cosine similarity, votes ``exp(sim / 0.07)`` (Wu et
  al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"), the
  usual monitor of self-supervised training; torch, on any device.
- :func:`linear_probe_accuracy`: multinomial logistic regression on standardized features (the
  linear evaluation protocol of SimCLR/BYOL, with L-BFGS instead of SGD), scikit-learn fitted
  to convergence: the reference figure.
- :func:`quick_probe_accuracy`: the same objective with a fixed budget of full-batch L-BFGS
  iterations in torch, on any device: the training monitor's probe. Measured on 2 CPU cores with
  392 x 512 features of 14 classes: 0.2 s against scikit-learn's 1.9-5.3 s, same accuracy
  within 1.5 points.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from radaudit.models.validation import check_embeddings, check_labels

__all__ = ["knn_accuracy", "linear_probe_accuracy", "plot_loss_curve", "quick_probe_accuracy"]


def _check(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate (:mod:`radaudit.models.validation`), drop null-labelled rows."""
    arrays = []
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        x = check_embeddings(x, f"{name}_x")
        y = check_labels(y, x.shape[0], name=f"{name}_y")
        keep = y >= 0
        if not keep.any():
            raise ValueError(f"{name}_y has no non-null label (all -1): nothing to {'fit' if name == 'train' else 'score'}")
        arrays += [x[keep].astype(np.float64), y[keep].astype(np.int64)]
    if arrays[0].shape[1] != arrays[2].shape[1]:
        raise ValueError(f"train_x and test_x have different widths: {arrays[0].shape[1]} vs {arrays[2].shape[1]}")
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 k: int = 20, temperature: float = 0.07, batch_size: int = 1024,
                 device: str | torch.device | None = None) -> float:
    """Accuracy of a similarity-weighted kNN classifier on cosine similarity.

    Args:
        train_x: Shape: (n_train, dim). train_y: Shape: (n_train,), -1 = null (ignored).
        test_x: Shape: (n_test, dim). test_y: Shape: (n_test,), -1 = null (ignored).
        k: Neighbours (capped at the number of labelled training rows).
        temperature: Vote weight ``exp(similarity / temperature)``.
        batch_size: Test rows per similarity block (bounds memory).
        device: Where the similarities are computed (float64 on the CPU, float32 elsewhere);
            default: CPU.

    Returns:
        Share of labelled test rows whose predicted class is right, in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tx_np, ty_np, vx_np, vy_np = _check(train_x, train_y, test_x, test_y)
    dev = _device(device)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    tx = F.normalize(torch.as_tensor(tx_np, device=dev, dtype=dtype), dim=1, eps=1e-12)  # (n_train, dim)
    vx = F.normalize(torch.as_tensor(vx_np, device=dev, dtype=dtype), dim=1, eps=1e-12)  # (n_test, dim)
    ty, vy = torch.as_tensor(ty_np, device=dev), torch.as_tensor(vy_np, device=dev)
    k = min(k, tx.shape[0])
    n_classes = int(max(ty_np.max(), vy_np.max())) + 1
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    for start in range(0, vx.shape[0], batch_size):
        sim = vx[start:start + batch_size] @ tx.T  # (b, n_train)
        top, idx = sim.topk(k, dim=1)  # (b, k) each, most similar first
        w = torch.exp((top - top[:, :1]) / temperature)  # (b, k)
        votes = torch.zeros(sim.shape[0], n_classes, dtype=dtype, device=dev).scatter_add_(1, ty[idx], w)  # (b, C)
        correct += (votes.argmax(1) == vy[start:start + batch_size]).sum()
    return int(correct) / vx.shape[0]


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                          C: float = 1.0, max_iter: int = 1000, seed: int = 0) -> float:
    """Accuracy of a logistic-regression probe on standardized features.

    Args:
        train_x: Shape: (n_train, dim). train_y: Shape: (n_train,), -1 = null (ignored).
        test_x: Shape: (n_test, dim). test_y: Shape: (n_test,), -1 = null (ignored).
        C: Inverse L2 regularization strength of scikit-learn's ``LogisticRegression``.
        max_iter: L-BFGS iterations.
        seed: ``random_state`` of the solver.

    Returns:
        Share of labelled test rows classified right, in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    tx, ty, vx, vy = _check(train_x, train_y, test_x, test_y)
    if np.unique(ty).size < 2:
        return float((vy == ty[0]).mean())
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(tx, ty)
    return float((clf.predict(vx) == vy).mean())


def quick_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                         C: float = 1.0, steps: int = 100, device: str | torch.device | None = None) -> float:
    """Accuracy of a logistic-regression probe fitted with a fixed budget of full-batch L-BFGS steps.

    The objective of :func:`linear_probe_accuracy` (multinomial cross-entropy on standardized
    features plus ``||W||^2 / (2 C n)``, intercept unpenalized), minimized in float32 with
    torch's L-BFGS (strong Wolfe line search) for at most ``steps`` iterations: the cost is
    bounded and known in advance, which a training monitor needs, and it runs where the
    features are. It tracks the converged probe closely, not exactly.

    Args:
        train_x: Shape: (n_train, dim). train_y: Shape: (n_train,), -1 = null (ignored).
        test_x: Shape: (n_test, dim). test_y: Shape: (n_test,), -1 = null (ignored).
        C: Inverse L2 regularization strength, as in scikit-learn.
        steps: L-BFGS iterations at most.
        device: Default: CPU.

    Returns:
        Share of labelled test rows classified right, in [0, 1].
    """
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (L-BFGS iterations), got {steps!r}")
    tx_np, ty_np, vx_np, vy_np = _check(train_x, train_y, test_x, test_y)
    classes = np.unique(ty_np)
    if classes.size < 2:
        return float((vy_np == classes[0]).mean())
    dev = _device(device)
    tx = torch.as_tensor(tx_np, device=dev, dtype=torch.float32)  # (n_train, dim)
    vx = torch.as_tensor(vx_np, device=dev, dtype=torch.float32)  # (n_test, dim)
    mean, std = tx.mean(0), tx.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features: scale 1, as StandardScaler
    tx, vx = (tx - mean) / std, (vx - mean) / std
    y = torch.as_tensor(np.searchsorted(classes, ty_np), device=dev)  # (n_train,) in 0..K-1
    weight = torch.zeros(tx.shape[1], classes.size, device=dev, requires_grad=True)  # (dim, K)
    bias = torch.zeros(classes.size, device=dev, requires_grad=True)  # (K,)
    decay = 1.0 / (C * tx.shape[0])
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(tx @ weight + bias, y) + 0.5 * decay * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (vx @ weight + bias).argmax(1).cpu().numpy()  # (n_test,) in 0..K-1
    return float((classes[pred] == vy_np).mean())


def plot_loss_curve(history: Sequence[float], *, title: str = "training loss", width: int = 640,
                    height: int = 360) -> bytes:
    """A PNG of the per-epoch loss, drawn with Pillow (matplotlib is not a dependency).

    Args:
        history: Mean loss per epoch.
        title: Caption at the top.
        width: Image width in pixels. height: Image height in pixels.

    Returns:
        PNG bytes.
    """
    from PIL import Image, ImageDraw

    values = [float(v) for v in history]
    if width < 160 or height < 120:
        raise ValueError(f"the plot needs at least 160 x 120 pixels, got {width} x {height}")
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, 16, 28, 36
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        draw.text((left + 8, top + 8), "no finite loss values", fill="black")
    else:
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        n = len(values)

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + (width - right - left) * (i / (n - 1) if n > 1 else 0.5)
            y = top + (height - bottom - top) * (hi - v) / (hi - lo)
            return x, y

        for frac in (0.0, 0.5, 1.0):
            v = hi - frac * (hi - lo)
            y = top + frac * (height - bottom - top)
            draw.line([left - 4, y, left, y], fill="black")
            draw.text((4, y - 6), f"{v:.3g}", fill="black")
        points = [xy(i, v) for i, v in enumerate(values) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=(31, 119, 180), width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
        draw.text((left, height - bottom + 8), "epoch 1", fill="black")
        draw.text((width - right - 60, height - bottom + 8), f"epoch {n}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
