"""Reading the data dir's inputs: the training set, its labels and folds, and the audit's evidence.

One live-instance filter (:func:`live_index`) decides which index rows the pipeline works on, and
:func:`load_training_set` puts the cached ones in a fixed order with their labels and patient keys.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radaudit.pacs import cache
from radaudit.pacs import io as pio
from radaudit.pacs.index import read_manifest
from radaudit.pacs.layout import (DUPLICATES_PATH, FOLDS_FILE, LABELS_PATH, OVERRIDES_PATH, PIXEL_FEATURES_PATH, PROB_DIR,
                                  SUMMARY_PATH, VOCABULARY_PATH, method_dir)
from radaudit.pipelines.stages.store import cache_keys

if TYPE_CHECKING:
    from radaudit.augment.dataset import CacheDataset

__all__ = ["MAX_TIED_PATIENTS", "TrainingSet", "cross_fit_folds", "fold_groups", "head_settings", "issue_inputs",
           "label_folds", "live_index", "load_audit_summary", "load_near_duplicates", "load_overrides",
           "load_training_set", "map_labels", "pixel_features", "read_vocabulary"]


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
    path = Path(data_dir) / OVERRIDES_PATH
    return pd.read_parquet(path) if path.exists() else None


def live_index(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The index rows the pipeline works on (:func:`radaudit.pacs.index.live_rows`), of every ingest partition."""
    from radaudit.pacs.index import live_rows, read_index

    return live_rows(read_index(data_dir))


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
    cached = set(read_manifest(data_dir)["sop_instance_uid"])
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


def label_folds(ts: TrainingSet, n_folds: int, seed: int = 0) -> np.ndarray:
    """The split of a cross-fitted label-trained method: a fold per labelled image, -1 for null labels.

    Region-stratified and grouped by patient (:func:`radaudit.models.heads.group_stratified_folds`).
    """
    from radaudit.models.heads import group_stratified_folds
    from radaudit.models.validation import check_groups

    return group_stratified_folds(ts.labels, check_groups(ts.groups, len(ts.uids)), n_splits=n_folds, seed=seed)


def cross_fit_folds(data_dir: str | os.PathLike[str], method: str) -> pd.DataFrame | None:
    """The label folds a cross-fitted method was trained with (``sop_instance_uid``, ``fold``), or None."""
    path = method_dir(data_dir, method) / FOLDS_FILE
    return pd.read_parquet(path) if path.exists() else None


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


def load_audit_summary(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What :func:`audit` found beside the table: ``warnings``, ``heads_agreement``, ``ood_threshold``..."""
    path = Path(data_dir) / SUMMARY_PATH
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def pixel_features(data_dir: str | os.PathLike[str], uids: Sequence[str], *, log: Any | None = None) -> pd.DataFrame:
    """:func:`radaudit.models.ood.pixel_features` of every cached image in ``uids`` order, inside its content box.

    The features are stored by cache key (``audit/pixel_features.parquet``): an image whose cached
    pixels are unchanged keeps its row, so a nightly run reads only the night's images.
    """
    from radaudit.models.ood import PIXEL_COLUMNS, PIXEL_FEATURES_VERSION
    from radaudit.models.ood import pixel_features as features_of

    data_dir = Path(data_dir)
    columns = list(PIXEL_COLUMNS)
    ids = pd.Index([f"{u}|{k}" for u, k in zip(uids, cache_keys(data_dir, uids))])
    out = pd.DataFrame(np.nan, index=ids, columns=columns)
    stored_path = data_dir / PIXEL_FEATURES_PATH
    if stored_path.exists():
        stored = pd.read_parquet(stored_path)
        if {"id", "version", *columns} <= set(stored.columns):
            stored = stored[stored["version"] == PIXEL_FEATURES_VERSION].drop_duplicates("id", keep="last")
            out.update(stored.set_index("id")[columns])
    todo = np.flatnonzero(out[columns[0]].isna().to_numpy())
    if todo.size:
        boxes = read_manifest(data_dir)[["sop_instance_uid", "content_height", "content_width"]]
        boxes = boxes.drop_duplicates("sop_instance_uid", keep="last").set_index("sop_instance_uid")
        boxes = boxes.reindex([uids[i] for i in todo])
        rows = []
        for uid, h, w in zip(boxes.index, boxes["content_height"], boxes["content_width"]):
            box = None if pd.isna(h) or pd.isna(w) else (int(h), int(w))
            rows.append(features_of(cache.read(data_dir, uid, mmap=True), content=box))
        out.iloc[todo] = pd.DataFrame(rows, columns=columns).to_numpy()
        pio.write_parquet_frame(out.rename_axis("id").reset_index().assign(version=PIXEL_FEATURES_VERSION),
                                stored_path)
    if log is not None:
        log(f"pixel evidence: {todo.size} images read, {len(ids) - todo.size} kept from the last run")
    return out.reset_index(drop=True)


def issue_inputs(data_dir: str | os.PathLike[str], uids: Sequence[str]) -> dict[str, Any]:
    """The header and pixel evidence and the near duplicates :func:`radaudit.models.audit.find_issues` takes,
    in ``uids`` order."""
    from radaudit.models.ood import header_evidence

    meta = load_training_set(data_dir).meta.set_index("sop_instance_uid").reindex(list(uids))
    return {"header_reasons": header_evidence(meta), "pixel_feats": pixel_features(data_dir, uids),
            "duplicates": load_near_duplicates(data_dir, uids)}
