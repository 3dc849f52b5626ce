"""benchmarks/gauges.py: its knee figures on arrays with known answers, and its core end to end at a tiny size."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gauges import cue_figures, run_seed, settings, summarize  # noqa: E402
from benchmarks.quality import Recorder  # noqa: E402

VOCAB = ("hip", "pelvis", "knee", "hand")


def test_cue_figures_of_knees_with_and_without_a_gauge() -> None:
    hip, pelvis, knee, hand = range(4)
    probs = np.array([
        [0.6, 0.1, 0.2, 0.1],   # gauge knee called hip
        [0.1, 0.1, 0.7, 0.1],   # gauge knee called knee
        [0.1, 0.5, 0.3, 0.1],   # gauge knee called pelvis, recorded as hand (a wrong label)
        [0.0, 0.1, 0.9, 0.0],   # plain knee
        [0.1, 0.0, 0.8, 0.1],   # plain knee
        [0.8, 0.1, 0.05, 0.05],  # hip
    ])
    recorded = np.array([knee, knee, hand, knee, knee, hip])
    true = np.array([knee, knee, knee, knee, knee, hip])
    gauge = np.array([True, True, True, False, False, True])
    f = cue_figures(probs, recorded, true, gauge, VOCAB)
    assert f["accuracy"] == pytest.approx(4 / 6)
    assert (f["gauge_knees"], f["plain_knees"]) == (3, 2)
    assert f["gauge_called_cue"] == pytest.approx(2 / 3) and f["plain_called_cue"] == 0.0
    assert f["gauge_p_cue"] == pytest.approx((0.7 + 0.2 + 0.6) / 3) and f["plain_p_cue"] == pytest.approx(0.1)
    # k = 1: the hand label (p 0.1) is listed; of the right-labelled knees none is.
    assert (f["k"], f["precision_at_k"]) == (1, 1.0)
    assert f["gauge_flagged"] == 0.0 and f["plain_flagged"] == 0.0
    assert math.isnan(cue_figures(probs, recorded, true, np.zeros(6, bool), VOCAB)["gauge_called_cue"])


def test_a_tiny_seed_records_both_arms_and_both_kinds_of_heads(tmp_path: Path) -> None:
    preset = dataclasses.replace(settings(False), n=84, epochs=1, export_size=32, cache_size=32, image_size=16,
                                 batch_size=16, embed_crop=None, num_workers=0, devices=None)
    rec = Recorder(tmp_path / "gauges.json", {})
    run_seed(rec, preset, 2, tmp_path / "work", shards=1, ingest_workers=1)  # 3 of its 6 knees bear a gauge
    summarize(rec)
    doc = json.loads((tmp_path / "gauges.json").read_text())
    records = {r["step"]: r for r in doc["records"]}
    export = records["export and ingest"]
    assert min(export["gauges_hip"], export["gauges_pelvis"]) > 0.0
    assert export["gauges_elsewhere"] == 0.0 and (export["gauge_knees"], export["plain_knees"]) == (3, 3)
    for step in ("gauges: recorded heads", "gauges: true heads", "no gauges: recorded heads", "no gauges: true heads"):
        r = records[step]
        assert 0.0 <= r["accuracy"] <= 1.0 and (r["gauge_knees"], r["plain_knees"]) == (
            export["gauge_knees"], export["plain_knees"])
        for name in ("gauge", "plain"):
            assert 0.0 <= r[f"{name}_called_cue"] <= 1.0 and 0.0 <= r[f"{name}_p_cue"] <= 1.0
        assert doc["summary"][step]["gauge_knees"] == export["gauge_knees"]
    assert records["gauges: pretrain"]["epochs"] == records["no gauges: pretrain"]["epochs"] == 1
    for arm in ("gauges", "no gauges"):
        probe = records[f"{arm}: gauge probe"]
        assert probe["knees"] == 6 and 0.0 <= probe["auroc"] <= 1.0
        assert f"{arm}: gauge probe" in doc["summary"]
