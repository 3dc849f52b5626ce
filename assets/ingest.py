"""Ingest assets: the instance index, the ingest errors and the image cache, made in one pass."""

import dagster as dg
import pandas as pd

from radaudit.pacs.checks import check_ingest_result
from radaudit.pacs.ingest import run_ingest
from radaudit.assets.guard import guarded
from radaudit.assets.resources import RadauditConfig

GROUP = "ingest"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "dicom_index", group_name=GROUP,
            description="One row per DICOM instance: header metadata and a pseudonymized patient key "
            "(index/dicom_index.parquet). Incremental: only new or changed files are read.",
        ),
        dg.AssetSpec(
            "ingest_errors", group_name=GROUP,
            description="One row per file that could not be indexed or decoded, with stage and reason "
            "(index/ingest_errors.parquet).",
        ),
        dg.AssetSpec(
            "image_cache", group_name=GROUP,
            description="Decoded, normalized, border-cropped, upright, letterboxed uint8 images (cache/); "
            "read one with radaudit.pacs.cache.read(data_dir, sop_instance_uid).",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec("every_file_accounted_for", asset="ingest_errors",
                          description="Each discovered file is in the index or in the errors, exactly once."),
    ],
)
def ingest(context: dg.AssetExecutionContext, radaudit: RadauditConfig):
    """Scan the export, index headers, decode and cache new images."""
    with guarded(radaudit, "ingest", reads_export=True):
        result = run_ingest(radaudit.ingest_config(), progress=_progress_logger(context))
        cached = int(result.manifest["sop_instance_uid"].isin(result.index.loc[result.index["present"].astype(bool), "sop_instance_uid"]).sum())
        check_ingest_result(result.index, result.errors, cached, radaudit.export_dir)
    s = result.stats
    context.log.info(f"ingest: {s}")
    present_paths = pd.concat([result.index.loc[result.index["present"], "path_hash"],
                               result.errors.loc[result.errors["present"], "path_hash"]])
    yield dg.MaterializeResult(asset_key="dicom_index", metadata={
        "dagster/row_count": len(result.index),
        "new_files": s["new"], "changed_files": s["changed"], "unchanged_files": s["unchanged"],
        "vanished_files": s["vanished"], "written": bool(s["written"]),
        "patients": int(result.index["patient_key"].nunique()),
        "modalities": dg.MetadataValue.json(result.index["modality"].value_counts().to_dict()),
    })
    yield dg.MaterializeResult(asset_key="ingest_errors", metadata={
        "dagster/row_count": len(result.errors),
        "by_stage": dg.MetadataValue.json(result.errors["stage"].value_counts().to_dict()),
        "preview": dg.MetadataValue.md(_markdown(result.errors[["path", "stage", "severity", "reason"]].head(20))),
    })
    yield dg.MaterializeResult(asset_key="image_cache", metadata={
        "dagster/row_count": len(result.manifest), "cached_this_run": s["cached"], "pixel_errors": s["pixel_errors"],
        "size": radaudit.cache_size,
    })
    dupes = int(present_paths.duplicated().sum())
    unaccounted = s["discovered"] - len(set(present_paths) & set(result.found_hashes))
    yield dg.AssetCheckResult(
        check_name="every_file_accounted_for", asset_key="ingest_errors",
        passed=dupes == 0 and unaccounted == 0,
        metadata={"discovered": s["discovered"], "accounted": len(present_paths), "in_both": dupes,
                  "unaccounted": unaccounted},
    )


def _progress_logger(context: dg.AssetExecutionContext):
    step = {"next": 0.1}

    def report(done: int, total: int) -> None:
        if done / total >= step["next"] or done == total:
            context.log.info(f"decoded {done}/{total} images")
            step["next"] = done / total + 0.1

    return report


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_"
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return header + "\n".join("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False))
