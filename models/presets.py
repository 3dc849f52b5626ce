"""Named settings of a whole audit run: the CPU demo and the GPU audit.

One place for both, so ``radaudit demo`` and ``benchmarks/quality.py`` measure the same thing::

    from radaudit.models.presets import PRESETS
    preset = PRESETS["cpu-demo"]
    config = preset.pretrain_config("supcon")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radaudit.models.train import PretrainConfig

__all__ = ["AuditPreset", "GPU_REFERENCE", "PRESETS"]


@dataclass(frozen=True)
class AuditPreset:
    """Export, cache, pretraining and audit settings of one end-to-end run.

    Attributes:
        name: Key in :data:`PRESETS`.
        n: Images in the synthetic export.
        export_size: Long side of the exported radiographs.
        cache_size: Side of the cached images.
        methods: Methods pretrained and ensembled, in training order.
        epochs: Pretraining epochs per method.
        image_size: Side of the training views (and of the embedding input).
        batch_size: Pretraining batch size.
        tau_base: BYOL's starting target decay.
        num_workers: DataLoader workers per device.
        supcon_cross_fit: Backbones SupCon is cross-fitted with (see :func:`radaudit.pipelines.stages.train_backbone`).
        duplicates: Share of extra duplicate files (and as many hard negatives) in the synthetic
            export (:func:`radaudit.pacs.synth.generate_export`).
        devices: Acquisition-device mix of the synthetic export (``generate_export(devices=)``;
            None: the single legacy style).
        device_correlation: How strongly the export's devices follow regions, in [0, 1].
        embed_crop: Embeddings as the mean over ten crops of this share of the side (test-time
            augmentation, :func:`radaudit.models.embed.embed`); None: the whole image.
        note: Why these settings, shown by the demo.
    """

    name: str
    n: int
    export_size: int
    cache_size: int
    methods: tuple[str, ...]
    epochs: int
    image_size: int
    batch_size: int
    tau_base: float
    num_workers: int
    supcon_cross_fit: int = 2
    duplicates: float = 0.03
    devices: str | None = "mixed"
    device_correlation: float = 0.6
    embed_crop: float | None = None
    note: str = ""

    def cross_fit(self, method: str) -> int:
        """Backbones to cross-fit for ``method``: only SupCon trains on labels."""
        from radaudit.models.methods import LABEL_TRAINED

        return self.supcon_cross_fit if method in LABEL_TRAINED else 1

    def pretrain_config(self, method: str, **changes: Any) -> PretrainConfig:
        """The :class:`radaudit.models.train.PretrainConfig` of one method (``changes`` override fields)."""
        from radaudit.models.train import PretrainConfig

        settings: dict[str, Any] = dict(method=method, epochs=self.epochs, batch_size=self.batch_size,
                                        size=self.image_size, tau_base=self.tau_base, num_workers=self.num_workers,
                                        warmup_epochs=min(10.0, self.epochs / 10), on_cpu="as_is")
        settings.update(changes)
        return PretrainConfig(**settings)


PRESETS: dict[str, AuditPreset] = {
    # Measured on 2 cores (benchmarks/quality.py, 800 images): SimCLR at 32 px views for 30-60 epochs
    # reached linear accuracy 0.71 in 4-10 minutes, against 0.64 at 64 px for 15 epochs (18 min) and
    # 0.51-0.56 for SupCon at 64 px; one method, more epochs at a lower resolution, gives the best report.
    # 120 epochs against 60 (`radaudit demo --epochs 120`, seeds 0-3, 10-fold heads averaged over 3
    # splits): precision@k 0.812/0.734/0.781/0.750 against 0.750/0.703/0.703/0.688.
    # Ten-crop embeddings (crops of 7/8 of the side and their mirrors; issue 12, the same four
    # backbones of seeds 0-3 re-embedded): precision@k 0.836/0.791/0.794/0.706 against
    # 0.791/0.731/0.779/0.676 for the whole image; a few seconds more. Not measured on a GPU yet,
    # so the GPU preset embeds whole images.
    "cpu-demo": AuditPreset(
        name="cpu-demo", n=800, export_size=128, cache_size=64, methods=("simclr",), epochs=120,
        image_size=32, batch_size=64, tau_base=0.99, num_workers=2, embed_crop=0.875,
        note="2 CPU cores, under 10 minutes",
    ),
    "gpu": AuditPreset(
        name="gpu", n=10_000, export_size=256, cache_size=160, methods=("simclr", "byol", "supcon"), epochs=40,
        image_size=128, batch_size=512, tau_base=0.99, num_workers=12,
        note="one H200, about 9 minutes with export and ingest",
    ),
}

# What a GPU run reached, for the demo to print beside its own figures. Update it with each GPU
# measurement of `python benchmarks/quality.py --gpu` (and say which commit measured it).
GPU_REFERENCE = """\
on a GPU (one H200, 10,000 images, 128 px; measured 2026-11-30 at commit 9e682b1, before the calibrated flags
and the out-of-domain evidence of this version; command: python benchmarks/quality.py --gpu):
  SimCLR 70 epochs: linear accuracy 0.945 (1% of labels: 0.820), precision@k 0.840, OOD AUROC 0.732
  SupCon 25 epochs: linear accuracy 0.931 (1% of labels: 0.872), precision@k 0.809, OOD AUROC 0.860
  this version on a GPU: pending (no GPU measurement yet)"""
