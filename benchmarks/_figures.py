"""Figures of a benchmark: each printed the moment it is measured and appended to a JSON file.

The file is rewritten atomically (temporary file, then rename) after every figure, so a run that
is stopped early (a device session's time limit) keeps everything it measured, and a reader never
sees a half-written file. Default place: ``$OUT/<name>.json`` when ``OUT`` is set (the device
machine's output folder), else ``benchmarks/out/<name>.json``.

Layout::

    {"benchmark": "pretrain", "started": "...", "settings": {...}, "notes": [...],
     "figures": [{"section": "...", "name": "...", "value": 123.4, "unit": "views/s", "t_s": 12.3, ...}]}

``t_s`` is the seconds from the start of the run to the figure. Import it as
``benchmarks._figures`` with the repository root on ``sys.path`` (as the scripts put it).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from radaudit.pacs.io import write_text

__all__ = ["Figures", "default_json_path"]


def default_json_path(name: str) -> Path:
    """``$OUT/<name>.json`` where ``OUT`` is set, else ``benchmarks/out/<name>.json``."""
    out = os.environ.get("OUT")
    root = Path(out) if out else Path(__file__).resolve().parent / "out"
    return root / f"{name}.json"


class Figures:
    """Prints and records one benchmark's figures.

    Args:
        name: The benchmark's name (``pretrain``, ``augment``).
        path: The JSON file; None: :func:`default_json_path`.
        settings: The run's settings, stored once at the top of the file.
    """

    def __init__(self, name: str, path: str | os.PathLike[str] | None, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else default_json_path(name)
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {"benchmark": name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "settings": settings, "notes": [], "figures": []}
        self._write()
        print(f"figures -> {self.path}", flush=True)

    def _write(self) -> None:
        write_text(self.path, json.dumps(self.doc, indent=1, default=str) + "\n")

    def add(self, section: str, name: str, value: float, unit: str, *, shown: str | None = None,
            **extra: Any) -> None:
        """Print one figure and rewrite the file with it.

        Args:
            section: The benchmark's section, e.g. ``compute bound``.
            name: What was measured, e.g. ``simclr 224 px``.
            value: The figure (NaN is stored as null).
            unit: Its unit, e.g. ``views/s``, ``GiB``, ``%``.
            shown: The printed value; default ``value`` with one decimal.
            **extra: More fields stored with the figure (not printed).
        """
        v = float(value)
        record = {"section": section, "name": name, "value": v if math.isfinite(v) else None, "unit": unit,
                  "t_s": round(time.perf_counter() - self.t0, 2), **extra}
        self.doc["figures"].append(record)
        self._write()
        print(f"  {name:<60} {shown if shown is not None else f'{v:10.1f}'} {unit}", flush=True)

    def note(self, text: str) -> None:
        """Print a line and keep it in the file's notes."""
        self.doc["notes"].append(text)
        self._write()
        print(text, flush=True)
