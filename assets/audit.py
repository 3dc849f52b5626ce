"""Audit assets: linear heads per method, the ensemble, cleanlab's label issues and the report."""

import base64
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from radaudit.assets.guard import guarded
from radaudit.assets.models import METHODS, _png_markdown
from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.pacs.layout import ISSUES_PATH
from radaudit.pipelines import stages


def oof_asset(method: str) -> dg.AssetsDefinition:
    """K-fold out-of-fold probabilities of one method's linear heads."""

    @dg.asset(
        key=["oof_probabilities", method],
        deps=[dg.AssetKey(["embeddings", method]), "region_labels", "label_overrides", "near_duplicates"],
        group_name="audit", kinds={"numpy", "heads"}, description=f"Out-of-fold class probabilities of linear heads on the {method} "
        "embeddings (folds stratified by region, grouped by patient); null labels predicted by a head fit "
        "on all labels (probabilities/" + method + ".npy). A nightly run keeps the last fit while its images, labels "
        "and embeddings are unchanged, and scores the new images with its full head; full_rebuild fits again.",
    )
    def oof(context: dg.AssetExecutionContext, radaudit: RadauditConfig, audit: AuditConfig) -> dg.MaterializeResult:
        with guarded(radaudit, f"oof_probabilities/{method}"):
            result = stages.compute_oof(radaudit.data_dir, method, n_splits=audit.n_splits, seed=audit.seed,
                                        l2=audit.head_l2, repeats=audit.head_repeats,
                                        reuse=not radaudit.full_rebuild, log=context.log.info)
            labelled = result.fold >= 0
            acc = float((result.probabilities[labelled].argmax(1) == _labels(radaudit, method)[labelled]).mean())
            l2 = stages.head_settings(radaudit.data_dir, method)["l2"]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(result.fold), "labelled": int(labelled.sum()),
            "oof_accuracy_vs_recorded": round(acc, 4), "rare_classes": str(list(result.rare_classes)),
            "head_l2": l2,
        })

    return oof


def _methods(audit: AuditConfig) -> list[str]:
    """The configured methods, checked against the ones that have assets."""
    unknown = sorted(set(audit.methods) - set(METHODS))
    if unknown or not audit.methods:
        raise dg.Failure(f"audit.methods must name some of {list(METHODS)}, got {audit.methods}", allow_retries=False)
    return list(audit.methods)


def _labels(radaudit: RadauditConfig, method: str) -> np.ndarray:
    return stages.load_probabilities(radaudit.data_dir, method)[1]["label"].to_numpy()


@dg.asset(
    deps=["image_cache"], group_name="audit", kinds={"parquet"},
    description="Groups of images that are the same radiograph: identical pixels, re-encoded or re-exposed copies, "
    "copies under another patient (audit/near_duplicates.parquet; radaudit.pacs.duplicates). The heads' folds keep a "
    "group on one side, and the report lists the copies as near_duplicate. A nightly run fingerprints, searches and "
    "verifies only the new images (audit/duplicate_state/); full_rebuild starts from nothing.",
)
def near_duplicates(context: dg.AssetExecutionContext, radaudit: RadauditConfig) -> dg.MaterializeResult:
    """Find and group the near duplicates among the cached images."""
    with guarded(radaudit, "near_duplicates"):
        groups = stages.find_near_duplicates(radaudit.data_dir, log=context.log.info, full_rebuild=radaudit.full_rebuild)
        copies = groups[groups["duplicate_of"].notna()]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(groups), "groups": int(groups["group"].nunique()),
            "copies": len(copies), "copies_exact": int(copies["exact"].sum()),
            "copies_under_another_patient": int(copies["other_patient"].sum()),
        })


@dg.asset(
    deps=[dg.AssetKey(["oof_probabilities", m]) for m in METHODS], group_name="audit",
    description="The methods' combined class probabilities (probabilities/ensemble.npy).",
)
def ensemble_probabilities(radaudit: RadauditConfig, audit: AuditConfig) -> dg.MaterializeResult:
    """Mean of the methods' probabilities, weighted as configured."""
    with guarded(radaudit, "ensemble_probabilities"):
        from radaudit.models.heads import confusion_matrix_png

        methods = _methods(audit)
        probs, weights = stages.combine(radaudit.data_dir, methods, weights=audit.ensemble_weights,
                                        drop_below=audit.ensemble_drop_below)
        rows = stages.load_probabilities(radaudit.data_dir, "ensemble")[1]
        labelled = rows["label"].to_numpy() >= 0
        y, pred = rows["label"].to_numpy()[labelled], probs[labelled].argmax(1)
        names = list(stages.load_training_set(radaudit.data_dir).vocabulary)
        truth = {}
        if audit.truth_path:
            scores, (y_true, y_clean) = stages.evaluate_label_fractions(radaudit.data_dir, audit.truth_path, methods,
                                                                       seed=audit.seed, with_predictions=True)
            truth = {f"linear_eval/{m}@{int(f * 100)}%": round(a, 4) for m, by in scores.items() for f, a in by.items()}
            truth["confusion_matrix_clean_test"] = _png_markdown(confusion_matrix_png(y_true, y_clean, names),
                                                                 "confusion matrix on the true regions of a held-out split")
        return dg.MaterializeResult(metadata={
            **truth,
            "dagster/row_count": int(probs.shape[0]), "weights": audit.ensemble_weights,
            **{f"weight/{m}": round(w, 4) for m, w in weights.items()},
            "accuracy_vs_recorded": round(float((pred == y).mean()), 4) if labelled.any() else None,
            # Out-of-fold predictions against the recorded labels: label noise shows up off the diagonal.
            "confusion_matrix": _png_markdown(confusion_matrix_png(y, pred, names), "confusion matrix vs recorded labels"),
        })


@dg.asset(
    deps=["ensemble_probabilities", "label_overrides", "near_duplicates"] + [dg.AssetKey(["embeddings", m]) for m in METHODS],
    group_name="audit",
    description="cleanlab label quality, suspected mislabels, out-of-domain score and suggested regions for "
    "every image (audit/label_issues.parquet).",
)
def label_issues(context: dg.AssetExecutionContext, radaudit: RadauditConfig,
                 audit: AuditConfig) -> dg.MaterializeResult:
    """Find label issues on the ensemble's out-of-sample probabilities."""
    with guarded(radaudit, "label_issues"):
        from radaudit.models.audit import ISSUE_KINDS

        issues = stages.audit(radaudit.data_dir, _methods(audit), ood_threshold=audit.ood_threshold, seed=audit.seed,
                              max_mislabel_fraction=audit.max_mislabel_fraction,
                              flag_count=audit.flag_count)
        counts = issues["issue"].value_counts().to_dict()
        for warning in issues.attrs["warnings"]:
            context.log.warning(warning)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(issues), **{f"n_{k}": int(counts.get(k, 0)) for k in ISSUE_KINDS},
            "cleanlab_issues": issues.attrs["cleanlab_issues"],
            "estimated_wrong_labels": issues.attrs["estimated_wrong_labels"],
            "heads_agreement": round(float(issues.attrs["heads_agreement"]), 4),
            "warnings": "\n".join(issues.attrs["warnings"]) or "none",
        })


@dg.asset(
    deps=["label_issues"], group_name="audit",
    description="The radiologists' report: reports/mislabel_report.csv (most suspect first) and an HTML gallery "
    "reports/mislabel_report.html (thumbnails inlined, large views in reports/images/: no server needed).",
    check_specs=[
        dg.AssetCheckSpec("schema", asset="mislabel_report", description="The CSV has the documented columns."),
        dg.AssetCheckSpec("ranks_sorted", asset="mislabel_report", description="Ranks run 1, 2, ... in file order."),
        dg.AssetCheckSpec("flag_fraction", asset="mislabel_report",
                          description="The fraction of images flagged is within the configured bounds."),
    ],
)
def mislabel_report(context: dg.AssetExecutionContext, radaudit: RadauditConfig, audit: AuditConfig):
    """Write the CSV and HTML report and check them."""
    with guarded(radaudit, "mislabel_report"):
        from radaudit.models.audit import flag_fraction

        files = stages.report(radaudit.data_dir, include_accession=audit.include_accession,
                              top_html=audit.report_top_html, thumbnail=audit.report_thumbnail)
        csv = pd.read_csv(files.csv_path, encoding="utf-8-sig")
        issues = pd.read_parquet(radaudit.data_path / ISSUES_PATH)
        fraction = flag_fraction(issues)
        preview = csv.head(15)[[c for c in ("rank", "recorded_region", "suggested_region", "suggested_probability",
                                            "label_quality", "issue") if c in csv.columns]]
        if "thumbnail" in csv.columns:
            preview.insert(1, "image", [_small_thumbnail(files.csv_path.parent, t) for t in csv["thumbnail"].head(15)])
        warnings = stages.load_audit_summary(radaudit.data_dir).get("warnings", [])
        for warning in warnings:
            context.log.warning(warning)
        yield dg.MaterializeResult(metadata={
            "warnings": "\n".join(warnings) or "none",
            "dagster/row_count": len(csv), "csv": dg.MetadataValue.path(str(files.csv_path.resolve())),
            "html": dg.MetadataValue.url(files.html_path.resolve().as_uri()),
            "flagged_fraction": round(fraction, 4), "top_flags": dg.MetadataValue.md(preview.to_markdown(index=False)
                                                                                     if len(preview) else "_none_"),
        })
        required = {"rank", "sop_instance_uid", "study_instance_uid", "recorded_region", "recorded_raw",
                    "suggested_region", "suggested_probability", "label_quality", "issue", "ood_reason",
                    "duplicate_of", "thumbnail", "source_path"}
        if audit.include_accession:
            required.add("accession_number")
        missing = sorted(required - set(csv.columns))
        yield dg.AssetCheckResult(check_name="schema", passed=not missing, metadata={"missing": str(missing)})
        yield dg.AssetCheckResult(check_name="ranks_sorted",
                                  passed=bool(csv.empty or (csv["rank"].to_numpy() == np.arange(1, len(csv) + 1)).all()))
        yield dg.AssetCheckResult(
            check_name="flag_fraction", passed=audit.min_flag_fraction <= fraction <= audit.max_flag_fraction,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"fraction": fraction, "bounds": f"[{audit.min_flag_fraction}, {audit.max_flag_fraction}]"},
        )


def _small_thumbnail(report_dir: Path, rel: object, size: int = 48) -> str:
    """A report thumbnail shrunk to ``size`` px, as an inline Markdown image ("" where there is none)."""
    import io

    from PIL import Image

    if not isinstance(rel, str) or not (report_dir / rel).is_file():
        return ""
    with Image.open(report_dir / rel) as img:
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    return f"![](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


audit_assets = [near_duplicates] + [oof_asset(m) for m in METHODS] + [ensemble_probabilities, label_issues,
                                                                   mislabel_report]
