"""Typed configuration shared by every asset: where the export is, where outputs go, how to ingest."""


from pathlib import Path

import dagster as dg

from pacs.cache import CacheParams
from pacs.ingest import IngestConfig


class RadauditConfig(dg.ConfigurableResource):
    """Paths and ingest settings.

    ``export_dir`` and ``data_dir`` default to the ``RADAUDIT_EXPORT_DIR`` and ``RADAUDIT_DATA_DIR``
    environment variables (wired in ``pipelines/definitions.py``).
    """

    export_dir: str
    data_dir: str
    cache_size: int = 256
    remove_border: bool = True
    correct_orientation: bool = True
    workers: int = 0
    file_timeout_s: float = 60.0
    full_rebuild: bool = False
    retry_errors: bool = False
    region_map: str | None = None
    pseudonym_key: str | None = None

    @property
    def data_path(self) -> Path:
        """The data dir as a Path."""
        return Path(self.data_dir)

    def ingest_config(self) -> IngestConfig:
        """The library's ingest settings."""
        return IngestConfig(
            export_dir=self.export_dir,
            data_dir=self.data_dir,
            cache=CacheParams(
                size=self.cache_size, remove_border=self.remove_border, correct_orientation=self.correct_orientation
            ),
            workers=self.workers,
            file_timeout_s=self.file_timeout_s,
            full_rebuild=self.full_rebuild,
            retry_errors=self.retry_errors,
            pseudonym_key=self.pseudonym_key,
        )
