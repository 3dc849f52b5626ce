"""Jobs over the asset graph."""

from __future__ import annotations

import dagster as dg

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest", "labels"),
    description="Index new DICOM files, cache their images and map their region labels.",
)
