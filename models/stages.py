"""The audit's stages over the data dir: each reads its inputs from files and writes its outputs atomically.

These are what the Dagster assets call, and what a notebook calls to run one stage by hand::

    from radaudit.models import stages
    ts = stages.load_training_set("data")
    stages.train_backbone("data", "simclr", PretrainConfig(epochs=5))

Layout under the data dir (beside the ingest's ``index/``, ``labels/`` and ``cache/``)::

    models/<method>/checkpoints/         per-epoch checkpoints (safetensors), resumable
    models/<method>/fold<f>/checkpoints/ a cross-fitted method's backbones (label_folds.parquet: the split)
    embeddings/<method>.npy              (N, D) float32 features, rows = embeddings/<method>.uids.parquet
    probabilities/<method>.npy           (N, K) out-of-fold probabilities, rows = probabilities/rows.parquet
    probabilities/ensemble.npy           (N, K) the methods' combined probabilities
    probabilities/ensemble.weights.json  each method's weight in it (0: dropped as too weak)
    audit/label_issues.parquet           one row per image: label quality, OOD score and reason, issue, rank
    audit/summary.json                   the audit's warnings (features too weak) and figures
    reports/                             the radiologists' CSV and HTML
"""

from __future__ import annotations

import functools
import io as _io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radaudit.pacs import cache
from radaudit.pacs import io as pio
from radaudit.pacs.cache import MANIFEST_PATH
from radaudit.pacs.index import INDEX_PATH

LABELS_PATH = Path("labels") / "region_labels.parquet"
VOCABULARY_PATH = Path("labels") / "vocabulary.json"
MODELS_DIR = Path("models")
FOLDS_FILE = "label_folds.parquet"
EMBED_DIR = Path("embeddings")
PROB_DIR = Path("probabilities")
ISSUES_PATH = Path("audit") / "label_issues.parquet"
DUPLICATES_PATH = Path("audit") / "near_duplicates.parquet"
SUMMARY_PATH = Path("audit") / "summary.json"
WEIGHTS_PATH = PROB_DIR / "ensemble.weights.json"

Log = Callable[[str], None]
LabelFractionScores = dict[str, dict[float, float]]  # {method or "ensemble": {share of labels: accuracy}}

if TYPE_CHECKING:  # the heavy modules load only when a stage runs
    from radaudit.augment.dataset import CacheDataset
    from radaudit.models.heads import OOFResult
    from radaudit.models.report import ReportFiles
    from radaudit.models.train import PretrainConfig, PretrainResult


@dataclass(frozen=True)
class TrainingSet:
    """The cached, live instances with their recorded labels, in a fixed order (sorted by UID).

    Attributes:
        uids: SOP Instance UIDs. Shape: (N,).
        labels: Recorded region index into ``vocabulary``, -1 for null. Shape: (N,).
        groups: Patient keys (None where the file had no Patient ID). Shape: (N,).
        vocabulary: Region names, index = class.
        meta: Index columns merged with the region labels, one row per uid, same order.
    """

    uids: list[str]
    labels: np.ndarray
    groups: np.ndarray
    vocabulary: tuple[str, ...]
    meta: pd.DataFrame

    def dataset(self, data_dir: str | os.PathLike[str]) -> CacheDataset:
        """A Dataset of ``(uint8 image (1, H, W), label)`` over the image cache."""
        from radaudit.augment.dataset import CacheDataset

        return CacheDataset.from_reader(functools.partial(cache.read, data_dir), self.uids, self.labels.tolist())


def load_overrides(data_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The reviewers' verdicts written by the ``label_overrides`` asset, or None if there are none."""
    from radaudit.pacs.review import OVERRIDES_PATH

    path = Path(data_dir) / OVERRIDES_PATH
    return pd.read_parquet(path) if path.exists() else None


def live_index(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The index rows the pipeline works on: files still present, not a second export of an instance."""
    index = pd.read_parquet(Path(data_dir) / INDEX_PATH)
    return index[index["present"] & index["duplicate_of"].isna()]


def load_training_set(data_dir: str | os.PathLike[str], vocabulary: Sequence[str] | None = None,
                      *, overrides: pd.DataFrame | None = None) -> TrainingSet:
    """Gather the instances the models see: present, not duplicates, in the image cache.

    Args:
        data_dir: The pipeline's data dir.
        vocabulary: Region names; default: those of the recorded labels' mapping.
        overrides: Reviewers' verdicts (:func:`radaudit.pacs.review.read_reviews`); the label they imply
            replaces the recorded one as ground truth (no label for ``out_of_domain``).
    """
    data_dir = Path(data_dir)
    vocab = tuple(vocabulary or read_vocabulary(data_dir))
    cached = set(pd.read_parquet(data_dir / MANIFEST_PATH, columns=["sop_instance_uid"])["sop_instance_uid"])
    live = live_index(data_dir)
    live = live[live["sop_instance_uid"].isin(cached)]
    labels = pd.read_parquet(data_dir / LABELS_PATH)
    meta = live.merge(labels, on="sop_instance_uid", how="left").sort_values("sop_instance_uid", ignore_index=True)
    region = meta["recorded_region"].astype(object)
    if overrides is not None and not overrides.empty:
        from radaudit.pacs.review import label_for_training

        trusted = label_for_training(overrides, pd.Series(region.to_numpy(), index=meta["sop_instance_uid"]))
        reviewed = meta["sop_instance_uid"].isin(trusted.index).to_numpy()
        region = region.copy()
        region[reviewed] = meta.loc[reviewed, "sop_instance_uid"].map(trusted).to_numpy()
    lookup = {name: i for i, name in enumerate(vocab)}
    y = np.array([lookup.get(r, -1) if isinstance(r, str) else -1 for r in region], dtype=np.int64)
    groups = np.array([k if isinstance(k, str) else None for k in meta["patient_key"]], dtype=object)
    uids = meta["sop_instance_uid"].tolist()
    if (data_dir / DUPLICATES_PATH).exists():
        groups = fold_groups(uids, groups, pd.read_parquet(data_dir / DUPLICATES_PATH))
    return TrainingSet(uids, y, groups, vocab, meta)


MAX_TIED_PATIENTS = 3


def fold_groups(uids: Sequence[str], patients: np.ndarray, duplicates: pd.DataFrame) -> np.ndarray:
    """Patient keys merged along duplicate groups, so that no fold split straddles a duplicate.

    An image copied into another patient's study ties the two patients together: every image of
    both then shares one key (``dup-<n>``). Images outside any duplicate group keep their key. A
    group that spans more than ``MAX_TIED_PATIENTS`` patients ties nobody: that is one image
    shared by many (a test pattern, a placeholder), not a copy, and tying them all would put a
    large part of the archive into one fold.

    Args:
        uids: N SOP Instance UIDs.
        patients: Shape: (N,), patient keys (None: a patient of its own).
        duplicates: :func:`find_near_duplicates` rows (``group``, ``sop_instance_uid``); UIDs
            not in ``uids`` (an older cache) are ignored.

    Returns:
        Shape: (N,), object.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(uids)
    pos = {u: i for i, u in enumerate(uids)}
    rows = duplicates[duplicates["sop_instance_uid"].isin(pos)]
    spread = rows.assign(patient=rows["sop_instance_uid"].map(lambda u: patients[pos[u]])).groupby("group")[
        "patient"].nunique()
    rows = rows[rows["group"].isin(spread.index[spread <= MAX_TIED_PATIENTS])]
    if rows.empty:
        return patients
    # Nodes: images, then one per duplicate group; edges: image-group and image-patient.
    keys = pd.Series([p if isinstance(p, str) else None for p in patients])
    patient_code = pd.factorize(keys)[0]  # -1 for None
    n_groups = int(rows["group"].max()) + 1
    n_patients = int(patient_code.max()) + 1
    img = rows["sop_instance_uid"].map(pos).to_numpy()
    has = np.flatnonzero(patient_code >= 0)
    src = np.concatenate([img, has])
    dst = np.concatenate([n + rows["group"].to_numpy(), n + n_groups + patient_code[has]])
    size = n + n_groups + n_patients
    comp = connected_components(coo_matrix((np.ones(src.size), (src, dst)), shape=(size, size)), directed=False)[1]
    tied = np.zeros(size, dtype=bool)
    tied[comp[img]] = True
    out = patients.copy()
    for i in np.flatnonzero(tied[comp[:n]]):
        out[i] = f"dup-{comp[i]}"
    return out


def map_labels(data_dir: str | os.PathLike[str], region_map: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Map every live instance's PACS strings to the region vocabulary; write ``labels/``.

    Args:
        region_map: A mapping file (TOML or YAML); None: the packaged default.

    Returns:
        The region labels (``sop_instance_uid``, ``recorded_region``, ``recorded_raw``, ``recorded_tag``).
    """
    from radaudit.pacs.regions import RegionMapper

    data_dir = Path(data_dir)
    live = live_index(data_dir)
    mapper = RegionMapper.from_file(region_map)
    labels = mapper.label_frame(live)
    pio.write_parquet_frame(labels, data_dir / LABELS_PATH)
    pio.write_text(data_dir / VOCABULARY_PATH, json.dumps(list(mapper.regions)))
    return labels


def read_vocabulary(data_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The region vocabulary the recorded labels were mapped with (the default if none was saved)."""
    from radaudit.pacs.regions import DEFAULT_REGIONS

    path = Path(data_dir) / VOCABULARY_PATH
    return tuple(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else DEFAULT_REGIONS


def truth_labels(ts: TrainingSet, truth_path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """True region per instance from a synthetic export's truth file (-1 for out-of-domain), or None."""
    if not truth_path:
        return None
    path = Path(truth_path)
    truth = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    region = pd.Series(ts.uids).map(truth.set_index("sop_instance_uid")["true_region"])
    lookup = {name: i for i, name in enumerate(ts.vocabulary)}
    return np.array([lookup.get(r, -1) if isinstance(r, str) else -1 for r in region], dtype=np.int64)


def label_folds(ts: TrainingSet, n_folds: int, seed: int = 0) -> np.ndarray:
    """The split of a cross-fitted label-trained method: a fold per labelled image, -1 for null labels.

    Region-stratified and grouped by patient (:func:`radaudit.models.heads.group_stratified_folds`).
    """
    from radaudit.models.heads import check_groups, group_stratified_folds

    return group_stratified_folds(ts.labels, check_groups(ts.groups, len(ts.uids)), n_splits=n_folds, seed=seed)


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
    root = data_dir / MODELS_DIR / method
    marker = root / "from_scratch.token"
    if from_scratch and not (scratch_token and marker.is_file() and marker.read_text() == scratch_token):
        shutil.rmtree(root / "checkpoints", ignore_errors=True)
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
        config = config.replace(method=method, checkpoint_dir=str(root / "checkpoints"))
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
        fold_config = config.replace(method=method, checkpoint_dir=str(_fold_checkpoints(data_dir, method, f)))
        if log is not None:
            log(f"{method} backbone {f + 1} of {cross_fit}: blind to the labels of {int((folds == f).sum())} images")
        results.append(pretrain(fold_config, fold_set, log=log, eval_fn=eval_fn, eval_every=eval_every))
    return dataclasses.replace(results[-1], wall_time_s=sum(r.wall_time_s for r in results),
                               steps=sum(r.steps for r in results),
                               steps_this_run=sum(r.steps_this_run for r in results))


def _fold_checkpoints(data_dir: Path, method: str, fold: int) -> Path:
    return data_dir / MODELS_DIR / method / f"fold{fold}" / "checkpoints"


def cross_fit_folds(data_dir: str | os.PathLike[str], method: str) -> pd.DataFrame | None:
    """The label folds a cross-fitted method was trained with (``sop_instance_uid``, ``fold``), or None."""
    path = Path(data_dir) / MODELS_DIR / method / FOLDS_FILE
    return pd.read_parquet(path) if path.exists() else None


def compute_embeddings(data_dir: str | os.PathLike[str], method: str, *, size: int | None = None,
                       batch_size: int = 256, device: str | None = None, reuse: bool = True,
                       log: Log | None = None) -> np.ndarray:
    """Embed every cached image with the method's latest backbone; write ``embeddings/<method>.*``.

    ``size`` defaults to the image size the backbone was trained at (from its checkpoint). With
    ``reuse``, an image embedded before by the same weights at the same size, whose cached pixels
    have not changed since, keeps its row: a nightly run embeds only the night's new images.
    A cross-fitted method (see :func:`train_backbone`) also writes ``<method>.fold<f>`` for each
    backbone; ``<method>`` itself holds fold 0's features (for the out-of-domain evidence).
    """
    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    folds = cross_fit_folds(data_dir, method)
    if folds is None:
        return _embed_with(data_dir, data_dir / MODELS_DIR / method / "checkpoints", method, ts,
                           size=size, batch_size=batch_size, device=device, reuse=reuse, log=log)
    features = [_embed_with(data_dir, _fold_checkpoints(data_dir, method, f), f"{method}.fold{f}", ts,
                            size=size, batch_size=batch_size, device=device, reuse=reuse, log=log)
                for f in range(int(folds["fold"].max()) + 1)][0]
    _save_rows(features, data_dir / EMBED_DIR / f"{method}.npy",
               pd.read_parquet(data_dir / EMBED_DIR / f"{method}.fold0.uids.parquet").drop(columns="array_digest"),
               data_dir / EMBED_DIR / f"{method}.uids.parquet")
    return features


def _embed_with(data_dir: Path, checkpoints: Path, name: str, ts: TrainingSet, *, size: int | None,
                batch_size: int, device: str | None, reuse: bool, log: Log | None) -> np.ndarray:
    """Embed ``ts``'s images with the latest backbone under ``checkpoints``; write ``embeddings/<name>.*``."""
    from radaudit.augment.dataset import CacheDataset
    from radaudit.models.checkpoint import WEIGHTS_FILE, latest_checkpoint, load_backbone, load_checkpoint
    from radaudit.models.embed import embed

    latest = latest_checkpoint(checkpoints)
    if latest is None:
        method = checkpoints.relative_to(data_dir / MODELS_DIR).parts[0]
        raise FileNotFoundError(f"no {method} backbone under {checkpoints}: materialize backbone/{method} first")
    if size is None:
        size = load_checkpoint(latest).state.get("size")
    model_key = f"{_file_digest(latest / WEIGHTS_FILE)}:{size}"
    cache_keys = _cache_keys(data_dir, ts.uids)
    features = _previous_rows(data_dir, name, model_key, ts.uids, cache_keys) if reuse else None
    todo = np.arange(len(ts.uids)) if features is None else np.flatnonzero(np.isnan(features[:, 0]))
    if len(todo):
        read = functools.partial(cache.read, data_dir)
        new = embed(load_backbone(checkpoints), CacheDataset.from_reader(read, [ts.uids[i] for i in todo]),
                    batch_size=batch_size, device=device, size=size).astype(np.float32)  # (len(todo), D)
        if features is None or features.shape[1] != new.shape[1]:
            features = np.full((len(ts.uids), new.shape[1]), np.nan, np.float32)
        features[todo] = new
    if log is not None:
        log(f"{name} embeddings: {len(todo)} images embedded, {len(ts.uids) - len(todo)} kept from the last run")
    _save_rows(features, data_dir / EMBED_DIR / f"{name}.npy",
               pd.DataFrame({"sop_instance_uid": ts.uids, "cache_key": cache_keys, "model_key": model_key}),
               data_dir / EMBED_DIR / f"{name}.uids.parquet")
    return features


def _file_digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _cache_keys(data_dir: Path, uids: Sequence[str]) -> list[str]:
    """Per image, what its cached pixels depend on: source file identity, size, mtime, cache settings."""
    manifest = pd.read_parquet(data_dir / MANIFEST_PATH,
                               columns=["sop_instance_uid", "path_hash", "file_size", "mtime_ns", "params"])
    manifest = manifest.drop_duplicates("sop_instance_uid", keep="last").set_index("sop_instance_uid").loc[list(uids)]
    return [f"{h}:{s}:{t}:{p}" for h, s, t, p in zip(manifest["path_hash"], manifest["file_size"],
                                                      manifest["mtime_ns"], manifest["params"])]


def _previous_rows(data_dir: Path, method: str, model_key: str, uids: Sequence[str],
                   cache_keys: Sequence[str]) -> np.ndarray | None:
    """The last run's rows that still hold, in ``uids`` order, NaN rows elsewhere; None if nothing holds."""
    npy, rows_path = data_dir / EMBED_DIR / f"{method}.npy", data_dir / EMBED_DIR / f"{method}.uids.parquet"
    if not (npy.exists() and rows_path.exists()):
        return None
    try:
        old, rows = _load_rows(npy, rows_path, mmap=True)
    except ValueError:
        return None  # the pair is from two runs: embed everything again
    if "model_key" not in rows or not (rows["model_key"] == model_key).all():
        return None
    position = pd.Series(np.arange(len(rows)), index=rows["sop_instance_uid"] + "|" + rows["cache_key"])
    where = position.reindex([f"{u}|{k}" for u, k in zip(uids, cache_keys)]).to_numpy()
    features = np.full((len(uids), old.shape[1]), np.nan, np.float32)
    hit = ~np.isnan(where)
    features[hit] = old[where[hit].astype(np.int64)]
    return features


def save_embeddings(data_dir: str | os.PathLike[str], name: str, features: np.ndarray, uids: Sequence[str]) -> None:
    """Store features computed elsewhere (e.g. a baseline backbone) as ``embeddings/<name>``, for the heads and the audit."""
    data_dir = Path(data_dir)
    _save_rows(np.asarray(features, dtype=np.float32), data_dir / EMBED_DIR / f"{name}.npy",
               pd.DataFrame({"sop_instance_uid": list(uids), "cache_key": "", "model_key": "external"}),
               data_dir / EMBED_DIR / f"{name}.uids.parquet")


def load_embeddings(data_dir: str | os.PathLike[str], method: str, uids: Sequence[str]) -> np.ndarray:
    """A method's embeddings in the order of ``uids``.

    Raises:
        ValueError: If some uid has no embedding (the embeddings are older than the image cache).
    """
    data_dir = Path(data_dir)
    features, table = _load_rows(data_dir / EMBED_DIR / f"{method}.npy", data_dir / EMBED_DIR / f"{method}.uids.parquet",
                                 mmap=True)
    rows = table["sop_instance_uid"]
    position = pd.Series(np.arange(len(rows)), index=rows.to_numpy())
    where = position.reindex(list(uids))
    if where.isna().any():
        raise ValueError(f"{int(where.isna().sum())} images have no {method} embedding: re-materialize "
                         f"embeddings/{method} after the image cache changed")
    return features[where.to_numpy(dtype=np.int64)]


def compute_oof(data_dir: str | os.PathLike[str], method: str, *, n_splits: int = 10, seed: int = 0,
                l2: float | None = None, repeats: int = 3) -> OOFResult:
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
    """
    from radaudit.models.heads import OOFResult, check_groups, choose_l2, oof_probabilities

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir, overrides=load_overrides(data_dir))
    k = len(ts.vocabulary)
    folds = cross_fit_folds(data_dir, method)
    losses: dict[float, float] = {}
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
    _save_rows(result.probabilities.astype(np.float32), data_dir / PROB_DIR / f"{method}.npy",
               pd.DataFrame({"sop_instance_uid": ts.uids, "label": ts.labels, "fold": result.fold,
                             "out_of_fold": result.out_of_fold}),
               data_dir / PROB_DIR / f"{method}.rows.parquet")
    pio.write_text(data_dir / PROB_DIR / f"{method}.heads.json",
                   json.dumps({"l2": l2, "log_loss_by_l2": {f"{k2:g}": v for k2, v in losses.items()}}, indent=1))
    return result


def find_near_duplicates(data_dir: str | os.PathLike[str], *, log: Log | None = None,
                         **options: Any) -> pd.DataFrame:
    """Group the cached, live images that are the same radiograph (:mod:`radaudit.pacs.duplicates`); write
    ``audit/near_duplicates.parquet``.

    Near duplicates are looked for among images of the same aspect ratio, and a pair of two
    patients needs a near-perfect match (see :func:`radaudit.pacs.duplicates.find_duplicates`). A group's
    original is the member first seen by the index, then the smallest UID.

    Args:
        options: For :func:`radaudit.pacs.duplicates.find_duplicates` (thresholds, ``k``).

    Returns:
        :func:`radaudit.pacs.duplicates.duplicate_groups`' rows.
    """
    from radaudit.pacs.duplicates import duplicate_groups, find_duplicates

    uids, geometry, patients, first_seen = duplicate_inputs(data_dir)
    fps, digests = cache_fingerprints(data_dir, uids, geometry, log=log)
    aspect = (geometry["original_rows"] / geometry["original_columns"].clip(lower=1)).round(2).tolist()
    pairs = find_duplicates(fps, digests, aspect, patients, **options)
    groups = duplicate_groups(pairs, uids, patients, first_seen)
    pio.write_parquet_frame(groups, Path(data_dir) / DUPLICATES_PATH)
    return groups


def duplicate_inputs(data_dir: str | os.PathLike[str]) -> tuple[list[str], pd.DataFrame, list[str | None],
                                                                 list[str] | None]:
    """What :func:`find_near_duplicates` needs of the cached, live images, sorted by UID: their UIDs,
    their cache manifest rows (geometry), patient keys (None where absent) and when the index first
    saw them (None for an index without that column)."""
    data_dir = Path(data_dir)
    live = live_index(data_dir).drop_duplicates("sop_instance_uid")
    manifest = pd.read_parquet(data_dir / MANIFEST_PATH).drop_duplicates("sop_instance_uid", keep="last")
    manifest = manifest[manifest["sop_instance_uid"].isin(live["sop_instance_uid"])].sort_values(
        "sop_instance_uid", ignore_index=True)
    facts = live.set_index("sop_instance_uid").reindex(manifest["sop_instance_uid"])
    patients = [k if isinstance(k, str) else None for k in facts["patient_key"]]
    first_seen = facts["first_seen"].astype(str).tolist() if "first_seen" in facts else None
    return manifest["sop_instance_uid"].tolist(), manifest, patients, first_seen


def cache_fingerprints(data_dir: str | os.PathLike[str], uids: Sequence[str], geometry: pd.DataFrame, *,
                       log: Log | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`radaudit.pacs.duplicates.fingerprint` and :func:`radaudit.pacs.duplicates.pixel_digest` of each cached image.

    Args:
        geometry: One cache manifest row per UID, same order.

    Returns:
        Shape: (N, S, S) fingerprints and N digests.
    """
    from radaudit.pacs.duplicates import FINGERPRINT_SIDE, GEOMETRY, fingerprint, pixel_digest

    fps, digests = [], []
    for i, (uid, facts) in enumerate(zip(uids, geometry[list(GEOMETRY)].to_dict("records"))):
        image = cache.read(data_dir, uid, mmap=True)
        fps.append(fingerprint(image, facts))
        digests.append(pixel_digest(image))
        if log is not None and (i + 1) % 10_000 == 0:
            log(f"near_duplicates: fingerprinted {i + 1}/{len(uids)} images")
    side = FINGERPRINT_SIDE
    return (np.stack(fps) if fps else np.zeros((0, side, side), np.float32)), digests


def load_near_duplicates(data_dir: str | os.PathLike[str], uids: Sequence[str]) -> pd.DataFrame:
    """For each of ``uids``: ``duplicate_of``, ``similarity``, ``cross_patient``, ``other_patient``
    (nulls and False where the image has no duplicate or none were looked for). A copy whose
    original is no longer among ``uids`` (the file left the export since the groups were made) is
    not reported as a copy."""
    path = Path(data_dir) / DUPLICATES_PATH
    rows = pd.read_parquet(path) if path.exists() else pd.DataFrame(
        columns=["sop_instance_uid", "duplicate_of", "similarity", "cross_patient", "other_patient"])
    rows = rows[rows["duplicate_of"].isna() | rows["duplicate_of"].isin(set(uids))]
    rows = rows.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid").reindex(list(uids))
    return pd.DataFrame({
        "duplicate_of": pd.Series([d if isinstance(d, str) else None for d in rows["duplicate_of"]], dtype=object),
        "similarity": rows["similarity"].astype(float).to_numpy(),
        "cross_patient": rows["cross_patient"].fillna(False).astype(bool).to_numpy(),
        "other_patient": rows["other_patient"].fillna(False).astype(bool).to_numpy(),
    })


def head_settings(data_dir: str | os.PathLike[str], method: str) -> dict[str, Any]:
    """What :func:`compute_oof` chose for a method's heads (``l2``, ``log_loss_by_l2``)."""
    return json.loads((Path(data_dir) / PROB_DIR / f"{method}.heads.json").read_text())


def load_probabilities(data_dir: str | os.PathLike[str], name: str) -> tuple[np.ndarray, pd.DataFrame]:
    """A method's (or ``ensemble``'s) probabilities and their rows."""
    data_dir = Path(data_dir)
    return _load_rows(data_dir / PROB_DIR / f"{name}.npy", data_dir / PROB_DIR / f"{name}.rows.parquet")


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
    _save_rows(probs.astype(np.float32), data_dir / PROB_DIR / "ensemble.npy",
               first_rows.assign(out_of_fold=out_of_fold), data_dir / PROB_DIR / "ensemble.rows.parquet")
    pio.write_text(data_dir / WEIGHTS_PATH, json.dumps(w, indent=1))
    return probs, w


def pixel_features(data_dir: str | os.PathLike[str], uids: Sequence[str]) -> pd.DataFrame:
    """:func:`radaudit.models.ood.pixel_features` of every cached image in ``uids`` order, inside its content box."""
    from radaudit.models.ood import PIXEL_FEATURES
    from radaudit.models.ood import pixel_features as features_of

    data_dir = Path(data_dir)
    boxes = pd.read_parquet(data_dir / MANIFEST_PATH, columns=["sop_instance_uid", "content_height", "content_width"])
    boxes = boxes.drop_duplicates("sop_instance_uid", keep="last").set_index("sop_instance_uid").reindex(list(uids))
    rows = []
    for uid, h, w in zip(uids, boxes["content_height"], boxes["content_width"]):
        box = None if pd.isna(h) or pd.isna(w) else (int(h), int(w))
        rows.append(features_of(cache.read(data_dir, uid, mmap=True), content=box))
    return pd.DataFrame(rows, columns=list(PIXEL_FEATURES))


def issue_inputs(data_dir: str | os.PathLike[str], uids: Sequence[str]) -> dict[str, Any]:
    """The header and pixel evidence and the near duplicates :func:`radaudit.models.audit.find_issues` takes,
    in ``uids`` order."""
    from radaudit.models.ood import header_evidence

    meta = load_training_set(data_dir).meta.set_index("sop_instance_uid").reindex(list(uids))
    return {"header_reasons": header_evidence(meta), "pixel_feats": pixel_features(data_dir, uids),
            "duplicates": load_near_duplicates(data_dir, uids)}


def audit(data_dir: str | os.PathLike[str], methods: Sequence[str], *, members: Sequence[str] | None = None,
          **options: Any) -> pd.DataFrame:
    """Score every image with cleanlab on the ensemble; write ``audit/label_issues.parquet``.

    Args:
        methods: Whose embeddings feed the out-of-domain evidence.
        members: Whose own probabilities must agree with a mislabel's suggestion (default: the
            methods the ensemble gave a weight, see :func:`combine`).
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


def load_audit_summary(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What :func:`audit` found beside the table: ``warnings``, ``heads_agreement``, ``ood_threshold``..."""
    path = Path(data_dir) / SUMMARY_PATH
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def report(data_dir: str | os.PathLike[str], *, vocabulary: Sequence[str] | None = None,
           **options: Any) -> ReportFiles:
    """Write the radiologists' CSV and HTML from the label issues."""
    from radaudit.models.report import write_report

    data_dir = Path(data_dir)
    issues = pd.read_parquet(data_dir / ISSUES_PATH)
    ts = load_training_set(data_dir, vocabulary)
    warnings = load_audit_summary(data_dir).get("warnings", [])
    return write_report(issues, ts.meta, data_dir, class_names=list(ts.vocabulary), warnings=warnings, **options)


def _save_array(array: np.ndarray, path: Path) -> None:
    buffer = _io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    pio.write_bytes(path, buffer.getvalue())


def _array_digest(array: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def _save_rows(array: np.ndarray, path: Path, rows: pd.DataFrame, rows_path: Path) -> None:
    """Write an array and the table of its rows, each atomically; the table carries the array's
    digest, so a crash between the two (a new array beside the old rows) is found on reading
    instead of pairing features with the wrong images."""
    _save_array(array, path)
    pio.write_parquet_frame(rows.assign(array_digest=_array_digest(array)), rows_path)


def _load_rows(path: Path, rows_path: Path, *, mmap: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """An array written by ``_save_rows`` and its rows (without the digest); ``mmap``: memory-mapped,
    for callers that take a subset of the rows of a large array.

    Raises:
        ValueError: If the two files come from different runs (an interrupted write).
    """
    array, rows = np.load(path, mmap_mode="r" if mmap else None), pd.read_parquet(rows_path)
    stored = rows.pop("array_digest") if "array_digest" in rows else None  # older files have none
    if len(rows) != array.shape[0] or (stored is not None and len(rows) and stored.iloc[0] != _array_digest(array)):
        raise ValueError(f"{path} and {rows_path.name} were written by different runs (one was interrupted): "
                         f"re-materialize the asset that writes {path.parent.name}/{path.name}")
    return array, rows


def evaluate_against_truth(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str]) -> dict[str, float]:
    """Score the audit against a synthetic export's ground truth.

    A label counts as truly wrong when the pipeline's recorded label (after mapping) is not null,
    the image is in domain, and the label differs from the true region: what the audit can see.

    Returns:
        ``mislabel_precision``, ``mislabel_recall`` (of the ``mislabel`` flags),
        ``mislabel_precision_at_k`` (k = number truly wrong, ranked by label quality),
        ``ood_auroc``, ``ood_precision``, ``ood_recall``, ``missing_suggestion_accuracy``,
        and the counts behind them.
    """
    data_dir = Path(data_dir)
    return score_issues(pd.read_parquet(data_dir / ISSUES_PATH), load_training_set(data_dir), truth_path)


def evaluate_method(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], method: str, *,
                    evidence: dict[str, Any] | None = None, **options: Any) -> dict[str, float]:
    """:func:`evaluate_against_truth` of one method's own audit (its probabilities and embeddings alone).

    Args:
        evidence: :func:`issue_inputs` for the cached images (computed when None).
        options: For :func:`radaudit.models.audit.find_issues`; nothing is written.
    """
    from radaudit.models.audit import find_issues

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    probs, rows = load_probabilities(data_dir, method)
    uids = rows["sop_instance_uid"].tolist()
    if uids != ts.uids:
        raise ValueError(f"oof_probabilities/{method} covers other images than the image cache: re-materialize it")
    evidence = issue_inputs(data_dir, uids) if evidence is None else evidence
    issues = find_issues(probs.astype(np.float64), rows["label"].to_numpy(), load_embeddings(data_dir, method, uids),
                         sop_instance_uids=uids, out_of_fold=rows["out_of_fold"].to_numpy(), **evidence, **options)
    return score_issues(issues, ts, truth_path)


def evaluate_methods(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], methods: Sequence[str],
                     **options: Any) -> dict[str, dict[str, float]]:
    """:func:`evaluate_method` for each method and :func:`evaluate_against_truth` for the ensemble."""
    data_dir = Path(data_dir)
    evidence = issue_inputs(data_dir, load_training_set(data_dir).uids)
    scores = {m: evaluate_method(data_dir, truth_path, m, evidence=evidence, **options) for m in methods}
    scores["ensemble"] = evaluate_against_truth(data_dir, truth_path)
    return scores


def score_issues(issues: pd.DataFrame, ts: TrainingSet, truth_path: str | os.PathLike[str], *,
                 top: int = 20) -> dict[str, float]:
    """The figures of :func:`evaluate_against_truth` for one label-issues table.

    ``mislabel_precision_at_k``: of the k labelled images not reported out of domain with the
    lowest label quality (k = the number truly wrong), the share truly wrong: the mislabel list
    a radiologist reads. ``top_precision``: of the ``top`` highest-ranked flags, the share whose
    kind is true (an out-of-domain image flagged ``out_of_domain``, a wrong label ``mislabel``, a
    null label of an in-domain image ``missing_label``, a copy ``near_duplicate``).

    When the truth has ``duplicate_of`` (:func:`duplicate_scores`), the duplicate figures too.
    """
    from sklearn.metrics import roc_auc_score

    path = Path(truth_path)
    truth = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)).set_index("sop_instance_uid")
    issues = issues.set_index("sop_instance_uid").loc[ts.uids]
    true_idx = truth_labels(ts, truth_path)
    is_ood = pd.Series(ts.uids).map(truth["is_ood"]).fillna(False).to_numpy(dtype=bool)
    labelled = (ts.labels >= 0) & ~is_ood
    wrong = labelled & (ts.labels != true_idx)
    kind = issues["issue"].to_numpy(dtype=object)
    flagged = kind == "mislabel"
    ood_flag = kind == "out_of_domain"
    k = int(wrong.sum())
    quality = np.where((ts.labels >= 0) & ~ood_flag, issues["label_quality"].to_numpy(dtype=float), np.inf)
    top_k = np.argsort(np.nan_to_num(quality, nan=np.inf), kind="stable")[:k]
    missing = (ts.labels < 0) & ~is_ood
    suggested = issues["suggested_region"].to_numpy()  # class index
    dup = duplicate_scores(issues, truth, ts.uids) if "duplicate_of" in truth.columns else {}
    copy_right = dup.pop("_right", np.zeros(len(ts.uids), dtype=bool))
    real = np.where(kind == "out_of_domain", is_ood,
                    np.where(kind == "mislabel", wrong, np.where(kind == "missing_label", missing,
                                                                 (kind == "near_duplicate") & copy_right)))
    flags = np.flatnonzero(pd.notna(kind))
    ranked = flags[np.argsort(issues["rank"].to_numpy()[flags], kind="stable")][:top]

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    return {
        "images": len(ts.uids), "truly_mislabelled": k, "flagged_mislabel": int(flagged.sum()),
        "mislabel_precision": ratio(int((flagged & wrong).sum()), int(flagged.sum())),
        "mislabel_recall": ratio(int((flagged & wrong).sum()), k),
        "mislabel_precision_at_k": ratio(int(wrong[top_k].sum()), k),
        f"top{top}_precision": ratio(int(real[ranked].sum()), int(ranked.size)),
        "out_of_domain": int(is_ood.sum()), "flagged_out_of_domain": int(ood_flag.sum()),
        "ood_auroc": float(roc_auc_score(is_ood, issues["ood_score"])) if 0 < is_ood.sum() < len(is_ood) else float("nan"),
        "ood_precision": ratio(int((ood_flag & is_ood).sum()), int(ood_flag.sum())),
        "ood_recall": ratio(int((ood_flag & is_ood).sum()), int(is_ood.sum())),
        "ood_flagged_as_mislabel": int((flagged & is_ood).sum()),
        "missing_labels": int(missing.sum()),
        "missing_suggestion_accuracy": ratio(int((suggested[missing] == true_idx[missing]).sum()), int(missing.sum())),
        **dup,
    }


def duplicate_scores(issues: pd.DataFrame, truth: pd.DataFrame, uids: Sequence[str]) -> dict[str, Any]:
    """The near-duplicate figures of an issues table (indexed by UID) against the synthetic truth.

    A reported copy (``duplicate_of`` set) is right when it and its reported original are one
    radiograph in the truth (the same ``duplicate_of`` root). A true copy is found when it and
    its true original end up in one reported group. A hard negative (``hard_negative_of``) is
    wrongly grouped when it lands in its look-alike's group.

    Returns:
        ``duplicates``, ``duplicates_reported``, ``duplicate_precision`` (in-domain rows),
        ``duplicate_recall``, ``duplicate_recall_<kind>``, ``hard_negatives``,
        ``hard_negatives_grouped``, ``duplicates_reported_out_of_domain`` (copies among
        out-of-domain images, e.g. identical test patterns), and ``_right`` (per UID).
    """
    truth_root = {u: (d if isinstance(d, str) else u) for u, d in truth["duplicate_of"].items()}
    reported = issues.reindex(list(uids))["duplicate_of"] if "duplicate_of" in issues else pd.Series(None, index=uids)
    root = {u: (d if isinstance(d, str) else u) for u, d in zip(uids, reported)}
    is_ood = pd.Series(list(uids)).map(truth["is_ood"]).fillna(False).to_numpy(dtype=bool)
    has = np.array([isinstance(d, str) for d in reported], dtype=bool)
    right = np.array([h and truth_root.get(u) is not None and truth_root.get(u) == truth_root.get(d)
                      for u, d, h in zip(uids, reported, has)], dtype=bool)
    live = set(uids)
    copies = truth[truth["duplicate_of"].notna() & truth.index.isin(live) & truth["duplicate_of"].isin(live)]
    found = {u: root.get(u) == root.get(d) for u, d in copies["duplicate_of"].items()}
    out: dict[str, Any] = {
        "duplicates": len(copies), "duplicates_reported": int((has & ~is_ood).sum()),
        "duplicate_precision": float(right[has & ~is_ood].mean()) if (has & ~is_ood).any() else float("nan"),
        "duplicate_recall": float(np.mean(list(found.values()))) if found else float("nan"),
    }
    for kind, rows in copies.groupby("duplicate_kind"):
        out[f"duplicate_recall_{kind}"] = float(np.mean([found[u] for u in rows.index]))
    if "hard_negative_of" in truth.columns:
        negs = truth[truth["hard_negative_of"].notna() & truth.index.isin(live) & truth["hard_negative_of"].isin(live)]
        out["hard_negatives"] = len(negs)
        out["hard_negatives_grouped"] = int(sum(root.get(u) == root.get(d) for u, d in negs["hard_negative_of"].items()))
    out["duplicates_reported_out_of_domain"] = int((has & is_ood).sum())
    out["_right"] = right
    return out


def evaluate_label_fractions(data_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str],
                             methods: Sequence[str], *, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                             test_share: float = 0.3, seed: int = 0,
                             with_predictions: bool = False) -> LabelFractionScores | tuple[
                                 LabelFractionScores, tuple[np.ndarray, np.ndarray]]:
    """Linear-eval accuracy with a fraction of the labels, per method and for the ensemble (the paper's protocol).

    Heads are trained on the *true* regions of a patient-grouped training split of the synthetic
    export's in-domain images and scored on the rest: this measures the features, not the noise.

    Returns:
        ``{method or "ensemble": {fraction: accuracy}}``; with ``with_predictions``, also the test
        split's true classes and the ensemble's predictions with the largest fraction, as
        ``(scores, (y_true, y_pred))`` (for a confusion matrix on clean labels).
    """
    from radaudit.models.heads import check_groups, group_stratified_folds, label_fraction_probabilities

    data_dir = Path(data_dir)
    ts = load_training_set(data_dir)
    y = truth_labels(ts, truth_path)
    usable = np.flatnonzero(y >= 0)
    n_folds = max(2, round(1 / test_share))
    groups = check_groups(ts.groups[usable], usable.size)
    fold = group_stratified_folds(y[usable], groups, n_splits=n_folds, seed=seed)
    train, test = usable[fold != 0], usable[fold == 0]
    per_method = {}
    for m in methods:
        x = load_embeddings(data_dir, m, ts.uids)
        per_method[m] = label_fraction_probabilities(x[train], y[train], x[test], fractions=fractions,
                                                     n_classes=len(ts.vocabulary), seed=seed)
    scores: dict[str, dict[float, float]] = {
        m: {f: float((p.argmax(1) == y[test]).mean()) for f, p in probs.items()} for m, probs in per_method.items()
    }
    ensemble = {f: np.mean([per_method[m][f] for m in methods], axis=0).argmax(1) for f in fractions}
    scores["ensemble"] = {f: float((pred == y[test]).mean()) for f, pred in ensemble.items()}
    return (scores, (y[test], ensemble[max(fractions)])) if with_predictions else scores
