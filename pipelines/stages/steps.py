"""The audit's stages over the data dir: each reads its inputs from files and writes its outputs atomically.

What the Dagster assets call, and what a notebook calls to run one stage by hand. Each stage
takes the data dir, reads what the stage before it wrote (:mod:`radaudit.pacs.layout` names every
file), hands arrays and frames to :mod:`radaudit.models`, and writes the result.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radaudit.pacs import cache
from radaudit.pacs import io as pio
from radaudit.pacs.layout import (EMBED_DIR, FOLDS_FILE, ISSUES_PATH, PROB_DIR, SUMMARY_PATH, WEIGHTS_PATH,
                                  checkpoint_dir, method_dir)
from radaudit.pipelines.stages.data import (TrainingSet, cross_fit_folds, issue_inputs, label_folds,
                                            load_audit_summary, load_overrides, load_training_set)
from radaudit.pipelines.stages.store import (cache_keys, file_digest, load_embeddings, load_probabilities,
                                             previous_rows, save_rows)
from radaudit.pipelines.stages.truth import truth_labels

if TYPE_CHECKING:  # the heavy modules load only when a stage runs
    from radaudit.models.heads import OOFResult
    from radaudit.models.train import PretrainConfig, PretrainResult
    from radaudit.pipelines.stages.reports import ReportFiles

__all__ = ["Log", "audit", "combine", "compute_embeddings", "compute_oof", "report", "train_backbone"]

Log = Callable[[str], None]


def train_backbone(data_dir: str | os.PathLike[str], method: str, config: PretrainConfig, *,
                   truth_path: str | None = None, from_scratch: bool = False, scratch_token: str | None = None,
                   log: Log | None = None, cross_fit: int = 1) -> PretrainResult:
    """Pretrain one method's backbone on the image cache; checkpoints under ``models/<method>/``.

    Args:
        config: A :class:`radaudit.models.train.PretrainConfig`; its method and checkpoint dir are set here.
        truth_path: Synthetic truth file: kNN accuracy during training is then measured on true
            labels; otherwise on the recorded ones (noisy, so a lower bound).
        from_scratch: Delete the method's checkpoints first; otherwise an interrupted or shorter
            earlier run is resumed (and a finished one is kept as it is).
        scratch_token: Names the request to start from scratch (a Dagster run's root run id): a
            retry or re-execution of the same request resumes what its first attempt trained
            instead of deleting it again.
        cross_fit: For a method that trains on the recorded labels (SupCon): train this many
            backbones, backbone ``f`` blind to the labels of fold ``f`` (:func:`label_folds`;
            those images still train it, as unlabelled ones), under ``models/<method>/fold<f>/``.
            :func:`compute_oof` then scores each image with the backbone that never saw its
            label, so the label noise the audit looks for cannot leak into its own scores.

    Returns:
        The :class:`radaudit.models.train.PretrainResult` (of the last fold's backbone, with the wall
        time and steps of all of them).
    """
    import dataclasses
    import shutil

    from radaudit.augment.dataset import CacheDataset
    from radaudit.models.train import knn_monitor, monitor_options, pretrain

    if isinstance(cross_fit, bool) or not isinstance(cross_fit, int) or cross_fit < 1:
        raise ValueError(f"cross_fit must be an int >= 1 (1: one backbone on all labels), got {cross_fit!r}")
    data_dir = Path(data_dir)
    root = method_dir(data_dir, method)
    marker = root / "from_scratch.token"
    if from_scratch and not (scratch_token and marker.is_file() and marker.read_text() == scratch_token):
        shutil.rmtree(checkpoint_dir(data_dir, method), ignore_errors=True)
        for old in root.glob("fold*"):
            shutil.rmtree(old, ignore_errors=True)
        (root / FOLDS_FILE).unlink(missing_ok=True)
        if scratch_token:
            pio.write_bytes(marker, scratch_token.encode())
    ts = load_training_set(data_dir)
    dataset = ts.dataset(data_dir)
    eval_labels = truth_labels(ts, truth_path)
    eval_fn = knn_monitor(dataset, eval_labels if eval_labels is not None else ts.labels, seed=config.seed,
                          linear_probe=True, **monitor_options(config))
    # About five evaluations per run (and always after the last epoch), each of a fixed stratified
    # subsample (2,000 images on a GPU, 256 on the CPU): a few percent of the training time.
    eval_every = max(1, config.epochs // 5)
    if cross_fit == 1:
        if (root / FOLDS_FILE).exists():
            raise ValueError(f"{root} holds cross-fitted backbones; train with from_scratch to replace them by one")
        config = config.replace(method=method, checkpoint_dir=str(checkpoint_dir(data_dir, method)))
        return pretrain(config, dataset, log=log, eval_fn=eval_fn, eval_every=eval_every)
    stored = cross_fit_folds(data_dir, method)
    if stored is not None and stored["fold"].max() + 1 == cross_fit:
        # Resuming: the split the backbones were trained with; images new since then are blind to all.
        folds = pd.Series(ts.uids).map(stored.set_index("sop_instance_uid")["fold"]).fillna(-1).to_numpy(np.int64)
    else:
        folds = label_folds(ts, cross_fit, config.seed)
        pio.write_parquet_frame(pd.DataFrame({"sop_instance_uid": ts.uids, "fold": folds}), root / FOLDS_FILE)
    results = []
    for f in range(cross_fit):
        blind = np.where((folds == f) | (folds < 0), -1, ts.labels)
        fold_set = CacheDataset.from_reader(functools.partial(cache.read, data_dir), ts.uids, blind.tolist())
        fold_config = config.replace(method=method, checkpoint_dir=str(checkpoint_dir(data_dir, method, f)))
        if log is not None:
            log(f"{method} backbone {f + 1} of {cross_fit}: blind to the labels of {int((folds == f).sum())} images")
        results.append(pretrain(fold_config, fold_set, log=log, eval_fn=eval_fn, eval_every=eval_every))
    return dataclasses.replace(results[-1], wall_time_s=sum(r.wall_time_s for r in results),
                               steps=sum(r.steps for r in results),
                               steps_this_run=sum(r.steps_this_run for r in results))


def compute_embeddings(data_dir: str | os.PathLike[str], method: str, *, size: int | None = None,
                       batch_size: int = 256, device: str | None = None, reuse: bool = True,
                       crop: float | None = None, log: Log | None = None) -> np.ndarray:
    """Embed every cached image with the method's latest backbone; write ``embeddings/<method>.*``.

    ``size`` defaults to the image size the backbone was trained at (from its checkpoint).
    ``crop``: each image's features are the mean over its ten crops of this share of its side
    (:func:`radaudit.models.embed.embed`); None: the whole image. With ``reuse``, an image embedded
    before by the same weights at the same size and crop, whose cached pixels have not changed
    since, keeps its row: a nightly run embeds only the night's new images.
    A cross-fitted method (see :func:`train_backbone`) also writes ``<method>.fold<f>`` for each
    backbone; ``<method>`` itself holds fold 0's features (for the out-of-domain evidence).
    """
    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    folds = cross_fit_folds(data_dir, method)
    if folds is None:
        return _embed_with(data_dir, checkpoint_dir(data_dir, method), method, ts,
                           size=size, batch_size=batch_size, device=device, reuse=reuse, crop=crop, log=log)
    features = [_embed_with(data_dir, checkpoint_dir(data_dir, method, f), f"{method}.fold{f}", ts,
                            size=size, batch_size=batch_size, device=device, reuse=reuse, crop=crop, log=log)
                for f in range(int(folds["fold"].max()) + 1)][0]
    save_rows(features, data_dir / EMBED_DIR / f"{method}.npy",
              pd.read_parquet(data_dir / EMBED_DIR / f"{method}.fold0.uids.parquet").drop(columns="array_digest"),
              data_dir / EMBED_DIR / f"{method}.uids.parquet")
    return features


def _embed_with(data_dir: Path, checkpoints: Path, name: str, ts: TrainingSet, *, size: int | None,
                batch_size: int, device: str | None, reuse: bool, crop: float | None,
                log: Log | None) -> np.ndarray:
    """Embed ``ts``'s images with the latest backbone under ``checkpoints``; write ``embeddings/<name>.*``."""
    from radaudit.augment.dataset import CacheDataset
    from radaudit.models.checkpoint import WEIGHTS_FILE, latest_checkpoint, load_backbone, load_checkpoint
    from radaudit.models.embed import embed

    latest = latest_checkpoint(checkpoints)
    if latest is None:
        method = name.split(".")[0]
        raise FileNotFoundError(f"no {method} backbone under {checkpoints}: materialize backbone/{method} first")
    if size is None:
        size = load_checkpoint(latest).state.get("size")
    model_key = f"{file_digest(latest / WEIGHTS_FILE)}:{size}" + ("" if crop is None else f":crop{crop:g}")
    keys = cache_keys(data_dir, ts.uids)
    features = previous_rows(data_dir, name, model_key, ts.uids, keys) if reuse else None
    todo = np.arange(len(ts.uids)) if features is None else np.flatnonzero(np.isnan(features[:, 0]))
    if len(todo):
        read = functools.partial(cache.read, data_dir)
        new = embed(load_backbone(checkpoints), CacheDataset.from_reader(read, [ts.uids[i] for i in todo]),
                    batch_size=batch_size, device=device, size=size, crop=crop).astype(np.float32)  # (len(todo), D)
        if features is None or features.shape[1] != new.shape[1]:
            features = np.full((len(ts.uids), new.shape[1]), np.nan, np.float32)
        features[todo] = new
    if log is not None:
        log(f"{name} embeddings: {len(todo)} images embedded, {len(ts.uids) - len(todo)} kept from the last run")
    save_rows(features, data_dir / EMBED_DIR / f"{name}.npy",
              pd.DataFrame({"sop_instance_uid": ts.uids, "cache_key": keys, "model_key": model_key}),
              data_dir / EMBED_DIR / f"{name}.uids.parquet")
    return features


def compute_oof(data_dir: str | os.PathLike[str], method: str, *, n_splits: int = 10, seed: int = 0,
                l2: float | None = None, repeats: int = 3, reuse: bool = True, log: Log | None = None) -> OOFResult:
    """Out-of-fold probabilities of one method's linear heads (reviewed labels trusted); write
    ``probabilities/<method>.npy`` and the heads' L2 weight to ``probabilities/<method>.heads.json``.

    For a cross-fitted method (see :func:`train_backbone`) each backbone scores only the images
    whose labels it never saw: K-fold heads on backbone ``f``'s features of label fold ``f`` (and
    of the images without a fold, averaged over the backbones). ``l2`` None: chosen by
    out-of-fold log loss (:func:`radaudit.models.heads.choose_l2`, on the first backbone's features).
    ``repeats``: fold splits averaged (:func:`radaudit.models.heads.oof_probabilities`). An archive with
    fewer labelled patients than ``n_splits`` gets one fold per patient.

    The defaults (10 folds, 3 splits) were measured against one 5-fold split on the 3 CPU-demo
    exports of issue 12 (seeds 0-2): precision@k 0.750/0.703/0.703 against 0.766/0.703/0.672,
    the same mean (0.72 against 0.71) with less luck of the split; a 10-fold split alone gave
    0.750/0.688/0.703.

    With ``reuse``, a nightly run keeps the last fit (:func:`_reuse_oof`): when every image the
    last fit trained on is still here with the same label and the same embedding, and the
    settings are the same, the old images keep their probabilities and the new images are scored
    by the last fit's full head, which never saw them. Otherwise (a verdict changed a label, the
    backbone was retrained, an image left) the heads are fit again.
    """
    from radaudit.models.heads import OOFResult, choose_l2, oof_probabilities
    from radaudit.models.validation import check_groups

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir, overrides=load_overrides(data_dir))
    k = len(ts.vocabulary)
    folds = cross_fit_folds(data_dir, method)
    losses: dict[float, float] = {}
    settings = {"n_splits": n_splits, "seed": seed, "l2": l2, "repeats": repeats}
    features = feature_keys(data_dir, method, ts.uids) if folds is None else None
    if reuse and features is not None:
        kept = _reuse_oof(data_dir, method, ts, features, settings)
        if kept is not None:
            if log is not None:
                log(f"{method} heads: the last fit kept, {kept[1]} images scored by its full head")
            return kept[0]
    if folds is None:
        x = load_embeddings(data_dir, method, ts.uids)
        labelled = ts.labels >= 0
        splits = max(2, min(n_splits, int(np.unique(check_groups(ts.groups[labelled], int(labelled.sum()))).size)))
        if l2 is None:
            l2, losses = choose_l2(x, ts.labels, ts.groups, n_splits=splits, n_classes=k, seed=seed)
        result = oof_probabilities(x, ts.labels, ts.groups, n_splits=splits, n_classes=k, seed=seed, l2=l2,
                                   repeats=repeats)
    else:
        n_fits = int(folds["fold"].max()) + 1
        fold_of = pd.Series(ts.uids).map(folds.set_index("sop_instance_uid")["fold"]).fillna(-1).to_numpy(np.int64)
        probs = np.zeros((len(ts.uids), k))
        out_of_fold = np.ones(len(ts.uids), dtype=bool)
        fold = np.full(len(ts.uids), -1, dtype=np.int64)
        shared = fold_of < 0  # new or unlabelled at training: no backbone saw a label of theirs
        heads = []
        for f in range(n_fits):
            rows = np.flatnonzero((fold_of == f) | shared)
            x = load_embeddings(data_dir, f"{method}.fold{f}", [ts.uids[i] for i in rows])
            labelled = rows[ts.labels[rows] >= 0]
            patients = int(np.unique(check_groups(ts.groups[labelled], labelled.size)).size)
            if patients < 2:
                raise ValueError(f"{method} fold {f} holds {patients} labelled patient(s): too few to cross-fit; "
                                 f"set supcon_cross_fit to 1 for so small an archive")
            # A small archive's half may hold fewer patients than n_splits: fewer folds there.
            if l2 is None:
                l2, losses = choose_l2(x, ts.labels[rows], ts.groups[rows], n_splits=min(n_splits, patients),
                                       n_classes=k, seed=seed)
            part = oof_probabilities(x, ts.labels[rows], ts.groups[rows], n_splits=min(n_splits, patients),
                                     n_classes=k, seed=seed, l2=l2, repeats=repeats)
            own = fold_of[rows] == f
            probs[rows[own]] = part.probabilities[own]
            probs[rows[~own]] += part.probabilities[~own] / n_fits
            out_of_fold[rows] &= part.out_of_fold
            fold[rows[own]] = np.where(part.fold[own] >= 0, f * n_splits + part.fold[own], -1)
            heads.append(part.head)
        out_of_fold &= ts.labels >= 0
        result = OOFResult(probs, fold, out_of_fold, heads[0])
    _save_head(data_dir / PROB_DIR / f"{method}.head.safetensors", result.head)
    save_rows(result.probabilities.astype(np.float32), data_dir / PROB_DIR / f"{method}.npy",
              pd.DataFrame({"sop_instance_uid": ts.uids, "label": ts.labels, "fold": result.fold,
                            "out_of_fold": result.out_of_fold,
                            "feature_key": features if features is not None else [None] * len(ts.uids)}),
              data_dir / PROB_DIR / f"{method}.rows.parquet")
    pio.write_text(data_dir / PROB_DIR / f"{method}.heads.json",
                   json.dumps({"l2": l2, "log_loss_by_l2": {f"{k2:g}": v for k2, v in losses.items()},
                               "settings": settings}, indent=1))
    if log is not None:
        log(f"{method} heads: fit on {int((ts.labels >= 0).sum())} labelled images")
    return result


def feature_keys(data_dir: Path, method: str, uids: Sequence[str]) -> list[str] | None:
    """Per image, what its stored embedding depends on (backbone weights and size, cached pixels);
    None when the embeddings came from elsewhere (:func:`radaudit.pipelines.stages.store.save_embeddings`)."""
    rows = pd.read_parquet(data_dir / EMBED_DIR / f"{method}.uids.parquet",
                           columns=["sop_instance_uid", "cache_key", "model_key"])
    if (rows["model_key"] == "external").any() or (rows["cache_key"] == "").any():
        return None
    rows = rows.drop_duplicates("sop_instance_uid", keep="last").set_index("sop_instance_uid").reindex(list(uids))
    if rows["model_key"].isna().any():
        return None
    return (rows["model_key"] + "|" + rows["cache_key"]).tolist()


def _save_head(path: Path, head: Any) -> None:
    """A :class:`radaudit.models.heads.LinearHead` as safetensors, atomically."""
    from safetensors.numpy import save_file

    with pio.atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in head.state_dict().items()}, str(tmp))


def _reuse_oof(data_dir: Path, method: str, ts: TrainingSet, features: list[str],
               settings: dict[str, Any]) -> tuple[OOFResult, int] | None:
    """The last fit's probabilities, extended to new images by its full head, and how many images
    are new, where the fit still holds (see :func:`compute_oof`); None where it does not."""
    from safetensors.numpy import load_file

    from radaudit.models.heads import LinearHead, OOFResult

    head_path = data_dir / PROB_DIR / f"{method}.head.safetensors"
    heads_json = data_dir / PROB_DIR / f"{method}.heads.json"
    if not (head_path.exists() and heads_json.exists()):
        return None
    if json.loads(heads_json.read_text(encoding="utf-8")).get("settings") != settings:
        return None
    try:
        old_probs, old = load_probabilities(data_dir, method)
    except (ValueError, OSError):
        return None
    if "feature_key" not in old or old["feature_key"].isna().any() or old_probs.shape[1] != len(ts.vocabulary):
        return None
    now = pd.DataFrame({"label": ts.labels, "feature_key": features}, index=pd.Index(ts.uids))
    trained = old[old["label"] >= 0].set_index("sop_instance_uid")
    here = now.reindex(trained.index)
    if here["label"].isna().any() or not ((here["label"] == trained["label"]).all()
                                          and (here["feature_key"] == trained["feature_key"]).all()):
        return None  # an image the heads trained on left, or its label or embedding changed
    position = pd.Series(np.arange(len(old)), index=old["sop_instance_uid"] + "|" + old["feature_key"]
                         + "|" + old["label"].astype(str))
    where = position[~position.index.duplicated(keep="last")].reindex(
        [f"{u}|{f}|{y}" for u, f, y in zip(ts.uids, features, ts.labels)]).to_numpy()
    kept = ~np.isnan(where)
    n = len(ts.uids)
    probs = np.zeros((n, len(ts.vocabulary)))
    fold = np.full(n, -1, dtype=np.int64)
    out_of_fold = ts.labels >= 0
    src = where[kept].astype(np.int64)
    probs[kept] = old_probs[src]
    fold[kept] = old["fold"].to_numpy(np.int64)[src]
    out_of_fold[kept] = old["out_of_fold"].to_numpy(bool)[src]
    head = LinearHead.from_state_dict(load_file(str(head_path)))
    if (~kept).any():
        new_uids = [u for u, k in zip(ts.uids, kept) if not k]
        probs[~kept] = head.predict_proba(load_embeddings(data_dir, method, new_uids))
    result = OOFResult(probs, fold, out_of_fold, head)
    if kept.all() and len(old) == n and (old["sop_instance_uid"].to_numpy() == np.asarray(ts.uids)).all():
        return result, 0  # the stored rows are these already
    save_rows(probs.astype(np.float32), data_dir / PROB_DIR / f"{method}.npy",
              pd.DataFrame({"sop_instance_uid": ts.uids, "label": ts.labels, "fold": fold, "out_of_fold": out_of_fold,
                            "feature_key": features}),
              data_dir / PROB_DIR / f"{method}.rows.parquet")
    return result, int((~kept).sum())


def combine(data_dir: str | os.PathLike[str], methods: Sequence[str], *, weights: str = "log_loss",
            drop_below: float | None = 0.05) -> tuple[np.ndarray, dict[str, float]]:
    """Ensemble the methods' probabilities; write ``probabilities/ensemble.npy``.

    Returns:
        The probabilities and each method's weight (see :func:`radaudit.models.ensemble.ensemble_weights`).

    Raises:
        ValueError: If the methods' rows differ (one was computed on an older cache).
    """
    from radaudit.models.ensemble import ensemble_probabilities, ensemble_weights

    data_dir = Path(data_dir)
    loaded = {m: load_probabilities(data_dir, m) for m in methods}
    first_rows = loaded[methods[0]][1]
    for m, (_, rows) in loaded.items():
        if not rows["sop_instance_uid"].equals(first_rows["sop_instance_uid"]):
            raise ValueError(f"oof_probabilities/{m} covers other images than {methods[0]}: re-materialize it")
    by_method = {m: p for m, (p, _) in loaded.items()}
    labels = first_rows["label"].to_numpy()
    if not (labels >= 0).any():
        weights, drop_below = "equal", None  # nothing to weigh the members by
    w = ensemble_weights(by_method, weights=weights, labels=labels, drop_below=drop_below)
    probs = ensemble_probabilities(by_method, weights=weights, labels=labels, drop_below=drop_below)
    out_of_fold = np.logical_and.reduce([rows["out_of_fold"].to_numpy() for _, rows in loaded.values()])
    save_rows(probs.astype(np.float32), data_dir / PROB_DIR / "ensemble.npy",
              first_rows.assign(out_of_fold=out_of_fold), data_dir / PROB_DIR / "ensemble.rows.parquet")
    pio.write_text(data_dir / WEIGHTS_PATH, json.dumps(w, indent=1))
    return probs, w


def audit(data_dir: str | os.PathLike[str], methods: Sequence[str], *, members: Sequence[str] | None = None,
          **options: Any) -> pd.DataFrame:
    """Score every image with cleanlab on the ensemble; write ``audit/label_issues.parquet``.

    Args:
        methods: Whose embeddings feed the out-of-domain evidence.
        members: Whose own probabilities fill the ``members_agree`` column (default: the methods
            the ensemble gave a weight, see :func:`combine`); they do not decide the flags.
        options: For :func:`radaudit.models.audit.find_issues`.
    """
    from radaudit.models.audit import combine_embeddings, find_issues

    data_dir = Path(data_dir)
    probs, rows = load_probabilities(data_dir, "ensemble")
    uids = rows["sop_instance_uid"].tolist()
    features = combine_embeddings({m: load_embeddings(data_dir, m, uids) for m in methods})
    if members is None:
        weights = json.loads((data_dir / WEIGHTS_PATH).read_text()) if (data_dir / WEIGHTS_PATH).exists() else {}
        members = [m for m in methods if weights.get(m, 1.0) > 0]
    member_probs = {}
    for m in members:
        p, member_rows = load_probabilities(data_dir, m)
        if not member_rows["sop_instance_uid"].equals(rows["sop_instance_uid"]):
            raise ValueError(f"oof_probabilities/{m} covers other images than the ensemble: re-materialize it")
        member_probs[m] = p.astype(np.float64)
    issues = find_issues(probs.astype(np.float64), rows["label"].to_numpy(), features, sop_instance_uids=uids,
                         out_of_fold=rows["out_of_fold"].to_numpy(), member_probs=member_probs,
                         **issue_inputs(data_dir, uids), **options)
    overrides = load_overrides(data_dir)
    if overrides is not None:
        from radaudit.pacs.review import apply_to_issues

        attrs = dict(issues.attrs)
        issues = apply_to_issues(issues, overrides)
        issues.attrs.update(attrs)
    pio.write_parquet_frame(issues, data_dir / ISSUES_PATH)
    pio.write_text(data_dir / SUMMARY_PATH, json.dumps(
        {k: v for k, v in issues.attrs.items() if isinstance(v, (int, float, str, list))}, indent=1))
    return issues


def report(data_dir: str | os.PathLike[str], *, vocabulary: Sequence[str] | None = None,
           **options: Any) -> ReportFiles:
    """Write the radiologists' CSV and HTML from the label issues."""
    from radaudit.pipelines.stages.reports import write_report

    data_dir = Path(data_dir)
    issues = pd.read_parquet(data_dir / ISSUES_PATH)
    ts = load_training_set(data_dir, vocabulary)
    warnings = load_audit_summary(data_dir).get("warnings", [])
    return write_report(issues, ts.meta, data_dir, class_names=list(ts.vocabulary), warnings=warnings, **options)
