"""The code location: every asset, job, schedule, sensor and resource is wired here and only here.

    dagster dev -m pipelines.definitions     # the UI on http://127.0.0.1:3000
"""

from __future__ import annotations

import dagster as dg

from assets import ingest, labels
from assets.resources import RadauditConfig
from pipelines.jobs import ingest_job

defs = dg.Definitions(
    assets=[ingest.ingest, labels.region_labels],
    jobs=[ingest_job],
    resources={
        "radaudit": RadauditConfig(
            export_dir=dg.EnvVar("RADAUDIT_EXPORT_DIR"),
            data_dir=dg.EnvVar("RADAUDIT_DATA_DIR"),
        ),
    },
)
