"""Jobs, schedules and sensors over the asset graph.

- ``ingest_job``: new files -> index, errors, image cache, region labels.
- ``nightly_audit``: everything but the backbones: new files are cached, embedded with the
  current backbones, and the heads, ensemble, label issues and report are refreshed.
- ``retrain``: the three backbones (GPU-tagged: the run queue runs one at a time).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from radaudit.assets.resources import RadauditConfig

BACKBONES = dg.AssetSelection.key_prefixes(["backbone"])

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest", "labels"),
    description="Index new DICOM files, cache their images and map their region labels.",
    tags={"radaudit/ingest": "true"},
)
nightly_audit = dg.define_asset_job(
    "nightly_audit",
    selection=dg.AssetSelection.all() - BACKBONES,
    description="New files -> cache -> near duplicates, embeddings with the current backbones -> heads -> ensemble "
    "-> report.",
    tags={"radaudit/gpu": "true", "radaudit/ingest": "true"},
)
retrain = dg.define_asset_job(
    "retrain",
    selection=BACKBONES,
    description="Pretrain the SimCLR, BYOL and SupCon backbones again (resumes an interrupted run).",
    tags={"radaudit/gpu": "true"},
)

TIMEZONE = os.environ.get("RADAUDIT_TIMEZONE", "Europe/Berlin")

nightly_schedule = dg.ScheduleDefinition(
    name="nightly_audit_schedule", job=nightly_audit,
    cron_schedule=os.environ.get("RADAUDIT_NIGHTLY_CRON", "0 2 * * *"), execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The nightly audit (default 02:00; RADAUDIT_NIGHTLY_CRON, RADAUDIT_TIMEZONE).",
)
weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_retrain_schedule", job=retrain, cron_schedule="0 3 * * 6", execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain the backbones on Saturdays 03:00; off until a steward switches it on.",
)


@dg.sensor(job=ingest_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts the ingest when a new folder appears at the top of the export.")
def new_export_sensor(context: dg.SensorEvaluationContext, radaudit: RadauditConfig):
    """One ingest run per batch of new top-level export folders.

    Folder names are often patient names, so the cursor, run key and tags hold only keyed hashes
    (the pseudonym key's, as for file paths) and counts of them.
    """
    from radaudit.pacs.pseudo import KEY_ENV, load_or_create_key, path_key

    key = load_or_create_key(radaudit.data_dir, radaudit.pseudonym_key or os.environ.get(KEY_ENV))

    def digest(name: str) -> str:
        return path_key(name, key)[:16]

    root = Path(radaudit.export_dir)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if context.cursor:
        seen = set(json.loads(context.cursor))
    else:  # first look (a new sensor, a new instance): what is ingested already is not new
        known = _ingested_paths(radaudit.data_path)
        seen = {digest(name) for name in folders if _holds_ingested_file(root, name, known, key)}
    new = [digest(name) for name in folders if digest(name) not in seen]
    if not new:
        if not context.cursor:
            context.update_cursor(json.dumps(sorted(seen)))
        return dg.SkipReason("no new folder in the export")
    context.update_cursor(json.dumps(sorted(seen | set(new))))
    return dg.RunRequest(run_key=f"export:{min(new)}:{len(seen) + len(new)}",
                         tags={"radaudit/new_folders": str(len(new))})


def _ingested_paths(data_dir: Path) -> frozenset[str]:
    """The path hashes of every file in the index or the errors (empty before the first ingest)."""
    import pandas as pd

    from radaudit.pacs.layout import ERRORS_PATH, INDEX_PATH

    hashes: set[str] = set()
    for table in (INDEX_PATH, ERRORS_PATH):
        if (data_dir / table).exists():
            hashes |= set(pd.read_parquet(data_dir / table, columns=["path_hash"])["path_hash"])
    return frozenset(hashes)


def _holds_ingested_file(root: Path, folder: str, known: frozenset[str], key: bytes, *, look_at: int = 20) -> bool:
    """Whether one of the first ``look_at`` files under ``root/folder`` was ingested before."""
    from radaudit.pacs.pseudo import path_key

    if not known:
        return False
    looked = 0
    for parent, _, files in os.walk(root / folder):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(parent, name), root).replace(os.sep, "/")
            if path_key(rel, key) in known:
                return True
            looked += 1
            if looked >= look_at:
                return False
    return False
