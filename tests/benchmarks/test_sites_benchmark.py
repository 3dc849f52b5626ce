"""benchmarks/sites.py: its scoring on arrays with known answers, and its core end to end at a tiny size."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._runs import accuracy, accuracy_by, mislabel_list, precision_at_k  # noqa: E402
from benchmarks.quality import Recorder  # noqa: E402
from benchmarks.sites import run_pair, settings  # noqa: E402


def test_accuracy_counts_in_domain_rows_only() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    true = np.array([0, 0, 0, -1])
    assert accuracy(probs, true) == pytest.approx(2 / 3)
    assert accuracy_by(probs, true, np.array(["a", "a", "b", "b"])) == {"a": (0.5, 2), "b": (1.0, 1)}


def test_precision_at_k_ranks_labelled_in_domain_rows_by_the_probability_of_their_label() -> None:
    # Rows 0-1 wrong labels, row 2 a right label the heads doubt most, row 3 null, row 4 out of domain.
    probs = np.array([[0.3, 0.7], [0.2, 0.8], [0.95, 0.05], [0.5, 0.5], [0.99, 0.01], [0.9, 0.1]])
    recorded = np.array([0, 0, 1, -1, 1, 0])
    true = np.array([1, 1, 1, 0, -1, 0])
    listed = mislabel_list(probs, recorded, true)
    assert listed.tolist() == [False, True, True, False, False, False]  # k = 2: p 0.2 (wrong), 0.05 (right)
    assert precision_at_k(probs, recorded, true) == (0.5, 2)
    assert math.isnan(precision_at_k(probs, true.clip(0), true)[0])


def test_a_tiny_pair_of_sites_records_every_arm(tmp_path: Path) -> None:
    preset = dataclasses.replace(settings(False), n=60, epochs=1, export_size=32, cache_size=32, image_size=16,
                                 batch_size=16, embed_crop=None, num_workers=0)
    rec = Recorder(tmp_path / "sites.json", {})
    run_pair(rec, preset, (5, 6), tmp_path / "work", shards=1, ingest_workers=1)
    records = {r["step"]: r for r in json.loads((tmp_path / "sites.json").read_text())["records"]}
    arms = ["B: A->B", "B: B itself", "B: pooled", "A: B->A", "A: A itself", "A: pooled"]
    assert set(arms) | {f"{a} by device" for a in arms} <= set(records)
    assert records["ingest A+B"]["images"] == records["ingest A"]["images"] + records["ingest B"]["images"]
    in_domain = {k: v for k, v in records["ingest B"].items() if k.startswith("in_domain_")}
    assert sum(in_domain.values()) == records["B: B itself"]["images"]
    for arm in arms:
        r = records[arm]
        assert r["seed"] == "5/6" and 0.0 <= r["accuracy"] <= 1.0 and r["images"] > 50
        assert r["k"] == records[f"{arm[0]}: {arm[0]} itself"]["k"] > 0 and 0.0 <= r["precision_at_k"] <= 1.0
        by_device = {k: v for k, v in records[f"{arm} by device"].items() if k.startswith("acc_")}
        assert {k[4:] for k in by_device} == {k[10:] for k, v in records[f"ingest {arm[0]}"].items()
                                              if k.startswith("in_domain_")}
        assert all(0.0 <= v <= 1.0 for v in by_device.values())
    # Site B's devices are mostly A's rare ones.
    assert records["export B"].get("n_cr_reader", 0) > records["export A"].get("n_cr_reader", 0)
