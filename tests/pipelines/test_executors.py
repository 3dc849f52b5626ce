"""The executor is chosen by configuration: this machine's processes by default, Celery workers by
RADAUDIT_EXECUTOR=celery; GPU steps go to the queue only GPU workers read."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from radaudit.pipelines.definitions import defs
from radaudit.pipelines.executors import BROKER_ENV, EXECUTOR_ENV, executor_from_env

REPO = Path(__file__).resolve().parents[2]
CELERY = importlib.util.find_spec("dagster_celery") is not None


def test_one_machine_runs_steps_in_its_own_processes_by_default():
    assert executor_from_env({}) is dg.multi_or_in_process_executor
    assert executor_from_env({EXECUTOR_ENV: "multiprocess"}) is dg.multi_or_in_process_executor
    if EXECUTOR_ENV not in os.environ:
        assert defs.resolve_job_def("nightly_audit").executor_def is dg.multi_or_in_process_executor


@pytest.mark.parametrize(("env", "message"), [
    ({EXECUTOR_ENV: "kubernetes"}, "RADAUDIT_EXECUTOR='kubernetes' is not an executor: use 'multiprocess'"),
    ({EXECUTOR_ENV: "celery"}, "RADAUDIT_EXECUTOR=celery needs the broker: set RADAUDIT_CELERY_BROKER"),
])
def test_a_wrong_setting_is_one_line_that_says_what_to_do(env, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as info:
        executor_from_env(env)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not CELERY, reason="dagster-celery is not installed: pip install -e '.[distributed]'")
def test_celery_selected_by_configuration_for_every_job():
    env = {**os.environ, EXECUTOR_ENV: "celery", BROKER_ENV: "redis://127.0.0.1:6379/0"}
    code = ("from radaudit.pipelines.definitions import defs; "
            "print(sorted({defs.resolve_job_def(j).executor_def.name for j in ('ingest_job', 'nightly_audit', 'retrain')}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['radaudit_celery']"


def test_only_the_steps_that_hold_the_gpu_go_to_the_gpu_queue():
    queues = {key.to_user_string(): a.op.tags.get("dagster-celery/queue") for a in defs.assets for key in a.keys}
    gpu = {k for k, q in queues.items() if q == "gpu"}
    assert gpu == {f"{kind}/{m}" for kind in ("backbone", "embeddings") for m in ("simclr", "byol", "supcon")}
    assert {q for k, q in queues.items() if k not in gpu} == {None}  # every other step: the default queue, cpu
