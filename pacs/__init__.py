"""DICOM side of radaudit: discovery, headers, pixels, ingest preprocessing (border removal,
orientation), pseudonymization, regions, image cache, near duplicates, and the data dir's layout.

A plain library (no Dagster, no other part of radaudit), usable from a notebook::

    from radaudit import pacs
    img = pacs.read_image("IM0001")              # float32, 2-D, [0, 1], bone bright
    thumb = pacs.cache.read(data_dir, sop_uid)   # uint8, 2-D
"""

from __future__ import annotations

from typing import Any

__all__ = ["cache", "read_image"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one submodule (e.g. in a decode worker) does not load them all.
    if name == "read_image":
        from radaudit.pacs.pixels import read_image

        return read_image
    if name == "cache":
        import radaudit.pacs.cache as cache

        return cache
    raise AttributeError(f"module 'pacs' has no attribute {name!r}")
