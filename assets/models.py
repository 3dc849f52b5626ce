"""Pretraining assets: one backbone and one embeddings asset per SSL method (``backbone/simclr`` ...)."""

import base64

import dagster as dg

from radaudit.assets.guard import guarded
from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.models.methods import LABEL_TRAINED, METHODS
from radaudit.pipelines import stages
# The concurrency pool of every step that holds the GPU: dagster.yaml limits each pool to one
# step at a time, across all runs, whether a job or a steward's single materialization started it.
GPU_POOL = "radaudit_gpu"
# With the Celery executor (radaudit.pipelines.executors), these steps go to the queue only GPU
# machines' workers read; every other step goes to the "cpu" queue.
GPU_QUEUE = "gpu"
GPU_STEP_TAGS = {"dagster-celery/queue": GPU_QUEUE}
# A training step that dies (a lost device, a killed worker) is tried again; it resumes its last checkpoint.
GPU_RETRY = dg.RetryPolicy(max_retries=2, delay=30)


def _png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def method_assets(method: str) -> list[dg.AssetsDefinition]:
    """The backbone and embeddings assets of one method."""

    @dg.asset(
        # A label-trained method's folds keep each near-duplicate group on one side.
        key=["backbone", method], deps=["image_cache", "region_labels"] + (["near_duplicates"] if method in LABEL_TRAINED
                                                                            else []),
        group_name="pretrain", pool=GPU_POOL, op_tags=GPU_STEP_TAGS,
        retry_policy=GPU_RETRY, kinds={"pytorch", "backbone"},  # the graph's nodes read "simclr" for both assets
        description=f"{method} contrastive pretraining of the backbone on the image cache "
        f"(checkpoints in models/{method}/checkpoints, safetensors; resumes after a crash).",
    )
    def backbone(context: dg.AssetExecutionContext, radaudit: RadauditConfig, audit: AuditConfig) -> dg.MaterializeResult:
        from radaudit.models.probe import plot_loss_curve

        # A retry, or a re-execution of this run, resumes what the first attempt trained from scratch.
        with guarded(radaudit, f"backbone/{method}", pool_retry_number=context.retry_number):
            result = stages.train_backbone(radaudit.data_dir, method, audit.pretrain_config(method),
                                           truth_path=audit.truth_path, from_scratch=audit.from_scratch,
                                           scratch_token=context.run.root_run_id or context.run.run_id,
                                           log=context.log.info, cross_fit=audit.cross_fit(method))
        last = result.metrics[-1] if result.metrics else {}
        return dg.MaterializeResult(metadata={
            "device": result.device, "epochs": len(result.history), "steps": result.steps,
            "wall_time_s": round(result.wall_time_s, 1), "final_loss": float(result.history[-1]),
            "resumed_from_epoch": result.resumed_from_epoch,
            **{f"eval/{k}": float(v) for k, v in last.items() if k != "epoch"},
            "eval_labels": "synthetic truth" if audit.truth_path else "recorded labels (noisy: a lower bound)",
            "loss_curve": _png_markdown(plot_loss_curve(result.history, title=f"{method} loss"), "loss curve"),
        })

    @dg.asset(
        # The training set it embeds is read with its labels (stages.load_training_set): without the
        # edge to region_labels, an executor running steps side by side (Celery) may embed first.
        key=["embeddings", method], deps=[dg.AssetKey(["backbone", method]), "image_cache", "region_labels"],
        group_name="pretrain", pool=GPU_POOL, op_tags=GPU_STEP_TAGS, retry_policy=GPU_RETRY,
        kinds={"numpy", "embeddings"},
        description=f"Frozen {method} backbone features of every cached image "
        f"(embeddings/{method}.npy, rows in embeddings/{method}.uids.parquet).",
    )
    def embeddings(context: dg.AssetExecutionContext, radaudit: RadauditConfig,
                   audit: AuditConfig) -> dg.MaterializeResult:
        with guarded(radaudit, f"embeddings/{method}", pool_retry_number=context.retry_number):
            features = stages.compute_embeddings(radaudit.data_dir, method, crop=audit.embed_crop,
                                                 log=context.log.info)
        return dg.MaterializeResult(metadata={"dagster/row_count": int(features.shape[0]), "dim": int(features.shape[1])})

    return [backbone, embeddings]


pretrain_assets = [a for m in METHODS for a in method_assets(m)]
