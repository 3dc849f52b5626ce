"""The audit's stages: the one layer that reads and writes the data dir.

Plain Python (no Dagster), usable from a notebook; the Dagster assets, the CLI and the benchmarks
call these::

    from radaudit.models.train import PretrainConfig
    from radaudit.pipelines import stages

    ts = stages.load_training_set("data")
    stages.train_backbone("data", "simclr", PretrainConfig(epochs=5))

- :mod:`.data`: the live instances, the training set, labels, folds and the audit's evidence
- :mod:`.store`: the digest-paired array store (embeddings, probabilities)
- :mod:`.steps`: the stage functions (backbone, embeddings, heads, near duplicates, ensemble, audit, report)
- :mod:`.truth`: scoring against a synthetic export's ground truth
- :mod:`.reports`: the radiologists' CSV and HTML

:mod:`radaudit.pacs.layout` names every file under the data dir. :mod:`radaudit.models` and
:mod:`radaudit.augment` take arrays, tensors and frames from here and never see the data dir.
"""

from __future__ import annotations

from radaudit.pipelines.stages.data import (MAX_TIED_PATIENTS, TrainingSet, cross_fit_folds, fold_groups,
                                            head_settings, issue_inputs, label_folds, live_index,
                                            load_audit_summary, load_near_duplicates, load_overrides,
                                            load_training_set, map_labels, pixel_features, read_vocabulary)
from radaudit.pipelines.stages.duplicates import cache_fingerprints, duplicate_inputs, find_near_duplicates
from radaudit.pipelines.stages.steps import (Log, audit, combine, compute_embeddings, compute_oof, report,
                                             train_backbone)
from radaudit.pipelines.stages.store import (load_embeddings, load_probabilities, load_rows, save_embeddings,
                                             save_rows)
from radaudit.pipelines.stages.truth import (LabelFractionScores, aligned_probabilities, copy_links, device_table,
                                             duplicate_groups, duplicate_scores, evaluate_against_truth,
                                             evaluate_label_fractions, evaluate_method, evaluate_methods, f1_score,
                                             pair_scores, precision_at_k, read_truth, report_order, score_issues,
                                             truth_labels, truth_status)

__all__ = [
    "Log", "LabelFractionScores", "MAX_TIED_PATIENTS", "TrainingSet", "aligned_probabilities", "audit",
    "cache_fingerprints", "combine", "compute_embeddings", "compute_oof", "copy_links", "cross_fit_folds",
    "device_table", "duplicate_groups", "duplicate_inputs", "duplicate_scores", "evaluate_against_truth",
    "evaluate_label_fractions", "evaluate_method", "evaluate_methods", "f1_score", "find_near_duplicates",
    "fold_groups", "head_settings", "issue_inputs", "label_folds", "live_index", "load_audit_summary",
    "load_embeddings", "load_near_duplicates", "load_overrides", "load_probabilities", "load_rows",
    "load_training_set", "map_labels", "pair_scores", "pixel_features", "precision_at_k", "read_truth",
    "read_vocabulary", "report", "report_order", "save_embeddings", "save_rows", "score_issues", "train_backbone",
    "truth_labels", "truth_status",
]
