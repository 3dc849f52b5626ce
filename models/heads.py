"""Linear heads on frozen embeddings: out-of-fold class probabilities for the label audit.

Confident learning (Northcutt, Jiang and Chuang, 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70) and cleanlab's scores are only meaningful on
*out-of-sample* predicted probabilities: a head that has seen an image's recorded label
will simply repeat it. :func:`oof_probabilities` therefore fits K linear heads, each on all
labelled images but one fold, and predicts the held-out fold; a further head fit on every
labelled image predicts the images whose label is null (and is returned for later use).

- Folds are stratified by region and grouped by patient key (one patient's images never sit on
  both sides of a fold) with a greedy assignment equivalent in intent to scikit-learn's
  ``StratifiedGroupKFold``, which took 10 s on 50,000 rows / 20,000 patients here.
- A head is multinomial logistic regression (softmax regression) on standardized features with
  an L2 penalty, trained by mini-batch Adam with cosine learning-rate decay in torch on CPU. All
  heads of one call train *together*: one matrix product per mini-batch serves every fold's
  head (the 2-core CPU is memory-bound on ``X @ W``), while each head sees only its own
  training rows and Adam's update is element-wise, so the heads do not influence each other
  (no leak from a held-out fold into its head). Weights start at zero and batches are drawn from
  a seeded generator, so results are deterministic for a seed and a thread count.

Run the tests with::

    python -m pytest tests/models/test_heads.py -q
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from radaudit.models.validation import check_embeddings, check_groups, check_int, check_labels, check_non_negative

__all__ = [
    "LinearHead",
    "OOFResult",
    "confusion_matrix_png",
    "fit_linear_head",
    "group_stratified_folds",
    "label_fraction_accuracy",
    "label_fraction_probabilities",
    "oof_probabilities",
]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: leave as is), then restore the setting.

    The heads' and the neighbour search's matrix products are small enough that one thread
    loses little, and on a shared CPU OpenMP's spin-waiting made 2 threads 10-30x slower than
    one (6 ms vs 69-228 ms per head update at a load average of 5 on 2 cores).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(check_int(n, "threads", 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


def group_stratified_folds(labels: np.ndarray, groups: np.ndarray, *, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Assign every labelled image to one of ``n_splits`` folds, stratified by label, grouped by patient.

    Greedy: patients in random order (seeded), larger patients first; each goes to the fold
    whose share of the patient's classes is lowest so far (ties: the smaller fold). The same
    intent as scikit-learn's ``StratifiedGroupKFold`` at a fraction of its cost.

    Args:
        labels: Shape: (N,), region index, -1 = null (gets fold -1).
        groups: Shape: (N,), integer group id per image (see :func:`check_groups`).
        n_splits: Number of folds.
        seed: Order in which patients are placed.

    Returns:
        Shape: (N,), fold index in [0, n_splits) per labelled image, -1 for null labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    fold = np.full(labels.shape[0], -1, dtype=np.int64)
    lab = np.flatnonzero(labels >= 0)
    if lab.size == 0:
        return fold
    n_classes = int(labels[lab].max()) + 1
    _, ginv = np.unique(groups[lab], return_inverse=True)
    n_groups = int(ginv.max()) + 1
    sizes = np.bincount(ginv, minlength=n_groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    # Rows of each group, as slices of one sorted array (no per-group Python lists).
    by_group = np.argsort(ginv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    class_total = np.bincount(labels[lab], minlength=n_classes).astype(np.float64)
    inv_total = 1.0 / np.maximum(class_total, 1.0)
    counts = np.zeros((n_splits, n_classes))  # rows of each class in each fold
    fold_size = np.zeros(n_splits)
    group_fold = np.empty(n_groups, dtype=np.int64)
    tiebreak = 1e-9 / max(len(lab), 1)
    for g in order:
        rows = lab[by_group[starts[g]:starts[g + 1]]]
        ys = labels[rows]
        if ys.size == 1:
            c = int(ys[0])
            cost = counts[:, c] * inv_total[c] + fold_size * tiebreak
            f = int(np.argmin(cost))
            counts[f, c] += 1
        else:
            cls, cnt = np.unique(ys, return_counts=True)
            cost = (counts[:, cls] * inv_total[cls]) @ cnt + fold_size * tiebreak
            f = int(np.argmin(cost))
            counts[f, cls] += cnt
        fold_size[f] += ys.size
        group_fold[g] = f
    fold[lab] = group_fold[ginv]
    return fold


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearHead:
    """A softmax-regression head on standardized features.

    ``probs = softmax(((x - mean) / scale) @ weight + bias)``.

    Attributes:
        mean: Shape: (D,), feature means used for standardization.
        scale: Shape: (D,), feature standard deviations (floored at 1e-6).
        weight: Shape: (D, K).
        bias: Shape: (K,).
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return int(self.weight.shape[1])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities.

        Args:
            x: Shape: (N, D) raw (unstandardized) embeddings.

        Returns:
            Shape: (N, K), float64, rows sum to 1.
        """
        x = check_embeddings(x, "x")
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features but the head was fit on {self.mean.shape[0]}")
        logits = ((x - self.mean) / self.scale) @ self.weight + self.bias  # (N, K)
        return _softmax64(logits)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable class per row. Shape: (N,)."""
        return self.predict_proba(x).argmax(axis=1)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save (e.g. with safetensors); inverse of :meth:`from_state_dict`."""
        return {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray]) -> LinearHead:
        """Rebuild a head from :meth:`state_dict`."""
        missing = {"mean", "scale", "weight", "bias"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass the dict from LinearHead.state_dict()")
        return cls(*(np.asarray(state[k], dtype=np.float32) for k in ("mean", "scale", "weight", "bias")))


@dataclass(frozen=True)
class OOFResult:
    """What :func:`oof_probabilities` returns.

    Attributes:
        probabilities: Shape: (N, K), float64, rows sum to 1. Labelled rows: out-of-fold
            probabilities; null-label rows (and see ``out_of_fold``): from ``head``.
        fold: Shape: (N,), the fold in which each labelled row was held out; -1 for null labels.
        out_of_fold: Shape: (N,), bool. False for null labels and for labelled rows whose class
            had no training example in their fold (see :func:`oof_probabilities`); such rows
            carry the full head's in-sample probabilities, which are optimistic.
        head: The head fit on every labelled row.
        rare_classes: Classes whose rows could not all be held out honestly.
    """

    probabilities: np.ndarray
    fold: np.ndarray
    out_of_fold: np.ndarray
    head: LinearHead
    rare_classes: tuple[int, ...] = ()


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _standardize_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    var = x.var(axis=0, dtype=np.float64)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)


def _train_heads(xs: torch.Tensor, y: torch.Tensor, train_mask: torch.Tensor, n_classes: int, *,
                 l2: float, steps: int, batch_size: int, lr: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train H independent softmax heads that share the mini-batch matrix products.

    Args:
        xs: Shape: (n, D) standardized features of the labelled rows.
        y: Shape: (n,) labels in [0, K).
        train_mask: Shape: (H, n) bool, the rows each head may learn from.
        n_classes: K.

    Returns:
        weight Shape: (H, D, K) and bias Shape: (H, K).
    """
    n, d = xs.shape
    h = train_mask.shape[0]
    k = n_classes
    n_h = train_mask.sum(dim=1).clamp(min=1).to(torch.float32)  # (H,)
    w = torch.zeros(d, h * k)
    b = torch.zeros(h * k)
    m_w, v_w = torch.zeros_like(w), torch.zeros_like(w)
    m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    onehot = torch.nn.functional.one_hot(y, k).to(torch.float32)  # (n, K)
    maskf = train_mask.T.to(torch.float32)  # (n, H)
    batch_size = min(batch_size, n)
    steps_per_epoch = max(1, n // batch_size)  # equal batches; the last partial one is dropped
    total = steps
    gen = np.random.default_rng(seed)
    step = 0
    while step < total:
        perm = torch.from_numpy(gen.permutation(n))
        for s in range(min(steps_per_epoch, total - step)):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = xs[idx]  # (B, D)
            bsz = idx.shape[0]
            logits = torch.addmm(b, xb, w).view(bsz, h, k)  # (B, H, K)
            g = logits - logits.amax(dim=2, keepdim=True)  # softmax, 5x faster than torch.softmax on K=14
            g.exp_()
            g /= g.sum(dim=2, keepdim=True)
            g -= onehot[idx].unsqueeze(1)
            # Unbiased estimate of the gradient of each head's mean loss over its own rows.
            g *= (maskf[idx] * (n / (bsz * n_h))).unsqueeze(2)
            g = g.view(bsz, h * k)
            grad_w = xb.T @ g  # (D, H*K)
            grad_w.add_(w, alpha=l2)
            grad_b = g.sum(dim=0)
            step += 1
            rate = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total))
            c1, c2 = 1 - beta1**step, 1 - beta2**step
            for p, m, v, gr in ((w, m_w, v_w, grad_w), (b, m_b, v_b, grad_b)):
                m.mul_(beta1).add_(gr, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-rate / c1)
    return w.view(d, h, k).permute(1, 0, 2).contiguous(), b.view(h, k).clone()


def _fit_heads(xs: np.ndarray, y: np.ndarray, train_mask: np.ndarray, n_classes: int, *, threads: int | None,
               **opts: float) -> list[tuple[np.ndarray, np.ndarray]]:
    with torch.no_grad(), torch_threads(threads):
        w, b = _train_heads(torch.from_numpy(xs), torch.from_numpy(y), torch.from_numpy(train_mask), n_classes, **opts)
    return [(w[i].numpy(), b[i].numpy()) for i in range(w.shape[0])]


def _check_train_opts(l2: float, steps: int, batch_size: int, lr: float) -> dict[str, float]:
    return {"l2": check_non_negative(l2, "l2"), "steps": check_int(steps, "steps", 1),
            "batch_size": check_int(batch_size, "batch_size", 1), "lr": check_non_negative(lr, "lr")}


def fit_linear_head(embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
                    l2: float = 1e-3, steps: int = 300, batch_size: int = 1024, lr: float = 0.01,
                    seed: int = 0, threads: int | None = 1) -> LinearHead:
    """Fit one softmax-regression head on all labelled rows (null labels, -1, are ignored).

    Args:
        embeddings: Shape: (N, D).
        labels: Shape: (N,), region index or -1.
        n_classes: K; default ``labels.max() + 1``.
        l2: Weight of ``0.5 * ||W||^2`` added to the mean cross-entropy (bias not penalised).
        steps: Adam updates (the cost is ``steps * batch_size`` rows whatever N is: 300 x 1024
            is about 6 passes over 50,000 rows, ample for a convex problem on good features).
        batch_size, lr: Adam mini-batch size (capped at N) and peak learning rate (cosine
            decay to 0).
        seed: Mini-batch order.
        threads: torch CPU threads while training (None: the process setting); see
            :func:`torch_threads`.

    Returns:
        The fitted :class:`LinearHead`; standardization statistics come from the labelled rows.
    """
    x = check_embeddings(embeddings)
    y = check_labels(labels, x.shape[0], n_classes)
    lab = np.flatnonzero(y >= 0)
    if lab.size == 0:
        raise ValueError("labels has no non-null entry (all -1): a head needs labelled rows")
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    opts = _check_train_opts(l2, steps, batch_size, lr)
    mean, scale = _standardize_stats(x[lab])
    xs = (x[lab] - mean) / scale
    ((w, b),) = _fit_heads(xs, y[lab], np.ones((1, lab.size), dtype=bool), k, seed=seed, threads=threads, **opts)
    return LinearHead(mean, scale, w, b)


def oof_probabilities(embeddings: np.ndarray, labels: np.ndarray, groups: Sequence[object] | np.ndarray | None, *,
                      n_splits: int = 5, n_classes: int | None = None, seed: int = 0, l2: float = 1e-3,
                      steps: int = 300, batch_size: int = 1024, lr: float = 0.01,
                      repeats: int = 1, threads: int | None = 1) -> OOFResult:
    """Out-of-fold class probabilities from K-fold linear heads, plus a head fit on all labels.

    ``repeats`` > 1 cross-fits again on other fold splits (seeds ``seed``, ``seed + 1``, ...)
    and averages each row's held-out probabilities: which patients share a fold moves a wrong
    label's rank by chance, and averaging removes that luck (repeated cross-fitting). On the
    3 CPU-demo exports of issue 12, one split's precision@k moved by up to 3 of 64 ranks with
    the fold seed.

    Every labelled image is predicted by a head that never saw it nor any other image of its
    patient; images with a null label are predicted by the head fit on all labelled images.
    Standardization uses the mean and standard deviation of *all* rows: they involve no label,
    so they leak nothing about held-out labels.

    Rare classes: a labelled row whose class has no example in the training part of its fold
    (a class with a single patient, or fewer members than folds, distributed unluckily) cannot
    get an honest out-of-fold probability; its fold head would never predict the class and
    cleanlab would flag every such image. Those rows get the full head's (in-sample)
    probabilities instead, ``out_of_fold`` is False for them, their classes are listed in
    ``rare_classes`` and a ``UserWarning`` names them. Classes with no labelled row at all still
    get a probability column (near zero).

    Args:
        embeddings: Shape: (N, D), float, rows aligned with ``labels`` and ``groups``.
        labels: Shape: (N,), region index in [0, K), -1 = null.
        groups: Shape: (N,), patient key per image (any hashable; None = a patient of its own),
            or None when every image is its own patient.
        n_splits: Folds (>= 2).
        n_classes: K (the vocabulary size); default ``labels.max() + 1``.
        seed: Fold assignment and mini-batch order.
        l2, steps, batch_size, lr, threads: Head training, see :func:`fit_linear_head`.
        repeats: Fold splits averaged (>= 1); every head of every split trains in one pass.

    Returns:
        :class:`OOFResult` (``fold``: the first split's).

    Raises:
        ValueError: Mismatched lengths, bad labels, fewer labelled patients than folds.
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    y = check_labels(labels, n, n_classes)
    g = check_groups(groups, n)
    n_splits = check_int(n_splits, "n_splits", 2)
    opts = _check_train_opts(l2, steps, batch_size, lr)
    lab = np.flatnonzero(y >= 0)
    if lab.size == 0:
        raise ValueError("labels has no non-null entry (all -1): out-of-fold probabilities need labelled rows")
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    n_patients = np.unique(g[lab]).size
    if n_patients < n_splits:
        raise ValueError(f"only {n_patients} labelled patients for n_splits={n_splits}; "
                         f"lower n_splits to at most {n_patients} (and at least 2)")
    repeats = check_int(repeats, "repeats", 1)
    folds = [group_stratified_folds(y, g, n_splits=n_splits, seed=seed + r) for r in range(repeats)]
    mean, scale = _standardize_stats(x)
    xs = (x[lab] - mean) / scale  # (n_lab, D)
    yl = y[lab]
    # Heads r * n_splits + f: split r without fold f; the last head: all labelled rows.
    train_mask = np.ones((repeats * n_splits + 1, lab.size), dtype=bool)
    for r, fold in enumerate(folds):
        for f in range(n_splits):
            train_mask[r * n_splits + f] = fold[lab] != f
    heads = _fit_heads(xs, yl, train_mask, k, seed=seed, threads=threads, **opts)
    full = LinearHead(mean, scale, *heads[-1])
    in_sample = _softmax64(xs @ full.weight + full.bias)

    held = np.zeros((lab.size, k), dtype=np.float64)
    orphan = np.zeros(lab.size, dtype=bool)
    for r, fold in enumerate(folds):
        fl = fold[lab]
        # A row whose class was absent from its fold's training part (see above).
        present = np.zeros((n_splits, k), dtype=bool)
        for f in range(n_splits):
            present[f, np.unique(yl[train_mask[r * n_splits + f]])] = True
            w, b = heads[r * n_splits + f]
            rows = fl == f
            held[rows] += _softmax64(xs[rows] @ w + b)
        orphan |= ~present[fl, yl]
    held /= repeats
    rare: tuple[int, ...] = ()
    if orphan.any():
        rare = tuple(int(c) for c in np.unique(yl[orphan]))
        warnings.warn(f"classes {list(rare)} have too few patients for {n_splits}-fold cross-validation: "
                      f"{int(orphan.sum())} of their images get in-sample probabilities (out_of_fold=False); "
                      "label more images of these regions or lower n_splits", UserWarning, stacklevel=2)
        held[orphan] = in_sample[orphan]
    probs = np.empty((n, k), dtype=np.float64)
    probs[lab] = held
    out_of_fold = np.zeros(n, dtype=bool)
    out_of_fold[lab] = ~orphan
    unl = np.flatnonzero(y < 0)
    if unl.size:
        probs[unl] = _softmax64(((x[unl] - mean) / scale) @ full.weight + full.bias)
    return OOFResult(probs, folds[0], out_of_fold, full, rare)


# Candidate weights of the heads' L2 penalty for :func:`choose_l2`.
L2_GRID: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 0.1, 0.3)


def choose_l2(embeddings: np.ndarray, labels: np.ndarray, groups: Sequence[object] | np.ndarray | None, *,
              grid: Sequence[float] = L2_GRID, n_splits: int = 5, n_classes: int | None = None, seed: int = 0,
              max_rows: int = 5000, threads: int | None = 1) -> tuple[float, dict[float, float]]:
    """The L2 weight of ``grid`` whose heads give the lowest out-of-fold log loss on the labels.

    With label noise the heads' penalty matters: on 4 CPU-demo-sized exports (weak features, 8%
    wrong labels) raising it from 1e-3 to 0.1 raised precision@k of the wrong labels from 0.63 to
    0.71 and accuracy on the true regions by 3-5 points, and out-of-fold log loss against the
    *recorded* labels picked 0.1 on all four. Strong features and many images want less; the
    choice adapts. Uses a seeded subsample of at most ``max_rows`` labelled rows.

    Args:
        embeddings, labels, groups, n_splits, n_classes, seed, threads: As :func:`oof_probabilities`.
        grid: Candidate weights (> 0).
        max_rows: Labelled rows used for the choice.

    Returns:
        ``(best, log_loss_by_l2)``.
    """
    x = check_embeddings(embeddings)
    y = check_labels(labels, x.shape[0], n_classes)
    g = check_groups(groups, x.shape[0])
    if not grid:
        raise ValueError("grid is empty; pass L2 weights such as (1e-3, 1e-2, 0.1)")
    lab = np.flatnonzero(y >= 0)
    if lab.size > max_rows:
        lab = np.sort(np.random.default_rng(seed).choice(lab, size=max_rows, replace=False))
    losses: dict[float, float] = {}
    for l2 in grid:
        result = oof_probabilities(x[lab], y[lab], g[lab], n_splits=n_splits, n_classes=n_classes, seed=seed,
                                   l2=float(l2), threads=threads)
        held = result.out_of_fold
        p = result.probabilities[held, y[lab][held]]
        losses[float(l2)] = float(-np.log(np.clip(p, 1e-12, None)).mean())
    return min(losses, key=lambda l2: (losses[l2], l2)), losses


# --------------------------------------------------------------------------------------------
# Label-fraction evaluation
# --------------------------------------------------------------------------------------------


def _stratified_subsample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``fraction`` of the labelled rows, per class, at least one per class."""
    keep = []
    for c in np.unique(y[y >= 0]):
        rows = np.flatnonzero(y == c)
        m = max(1, int(round(fraction * rows.size)))
        keep.append(rng.choice(rows, size=min(m, rows.size), replace=False))
    return np.sort(np.concatenate(keep))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(fractions)
    if not fr or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fr):
        raise ValueError(f"fractions must be numbers in (0, 1], e.g. (0.01, 0.1, 1.0); got {fractions!r}")
    return tuple(float(f) for f in fr)


def label_fraction_probabilities(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                                 fractions: Sequence[float] = (0.01, 0.1, 1.0), n_classes: int | None = None,
                                 seed: int = 0, **train: float) -> dict[float, np.ndarray]:
    """Test-set probabilities of heads fit on a stratified fraction of the training labels.

    The subsample depends only on ``train_y``, ``fraction`` and ``seed``, so calls for several
    methods on the same split use the same images and their probabilities can be ensembled.

    Args:
        train_x: Shape: (N_train, D). train_y: Shape: (N_train,), -1 = null (never sampled).
        test_x: Shape: (N_test, D).
        fractions: Shares of the labelled training rows; each class keeps at least one row.
        n_classes: K; default ``train_y.max() + 1``.
        seed: Subsample and head training.
        **train: ``l2``, ``steps``, ``batch_size``, ``lr``, ``threads`` of :func:`fit_linear_head`.

    Returns:
        {fraction: Shape: (N_test, K) probabilities}.
    """
    x = check_embeddings(train_x, "train_x")
    y = check_labels(train_y, x.shape[0], n_classes, "train_y")
    tx = check_embeddings(test_x, "test_x")
    if tx.shape[1] != x.shape[1]:
        raise ValueError(f"train_x and test_x have different widths: {x.shape[1]} vs {tx.shape[1]}")
    if not (y >= 0).any():
        raise ValueError("train_y has no non-null label (all -1)")
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    out = {}
    for f in _check_fractions(fractions):
        rows = _stratified_subsample(y, f, np.random.default_rng([seed, int(f * 1e6)]))
        head = fit_linear_head(x[rows], y[rows], n_classes=k, seed=seed, **train)
        out[f] = head.predict_proba(tx)
    return out


def label_fraction_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                            fractions: Sequence[float] = (0.01, 0.1, 1.0), n_classes: int | None = None,
                            seed: int = 0, **train: float) -> dict[float, float]:
    """Linear-probe accuracy with a fraction of the labels (the label-fraction table of SimCLR/BYOL).

    Args:
        train_x: Shape: (N_train, D). train_y: Shape: (N_train,), -1 = null.
        test_x: Shape: (N_test, D). test_y: Shape: (N_test,), clean labels; -1 rows are not scored.
        fractions: Shares of the labelled training rows (stratified, >= 1 per class).
        n_classes: K; default from the labels.
        seed: Subsample and training.
        **train: Options of :func:`fit_linear_head`.

    Returns:
        {fraction: accuracy in [0, 1] on the labelled test rows}.
    """
    tx = check_embeddings(test_x, "test_x")
    ty = check_labels(test_y, tx.shape[0], None, "test_y")
    scored = ty >= 0
    if not scored.any():
        raise ValueError("test_y has no non-null label (all -1): nothing to score")
    probs = label_fraction_probabilities(train_x, train_y, tx, fractions=fractions, n_classes=n_classes,
                                         seed=seed, **train)
    return {f: float((p[scored].argmax(axis=1) == ty[scored]).mean()) for f, p in probs.items()}


# --------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------


def confusion_matrix_png(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Draw the row-normalized confusion matrix as a PNG (PIL; matplotlib is not installed).

    Cells are shaded by the share of the true class (row) and print the count; rows are the
    recorded/true class, columns the prediction. Rows with a label outside the classes
    (e.g. -1 = null) are left out.

    Args:
        y_true: Shape: (N,). y_pred: Shape: (N,). class_names: K names, index = class.

    Returns:
        PNG bytes.
    """
    from PIL import Image, ImageDraw, ImageFont

    names = [str(c) for c in class_names]
    k = len(names)
    if k < 1:
        raise ValueError("class_names is empty; pass the region vocabulary")
    yt = check_labels(y_true, len(y_true), None, "y_true")
    yp = check_labels(y_pred, yt.shape[0], None, "y_pred")
    keep = (yt >= 0) & (yt < k) & (yp >= 0) & (yp < k)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (yt[keep], yp[keep]), 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)

    cell = 44
    font = ImageFont.load_default(size=12)
    small = ImageFont.load_default(size=11)
    label_w = max(int(font.getlength(s)) for s in names) + 12
    top = label_w + 30
    left = label_w + 30
    width, height = left + k * cell + 20, top + k * cell + 20
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    acc = np.trace(cm) / max(cm.sum(), 1)
    draw.text((8, 6), f"rows: true, columns: predicted; n={int(cm.sum())}, accuracy={acc:.3f}", fill="black", font=font)
    col_labels = Image.new("RGB", (label_w, k * cell), "white")
    cd = ImageDraw.Draw(col_labels)
    for j, name in enumerate(names):
        cd.text((label_w - 6, j * cell + cell // 2), name, fill="black", font=font, anchor="rm")
    img.paste(col_labels.rotate(90, expand=True), (left, top - label_w - 4))
    for i, name in enumerate(names):
        draw.text((left - 6, top + i * cell + cell // 2), name, fill="black", font=font, anchor="rm")
        for j in range(k):
            s = float(share[i, j])
            shade = (int(255 - 205 * s), int(255 - 150 * s), 255)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=shade, outline=(200, 200, 200))
            if cm[i, j]:
                draw.text((x0 + cell // 2, y0 + cell // 2), str(int(cm[i, j])),
                          fill="white" if s > 0.55 else "black", font=small, anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
