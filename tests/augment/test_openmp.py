"""Importing the library makes torch's OpenMP threads wait passively (see radaudit.augment.passive_openmp)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Prints the OpenMP wait settings as they are when torch starts loading: libgomp reads them then.
SPY = """
import os, sys

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("at torch import:", os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
            sys.meta_path.remove(self)
        return None

sys.meta_path.insert(0, Spy())
import {module}
"""


@pytest.mark.parametrize("module", ["radaudit.models.data", "radaudit.augment.dataset"])
@pytest.mark.parametrize("preset, expected", [
    ({}, "PASSIVE 1000"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),  # the user's choice is kept
    ({"GOMP_SPINCOUNT": "INFINITE"}, "None INFINITE"),
])
def test_the_wait_policy_is_set_before_torch_loads(module: str, preset: dict[str, str], expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(preset)
    out = subprocess.run([sys.executable, "-c", SPY.format(module=module)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.splitlines()[0] == f"at torch import: {expected}"
