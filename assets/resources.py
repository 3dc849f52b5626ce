"""Typed configuration shared by every asset: where the export is, where outputs go, how to ingest."""


from pathlib import Path

from typing import TYPE_CHECKING

import dagster as dg

from radaudit.models.methods import DEFAULT_IMAGE_SIZE, DEFAULT_METHODS, LABEL_TRAINED
from radaudit.pacs.cache import CacheParams
from radaudit.pacs.ingest import IngestConfig

if TYPE_CHECKING:
    from radaudit.models.train import PretrainConfig


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
    # Address space one header or decode worker may add (MiB); None: no limit (radaudit.pacs.ingest.IngestConfig).
    worker_memory_mb: int | None = 4096
    # How long a step waits for another run that holds the data dir (radaudit.pacs.lock) before it fails.
    lock_wait_s: float = 6 * 3600.0
    # A GPU step that finds the data dir busy gives its GPU-pool slot back (holding it while waiting for
    # a CLI run that waits for the slot deadlocks) and is retried this often (seconds).
    pool_retry_s: float = 60.0

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
            worker_memory_mb=self.worker_memory_mb,
            lock_wait_s=self.lock_wait_s,
        )


class AuditConfig(dg.ConfigurableResource):
    """Settings of pretraining, heads, ensemble, cleanlab and the report.

    Without a GPU, pretraining shrinks itself to CPU-sized settings (``on_cpu="shrink"``) and
    says so in the run's log. ``devices`` > 1 trains with DDP on that many GPUs, ``num_nodes`` > 1
    on that many machines together (the batch size is global); ``compile`` None turns torch.compile on for long GPU runs; ``gauge_dir`` adds a
    folder of real calibration-gauge crops to the drawn ones. ``methods`` are the ones the
    ensemble combines (their assets must be materialized; the CPU demo trains a subset).
    ``supcon_cross_fit``: SupCon trains on the recorded labels, so it trains this many backbones,
    each blind to one fold's labels, and each image is scored by one that never saw its label
    (1: one backbone on all labels, which lets label noise leak into its own scores).
    """

    methods: list[str] = list(DEFAULT_METHODS)
    backbone: str = "resnet18"
    devices: int = 1
    num_nodes: int = 1
    compile: bool | None = None
    progress_bar: bool = True
    gauge_dir: str | None = None
    epochs: int = 100
    batch_size: int = 1024
    tau_base: float = 0.9995
    image_size: int = DEFAULT_IMAGE_SIZE
    on_cpu: str = "shrink"
    from_scratch: bool = False
    num_workers: int = 8
    seed: int = 0
    supcon_cross_fit: int = 2
    # Embeddings as the mean over ten crops of this share of each image's side (test-time
    # augmentation, radaudit.models.embed.embed); None: the whole image. The CPU demo uses 0.875.
    embed_crop: float | None = None
    # The heads' cross-fitting: folds, and fold splits averaged (radaudit.pipelines.stages.compute_oof).
    n_splits: int = 10
    head_repeats: int = 3
    # The heads' L2 weight; None: chosen per method by out-of-fold log loss (radaudit.models.heads.choose_l2).
    head_l2: float | None = None
    ensemble_weights: str = "log_loss"
    ensemble_drop_below: float | None = 0.05
    ood_threshold: float | None = None
    max_mislabel_fraction: float = 0.25
    # How the length of the mislabel list is estimated (radaudit.models.audit.FLAG_COUNTS).
    flag_count: str = "mixture_proportion"
    include_accession: bool = True
    report_top_html: int = 500
    # Long side in pixels of the report's thumbnails, at most radaudit.pipelines.stages.reports.MAX_THUMBNAIL.
    report_thumbnail: int = 128
    min_flag_fraction: float = 0.0
    max_flag_fraction: float = 0.5
    truth_path: str | None = None

    def cross_fit(self, method: str) -> int:
        """Backbones to cross-fit for ``method``: only SupCon trains on labels."""
        return self.supcon_cross_fit if method in LABEL_TRAINED else 1

    def pretrain_config(self, method: str) -> "PretrainConfig":
        """The library's pretraining settings for one method."""
        from radaudit.models.train import PretrainConfig

        return PretrainConfig(method=method, backbone=self.backbone, epochs=self.epochs, batch_size=self.batch_size,
                              size=self.image_size, on_cpu=self.on_cpu, seed=self.seed, progress_bar=self.progress_bar,
                              num_workers=self.num_workers, devices=self.devices, num_nodes=self.num_nodes,
                              compile=self.compile, gauge_dir=self.gauge_dir, tau_base=self.tau_base,
                              warmup_epochs=min(10.0, self.epochs / 10))
