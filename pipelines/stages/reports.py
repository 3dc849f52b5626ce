"""The radiologists' report: a ranked CSV and an HTML gallery of suspect labels, one folder, no server.

Written under ``<data dir>/reports/``:

- ``mislabel_report.csv``: most suspect first, the columns of ``CSV_COLUMNS`` (without
  ``accession_number`` when ``include_accession=False``). UTF-8 with a byte-order mark and
  minimal quoting (the ``csv`` module quotes fields with the delimiter, quotes or line breaks),
  so Excel and LibreOffice open umlauts and commas in PACS strings cleanly. Text that a
  spreadsheet would run as a formula (starting with ``= + - @``, tab or CR) gets a leading ``'``.
- ``thumbnails/<digest>.png``: a small PNG of each reported image's cached pixels; the CSV's
  ``thumbnail`` column holds the path relative to ``reports/``.
- ``images/<digest>.png``: each HTML row's cached image at the size the cache holds, lossless,
  written once; the HTML's large view loads it by its relative URL (file:// needs no server).
- ``mislabel_report.html``: the top ``top_html`` rows, each with a grey JPEG thumbnail of at most
  :data:`MAX_THUMBNAIL` px inlined as a ``data:`` URI (500 rows stay a few MB, where the full
  images inlined made about 20 MB), inline CSS and JS, no request outside ``reports/``; click a column
  header to sort, type in the box or pick an issue kind to filter, click a thumbnail to see the
  image large (fit to the window, then 2x and 4x on click). Each row has a verdict control; verdicts are kept in the
  browser's local storage and "Save verdicts" downloads them as a review CSV (the report's
  columns plus ``verdict``, UTF-8 with BOM) that :mod:`radaudit.pacs.review` reads from ``review/``.

``<digest>`` is a hash of the pixels (:func:`radaudit.pacs.duplicates.pixel_digest`): no UID or
other identifier in a file name, an image shown by two rows is one file, a rerun finds unchanged
images already written, and a page of an earlier report left open never shows another image under
a reused name. Every file is written atomically (temp file + rename), the images before the CSV
and HTML that name them, and the earlier report's images are removed only after them, so whatever
crashes, the report on disk refers only to files that are there.

Only the columns listed here ever leave the inputs (an allow-list): patient names, birth dates
or any other column of ``meta`` are never written.

Run the tests with::

    python -m pytest tests/pipelines/test_report.py -q
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import html
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from radaudit.pacs.duplicates import pixel_digest
from radaudit.pacs.io import is_temp_name, write_bytes, write_text
from radaudit.pacs.layout import REPORT_CSV, REPORT_DIR, REPORT_HTML, REPORT_IMAGES_DIR, REVIEW_DIR, THUMB_DIR

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CSV_COLUMNS", "JPEG_QUALITY", "MAX_THUMBNAIL", "ReportFiles", "thumbnail_jpeg", "thumbnail_png",
           "write_report"]

# The long side of the inlined thumbnails may not exceed this: 500 rows at 256 px stay under 10 MB of HTML.
MAX_THUMBNAIL = 256
# Grey JPEG at this quality measured 2.5x smaller than an optimized PNG at 128 px on radiograph-like
# images (benchmarks/report.py); the large view shows the lossless PNG.
JPEG_QUALITY = 85


CSV_COLUMNS: tuple[str, ...] = (
    "rank", "sop_instance_uid", "study_instance_uid", "accession_number", "recorded_region",
    "recorded_raw", "suggested_region", "suggested_probability", "second_region", "second_probability",
    "label_quality", "ood_score",
    "issue", "ood_reason", "duplicate_of", "thumbnail", "source_path",
)
_KINDS = ("near_duplicate", "out_of_domain", "mislabel", "missing_label")
_ISSUE_COLUMNS = ("sop_instance_uid", "label", "label_quality", "suggested_region", "suggested_probability",
                  "ood_score", "issue", "rank")
_META_COLUMNS = ("sop_instance_uid", "study_instance_uid", "path", "recorded_raw")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ReportFiles:
    """Paths :func:`write_report` wrote and how many rows each holds."""

    csv_path: Path
    html_path: Path
    thumbnail_dir: Path
    n_csv_rows: int
    n_html_rows: int
    image_dir: Path


def _shrunk(image: np.ndarray, size: int) -> Image.Image:
    """A 2-D uint8 image as a grey Pillow image, its long side scaled down to ``size`` (never up)."""
    from PIL import Image

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (a cached radiograph), got shape {img.shape}")
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="L")
    pil.thumbnail((size, size), Image.Resampling.LANCZOS)
    return pil


def _encoded(pil: Image.Image, fmt: str) -> bytes:
    """``pil`` as PNG (lossless; zlib's default level: ``optimize`` took 1.5-2.7x the time for 1-2% fewer
    bytes) or as JPEG."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_png(image: np.ndarray, size: int = 128) -> bytes:
    """A PNG of a 2-D uint8 image, its long side scaled to ``size`` pixels (lossless at its own size)."""
    return _encoded(_shrunk(image, size), "PNG")


def thumbnail_jpeg(image: np.ndarray, size: int = 128) -> bytes:
    """A grey JPEG (quality :data:`JPEG_QUALITY`) of a 2-D uint8 image, its long side scaled to ``size`` pixels."""
    return _encoded(_shrunk(image, size), "JPEG")


def _write_once(folder: Path, pixels: np.ndarray, encode: Callable[[], bytes], written: set[str]) -> str:
    """Write ``encode()``, the PNG of ``pixels``, into ``folder`` as ``<pixel digest>.png``; return that name.

    The name comes from the pixels alone (:func:`radaudit.pacs.duplicates.pixel_digest`): it names no
    patient or UID, and a file of that name already there (this report's, or an earlier run's: every
    write is whole) holds these pixels, so it is not written again.
    """
    name = f"{pixel_digest(pixels)}.png"
    if name not in written and not (folder / name).is_file():
        write_bytes(folder / name, encode())
    written.add(name)
    return name


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove the files in ``folder`` that the report just written does not name (an earlier report's)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name not in keep and path.is_file() and not is_temp_name(path.name):
            path.unlink(missing_ok=True)


def _defuse(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _validate(issues: pd.DataFrame, meta: pd.DataFrame, class_names: Sequence[str], include_accession: bool,
              top_html: int, thumbnail: int, delimiter: str) -> list[str]:
    if not isinstance(issues, pd.DataFrame):
        raise ValueError("issues must be the DataFrame from radaudit.models.audit.find_issues")
    missing = [c for c in _ISSUE_COLUMNS if c not in issues.columns]
    if missing:
        raise ValueError(f"issues lacks columns {missing}; pass find_issues(..., sop_instance_uids=uids)")
    if not isinstance(meta, pd.DataFrame):
        raise ValueError("meta must be a DataFrame: the instance index merged with the region labels")
    need = list(_META_COLUMNS) + (["accession_number"] if include_accession else [])
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks columns {missing}; merge index/dicom_index.parquet with "
                         "labels/region_labels.parquet on sop_instance_uid"
                         + (" (or pass include_accession=False)" if "accession_number" in missing else ""))
    if meta["sop_instance_uid"].duplicated().any():
        raise ValueError("meta has duplicate sop_instance_uid rows; keep one row per instance")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty; pass the region vocabulary")
    labels = pd.to_numeric(issues["label"], errors="coerce")
    sugg = pd.to_numeric(issues["suggested_region"], errors="coerce")
    if labels.isna().any() or (labels < -1).any() or (labels >= len(names)).any() \
            or sugg.isna().any() or (sugg < 0).any() or (sugg >= len(names)).any():
        raise ValueError(f"issues has region indices outside 0..{len(names) - 1} (or -1 for null labels); "
                         "pass the class_names the probabilities were computed with")
    if isinstance(top_html, bool) or not isinstance(top_html, (int, np.integer)) or top_html < 0:
        raise ValueError(f"top_html must be an integer >= 0, got {top_html!r}")
    if isinstance(thumbnail, bool) or not isinstance(thumbnail, (int, np.integer)) \
            or not 0 <= thumbnail <= MAX_THUMBNAIL:
        raise ValueError(f"thumbnail must be an integer from 0 to {MAX_THUMBNAIL} (the long side in pixels of "
                         f"the thumbnails; 0: no images), got {thumbnail!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"'\r\n":
        raise ValueError(f"delimiter must be one character such as ',' or ';', got {delimiter!r}")
    return names


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value)


def _rows(issues: pd.DataFrame, meta: pd.DataFrame, names: list[str], include_all: bool) -> pd.DataFrame:
    """The report rows, most suspect first, with display values (no thumbnails yet)."""
    sel = issues if include_all else issues[issues["issue"].notna()]
    sel = sel.sort_values("rank", kind="stable")
    ood = (sel["issue"] == "out_of_domain").to_numpy()
    m = meta.set_index("sop_instance_uid")
    uids = sel["sop_instance_uid"].astype(str)
    joined = m.reindex(uids.to_numpy())
    out = pd.DataFrame({
        "rank": np.arange(1, len(sel) + 1),
        "sop_instance_uid": uids.to_numpy(),
        "study_instance_uid": [_text(v) for v in joined["study_instance_uid"]],
        "accession_number": [_text(v) for v in joined["accession_number"]] if "accession_number" in joined else "",
        "recorded_region": [names[int(v)] if int(v) >= 0 else "" for v in sel["label"]],
        "recorded_raw": [_text(v) for v in joined["recorded_raw"]],
        # An out-of-domain image shows no region: it is not a radiograph of any of them.
        "suggested_region": ["" if i == "out_of_domain" else names[int(v)]
                             for v, i in zip(sel["suggested_region"], sel["issue"])],
        "suggested_probability": np.where(ood, np.nan, sel["suggested_probability"].to_numpy(dtype=float)),
        # The runner-up, so an uncertain suggestion shows both regions it hesitates between.
        "second_region": ["" if i == "out_of_domain" or not _is_index(v) else names[int(v)]
                          for v, i in zip(sel.get("second_region", pd.Series(-1, index=sel.index)), sel["issue"])],
        "second_probability": np.where(ood, np.nan, sel.get("second_probability", pd.Series(np.nan, index=sel.index))
                                       .to_numpy(dtype=float)),
        "label_quality": sel["label_quality"].to_numpy(dtype=float),
        "ood_score": sel["ood_score"].to_numpy(dtype=float),
        "issue": [_text(v) for v in sel["issue"]],
        "ood_reason": [_text(v) for v in sel["ood_reason"]] if "ood_reason" in sel else "",
        "duplicate_of": [_text(v) for v in sel["duplicate_of"]] if "duplicate_of" in sel else "",
        "thumbnail": "",
        "source_path": [_text(v) for v in joined["path"]],
        # Shown in the HTML only: what a radiologist checks first on a flagged image.
        "view": [_text(v) for v in joined["view_position"]] if "view_position" in joined else "",
        "laterality": [_first(a, b) for a, b in zip(
            joined["image_laterality"] if "image_laterality" in joined else [None] * len(joined),
            joined["laterality"] if "laterality" in joined else [None] * len(joined))],
    })
    return out.reset_index(drop=True)


def _is_index(value: object) -> bool:
    """A class index (not -1, NaN or None): older issue tables lack the runner-up."""
    return isinstance(value, (int, np.integer, float, np.floating)) and not pd.isna(value) and int(value) >= 0


def _first(*values: object) -> str:
    """The first non-empty of ``values`` as text."""
    return next((t for t in (_text(v).strip() for v in values) if t), "")


def _fmt(value: object) -> str:
    """Four decimals; four significant digits below 0.001, so the most suspect rows do not all read 0.0000."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if np.isnan(v):
            return ""
        return f"{v:.4f}" if v == 0.0 or abs(v) >= 1e-3 else f"{v:.4g}"
    return _text(value)


def _csv_cells(rows: pd.DataFrame, columns: list[str], defuse: bool) -> list[list[str]]:
    """Each row's CSV cells as text (the HTML's "save verdicts" writes the same cells)."""
    free_text = {"recorded_raw", "source_path", "accession_number"}
    out = []
    for rec in rows[columns].itertuples(index=False, name=None):
        cells = [_fmt(v) for v in rec]
        if defuse:
            cells = [_defuse(c) if col in free_text else c for col, c in zip(columns, cells)]
        out.append(cells)
    return out


def _csv_text(rows: pd.DataFrame, columns: list[str], delimiter: str, defuse: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(_csv_cells(rows, columns, defuse))
    return "\ufeff" + buf.getvalue()


def write_report(issues: pd.DataFrame, meta: pd.DataFrame, data_dir: str | os.PathLike[str], *,
                 class_names: Sequence[str], include_accession: bool = True, include_all: bool = False,
                 top_html: int = 500, thumbnail: int = 128, delimiter: str = ",",
                 defuse_formulas: bool = True, warnings: Sequence[str] = ()) -> ReportFiles:
    """Write the CSV, the thumbnails, the HTML gallery and its images under ``<data_dir>/reports/``.

    The images go first, each file atomically; then the CSV and the HTML that name them; last, the
    files of an earlier report that these do not name are removed. A crash at any point leaves a
    report (the earlier or this one) whose every image is on disk.

    Args:
        issues: :func:`radaudit.models.audit.find_issues` output with ``sop_instance_uid``.
        meta: One row per instance with ``sop_instance_uid``, ``study_instance_uid``, ``path``
            (relative to the export), ``recorded_raw`` and, with ``include_accession``,
            ``accession_number``: the instance index merged with the region labels. Other
            columns are ignored.
        data_dir: The pipeline's data dir (thumbnails come from its image cache).
        class_names: The region vocabulary, index = class.
        include_accession: Write the ``accession_number`` column (a site may consider it
            identifying).
        include_all: Every image, not only flagged ones (thumbnails for all of them too).
        top_html: Rows in the HTML gallery (the most suspect ones).
        thumbnail: Long side in pixels of the thumbnails (the CSV's PNG files, the JPEGs inlined in the
            HTML), at most :data:`MAX_THUMBNAIL`; 0 writes no images at all (nor the large view's).
        delimiter: CSV field separator (``";"`` for spreadsheets in German locales).
        defuse_formulas: Prefix free-text cells that start like a formula with ``'``.
        warnings: Shown at the top of the HTML (e.g. the audit's "features too weak" warning).

    Returns:
        :class:`ReportFiles`.
    """
    from radaudit.pacs import cache

    names = _validate(issues, meta, class_names, include_accession, top_html, thumbnail, delimiter)
    data_dir = Path(data_dir)
    out_dir = data_dir / REPORT_DIR
    rows = _rows(issues, meta, names, include_all)
    thumbs_rel, images_rel = (d.relative_to(REPORT_DIR).as_posix() for d in (THUMB_DIR, REPORT_IMAGES_DIR))
    shown: dict[int, _Shown] = {}
    thumbs: set[str] = set()
    images: set[str] = set()
    if thumbnail:
        thumb_paths = [""] * len(rows)
        for i, uid in enumerate(rows["sop_instance_uid"]):
            try:
                img = cache.read(data_dir, uid)
            except KeyError:
                continue  # not cached (e.g. undecodable): no thumbnail
            small = _shrunk(img, thumbnail)
            name = _write_once(out_dir / thumbs_rel, np.asarray(small), partial(_encoded, small, "PNG"), thumbs)
            thumb_paths[i] = f"{thumbs_rel}/{name}"
            if i < top_html:
                name = _write_once(out_dir / images_rel, img, partial(thumbnail_png, img, max(img.shape)), images)
                shown[i] = _Shown(_encoded(small, "JPEG"), f"{images_rel}/{name}")
        rows["thumbnail"] = thumb_paths
    columns = [c for c in CSV_COLUMNS if include_accession or c != "accession_number"]
    csv_path = data_dir / REPORT_CSV
    write_text(csv_path, _csv_text(rows, columns, delimiter, defuse_formulas))
    html_rows = rows.head(top_html)
    html_path = data_dir / REPORT_HTML
    review = Review(folder=str(data_dir.resolve() / REVIEW_DIR), columns=columns,
                    cells=_csv_cells(html_rows, columns, defuse_formulas), regions=names,
                    store=hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12])
    write_text(html_path, _html(html_rows, shown, columns, issues, [str(w) for w in warnings], review))
    _prune(data_dir / THUMB_DIR, thumbs)
    _prune(data_dir / REPORT_IMAGES_DIR, images)
    return ReportFiles(csv_path, html_path, data_dir / THUMB_DIR, len(rows), len(html_rows),
                       data_dir / REPORT_IMAGES_DIR)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}
.summary{color:#555;margin:0 0 8px}
.howto{background:#eef5ff;border-left:4px solid #3b7ddd;padding:6px 10px;margin:0 0 10px;font-size:13px}
.howto code{font-size:12px;word-break:break-all}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:0 0 10px;position:sticky;top:0;background:#fafafa;padding:6px 0;z-index:2}
.controls input{flex:0 1 320px;padding:5px 8px;border:1px solid #bbb;border-radius:4px}
.controls select,.controls button{padding:5px 8px;border:1px solid #bbb;border-radius:4px;background:#fff}
.controls button.primary{background:#3b7ddd;color:#fff;border-color:#3b7ddd;cursor:pointer}
#count,#reviewed{color:#555}
table{border-collapse:collapse;width:100%;background:#fff;table-layout:fixed}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:middle;overflow-wrap:anywhere}
th{background:#f0f0f2;cursor:pointer;user-select:none;position:sticky;top:44px;z-index:1;font-size:13px}
th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ids{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:#444}
td.ids button{font:inherit;border:0;background:none;padding:0;color:#2457a6;cursor:copy;text-decoration:underline dotted}
td.ids .path{display:block;color:#666}
td.raw{white-space:pre-wrap;font-size:13px}
tr[data-issue="out_of_domain"] td.sug{color:#888;font-weight:normal}
img.thumb{width:96px;height:96px;object-fit:contain;background:#000;display:block;cursor:zoom-in}
.kind{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px}
.kind-mislabel{background:#fde2e1;color:#a1130c}
.kind-out_of_domain{background:#e8e1fb;color:#4b1fa8}
.kind-near_duplicate{background:#dff3e4;color:#0b6b2a}
.kind-missing_label{background:#fff1cc;color:#7a5200}
.rec{color:#a1130c}.sug{color:#0b6b2c;font-weight:600}
small.second{color:#555;font-weight:normal}
.warning{background:#fff4e5;border-left:4px solid #e08a00;padding:6px 10px;margin:0 0 12px}
td.reason{font-size:12px;color:#4b1fa8}
select.verdict{width:100%;padding:3px}
tr.done{background:#f3fbf4}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.92);z-index:10;overflow:auto;text-align:center}
#lightbox.open{display:block}
#lightbox img{image-rendering:pixelated;margin:48px auto 16px;display:block;cursor:zoom-in;background:#000}
#lightbox .bar{position:fixed;top:0;left:0;right:0;color:#eee;padding:10px 16px;font-size:13px;text-align:left;background:rgba(0,0,0,.6)}
#lightbox .bar button{margin-left:6px}
#toast{position:fixed;bottom:16px;right:16px;background:#1d1d1f;color:#fff;padding:6px 12px;border-radius:4px;display:none;z-index:11}
"""

_JS = """
(function(){
  var table=document.getElementById('report'), tbody=table.tBodies[0];
  var rows=Array.prototype.slice.call(tbody.rows);
  var text=document.getElementById('filter'), kind=document.getElementById('kind'), count=document.getElementById('count');
  var review=JSON.parse(document.getElementById('review-data').textContent);
  var prefix='radaudit-verdicts:'+review.store+':';
  // Storage may be blocked (a browser's privacy settings): verdicts then live until the page closes.
  var store={get:function(k){try{return localStorage.getItem(k);}catch(e){return null;}},
             set:function(k,v){try{if(v)localStorage.setItem(k,v);else localStorage.removeItem(k);}catch(e){}}};
  function toast(msg){var t=document.getElementById('toast'); t.textContent=msg; t.style.display='block';
    clearTimeout(toast.timer); toast.timer=setTimeout(function(){t.style.display='none';},1600);}
  function apply(){
    var q=text.value.trim().toLowerCase().replace(/_/g,' '), k=kind.value, shown=0;
    rows.forEach(function(r){
      var v=r.querySelector('select.verdict').value;
      var ok=(!k||(k==='unreviewed'?!v:k==='reviewed'?!!v:r.getAttribute('data-issue')===k))
             &&(!q||r.getAttribute('data-search').indexOf(q)>=0);
      r.style.display=ok?'':'none'; if(ok)shown++;
    });
    count.textContent=shown+' of '+rows.length+' shown';
  }
  function reviewedCount(){
    var n=rows.filter(function(r){return r.querySelector('select.verdict').value;}).length;
    document.getElementById('reviewed').textContent=n+' reviewed';
  }
  text.addEventListener('input',apply); kind.addEventListener('change',apply);
  var ths=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){
    if(th.getAttribute('data-type')==='none')return;
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc'), num=th.getAttribute('data-type')==='num';
      Array.prototype.forEach.call(ths,function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'), y=b.cells[i].getAttribute('data-v'), c;
        if(num){x=x===''?Infinity:parseFloat(x); y=y===''?Infinity:parseFloat(y); c=x-y;}
        else{c=x.localeCompare(y);}
        return asc?c:-c;
      });
      rows.forEach(function(r){tbody.appendChild(r);});
    });
  });
  // Verdicts: kept in the browser's local storage, so a reload (or a crash) loses none.
  rows.forEach(function(r){
    var sel=r.querySelector('select.verdict'), uid=r.getAttribute('data-uid');
    var kept=store.get(prefix+uid);
    if(kept!==null){sel.value=kept; r.classList.toggle('done',!!sel.value);}
    sel.addEventListener('change',function(){
      store.set(prefix+uid,sel.value);
      r.classList.toggle('done',!!sel.value); reviewedCount(); apply();
    });
  });
  function csvCell(v){return /[",\\r\\n]/.test(v)?'"'+v.replace(/"/g,'""')+'"':v;}
  document.getElementById('save').addEventListener('click',function(){
    var byUid={}; rows.forEach(function(r){byUid[r.getAttribute('data-uid')]=r.querySelector('select.verdict').value;});
    var uidAt=review.columns.indexOf('sop_instance_uid');
    var lines=[review.columns.concat(['verdict']).map(csvCell).join(',')];
    review.cells.forEach(function(cells){lines.push(cells.concat([byUid[cells[uidAt]]||'']).map(csvCell).join(','));});
    var blob=new Blob(['\\ufeff'+lines.join('\\r\\n')+'\\r\\n'],{type:'text/csv;charset=utf-8'});
    var stamp=new Date().toISOString().slice(0,16).replace(/[-:T]/g,'');
    var a=document.createElement('a'); a.href=URL.createObjectURL(blob); a.download='review-'+stamp+'.csv';
    document.body.appendChild(a); a.click(); a.remove();
    toast('saved '+a.download+': put it into '+review.folder);
  });
  // Identifiers: shortened on the page, copied whole on click.
  table.addEventListener('click',function(e){
    var b=e.target.closest('button.copy'); if(!b)return;
    var full=b.getAttribute('data-full');
    (navigator.clipboard?navigator.clipboard.writeText(full):Promise.reject()).then(
      function(){toast('copied '+full);},
      function(){window.prompt('Copy:',full);});
  });
  // The image large, from the lossless file beside the report: click a thumbnail (it fits the window); click the
  // image to zoom 2x, 4x, back; Esc closes. Without that file (the HTML copied alone) the thumbnail stands in.
  var box=document.getElementById('lightbox'), big=document.getElementById('big'), caption=document.getElementById('caption');
  var zoom=1, fit=1;
  function setZoom(z){zoom=z; big.style.width=(big.naturalWidth*z)+'px'; big.style.cursor=z>=4*fit?'zoom-out':'zoom-in';}
  table.addEventListener('click',function(e){
    var img=e.target.closest('img.thumb'); if(!img)return;
    var r=img.closest('tr');
    big.onload=function(){fit=Math.max(1,Math.floor(Math.min(window.innerWidth,window.innerHeight-80)/big.naturalWidth)); setZoom(fit);};
    caption.textContent='rank '+r.getAttribute('data-rank')+' \\u00b7 '+r.getAttribute('data-caption');
    big.onerror=function(){big.onerror=null; big.src=img.src;
      caption.textContent+=' \\u00b7 thumbnail only: '+img.getAttribute('data-large')+
        ' is not beside this file (copy the whole reports folder)';};
    big.src=img.getAttribute('data-large')||img.src;
    box.classList.add('open');
  });
  big.addEventListener('click',function(){setZoom(zoom>=4*fit?fit:zoom*2);});
  document.getElementById('close').addEventListener('click',function(){box.classList.remove('open');});
  document.addEventListener('keydown',function(e){if(e.key==='Escape')box.classList.remove('open');});
  reviewedCount(); apply();
})();
"""


@dataclass(frozen=True)
class _Shown:
    """An HTML row's images: the JPEG thumbnail to inline, the lossless file's URL relative to the report."""

    jpeg: bytes
    large: str


@dataclass(frozen=True)
class Review:
    """What the HTML needs to save verdicts as a review CSV.

    Attributes:
        folder: The data dir's ``review/`` folder, where the saved file goes.
        columns: The report CSV's columns (the saved file has them, then ``verdict``).
        cells: Per HTML row, its CSV cells.
        regions: The region vocabulary (verdict choices besides confirm, reject, out_of_domain).
        store: Key of the browser's local storage for this data dir's verdicts.
    """

    folder: str
    columns: list[str]
    cells: list[list[str]]
    regions: list[str]
    store: str


# column -> (header, kind: num | text | none, css class, width)
_HTML_COLUMNS: dict[str, tuple[str, str, str, str]] = {
    "rank": ("#", "num", "num", "44px"),
    "thumbnail": ("Image", "none", "", "108px"),
    "issue": ("Issue", "text", "", "104px"),
    "recorded_region": ("Recorded", "text", "rec", "96px"),
    "suggested_region": ("Suggested", "text", "sug", "96px"),
    "suggested_probability": ("P(sugg.)", "num", "num", "64px"),
    "label_quality": ("Label quality", "num", "num", "72px"),
    "view": ("View / side", "text", "", "70px"),
    "ood_reason": ("Why out of domain", "text", "reason", "150px"),
    "recorded_raw": ("Recorded from (PACS text)", "text", "raw", "150px"),
    "verdict": ("Verdict", "none", "", "128px"),
    "ids": ("Identifiers (click to copy)", "text", "ids", "auto"),
}
_UID_TAIL = 10
# A suggestion less likely than this shows its runner-up beside it.
UNSURE_BELOW = 0.6


def _short(uid: str) -> str:
    """A UID's last digits, enough to tell rows apart at a glance."""
    return uid if len(uid) <= _UID_TAIL + 1 else "\u2026" + uid[-_UID_TAIL:]


def _html(rows: pd.DataFrame, images: dict[int, _Shown], csv_columns: list[str], issues: pd.DataFrame,
          warnings: list[str], review: Review) -> str:
    esc = html.escape
    counts = issues["issue"].value_counts()
    summary = ", ".join(f"{int(counts.get(k, 0))} {k.replace('_', ' ')}" for k in _KINDS)
    cols = list(_HTML_COLUMNS)
    head = "".join(f'<th data-type="{_HTML_COLUMNS[c][1]}">{esc(_HTML_COLUMNS[c][0])}</th>' for c in cols)
    widths = "".join(f'<col style="width:{_HTML_COLUMNS[c][3]}">' for c in cols)
    choices = ([("", "\u2014"), ("confirm", "confirm (label wrong)"), ("reject", "reject (label right)"),
                ("out_of_domain", "out of domain")] + [(r, r) for r in review.regions])
    options = "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in choices)
    body = []
    for i, rec in enumerate(rows.to_dict("records")):
        cells = []
        for c in cols:
            kind, cls = _HTML_COLUMNS[c][1], _HTML_COLUMNS[c][2]
            if c == "thumbnail":
                im = images.get(i)
                inner = (f'<img class="thumb" alt="image {i + 1}" data-large="{esc(im.large)}" src="data:image/jpeg;'
                         f'base64,{base64.b64encode(im.jpeg).decode()}">' if im else "")
                cells.append(f"<td>{inner}</td>")
                continue
            if c == "verdict":
                cells.append(f'<td><select class="verdict" aria-label="verdict">{options}</select></td>')
                continue
            if c == "view":
                shown = " \u00b7 ".join(v for v in (_text(rec["view"]), _text(rec["laterality"])) if v)
                cells.append(f'<td data-v="{esc(shown)}">{esc(shown)}</td>')
                continue
            if c == "ids":
                parts = []
                if "accession_number" in csv_columns and rec["accession_number"]:
                    parts.append(f'acc <button class="copy" data-full="{esc(rec["accession_number"])}">'
                                 f'{esc(rec["accession_number"])}</button>')
                for label, key in (("study", "study_instance_uid"), ("image", "sop_instance_uid"),
                                   ("copy of", "duplicate_of")):
                    if rec[key]:
                        parts.append(f'{label} <button class="copy" data-full="{esc(rec[key])}" title="{esc(rec[key])}">'
                                     f'{esc(_short(rec[key]))}</button>')
                path = f'<span class="path">{esc(rec["source_path"])}</span>' if rec["source_path"] else ""
                cells.append(f'<td class="ids" data-v="{esc(rec["sop_instance_uid"])}">{" ".join(parts)}{path}</td>')
                continue
            v = rec[c]
            shown = _fmt(v)
            sort_v = ("" if shown == "" else repr(float(v))) if kind == "num" else shown
            inner = esc(shown)
            if c == "issue" and shown:
                inner = f'<span class="kind kind-{esc(shown)}">{esc(shown.replace("_", " "))}</span>'
            if c == "suggested_region" and rec["second_region"] and rec["suggested_probability"] < UNSURE_BELOW:
                inner += (f'<br><small class="second">or {esc(rec["second_region"])} '
                          f'{float(rec["second_probability"]):.2f}</small>')
            cells.append(f'<td class="{cls}" data-v="{esc(sort_v)}">{inner}</td>')
        caption = " \u00b7 ".join(t for t in (_text(rec["issue"]).replace("_", " "),
                                              f"recorded {rec['recorded_region']}" if rec["recorded_region"] else "",
                                              f"suggested {rec['suggested_region']}" if rec["suggested_region"] else "",
                                              _text(rec["view"]), _text(rec["laterality"])) if t)
        # What the filter box searches: the row's text, whole UIDs included, not the verdict list's options.
        search = " ".join(_text(rec[c]) for c in ("issue", "recorded_region", "suggested_region", "recorded_raw",
                                                  "ood_reason", "view", "laterality", "accession_number",
                                                  "study_instance_uid", "sop_instance_uid", "duplicate_of",
                                                  "source_path")
                          if c in rec).replace("_", " ").lower()
        body.append(f'<tr data-issue="{esc(_text(rec["issue"]))}" data-uid="{esc(rec["sop_instance_uid"])}" '
                    f'data-rank="{int(rec["rank"])}" data-caption="{esc(caption)}" data-search="{esc(search)}">'
                    f'{"".join(cells)}</tr>')
    kinds = "".join(f'<option value="{k}">{k.replace("_", " ")}</option>' for k in _KINDS)
    data = json.dumps(dataclasses.asdict(review), ensure_ascii=True).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>radaudit: suspected label errors</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Suspected label errors</h1>"
        + "".join(f'<p class="warning" role="alert">Warning: {esc(w)}</p>' for w in warnings) +
        f"<p class=\"summary\">{esc(summary)} among {len(issues)} images; "
        f"showing the {len(rows)} most suspect. Click a column header to sort, a thumbnail to see the image large.</p>"
        "<p class=\"howto\">Review: pick a verdict per row (<b>confirm</b>: the recorded label is wrong and the "
        "suggestion right; <b>reject</b>: the label is right; <b>out of domain</b>; or the right region). Verdicts "
        "stay in this browser (also after saving). <b>Save verdicts</b> writes a CSV: put it into "
        f"<code id=\"review-folder\">{esc(review.folder)}</code>; the next run applies it.</p>"
        "<div class=\"controls\"><input id=\"filter\" type=\"search\" placeholder=\"Filter: region, UID, text ...\">"
        f"<select id=\"kind\"><option value=\"\">all issues</option>{kinds}"
        "<option value=\"unreviewed\">not reviewed</option><option value=\"reviewed\">reviewed</option></select>"
        "<span id=\"count\"></span><span id=\"reviewed\"></span>"
        "<button id=\"save\" class=\"primary\" type=\"button\">Save verdicts (CSV)</button></div>"
        f"<table id=\"report\"><colgroup>{widths}</colgroup><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        "<div id=\"lightbox\" role=\"dialog\"><div class=\"bar\"><span id=\"caption\"></span>"
        "<button id=\"close\" type=\"button\">close (Esc)</button></div><img id=\"big\" alt=\"\"></div>"
        "<div id=\"toast\" role=\"status\"></div>"
        f"<script type=\"application/json\" id=\"review-data\">{data}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )
