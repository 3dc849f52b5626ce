"""Which executor runs the steps of a run: this machine's processes, or Celery workers on many machines.

One machine (the default): Dagster's multiprocess executor, each step in a process of its own.
Several machines: ``RADAUDIT_EXECUTOR=celery`` selects dagster-celery's executor; every step becomes a
Celery task on a Redis broker (``RADAUDIT_CELERY_BROKER``, e.g. ``redis://host:6379/0``, which holds
the results too). Steps go to the queue :data:`CPU_QUEUE`, except the
steps that hold a GPU (backbones, embeddings: the op tags ``GPU_STEP_TAGS``), which go to
``GPU_QUEUE``, read only by the workers of GPU machines::

    RADAUDIT_CELERY_BROKER=redis://host:6379/0 dagster-celery worker start -A dagster_celery.app -y celery.yaml -q cpu
    RADAUDIT_CELERY_BROKER=redis://host:6379/0 dagster-celery worker start -A dagster_celery.app -y celery.yaml -q gpu,cpu

Every process (webserver, daemon, run workers, Celery workers) must see the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from radaudit.assets.models import GPU_QUEUE, GPU_STEP_TAGS

__all__ = ["BROKER_ENV", "CPU_QUEUE", "EXECUTOR_ENV", "GPU_QUEUE", "GPU_STEP_TAGS", "executor_from_env"]

EXECUTOR_ENV = "RADAUDIT_EXECUTOR"
BROKER_ENV = "RADAUDIT_CELERY_BROKER"
CPU_QUEUE = "cpu"


def executor_from_env(env: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """The executor ``RADAUDIT_EXECUTOR`` names: ``multiprocess`` (default) or ``celery``.

    Raises:
        ValueError: An unknown executor, the Celery executor without its broker, or without
            dagster-celery installed; the message says what to do.
    """
    kind = env.get(EXECUTOR_ENV, "multiprocess").strip() or "multiprocess"
    if kind == "multiprocess":
        return dg.multi_or_in_process_executor
    if kind != "celery":
        raise ValueError(f"{EXECUTOR_ENV}={kind!r} is not an executor: use 'multiprocess' (one machine, the "
                         "default) or 'celery' (workers on several machines)")
    if not env.get(BROKER_ENV):
        raise ValueError(f"{EXECUTOR_ENV}=celery needs the broker: set {BROKER_ENV}, e.g. redis://host:6379/0")
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ValueError(f"{EXECUTOR_ENV}=celery needs dagster-celery: pip install 'radaudit[distributed]' "
                         f"({exc})") from exc
    return celery_executor.configured(
        {"broker": {"env": BROKER_ENV}, "backend": {"env": BROKER_ENV},
         "config_source": {"task_default_queue": CPU_QUEUE}},
        name="radaudit_celery",
    )
