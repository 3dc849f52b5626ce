"""The distributed deployment, as several machines would run it, on 127.0.0.1: a real redis-server as
Celery's broker, a real PostgreSQL holding the Dagster instance (dagster-postgres), two Celery worker
processes (one reads the ``cpu`` queue, one ``gpu`` and ``cpu``), and the nightly job over a tiny export
of two top-level folders (two partitions). Its index, embeddings and report must equal an in-process
run's over the same export. Every server and worker is stopped at the end, also on failure.

Needs ``redis-server`` (Debian's package), PostgreSQL's ``initdb``, ``pg_ctl`` and ``postgres``, and
``pip install -e '.[distributed]'``; without them the test skips and says which is missing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.pacs.index import read_errors, read_index, read_manifest
from radaudit.pacs.layout import EMBED_DIR, INDEX_DIR, KEY_FILE, MODELS_DIR, REPORT_CSV
from radaudit.pacs.pseudo import load_or_create_key
from radaudit.pacs.synth import generate_export
from radaudit.pipelines.jobs import all_folders_tags

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
# Debian's postgresql package keeps its programs beside its version, off PATH.
POSTGRES_BIN = [os.environ.get("RADAUDIT_PG_BIN", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]


def _missing() -> str | None:
    """What this machine lacks for the deployment, in one line; None when nothing."""
    lacking = [m for m in ("dagster_celery", "dagster_postgres", "redis", "psycopg2")
               if importlib.util.find_spec(m) is None]
    if lacking:
        return f"Python packages {', '.join(lacking)} are missing: pip install -e '.[distributed]'"
    if shutil.which("dagster-celery", path=PATH) is None or shutil.which("celery", path=PATH) is None:
        return "the dagster-celery and celery commands are missing: pip install -e '.[distributed]'"
    if shutil.which("redis-server") is None:
        return "redis-server is missing: apt-get install redis-server (.ci/run installs it)"
    for tool in ("initdb", "pg_ctl", "postgres"):
        if _pg(tool) is None:
            return f"PostgreSQL's {tool} is missing: apt-get install postgresql (or set RADAUDIT_PG_BIN)"
    return None


def _pg(tool: str) -> str | None:
    return shutil.which(tool, path=os.pathsep.join(p for p in POSTGRES_BIN if p)) or shutil.which(tool)


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it listened on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:g} s")


def _stop(proc: subprocess.Popen, *, group: bool = False) -> None:
    """Stop a process this test started (and, with ``group``, the processes it started): TERM, then KILL."""
    if proc.poll() is not None:
        return
    kill = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    with contextlib.suppress(ProcessLookupError):
        kill(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill(signal.SIGKILL)
        proc.wait(20)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server on a free port of 127.0.0.1, without persistence."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
def postgres() -> Iterator[dict[str, object]]:
    """A PostgreSQL cluster made by initdb in a temporary folder and run by pg_ctl on a free port; its
    database ``radaudit``. Run as the ``postgres`` (or ``nobody``) user when this test runs as root,
    which PostgreSQL refuses to be."""
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="radaudit-pg-"))
    user = None
    if os.geteuid() == 0:
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    cluster, port = root / "cluster", _free_port()
    run = dict(user=user, check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run([_pg("initdb"), "-D", str(cluster), "-U", "radaudit", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], **run)
        subprocess.run([_pg("pg_ctl"), "-D", str(cluster), "-l", str(root / "postgres.log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], **run)
        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user="radaudit",
                                                 dbname="postgres")) as conn:
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE radaudit")
        # SQLAlchemy 2.1 takes postgresql:// for psycopg 3; dagster-postgres brings psycopg2.
        yield {"hostname": "127.0.0.1", "port": port, "username": "radaudit", "db_name": "radaudit",
               "scheme": "postgresql+psycopg2"}
    finally:
        if (cluster / "postmaster.pid").exists():
            subprocess.run([_pg("pg_ctl"), "-D", str(cluster), "-m", "immediate", "-w", "stop"], user=user,
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _dagster_home(home: Path, db: dict[str, object]) -> Path:
    """$DAGSTER_HOME with radaudit's dagster.yaml, its runs, events and schedules in PostgreSQL."""
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    settings["storage"] = {"postgres": {"postgres_db": db}}
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return home


@contextlib.contextmanager
def _workers(env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """Two Celery workers, as on two machines: ``cpu1`` reads the cpu queue, ``gpu1`` the gpu and cpu
    queues; one step at a time each (celery.yaml). Each is stopped with every process it started."""
    procs = []
    try:
        for name, queues in (("cpu1", ["cpu"]), ("gpu1", ["gpu", "cpu"])):
            # One -q with a comma-separated list: dagster-celery passes each -q on as celery's -Q, of
            # which celery keeps only the last.
            args = [shutil.which("dagster-celery", path=PATH), "worker", "start", "-A", "dagster_celery.app",
                    "-y", str(REPO / "celery.yaml"), "-n", name, "-q", ",".join(queues),
                    "--", "--without-gossip", "--without-mingle"]
            with open(logs / f"{name}.log", "w") as log:
                procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=logs,
                                              start_new_session=True))
        yield [f"{name}@{socket.gethostname()}" for name in ("cpu1", "gpu1")]
    finally:
        for proc in procs:
            _stop(proc, group=True)


def _audit_resources(export: Path, data: Path) -> dict[str, object]:
    return {"radaudit": RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=32, workers=1),
            "audit": AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0, n_splits=3,
                                 head_repeats=1, max_flag_fraction=1.0)}


def _run_config(export: Path, data: Path) -> dict[str, object]:
    """The nightly run's settings: the same as the in-process run's."""
    return {"resources": {
        # Steps take turns on the data dir (its lock): a GPU step that finds it busy retries in 2 s, not 60.
        "radaudit": {"config": {"export_dir": str(export), "data_dir": str(data), "cache_size": 32, "workers": 1,
                                "pool_retry_s": 2.0}},
        "audit": {"config": {"epochs": 1, "batch_size": 16, "image_size": 32, "on_cpu": "as_is", "num_workers": 0,
                             "n_splits": 3, "head_repeats": 1, "max_flag_fraction": 1.0}},
    }}


def test_nightly_job_on_celery_workers_with_redis_and_postgres_equals_an_in_process_run(tmp_path, redis_url, postgres):
    export, reference, data = tmp_path / "export", tmp_path / "reference", tmp_path / "data"
    for seed, folder in enumerate(("2026-12-01", "2026-12-02"), start=1):
        generate_export(export / folder, tmp_path / f"truth{seed}.parquet", n=24, seed=seed, size=48, noise=0.1,
                        missing=0.05, ood=0.05)
    load_or_create_key(reference)
    (data / KEY_FILE).parent.mkdir(parents=True)
    shutil.copy2(reference / KEY_FILE, data / KEY_FILE)  # one site, one pseudonym key
    home = _dagster_home(tmp_path / "dagster_home", postgres)
    with dg.DagsterInstance.from_config(str(home)) as pg_instance:  # its tables, and the partitions, in PostgreSQL
        tags = all_folders_tags(pg_instance, RadauditConfig(export_dir=str(export), data_dir=str(data)))
        assert len(pg_instance.get_dynamic_partitions("export_folders")) == 2
    env = {**os.environ, "PATH": PATH, "DAGSTER_HOME": str(home), "RADAUDIT_EXECUTOR": "celery",
           "RADAUDIT_CELERY_BROKER": redis_url, "RADAUDIT_EXPORT_DIR": str(export), "RADAUDIT_DATA_DIR": str(data)}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_run_config(export, data)))

    with _workers(env, tmp_path) as (cpu_worker, gpu_worker):  # they start while the in-process run runs
        # The in-process run: every asset, the backbones included (the nightly job keeps the current ones).
        from radaudit.pipelines.definitions import defs

        resources = _audit_resources(export, reference)
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize(list(defs.assets), resources=resources, instance=instance,
                              tags=all_folders_tags(instance, resources["radaudit"])).success
        # The deployment's data dir starts with the same backbones (and key), nothing else.
        shutil.copytree(reference / MODELS_DIR, data / MODELS_DIR)
        proc = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "radaudit.pipelines.definitions",
                               "-j", "nightly_audit", "-c", str(tmp_path / "run.yaml"), "--tags", json.dumps(tags)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    worker_logs = "".join((tmp_path / f"{n}.log").read_text()[-3000:] for n in ("cpu1", "gpu1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + worker_logs

    # Every step ran in a Celery worker; the GPU steps on the GPU machine's worker.
    with dg.DagsterInstance.from_config(str(home)) as pg_instance:
        (run,) = pg_instance.get_runs(filters=dg.RunsFilter(job_name="nightly_audit"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        where = {e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].value
                 for e in pg_instance.all_logs(run.run_id)
                 if e.dagster_event is not None and e.dagster_event.is_engine_event and e.step_key
                 and "Celery worker" in e.dagster_event.engine_event_data.metadata}
        steps = {e.step_key for e in pg_instance.all_logs(run.run_id)
                 if e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_SUCCESS"}
    assert steps and steps == set(where), (steps, where)
    gpu_steps = {s for s in steps if s.startswith("embeddings")}
    assert len(gpu_steps) == 3 and {where[s] for s in gpu_steps} == {gpu_worker}
    assert {where[s] for s in steps - gpu_steps} <= {cpu_worker, gpu_worker}

    # The same index (but for when each run first saw the files), errors, cache, embeddings and report.
    assert len(list((data / INDEX_DIR).glob("*.parquet"))) == 2
    when = ["first_seen", "missing_since"]
    pd.testing.assert_frame_equal(read_index(data).drop(columns=when), read_index(reference).drop(columns=when))
    pd.testing.assert_frame_equal(read_errors(data).drop(columns=when), read_errors(reference).drop(columns=when))
    pd.testing.assert_frame_equal(read_manifest(data), read_manifest(reference))
    names = sorted(p.name for p in (reference / EMBED_DIR).iterdir())
    assert names == sorted(p.name for p in (data / EMBED_DIR).iterdir()) and len(names) >= 8
    for name in names:
        assert (data / EMBED_DIR / name).read_bytes() == (reference / EMBED_DIR / name).read_bytes(), name
    assert (data / REPORT_CSV).read_bytes() == (reference / REPORT_CSV).read_bytes()
    assert np.array_equal(np.load(data / "probabilities" / "ensemble.npy"),
                          np.load(reference / "probabilities" / "ensemble.npy"))
