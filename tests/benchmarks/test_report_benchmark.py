"""benchmarks/report.py: the report at archive scale stays small, and the baseline is the old report.

The 500-row test writes 500 radiograph-like 256 px images and a report of all of them (about 15 s
on 2 cores).
"""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.report import radiograph_cache, write_inline_full  # noqa: E402
from radaudit.pacs.cache import read  # noqa: E402
from radaudit.pacs.synth.anatomy import REGIONS  # noqa: E402
from radaudit.pipelines.stages.reports import MAX_THUMBNAIL, write_report  # noqa: E402


def test_500_rows_of_a_256_px_cache_stay_under_10_mb_even_at_the_largest_thumbnails(tmp_path: Path) -> None:
    issues, meta = radiograph_cache(tmp_path, 500, 256)
    first = read(tmp_path, issues["sop_instance_uid"][0])
    assert first.shape == (256, 256) and len(np.unique(first)) > 100  # radiograph-like, not a constant
    files = write_report(issues, meta, tmp_path, class_names=list(REGIONS), thumbnail=MAX_THUMBNAIL, top_html=500)
    page = files.html_path.read_bytes()
    thumbs = re.findall(rb'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbs) == 500 and len(set(thumbs)) == 500
    assert max(Image.open(io.BytesIO(base64.b64decode(thumbs[-1]))).size) == 256
    assert len(page) < 10_000_000, f"{len(page) / 1e6:.2f} MB"
    assert len(list(files.image_dir.iterdir())) == 500


def test_the_baseline_inlines_every_full_image_as_the_old_report_did(tmp_path: Path) -> None:
    issues, meta = radiograph_cache(tmp_path, 6, 64, seed=1)
    files = write_inline_full(issues, meta, tmp_path, thumbnail=32)
    page = files.html_path.read_text(encoding="utf-8")
    full = re.findall(r'<img class="thumb" alt="image (\d)" src="data:image/png;base64,([^"]+)"', page)
    assert [rank for rank, _ in full] == ["1", "2", "3", "4", "5", "6"] and 'data-large="' not in page
    for (rank, data), uid in zip(full, issues.sort_values("rank")["sop_instance_uid"]):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))), read(tmp_path, uid))
        assert max(Image.open(files.thumbnail_dir / f"{uid}.png").size) == 32
