"""Report stage: size and write time of the radiologists' report at archive scale, against the old way.

    python benchmarks/report.py [--rows 500] [--size 256] [--thumbnail 128] [--rounds 3]

Data: ``--rows`` cached images of ``--size`` px in a temporary data dir, radiograph-like: scenes of
the synthetic generator (:func:`radaudit.pacs.synth.render.render_radiograph`, all 14 regions,
portrait and landscape, burnt-in text) letterboxed as the cache stores them, each row with its own
film grain (Gaussian, sigma 4 grey levels, on the exposed area) and a random flip, so no two rows
are alike and none compresses like a constant. Every row is flagged, so the HTML shows all of them.

Contenders, each writing the whole report (CSV, thumbnails, HTML and its images) from the same
cache; the reports folder is deleted before each round, the best of ``--rounds`` is printed:

- baseline, the report before issue 24: each row's full cached image inlined as an optimized PNG
  ``data:`` URI (the large view showed the same), the CSV's thumbnails optimized PNGs named by UID.
  Rebuilt here as :func:`write_report` without images, then the old image work and the rows'
  inlined images put into its HTML, written again (one HTML write more than the old code did).
- radaudit: :func:`write_report` (a grey JPEG thumbnail inlined per row, the large view a
  lossless PNG file in ``reports/images/``).
- radaudit, rerun: :func:`write_report` over its own report, as a nightly run finds it (the large
  views' files are there: not written again).

Last, the encoding choice: the mean size of a ``--thumbnail`` px thumbnail of these images as
grey JPEG (what the HTML inlines) and as optimized PNG.

Figures go to ``benchmarks/out/report.json`` (or ``$OUT``) as they are measured.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._figures import Figures  # noqa: E402
from radaudit.pacs import cache  # noqa: E402
from radaudit.pacs.io import write_bytes, write_text  # noqa: E402
from radaudit.pacs.layout import REPORT_DIR, REPORT_HTML, REPORT_IMAGES_DIR, THUMB_DIR  # noqa: E402
from radaudit.pacs.synth.anatomy import REGIONS  # noqa: E402
from radaudit.pacs.synth.render import render_radiograph  # noqa: E402
from radaudit.pipelines.stages.reports import ReportFiles, thumbnail_jpeg, write_report  # noqa: E402

SCENES = 28  # rendered scenes; the rows are their grainy, flipped variants
GRAIN = 4.0  # grey levels


def radiograph_cache(data_dir: Path, rows: int, size: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``rows`` radiograph-like cached images of ``size`` px; return ``write_report``'s issues and meta.

    Shape of each image: (size, size), uint8, content letterboxed on black as the cache stores it.
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for k in range(min(SCENES, rows)):
        h, w = (size * 5 // 4, size) if k % 2 else (size, size * 5 // 4)
        pixels = render_radiograph(REGIONS[k % len(REGIONS)], rng, h, w, text=["12.03.2021", "ST-RAD2"]).pixels
        scenes.append(cache.letterbox(np.clip(pixels, 0.0, 1.0), size))
    uids = [f"1.2.826.0.1.3680043.10.{seed}.{i}" for i in range(rows)]
    for i, uid in enumerate(uids):
        img = scenes[i % len(scenes)]
        grain = np.where(img > 0, rng.normal(0.0, GRAIN, img.shape), 0.0)
        img = np.clip(img + grain, 0, 255).astype(np.uint8)
        cache.write_image(data_dir, uid, img[:, ::-1] if rng.random() < 0.5 else img)
    issues = pd.DataFrame({
        "sop_instance_uid": uids, "label": rng.integers(0, len(REGIONS), rows),
        "label_quality": np.sort(rng.random(rows)), "suggested_region": rng.integers(0, len(REGIONS), rows),
        "suggested_probability": rng.uniform(0.3, 1.0, rows), "ood_score": rng.random(rows) * 0.5,
        "issue": "mislabel", "rank": np.arange(1, rows + 1),
    })
    meta = pd.DataFrame({
        "sop_instance_uid": uids, "study_instance_uid": [f"1.2.826.0.2.{i // 3}" for i in range(rows)],
        "accession_number": [f"A{i:08d}" for i in range(rows)], "path": [f"P{i // 3}/IM{i}.dcm" for i in range(rows)],
        "recorded_raw": "Knie li. 2 Ebenen",
    })
    return issues, meta


def write_inline_full(issues: pd.DataFrame, meta: pd.DataFrame, data_dir: Path, thumbnail: int) -> ReportFiles:
    """The report as radaudit wrote it before issue 24: every row's full cached image inlined as PNG."""
    files = write_report(issues, meta, data_dir, class_names=list(REGIONS), thumbnail=0, top_html=len(issues))
    html = files.html_path.read_text(encoding="utf-8")
    inline = {}
    for rank, uid in enumerate(issues.sort_values("rank")["sop_instance_uid"], start=1):
        img = cache.read(data_dir, uid)
        write_bytes(data_dir / THUMB_DIR / f"{uid}.png", _png_optimized(img, thumbnail))
        inline[str(rank)] = _png_optimized(img, max(img.shape))

    def put(m: re.Match[str]) -> str:
        data = base64.b64encode(inline[m.group(2)]).decode()
        return f'{m.group(1)}<td><img class="thumb" alt="image {m.group(2)}" src="data:image/png;base64,{data}"></td>'

    html, n = re.subn(r'(<tr [^>]*data-rank="(\d+)"[^>]*><td[^>]*>[^<]*</td>)<td></td>', put, html)
    if n != len(inline):
        raise RuntimeError(f"the baseline put {n} of {len(inline)} images into the HTML: its row markup changed")
    write_text(files.html_path, html)
    return files


def _png_optimized(img: np.ndarray, size: int) -> bytes:
    """The old encoding: Pillow's PNG with ``optimize=True``."""
    import io

    from PIL import Image

    pil = Image.fromarray(img, mode="L")
    pil.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def folder_mb(path: Path) -> float:
    """Megabytes (10^6 bytes) of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path.is_dir() else 0.0


def best_of(rounds: int, write: Callable[[], ReportFiles], before: Callable[[], None]) -> float:
    """The fastest of ``rounds`` calls of ``write``, each after ``before`` (untimed)."""
    times = []
    for _ in range(rounds):
        before()
        t = time.perf_counter()
        write()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500, help="report rows, all in the HTML")
    ap.add_argument("--size", type=int, default=256, help="cache size in pixels")
    ap.add_argument("--thumbnail", type=int, default=128, help="write_report's thumbnail size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    figs = Figures("report", args.json, vars(args))
    data = Path(tempfile.mkdtemp(prefix="radaudit-report-"))
    try:
        t = time.perf_counter()
        issues, meta = radiograph_cache(data, args.rows, args.size, args.seed)
        figs.add("setup", f"{args.rows} radiograph-like cached images at {args.size} px", time.perf_counter() - t, "s")
        html, images = data / REPORT_HTML, data / REPORT_IMAGES_DIR

        def clear() -> None:
            shutil.rmtree(data / REPORT_DIR, ignore_errors=True)

        section = f"{args.rows} rows, {args.size} px cache"
        old = best_of(args.rounds, lambda: write_inline_full(issues, meta, data, args.thumbnail), clear)
        figs.add(section, "baseline (full PNG inlined per row): write", old, "s", shown=f"{old:10.2f}")
        old_mb = html.stat().st_size / 1e6
        figs.add(section, "baseline: HTML", old_mb, "MB", shown=f"{old_mb:10.2f}")

        def new() -> ReportFiles:
            return write_report(issues, meta, data, class_names=list(REGIONS), thumbnail=args.thumbnail,
                                top_html=args.rows)

        cold = best_of(args.rounds, new, clear)
        figs.add(section, f"radaudit ({args.thumbnail} px JPEG inlined, PNG file): write", cold, "s",
                 shown=f"{cold:10.2f}")
        new_mb = html.stat().st_size / 1e6
        figs.add(section, "radaudit: HTML", new_mb, "MB", shown=f"{new_mb:10.2f}")
        figs.add(section, "radaudit: images/ (loaded one at a time)", folder_mb(images), "MB",
                 shown=f"{folder_mb(images):10.2f}")
        rerun = best_of(args.rounds, new, lambda: None)
        figs.add(section, "radaudit, rerun (images already there): write", rerun, "s", shown=f"{rerun:10.2f}")
        sample = [cache.read(data, uid) for uid in issues["sop_instance_uid"][:100]]
        png = np.mean([len(_png_optimized(img, args.thumbnail)) for img in sample]) / 1e3
        jpeg = np.mean([len(thumbnail_jpeg(img, args.thumbnail)) for img in sample]) / 1e3
        figs.add("thumbnail encoding", f"{args.thumbnail} px grey PNG (optimize), mean of 100", png, "kB",
                 shown=f"{png:10.2f}")
        figs.add("thumbnail encoding", f"{args.thumbnail} px grey JPEG (quality 85, inlined), mean of 100", jpeg, "kB",
                 shown=f"{jpeg:10.2f}")
        figs.note(f"HTML {old_mb / new_mb:.1f}x smaller than the baseline's; written {old / cold:.1f}x as fast, "
                  f"{old / rerun:.1f}x on a rerun")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
