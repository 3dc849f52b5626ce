"""Ingest assets: the instance index, the ingest errors and the image cache, made in one pass per export folder.

The three are partitioned by the export's top-level folders (:data:`EXPORT_FOLDERS`, dynamic
partitions that the sensor ``new_export_sensor`` adds), so a steward re-materializes one folder
alone and a backfill runs folder by folder, on as many workers as there are. Each partition key is
a keyed hash of its folder's name (``radaudit folders`` shows which is which on the terminal).
Every other asset reads all partitions.
"""

import dagster as dg
import pandas as pd

from radaudit.assets.guard import guarded
from radaudit.assets.resources import RadauditConfig
from radaudit.pacs.checks import check_ingest_result
from radaudit.pacs.index import read_errors, read_index, read_manifest
from radaudit.pacs.ingest import legacy_layout, migrate_legacy_layout, run_ingest

GROUP = "ingest"
EXPORT_FOLDERS = dg.DynamicPartitionsDefinition(name="export_folders")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "dicom_index", group_name=GROUP,
            description="One row per DICOM instance: header metadata and a pseudonymized patient key "
            "(index/dicom_index/<partition>.parquet). Incremental: only new or changed files are read.",
        ),
        dg.AssetSpec(
            "ingest_errors", group_name=GROUP,
            description="One row per file that could not be indexed or decoded, with stage and reason "
            "(index/ingest_errors/<partition>.parquet).",
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
    partitions_def=EXPORT_FOLDERS,
    # A backfill launches one run per folder; a run over a range of folders (the nightly job, the
    # CLI) ingests them one after another in one step.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def ingest(context: dg.AssetExecutionContext, radaudit: RadauditConfig):
    """Scan the run's export folders, index headers, decode and cache new images."""
    partitions = list(context.partition_keys)
    if legacy_layout(radaudit.data_dir):  # an earlier version's single index: split it, alone on the data dir
        with guarded(radaudit, "ingest (splitting the index by export folder)", reads_export=True):
            migrate_legacy_layout(radaudit.ingest_config())
    # Other folders' ingests run meanwhile; each folder has its own lock (radaudit.pacs.lock.partition_lock).
    with guarded(radaudit, f"ingest of {_folders(partitions)}", reads_export=True, shared=True):
        result = run_ingest(radaudit.ingest_config(), partitions=partitions, progress=_progress_logger(context))
        index, errors, manifest = read_index(radaudit.data_dir), read_errors(radaudit.data_dir), \
            read_manifest(radaudit.data_dir)
        cached = int(manifest["sop_instance_uid"].isin(index.loc[index["present"].astype(bool), "sop_instance_uid"]).sum())
        check_ingest_result(index, errors, cached, radaudit.export_dir)
    s = result.stats
    context.log.info(f"ingest of {_folders(partitions)}: {s}")
    present_paths = pd.concat([result.index.loc[result.index["present"], "path_hash"],
                               result.errors.loc[result.errors["present"], "path_hash"]])
    yield dg.MaterializeResult(asset_key="dicom_index", metadata={
        "dagster/row_count": len(result.index),
        "new_files": s["new"], "changed_files": s["changed"], "unchanged_files": s["unchanged"],
        "vanished_files": s["vanished"], "written": bool(s["written"]),
        "patients": int(result.index["patient_key"].nunique()),
        "modalities": dg.MetadataValue.json(result.index["modality"].value_counts().to_dict()),
        "whole_index_rows": len(index),
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


def _folders(partitions: list[str]) -> str:
    """The run's partitions for a log line: one key, or how many."""
    return f"partition {partitions[0]}" if len(partitions) == 1 else f"{len(partitions)} partitions"


def _progress_logger(context: dg.AssetExecutionContext):
    step = {"next": 0.1, "done": 0}

    def report(done: int, total: int) -> None:
        if done < step["done"]:  # the next partition's decoding
            step["next"] = 0.1
        step["done"] = done
        if done / total >= step["next"] or done == total:
            context.log.info(f"decoded {done}/{total} images")
            step["next"] = done / total + 0.1

    return report


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_"
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return header + "\n".join("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False))
