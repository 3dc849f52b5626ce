"""The Dagster UI in a real browser: the webserver on localhost, headless Chromium, screenshots.

Set RADAUDIT_SCREENSHOT_DIR to keep the screenshots; without Chromium the test is skipped.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from radaudit.assets.resources import AuditConfig, RadauditConfig
from radaudit.pacs.synth import generate_export
from radaudit.pipelines.definitions import defs
from radaudit.pipelines.jobs import all_folders_tags

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900", "--virtual-time-budget=20000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                              ".ci/run installs it, this machine lacks it")
def test_asset_graph_and_report_page_render(tmp_path):
    home, export, data = tmp_path / "home", tmp_path / "export", tmp_path / "data"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    generate_export(export, tmp_path / "truth.parquet", n=48, seed=1, size=64)
    instance = dg.DagsterInstance.from_config(str(home))
    resources = {
        "radaudit": RadauditConfig(export_dir=str(export), data_dir=str(data), cache_size=32, workers=1),
        "audit": AuditConfig(epochs=1, batch_size=16, image_size=32, on_cpu="as_is", num_workers=0, n_splits=2,
                             max_flag_fraction=1.0),
    }
    assert dg.materialize(list(defs.assets), resources=resources, instance=instance,
                          tags=all_folders_tags(instance, resources["radaudit"])).success
    instance.dispose()

    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "RADAUDIT_EXPORT_DIR": str(export), "RADAUDIT_DATA_DIR": str(data)}
    web = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-m", "radaudit.pipelines.definitions",
                            "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Dagster webserver did not answer within 60 s")
        shots = Path(os.environ.get("RADAUDIT_SCREENSHOT_DIR", tmp_path / "shots"))
        shots.mkdir(parents=True, exist_ok=True)
        group = "/locations/__repository__@radaudit.pipelines.definitions/asset-groups/{}"
        # page -> what a steward must see there (metadata keys, descriptions, asset names)
        pages = {
            "asset_graph": ("/asset-groups", ["ingest", "labels", "pretrain", "audit"]),
            # With near_duplicates in the group the graph zooms out: the ensemble's long name may be shortened.
            "audit_group": (group.format("audit"), [r"ens(emble|\u2026)_probabilities", "label_issues",
                                                    "mislabel_report"]),
            # Backbone and embeddings nodes both read "simclr"; their kinds tell them apart.
            "pretrain_group": (group.format("pretrain"), ["pytorch", "numpy"]),
            "report_asset": ("/assets/mislabel_report", ["radiologists' report", "top_flags", "flagged_fraction",
                                                        "file:///"]),
            "backbone_asset": ("/assets/backbone/simclr", ["contrastive pretraining", "loss_curve",
                                                          "eval/knn_accuracy", "eval/linear_probe_accuracy"]),
            "ensemble_asset": ("/assets/ensemble_probabilities", ["confusion_matrix", "accuracy_vs_recorded"]),
        }
        for name, (page, expected) in pages.items():
            _chromium([f"--screenshot={shots / (name + '.png')}", base + page], tmp_path / "profile")
            png = shots / f"{name}.png"
            assert png.exists() and png.stat().st_size > 20_000, f"no screenshot of {page}"
            dom = _chromium(["--dump-dom", base + page], tmp_path / "profile").stdout
            missing = [text for text in expected if text not in dom and not re.search(text, dom)]
            assert not missing, f"{page} does not show {missing}"
    finally:
        web.terminate()
        web.wait(timeout=30)
