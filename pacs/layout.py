"""Every path under a data dir, relative to it: the one place its layout is declared.

The ingest (:mod:`radaudit.pacs`) and the stages (:mod:`radaudit.pipelines.stages`) read and write
these; :mod:`radaudit.models` and :mod:`radaudit.augment` never see a data dir::

    index/dicom_index/<p>.parquet    one row per DICOM file found (header facts, pseudonymized)
    index/ingest_errors/<p>.parquet  files that could not be indexed or cached, with the reason
    cache/manifest/<p>.parquet       one row per cached image (source, geometry, parameters)
    index/locks/<p>.lock, .holder    the lock of one partition's ingest, and who holds it
    cache/images/<hh>/<uid>.npy      the cached images (uint8, 2-D)
    labels/region_labels.parquet     the recorded region of each image
    labels/vocabulary.json           the regions the heads predict
    labels/label_overrides.parquet   the radiologists' verdicts, read from review/
    review/                          the reviewers' CSV files
    secrets/pseudonym.key            the key of the keyed hash (pseudonyms)
    models/<method>/checkpoints/     a method's backbone checkpoints (models/<method>/fold<k>/... when cross-fitted)
    models/<method>/label_folds.parquet
    embeddings/<method>.npy          frozen features, rows paired with <method>.rows.parquet
    probabilities/<name>.npy         out-of-fold probabilities (and the ensemble's, its weights)
    audit/label_issues.parquet       one row per image: the findings
    audit/near_duplicates.parquet    near-duplicate groups
    audit/summary.json               the audit's figures and warnings
    reports/                         the radiologists' CSV and HTML
    reports/thumbnails/<digest>.png  small PNGs of the CSV's rows (named by a digest of the pixels, no identifier)
    reports/images/<digest>.png      the HTML's images at the cache's size, lossless, loaded by its large view
    dagster/                         the CLI's Dagster instance (runs, event logs)
    .radaudit.lock, .radaudit.holder the lock one run at a time holds, and who holds it

``<p>`` is an ingest partition (:mod:`radaudit.pacs.partitions`): one top-level folder of the export,
named by a keyed hash of the folder's name, or ``top-level-files`` for the files directly in the
export's root. Each table is one Parquet file per partition, read as one table by
:func:`radaudit.pacs.index.read_index`, ``read_errors`` and ``read_manifest``; the ingests of two
partitions write at the same time. Data dirs of earlier versions hold one file per table
(``LEGACY_TABLES``); the next ingest splits them (:func:`radaudit.pacs.ingest.migrate_legacy_layout`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CACHE_DIR", "CACHE_IMAGES_DIR", "DAGSTER_DIR", "DUPLICATES_PATH", "DUPLICATE_STATE_DIR", "EMBED_DIR",
    "ERRORS_DIR", "FOLDS_FILE", "HOLDER_FILE", "INDEX_DIR", "ISSUES_PATH", "KEY_FILE", "LABELS_PATH", "LEGACY_TABLES",
    "LOCK_FILE", "MANIFEST_DIR", "MODELS_DIR", "OVERRIDES_PATH", "PARTITION_LOCK_DIR", "PARTITIONED_TABLES",
    "PIXEL_FEATURES_PATH", "PROB_DIR", "REPORT_CSV", "REPORT_DIR", "REPORT_HTML", "REPORT_IMAGES_DIR", "REVIEW_DIR",
    "SUMMARY_PATH", "THUMB_DIR", "VOCABULARY_PATH", "WEIGHTS_PATH", "checkpoint_dir", "method_dir", "partition_file",
]

INDEX_DIR = Path("index") / "dicom_index"
ERRORS_DIR = Path("index") / "ingest_errors"
PARTITION_LOCK_DIR = Path("index") / "locks"
CACHE_DIR = Path("cache")
CACHE_IMAGES_DIR = CACHE_DIR / "images"
MANIFEST_DIR = CACHE_DIR / "manifest"
# The three tables the ingest writes, one file per partition each.
PARTITIONED_TABLES = (INDEX_DIR, ERRORS_DIR, MANIFEST_DIR)
# The same tables in data dirs of earlier versions: one file each, for the whole export.
LEGACY_TABLES = {INDEX_DIR: Path("index") / "dicom_index.parquet", ERRORS_DIR: Path("index") / "ingest_errors.parquet",
                 MANIFEST_DIR: CACHE_DIR / "manifest.parquet"}
LABELS_PATH = Path("labels") / "region_labels.parquet"
VOCABULARY_PATH = Path("labels") / "vocabulary.json"
OVERRIDES_PATH = Path("labels") / "label_overrides.parquet"
REVIEW_DIR = Path("review")
KEY_FILE = Path("secrets") / "pseudonym.key"
MODELS_DIR = Path("models")
FOLDS_FILE = "label_folds.parquet"
EMBED_DIR = Path("embeddings")
PROB_DIR = Path("probabilities")
WEIGHTS_PATH = PROB_DIR / "ensemble.weights.json"
ISSUES_PATH = Path("audit") / "label_issues.parquet"
DUPLICATES_PATH = Path("audit") / "near_duplicates.parquet"
DUPLICATE_STATE_DIR = Path("audit") / "duplicate_state"  # fingerprints and pairs a nightly run reuses
SUMMARY_PATH = Path("audit") / "summary.json"
PIXEL_FEATURES_PATH = Path("audit") / "pixel_features.parquet"  # by cache key, reused by the next run
REPORT_DIR = Path("reports")
REPORT_CSV = REPORT_DIR / "mislabel_report.csv"
REPORT_HTML = REPORT_DIR / "mislabel_report.html"
THUMB_DIR = REPORT_DIR / "thumbnails"
REPORT_IMAGES_DIR = REPORT_DIR / "images"
DAGSTER_DIR = Path("dagster")
LOCK_FILE = ".radaudit.lock"
HOLDER_FILE = ".radaudit.holder"


def partition_file(data_dir: str | os.PathLike[str], table: Path, partition: str) -> Path:
    """One partition's file of a partitioned table (``INDEX_DIR``, ``ERRORS_DIR`` or ``MANIFEST_DIR``)."""
    return Path(data_dir) / table / f"{partition}.parquet"


def method_dir(data_dir: str | os.PathLike[str], method: str) -> Path:
    """The folder of one method's backbones and label folds."""
    return Path(data_dir) / MODELS_DIR / method


def checkpoint_dir(data_dir: str | os.PathLike[str], method: str, fold: int | None = None) -> Path:
    """Where a method's backbone checkpoints go; ``fold``: the backbone cross-fitted without that fold."""
    root = method_dir(data_dir, method)
    return (root if fold is None else root / f"fold{fold}") / "checkpoints"
