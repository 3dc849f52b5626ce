"""kill -9 at every stage of a CLI audit, then rerun: nothing lost, nothing doubled, the same report.

A real process is killed: `radaudit audit` runs in a subprocess, and at each kill point (ingest
while decoding, pretraining at the line of its first and of its last epoch, embeddings, heads,
label issues, report writing) the test reads the run's progress line, then sends SIGKILL. The
next run starts where the killed one stopped; after the last kill a run completes, and its
outputs are compared with those of a run that was never interrupted. (A run killed in a GPU-pool
step left its pool slot taken, and every later run waited for it forever, until the CLI learnt to
reap dead runs. A run killed at an epoch's line lost that epoch, whose checkpoint came after the
line, and the rerun trained it again in another order: another backbone, another report.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from radaudit.pacs.index import read_errors, read_index, read_manifest
import pytest
import torch

from radaudit.models.checkpoint import load_checkpoint
from radaudit.pacs.io import is_temp_name
from radaudit.pacs.layout import checkpoint_dir
from radaudit.pacs.synth import generate_export

ROOT = Path(__file__).resolve().parents[2]
# (step, text of its progress line): the run is killed as soon as the line appears.
KILL_POINTS = [
    ("ingest", "decoded"),
    ("backbone__simclr", "simclr epoch 1/2"),  # the rerun resumes at epoch 2 (2 workers load its batches)
    ("backbone__simclr", "simclr epoch 2/2"),  # the rerun finds the backbone finished
    ("embeddings__simclr", "started"),
    ("oof_probabilities__simclr", "started"),
    ("label_issues", "started"),
    ("mislabel_report", "started"),
]


def audit_command(export: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "radaudit.pipelines.cli", "audit", "--export", str(export), "--data", str(data),
            "--size", "32", "--workers", "1", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
            "--methods", "simclr"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return env | {"RADAUDIT_PSEUDONYM_KEY": "kill-test", "PYTHONUNBUFFERED": "1"}


def run_until(command: list[str], step: str, text: str, log: Path) -> list[str]:
    """Run ``command`` and SIGKILL it at the first progress line of ``step`` containing ``text``.

    stderr goes to ``log`` (a pipe nobody reads would fill with progress bars and stall the run)."""
    with open(log, "w") as errors:
        proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=errors,
                                text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(300, proc.kill)  # a run that hangs fails the test instead of stalling CI
    watchdog.start()
    seen = []
    for line in proc.stdout:
        seen.append(line.rstrip())
        if f" {step}: " in line and text in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    rc = proc.wait()
    watchdog.cancel()
    err = log.read_text()
    assert rc == -signal.SIGKILL, f"the run ended (rc {rc}) before {step!r} said {text!r}:\n" + \
        "\n".join(seen[-15:]) + "\n" + err[-2000:]
    return seen


def finish(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def html_of(data: Path) -> str:
    """The HTML report with what names its own data dir (the review folder, the verdicts' storage key) blanked."""
    text = (data / "reports" / "mislabel_report.html").read_text(encoding="utf-8")
    store = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:12]
    return text.replace(str(data.resolve()), "<data>").replace(store, "<store>")


def report(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    generate_export(root / "export", root / "truth.parquet", n=40, seed=3, size=64, noise=0.1, ood=0.05)
    return root / "export"


def test_kill_at_every_stage_then_rerun_gives_the_uninterrupted_report(export, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finish(audit_command(export, straight))
    for step, text in KILL_POINTS:
        run_until(audit_command(export, killed), step, text, tmp_path / "stderr.log")
    finish(audit_command(export, killed))

    pd.testing.assert_frame_equal(report(killed), report(straight))
    for name in ("audit/label_issues.parquet", "reports/mislabel_report.csv"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    for checkpoint in ("epoch-0001", "epoch-0002"):  # the backbone's whole state, both epochs
        ours, theirs = (load_checkpoint(checkpoint_dir(d, "simclr") / checkpoint) for d in (killed, straight))
        assert ours.state["history"] == theirs.state["history"]
        assert all(torch.equal(ours.state_dict[k], v) for k, v in theirs.state_dict.items()), \
            checkpoint
    assert html_of(killed) == html_of(straight)
    for name in ("embeddings/simclr.npy", "probabilities/simclr.npy", "probabilities/ensemble.npy"):
        np.testing.assert_array_equal(np.load(killed / name), np.load(straight / name), err_msg=name)
    index = read_index(killed)
    assert len(index) == len(read_index(straight))
    assert index["path_hash"].is_unique and index["sop_instance_uid"].is_unique  # nothing doubled
    assert read_errors(killed).empty
    manifest = read_manifest(killed)
    assert manifest["sop_instance_uid"].is_unique and set(manifest["sop_instance_uid"]) == set(index["sop_instance_uid"])
    leftovers = [p for p in killed.rglob("*") if is_temp_name(p.name) and "dagster" not in p.parts]
    assert leftovers == []  # a killed writer's temp files are swept by the next run
