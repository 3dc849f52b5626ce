"""Jobs, schedules and sensors over the asset graph.

- ``ingest_job``: new files -> index, errors, image cache, region labels; the sensor starts one run per
  new export folder (one partition of ``export_folders``).
- ``nightly_audit``: everything but the backbones: every folder's new files are cached, embedded with
  the current backbones, and the heads, ensemble, label issues and report are refreshed.
- ``retrain``: the three backbones (GPU-tagged: the run queue runs one at a time).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from radaudit.assets.ingest import EXPORT_FOLDERS
from radaudit.assets.resources import RadauditConfig

BACKBONES = dg.AssetSelection.key_prefixes(["backbone"])
# The run tags of a run over a range of partitions (Dagster's own keys).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest", "labels"),
    description="Index the new DICOM files of one export folder (a partition), cache their images and map the "
    "region labels of all folders.",
)
nightly_audit = dg.define_asset_job(
    "nightly_audit",
    selection=dg.AssetSelection.all() - BACKBONES,
    description="New files of every export folder -> cache -> near duplicates, embeddings with the current "
    "backbones -> heads -> ensemble -> report.",
    tags={"radaudit/gpu": "true"},
)
retrain = dg.define_asset_job(
    "retrain",
    selection=BACKBONES,
    description="Pretrain the SimCLR, BYOL and SupCon backbones again (resumes an interrupted run).",
    tags={"radaudit/gpu": "true"},
)

TIMEZONE = os.environ.get("RADAUDIT_TIMEZONE", "Europe/Berlin")


def _key(radaudit: RadauditConfig) -> bytes:
    from radaudit.pacs.pseudo import KEY_ENV, load_or_create_key

    return load_or_create_key(radaudit.data_dir, radaudit.pseudonym_key or os.environ.get(KEY_ENV))


def register_folders(instance: dg.DagsterInstance, radaudit: RadauditConfig) -> list[str]:
    """Add the export's folders, and the partitions the data dir holds, to ``export_folders``; return every
    partition key of the instance, in its order. An export that cannot be listed adds nothing (the
    ingest says why in one line)."""
    from radaudit.pacs.partitions import export_partitions, stored_partitions

    try:
        found = list(export_partitions(radaudit.export_dir, _key(radaudit)))
    except OSError:
        found = []
    known = instance.get_dynamic_partitions(EXPORT_FOLDERS.name)
    new = [k for k in dict.fromkeys([*found, *stored_partitions(radaudit.data_dir)]) if k not in set(known)]
    if new:
        instance.add_dynamic_partitions(EXPORT_FOLDERS.name, new)
    return [*known, *new]


def all_folders_tags(instance: dg.DagsterInstance, radaudit: RadauditConfig) -> dict[str, str]:
    """Run tags that make a run ingest every export folder, one after another in one step (after
    :func:`register_folders`): the range from the first partition key to the last."""
    from radaudit.pacs.partitions import ROOT_PARTITION

    keys = register_folders(instance, radaudit)
    if not keys:  # nothing to list: the root's partition, whose ingest says what is wrong
        instance.add_dynamic_partitions(EXPORT_FOLDERS.name, [ROOT_PARTITION])
        keys = [ROOT_PARTITION]
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


@dg.schedule(name="nightly_audit_schedule", job=nightly_audit,
             cron_schedule=os.environ.get("RADAUDIT_NIGHTLY_CRON", "0 2 * * *"), execution_timezone=TIMEZONE,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="The nightly audit over every export folder (default 02:00; RADAUDIT_NIGHTLY_CRON, "
             "RADAUDIT_TIMEZONE).")
def nightly_schedule(context: dg.ScheduleEvaluationContext, radaudit: RadauditConfig) -> dg.RunRequest:
    """The nightly run, over every folder of the export (new folders become partitions first)."""
    return dg.RunRequest(tags=all_folders_tags(context.instance, radaudit))


weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_retrain_schedule", job=retrain, cron_schedule="0 3 * * 6", execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain the backbones on Saturdays 03:00; off until a steward switches it on.",
)


@dg.sensor(job=ingest_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Adds a partition for each new folder at the top of the export and starts its ingest.")
def new_export_sensor(context: dg.SensorEvaluationContext, radaudit: RadauditConfig) -> Any:
    """One partition and one ingest run per new top-level export folder.

    Folder names are often patient names, so partition keys and run keys are keyed hashes of
    them (the pseudonym key's, as for file paths). Folders the data dir holds already (ingested
    by the CLI, or before the sensor ran) become partitions without a run.
    """
    from radaudit.pacs.partitions import export_partitions, is_ingested

    try:
        found = export_partitions(radaudit.export_dir, _key(radaudit))
    except OSError:
        return dg.SkipReason(f"export {radaudit.export_dir} cannot be listed")
    known = set(context.instance.get_dynamic_partitions(EXPORT_FOLDERS.name))
    new = [k for k in found if k not in known]
    if not new:
        return dg.SkipReason("no new folder in the export")
    to_ingest = [k for k in new if not is_ingested(radaudit.data_dir, k)]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"folder:{k}", partition_key=k) for k in to_ingest],
        dynamic_partitions_requests=[EXPORT_FOLDERS.build_add_request(new)],
    )
