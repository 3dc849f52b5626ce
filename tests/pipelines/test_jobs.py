"""Jobs select the right assets; the schedule and the new-export sensor behave as stewards expect."""

import os

import dagster as dg

from radaudit.assets.resources import RadauditConfig
from radaudit.pipelines.definitions import defs
from radaudit.assets.ingest import EXPORT_FOLDERS
from radaudit.pipelines.jobs import RANGE_END, RANGE_START, new_export_sensor, nightly_schedule


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


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a sensor's partition requests."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_nightly_schedule_covers_every_export_folder(tmp_path):
    """The nightly run ingests every folder (new ones become partitions first), then audits them all."""
    export = tmp_path / "export"
    for name in ("2026-11-20", "2026-11-21"):
        (export / name).mkdir(parents=True)
    resource = RadauditConfig(export_dir=str(export), data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(EXPORT_FOLDERS.name, ["0123456789abcdef"])  # a folder that is gone
        with dg.build_schedule_context(instance=instance, resources={"radaudit": resource}) as ctx:
            request = nightly_schedule(ctx)
        keys = instance.get_dynamic_partitions(EXPORT_FOLDERS.name)
        assert len(keys) == 3 and keys[0] == "0123456789abcdef"
        assert request.tags[RANGE_START] == keys[0] and request.tags[RANGE_END] == keys[-1]


def test_sensor_adds_one_partition_and_one_run_per_new_export_folder(tmp_path):
    export = tmp_path / "export"
    (export / "2026-11-20").mkdir(parents=True)
    (export / "2026-11-21").mkdir()
    resource = RadauditConfig(export_dir=str(export), data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
            first = new_export_sensor(ctx)
        (added,) = first.dynamic_partitions_requests
        assert added.partitions_def_name == EXPORT_FOLDERS.name and len(added.partition_keys) == 2
        assert sorted(r.partition_key for r in first.run_requests) == sorted(added.partition_keys)
        assert not any("2026" in k for k in added.partition_keys)  # folder names may be patient names
        _apply(instance, first)
        with dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
            assert isinstance(new_export_sensor(ctx), dg.SkipReason)
        (export / "2026-11-22").mkdir()
        with dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
            third = new_export_sensor(ctx)
        (run,) = third.run_requests
        assert list(third.dynamic_partitions_requests[0].partition_keys) == [run.partition_key]
        assert run.partition_key not in added.partition_keys and run.job_name in (None, "ingest_job")
        _apply(instance, third)
        assert len(instance.get_dynamic_partitions(EXPORT_FOLDERS.name)) == 3


def test_instance_queues_at_most_one_gpu_run(tmp_path):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # as with DAGSTER_HOME=<repo root>
    try:
        queue = instance.get_concurrency_config().run_queue_config
        limits = [(t["key"], t["value"], t["limit"]) for t in queue.tag_concurrency_limits]
        # The ingests of different export folders run side by side, two of the same folder do not.
        assert ("radaudit/gpu", "true", 1) in limits
        assert ("dagster/partition", {"applyLimitPerUniqueValue": True}, 1) in limits
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
    with dg.instance_for_test() as instance, \
            dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
        result = new_export_sensor(ctx)
    (run,) = result.run_requests
    assert "ller" not in run.partition_key and "ller" not in run.run_key


def test_sensor_on_an_ingested_export_starts_nothing_until_a_new_folder_comes(tmp_path):
    """`dagster dev` on an export ingested before (e.g. by the CLI) must not ingest it all again: its
    folders become partitions without runs."""
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest
    from radaudit.pacs.synth import generate_export

    export, data = tmp_path / "export", tmp_path / "data"
    generate_export(export, tmp_path / "truth.parquet", n=12, seed=1, size=32)
    run_ingest(IngestConfig(export_dir=export, data_dir=data, cache=CacheParams(size=32), workers=1))
    resource = RadauditConfig(export_dir=str(export), data_dir=str(data))
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
            first = new_export_sensor(ctx)
        assert not first.run_requests
        assert len(first.dynamic_partitions_requests[0].partition_keys) == sum(p.is_dir() for p in export.iterdir())
        _apply(instance, first)
        generate_export(tmp_path / "later", tmp_path / "later.parquet", n=3, seed=2, size=32)
        (tmp_path / "later").rename(export / "later")
        with dg.build_sensor_context(instance=instance, resources={"radaudit": resource}) as ctx:
            (run,) = new_export_sensor(ctx).run_requests
        assert run.partition_key not in first.dynamic_partitions_requests[0].partition_keys
