"""Jobs select the right assets; the schedule and the new-export sensor behave as stewards expect."""

import json
import os

import dagster as dg

from radaudit.assets.resources import RadauditConfig
from radaudit.pipelines.definitions import defs
from radaudit.pipelines.jobs import new_export_sensor


def _keys(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


def test_nightly_audit_uses_current_backbones_and_retrain_only_trains():
    nightly = _keys("nightly_audit")
    assert {"dicom_index", "image_cache", "embeddings/simclr", "label_issues", "mislabel_report"} <= nightly
    assert not any(k.startswith("backbone/") for k in nightly)
    assert _keys("retrain") == {"backbone/simclr", "backbone/byol", "backbone/supcon"}
    assert defs.resolve_job_def("retrain").tags["radaudit/gpu"] == "true"


def test_nightly_schedule_runs_at_two():
    schedule = defs.resolve_schedule_def("nightly_audit_schedule")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.job_name == "nightly_audit"
    assert schedule.execution_timezone == os.environ.get("RADAUDIT_TIMEZONE", "Europe/Berlin")


def test_sensor_starts_ingest_once_per_new_export_folder(tmp_path):
    export = tmp_path / "export"
    (export / "2026-11-20").mkdir(parents=True)
    (export / "2026-11-21").mkdir()
    resource = RadauditConfig(export_dir=str(export), data_dir=str(tmp_path / "data"))
    with dg.build_sensor_context(resources={"radaudit": resource}) as ctx:
        first = new_export_sensor(ctx)
        assert isinstance(first, dg.RunRequest) and first.tags["radaudit/new_folders"] == "2"
        cursor = ctx.cursor
        assert "2026" not in cursor and "2026" not in first.run_key  # folder names may be patient names
    with dg.build_sensor_context(cursor=cursor, resources={"radaudit": resource}) as ctx:
        assert isinstance(new_export_sensor(ctx), dg.SkipReason)
    (export / "2026-11-22").mkdir()
    with dg.build_sensor_context(cursor=cursor, resources={"radaudit": resource}) as ctx:
        third = new_export_sensor(ctx)
        assert isinstance(third, dg.RunRequest) and third.tags["radaudit/new_folders"] == "1"
        assert third.run_key != first.run_key


def test_instance_queues_at_most_one_gpu_run(tmp_path):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # as with DAGSTER_HOME=<repo root>
    try:
        queue = instance.get_concurrency_config().run_queue_config
        limits = [(t["key"], t["value"], t["limit"]) for t in queue.tag_concurrency_limits]
        assert ("radaudit/gpu", "true", 1) in limits and ("radaudit/ingest", "true", 1) in limits
        for job in ("ingest_job", "nightly_audit"):
            assert defs.resolve_job_def(job).tags["radaudit/ingest"] == "true"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        # A failed step does not re-run the whole run (a malformed review file fails once) ...
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # ... and every step that holds the GPU is in one pool, limited to one step across all runs,
        # so a steward's single backbone from the UI queues behind the nightly run's embeddings.
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()


def test_gpu_steps_share_one_pool_and_retry_from_their_checkpoint():
    gpu = {a.key.to_user_string(): a.op for a in defs.assets if a.op.pool == "radaudit_gpu"}
    assert set(gpu) == {f"{kind}/{m}" for kind in ("backbone", "embeddings") for m in ("simclr", "byol", "supcon")}
    assert all(op.retry_policy and op.retry_policy.max_retries >= 1 for op in gpu.values())
    # The embeddings of a night wait for that night's image cache.
    key = dg.AssetKey(["embeddings", "simclr"])
    deps = defs.resolve_assets_def(key).asset_deps[key]
    assert dg.AssetKey("image_cache") in deps


def test_a_retried_backbone_step_resumes_and_bad_input_is_not_retried(tmp_path, monkeypatch):
    """Attempt 1 (from scratch) dies of a lost device; attempt 2 names the same request, so it resumes
    instead of wiping what attempt 1 wrote (tests/assets: the same token does not wipe again); a
    ValueError (bad input) then fails the step at once instead of using up retries."""
    import radaudit.assets.models as asset_models
    from radaudit.assets.resources import AuditConfig
    from radaudit.pipelines import stages

    calls: list[tuple[bool, str]] = []

    def flaky(data_dir, method, config, *, truth_path=None, from_scratch=False, scratch_token=None, log=None,
              cross_fit=1):
        calls.append((from_scratch, scratch_token))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        raise ValueError("the image cache is empty")

    monkeypatch.setattr(stages, "train_backbone", flaky)
    monkeypatch.setattr(asset_models, "GPU_RETRY", dg.RetryPolicy(max_retries=3, delay=0))
    backbone, _ = asset_models.method_assets("simclr")
    resources = {"radaudit": RadauditConfig(export_dir=str(tmp_path / "export"), data_dir=str(tmp_path / "data")),
                 "audit": AuditConfig(from_scratch=True)}
    result = dg.materialize([backbone], resources=resources, raise_on_error=False)
    assert not result.success
    assert calls == [(True, result.run_id)] * 2
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "the image cache is empty" in str(failure.step_failure_data.error.message)


def test_sensor_copes_with_a_folder_name_that_is_not_utf8(tmp_path):
    import os

    export = tmp_path / "export"
    export.mkdir()
    os.mkdir(os.path.join(os.fsencode(export), b"M\xfcller Hans"))  # Latin-1 bytes from a Windows export
    resource = RadauditConfig(export_dir=str(export), data_dir=str(tmp_path / "data"))
    with dg.build_sensor_context(resources={"radaudit": resource}) as ctx:
        request = new_export_sensor(ctx)
        assert isinstance(request, dg.RunRequest) and request.tags["radaudit/new_folders"] == "1"
        assert "ller" not in ctx.cursor and "ller" not in request.run_key


def test_sensor_on_an_ingested_export_starts_nothing_until_a_new_folder_comes(tmp_path):
    """`dagster dev` on an export ingested before (e.g. by the CLI) must not ingest it all again."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    export, data = tmp_path / "export", tmp_path / "data"
    generate_export(export, tmp_path / "truth.parquet", n=12, seed=1, size=32)
    run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=32), workers=1))
    resource = RadauditConfig(export_dir=str(export), data_dir=str(data))
    with dg.build_sensor_context(resources={"radaudit": resource}) as ctx:
        assert isinstance(new_export_sensor(ctx), dg.SkipReason)
        cursor = ctx.cursor
    assert cursor and len(json.loads(cursor)) == sum(p.is_dir() for p in export.iterdir())
    generate_export(tmp_path / "later", tmp_path / "later.parquet", n=3, seed=2, size=32)
    (tmp_path / "later").rename(export / "later")
    with dg.build_sensor_context(cursor=cursor, resources={"radaudit": resource}) as ctx:
        request = new_export_sensor(ctx)
        assert isinstance(request, dg.RunRequest) and request.tags["radaudit/new_folders"] == "1"
