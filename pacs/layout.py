"""Every path under a data dir, relative to it: the one place its layout is declared.

The ingest (:mod:`radaudit.pacs`) and the stages (:mod:`radaudit.pipelines.stages`) read and write
these; :mod:`radaudit.models` and :mod:`radaudit.augment` never see a data dir::

    index/dicom_index.parquet        one row per DICOM file found (header facts, pseudonymized)
    index/ingest_errors.parquet      files that could not be indexed or cached, with the reason
    cache/manifest.parquet           one row per cached image (source, geometry, parameters)
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
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CACHE_DIR", "CACHE_IMAGES_DIR", "DAGSTER_DIR", "DUPLICATES_PATH", "DUPLICATE_STATE_DIR", "EMBED_DIR",
    "ERRORS_PATH", "FOLDS_FILE", "HOLDER_FILE", "INDEX_PATH", "ISSUES_PATH", "KEY_FILE", "LABELS_PATH", "LOCK_FILE",
    "MANIFEST_PATH", "MODELS_DIR", "OVERRIDES_PATH", "PIXEL_FEATURES_PATH", "PROB_DIR", "REPORT_CSV", "REPORT_DIR",
    "REPORT_HTML", "REPORT_IMAGES_DIR", "REVIEW_DIR", "SUMMARY_PATH", "THUMB_DIR", "VOCABULARY_PATH", "WEIGHTS_PATH",
    "checkpoint_dir", "method_dir",
]

INDEX_PATH = Path("index") / "dicom_index.parquet"
ERRORS_PATH = Path("index") / "ingest_errors.parquet"
CACHE_DIR = Path("cache")
CACHE_IMAGES_DIR = CACHE_DIR / "images"
MANIFEST_PATH = CACHE_DIR / "manifest.parquet"
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


def method_dir(data_dir: str | os.PathLike[str], method: str) -> Path:
    """The folder of one method's backbones and label folds."""
    return Path(data_dir) / MODELS_DIR / method


def checkpoint_dir(data_dir: str | os.PathLike[str], method: str, fold: int | None = None) -> Path:
    """Where a method's backbone checkpoints go; ``fold``: the backbone cross-fitted without that fold."""
    root = method_dir(data_dir, method)
    return (root if fold is None else root / f"fold{fold}") / "checkpoints"
