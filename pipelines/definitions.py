"""The code location: every asset, job, schedule, sensor, resource and the executor are wired here and only here.

    dagster dev -m radaudit.pipelines.definitions     # the UI on http://127.0.0.1:3000

The executor is the multiprocess one, or with ``RADAUDIT_EXECUTOR=celery`` dagster-celery's
(:mod:`radaudit.pipelines.executors`): steps on Celery workers, GPU steps on the GPU machines' queue.
"""

from __future__ import annotations

import dagster as dg

from radaudit.assets import audit, ingest, labels, models
from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.pipelines.executors import executor_from_env
from radaudit.pipelines.jobs import (
    ingest_job,
    new_export_sensor,
    nightly_audit,
    nightly_schedule,
    retrain,
    weekly_retrain_schedule,
)

defs = dg.Definitions(
    assets=[ingest.ingest, labels.region_labels, labels.label_overrides, *models.pretrain_assets, *audit.audit_assets],
    jobs=[ingest_job, nightly_audit, retrain],
    schedules=[nightly_schedule, weekly_retrain_schedule],
    sensors=[new_export_sensor],
    executor=executor_from_env(),
    resources={
        "radaudit": RadauditConfig(
            export_dir=dg.EnvVar("RADAUDIT_EXPORT_DIR"),
            data_dir=dg.EnvVar("RADAUDIT_DATA_DIR"),
        ),
        "audit": AuditConfig(),
    },
)
