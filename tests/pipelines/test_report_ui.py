"""The reviewers' path in a real browser: headless Chromium driven over the DevTools protocol on the
HTML report of a real (tiny) audit. It opens an image large, sets verdicts, reloads and finds them,
saves the review CSV, and the next run applies it.

Set RADAUDIT_SCREENSHOT_DIR to keep the screenshots; without Chromium the test is skipped.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from radaudit.pacs.review import read_reviews
from radaudit.pacs.synth import generate_export

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """A minimal DevTools-protocol client for one page (websockets' sync client)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20).__enter__()
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"never true: {expression}")

    def shot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))


def _audit(export: Path, data: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "radaudit.pipelines.cli", "audit", "--export", str(export), "--data", str(data),
                           "--size", "64", "--workers", "1", "--epochs", "1", "--batch-size", "16",
                           "--image-size", "32", "--methods", "simclr"],
                          cwd=REPO, env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                              ".ci/run installs it, this machine lacks it")
def test_a_radiologist_reviews_in_the_html_report_and_the_next_run_applies_it(tmp_path):
    export, data, downloads = tmp_path / "export", tmp_path / "data", tmp_path / "downloads"
    downloads.mkdir()
    generate_export(export, tmp_path / "truth.parquet", n=60, seed=4, size=96, noise=0.15, ood=0.05)
    _audit(export, data)
    report = data / "reports" / "mislabel_report.html"
    csv = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig", dtype=str)
    assert len(csv) >= 3

    port = _free_port()
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                "--window-size=1400,900", f"--remote-debugging-port={port}",
                                f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shots = Path(os.environ.get("RADAUDIT_SCREENSHOT_DIR", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                version = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("Chromium's DevTools endpoint did not answer")
        Page(version["webSocketDebuggerUrl"]).send("Browser.setDownloadBehavior", behavior="allow",
                                                    downloadPath=str(downloads))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Page.navigate", url=report.as_uri())
        page.wait_for("document.readyState === 'complete' && document.querySelectorAll('#report tbody tr').length")
        page.shot(shots / "report.png")

        # At 1,400 px the table fits: no sideways scrolling.
        assert page.js("document.documentElement.scrollWidth <= window.innerWidth")
        # View and laterality are shown; UIDs are short on the page and whole in the copy button.
        # (The source path may name its file by the UID: only the UID's own button is checked.)
        first_uid = csv["sop_instance_uid"][0]
        shown = page.js(f"document.querySelector('#report tbody tr td.ids button.copy[data-full=\"{first_uid}\"]')"
                        ".textContent")
        assert first_uid not in shown and first_uid[-10:] in shown
        views = page.js("Array.from(document.querySelectorAll('#report tbody tr')).map(r => r.cells[7].textContent)")
        assert any(v.strip() for v in views), views

        # The filter box: a whole UID finds its row; a region finds the rows that name it, not every
        # row (each row's verdict list names every region).
        def shown_after(query: str) -> list[str]:
            page.js(f"(() => {{ const f = document.getElementById('filter'); f.value = {json.dumps(query)}; "
                    "f.dispatchEvent(new Event('input')); })()")
            return page.js("Array.from(document.querySelectorAll('#report tbody tr'))"
                           ".filter(r => r.style.display !== 'none').map(r => r.dataset.uid)")

        assert shown_after(first_uid) == [first_uid]
        region = csv["recorded_region"].dropna().iloc[0]
        fields = ["issue", "recorded_region", "suggested_region", "recorded_raw", "ood_reason", "accession_number",
                  "study_instance_uid", "sop_instance_uid", "source_path"]
        text = csv[fields].fillna("").astype(str).agg(" ".join, axis=1).str.replace("_", " ").str.lower()
        naming = set(csv.loc[text.str.contains(region.replace("_", " "), regex=False), "sop_instance_uid"])
        assert set(shown_after(region)) == naming and 0 < len(naming) < len(csv)
        shown_after("")

        # The image large, at the cache's full resolution (64 px), from its file beside the report, zoomed on click.
        page.js("document.querySelector('img.thumb').click()")
        page.wait_for("document.getElementById('lightbox').classList.contains('open') && "
                      "document.getElementById('big').naturalWidth")
        assert page.js("document.getElementById('big').naturalWidth") == 64
        assert page.js("document.getElementById('big').src").startswith(report.parent.as_uri() + "/images/")
        width = page.js("document.getElementById('big').getBoundingClientRect().width")
        page.js("document.getElementById('big').click()")
        assert page.js("document.getElementById('big').getBoundingClientRect().width") == 2 * width
        page.shot(shots / "image_large.png")
        page.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert not page.js("document.getElementById('lightbox').classList.contains('open')")
        # The HTML without its images folder (copied alone): the thumbnail stands in, and the caption says why.
        images = data / "reports" / "images"
        images.rename(tmp_path / "images-away")
        page.js("document.querySelectorAll('img.thumb')[1].click()")
        page.wait_for("document.getElementById('caption').textContent.indexOf('thumbnail only') >= 0")
        assert page.js("document.getElementById('big').src").startswith("data:image/jpeg;base64,")
        page.wait_for("document.getElementById('big').naturalWidth === 64")  # the 64 px cache's thumbnail
        page.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        (tmp_path / "images-away").rename(images)

        # Verdicts on three rows, kept across a reload.
        verdicts = {csv["sop_instance_uid"][0]: "confirm", csv["sop_instance_uid"][1]: "reject",
                    csv["sop_instance_uid"][2]: "knee"}
        for uid, verdict in verdicts.items():
            page.js(f"(() => {{ const s = document.querySelector('tr[data-uid=\"{uid}\"] select.verdict'); "
                    f"s.value = '{verdict}'; s.dispatchEvent(new Event('change')); }})()")
        assert page.js("document.getElementById('reviewed').textContent") == "3 reviewed"
        page.send("Page.reload")
        time.sleep(0.5)
        page.wait_for("document.readyState === 'complete' && document.getElementById('reviewed').textContent")
        kept = page.js("Object.fromEntries(Array.from(document.querySelectorAll('#report tbody tr'))"
                       ".map(r => [r.dataset.uid, r.querySelector('select.verdict').value]).filter(e => e[1]))")
        assert kept == verdicts
        page.shot(shots / "verdicts.png")

        # Save: the review CSV the review/ folder accepts, with the report's columns.
        page.js("document.getElementById('save').click()")
        deadline = time.monotonic() + 20
        while not [p for p in downloads.glob("review-*.csv")] and time.monotonic() < deadline:
            time.sleep(0.2)
        (saved,) = downloads.glob("review-*.csv")
        assert str(data.resolve() / "review") in page.js("document.getElementById('review-folder').textContent")
    finally:
        browser.kill()
        browser.wait()

    raw = saved.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    back = pd.read_csv(saved, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert list(back.columns) == [*csv.columns, "verdict"]
    assert back["sop_instance_uid"].tolist() == csv["sop_instance_uid"].tolist()[:len(back)]
    assert dict(zip(back.loc[back["verdict"] != "", "sop_instance_uid"], back.loc[back["verdict"] != "", "verdict"])) \
        == verdicts
    (data / "review").mkdir()
    shutil.copy(saved, data / "review" / saved.name)
    overrides = read_reviews(data, ["skull", "cervical_spine", "thoracic_spine", "lumbar_spine", "chest", "clavicle",
                                    "shoulder", "elbow", "hand", "pelvis", "hip", "knee", "ankle", "foot"])
    got = {u: (v, r) for u, v, r in zip(overrides["sop_instance_uid"], overrides["verdict"], overrides["region"])}
    uids = list(verdicts)
    # 'confirm' confirms the row's finding: its suggested region, or, on an out-of-domain row, that finding.
    assert got[uids[0]] == (("out_of_domain", None) if csv["issue"][0] == "out_of_domain"
                            else ("confirm", csv["suggested_region"][0]))
    assert got[uids[1]] == ("reject", None) and got[uids[2]] == ("region", "knee")

    _audit(export, data)  # the next run applies the verdicts
    applied = pd.read_parquet(data / "labels" / "label_overrides.parquet")
    assert set(applied["sop_instance_uid"]) == set(verdicts)
    issues = pd.read_parquet(data / "audit" / "label_issues.parquet").set_index("sop_instance_uid")
    assert not (issues.loc[list(verdicts), "issue"] == "mislabel").any()  # resolved: not flagged again
