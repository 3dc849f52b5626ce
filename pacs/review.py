"""The reviewers' loop: verdicts from returned report CSVs become label overrides.

Radiologists return ``reports/mislabel_report.csv`` with a ``verdict`` column, into ``review/``
under the data dir:

- ``confirm``: the recorded label is wrong and the suggestion is right; on a row reported
  ``out_of_domain`` (which shows no suggestion): the image is indeed out of domain;
- ``reject``: the recorded label is right;
- a region name (e.g. ``knee``): the right region;
- ``out_of_domain``: the image does not belong to the vocabulary;
- empty: not reviewed.

The next run trusts overridden labels as ground truth for the heads, does not flag resolved
images again, and keeps a rejected flag suppressed unless the label's quality has since fallen
below ``REFLAG_FACTOR`` times its quality at review. A malformed file stops the run with an
error naming the file, row and column, and changes nothing. Files are read as spreadsheets save
them (see :func:`read_review_file`); :func:`unknown_uid_warnings` reports verdicts on UIDs
that are not in the current index.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from radaudit.pacs.layout import REVIEW_DIR

REFLAG_FACTOR = 0.5
SPECIAL_VERDICTS = ("confirm", "reject", "out_of_domain")
OVERRIDE_COLUMNS = ["sop_instance_uid", "verdict", "region", "reviewed_quality", "source", "row"]


class ReviewFileError(ValueError):
    """A returned review file that cannot be applied; the message names file, row and column."""

    def __init__(self, path: Path, row: int | None, column: str | None, problem: str) -> None:
        where = f"{path}" + (f", row {row}" if row is not None else "") + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.row, self.column = path, row, column


def read_review_file(path: str | os.PathLike[str], vocabulary: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Parse one returned report into override rows (columns ``OVERRIDE_COLUMNS``).

    Reads what spreadsheets save: UTF-8 with or without BOM, UTF-16 with BOM, else cp1252
    (German Excel's plain "CSV"); comma, semicolon or tab separated (or a ``sep=`` first
    line); decimal commas in ``label_quality``. Header names and verdicts ignore case and
    surrounding whitespace. Rows are numbered as a spreadsheet shows them (the header is row 1).

    Raises:
        ReviewFileError: Missing or doubled columns, an unknown verdict, a confirm without a
            valid suggestion, a bad label quality, a reviewed row with more cells than the
            header, or a UID given two verdicts.
    """
    path = Path(path)
    text = _decode(path.read_bytes())
    if "\x00" in text:
        raise ReviewFileError(path, None, None, "contains NUL characters, so it is not CSV text; "
                                                "save it from the spreadsheet as CSV")
    delimiter, text = _delimiter(text)
    records = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [_header_name(c) for c in next(records, [])]
    needed = ("sop_instance_uid", "verdict", "suggested_region", "label_quality")
    missing = sorted(c for c in needed if c not in header)
    if missing:
        raise ReviewFileError(path, 1, missing[0], f"missing column(s) {missing}; return the report with its columns "
                                                    "and add a 'verdict' column")
    doubled = [c for c in needed if header.count(c) > 1]
    if doubled:
        raise ReviewFileError(path, 1, doubled[0], f"column {doubled[0]!r} appears {header.count(doubled[0])} times; "
                                                   "keep one")
    col = {c: header.index(c) for c in needed}
    if header.count("issue") == 1:  # optional: lets 'confirm' confirm an out-of-domain finding
        col["issue"] = header.index("issue")
    regions = {r.casefold(): r for r in vocabulary}
    rows: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    n = 1
    while True:
        n += 1
        try:
            cells = next(records)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ReviewFileError(path, n, None, f"not readable as CSV ({exc})") from exc
        rec = {c: (cells[i] if i < len(cells) else "") for c, i in col.items()}
        verdict = rec["verdict"].strip()
        if not verdict:
            continue
        if any(c.strip() for c in cells[len(header):]):
            raise ReviewFileError(path, n, None, f"{len(cells)} cells but the header has {len(header)}; a value "
                                                 f"containing {delimiter!r} must be quoted")
        uid = rec["sop_instance_uid"].strip()
        if not uid:
            raise ReviewFileError(path, n, "sop_instance_uid", "empty UID in a reviewed row")
        if uid in seen:
            raise ReviewFileError(path, n, "sop_instance_uid", f"{uid} already has a verdict in row {seen[uid]}")
        seen[uid] = n
        key = _VERDICT_SEPARATORS.sub("_", verdict.casefold()).strip("_")
        if key == "confirm" and rec.get("issue", "").strip().casefold() == "out_of_domain":
            region, verdict_name = None, "out_of_domain"
        elif key == "confirm":
            suggestion = rec["suggested_region"].strip().casefold()
            if suggestion not in regions:
                raise ReviewFileError(path, n, "suggested_region",
                                      f"'confirm' needs a suggested region of the vocabulary, got {suggestion!r}")
            region, verdict_name = regions[suggestion], "confirm"
        elif key == "reject":
            region, verdict_name = None, "reject"
        elif key == "out_of_domain":
            region, verdict_name = None, "out_of_domain"
        elif key in regions:
            region, verdict_name = regions[key], "region"
        else:
            raise ReviewFileError(path, n, "verdict", f"unknown verdict {verdict!r}; use confirm, reject, "
                                                      f"out_of_domain or one of the regions: {', '.join(vocabulary)}")
        try:
            quality = _number(rec["label_quality"])
        except ValueError as exc:
            raise ReviewFileError(path, n, "label_quality", f"not a number: {rec['label_quality']!r}") from exc
        rows.append({"sop_instance_uid": uid, "verdict": verdict_name, "region": region,
                     "reviewed_quality": quality, "source": path.name, "row": n})
    return _frame(rows)


_VERDICT_SEPARATORS = re.compile(r"[\s_\-]+")
_SEP_LINE = re.compile(r"sep=(.)[ \t]*(?:\r\n|\r|\n|\Z)", re.IGNORECASE)
_DE_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:\.\d{3})+,\d*(?:[eE][+-]?\d+)?")


def _decode(data: bytes) -> str:
    """UTF-8 (BOM or not), UTF-16 with BOM, else cp1252; latin-1 as the last resort never fails."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _delimiter(text: str) -> tuple[str, str]:
    """The field separator, and the text without a leading ``sep=`` line (an Excel hint)."""
    hint = _SEP_LINE.match(text)
    if hint:
        return hint.group(1), text[hint.end():]
    first = text.splitlines()[0] if text else ""
    wanted = {"sop_instance_uid", "verdict", "suggested_region", "label_quality"}

    def score(sep: str) -> tuple[int, int]:
        cells = next(csv.reader([first], delimiter=sep), [])
        return len(wanted & {_header_name(c) for c in cells}), len(cells)

    return max((",", ";", "\t"), key=score), text


def _header_name(cell: str) -> str:
    return cell.replace("\ufeff", "").strip().casefold()


def _number(cell: str) -> float:
    """A float from a cell; accepts decimal commas (``0,05``, ``5,0E-02``, ``1.234,5``). Empty: NaN."""
    s = cell.strip()
    if not s:
        return float("nan")
    if "," in s:
        if _DE_THOUSANDS.fullmatch(s):
            s = s.replace(".", "")
        if s.count(",") != 1 or "." in s:
            raise ValueError(cell)
        s = s.replace(",", ".")
    return float(s)


def _frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    # object dtype keeps None for "no region" (pandas 3 would infer str and store NaN)
    df = pd.DataFrame(rows, columns=OVERRIDE_COLUMNS)
    df["region"] = pd.Series([r["region"] for r in rows], dtype=object, index=df.index)
    return df


def read_reviews(data_dir: str | os.PathLike[str], vocabulary: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """All verdicts under ``review/``; for a UID reviewed in several files the newest file wins.

    Raises:
        ReviewFileError: On the first malformed file (nothing is applied then).
    """
    folder = Path(data_dir) / REVIEW_DIR
    files = sorted(folder.glob("*.csv"), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.is_dir() else []
    frames = [read_review_file(p, vocabulary) for p in files]
    if not frames:
        return _frame([])
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates("sop_instance_uid", keep="last").reset_index(drop=True)


def unknown_uid_warnings(overrides: pd.DataFrame, known_uids: Iterable[str], *, examples: int = 10) -> list[str]:
    """One warning per returned file whose reviewed rows name UIDs not in ``known_uids``.

    Such verdicts are kept (they apply again if the image comes back) but change nothing now;
    a caller with the instance index should log these. Empty when every UID is known.

    Args:
        overrides: :func:`read_reviews` or :func:`read_review_file` output.
        known_uids: The UIDs of the current index.
        examples: Rows quoted per file before "and N more".
    """
    known = set(known_uids)
    unknown = overrides[~overrides["sop_instance_uid"].isin(known)]
    out = []
    for source, group in unknown.groupby("source", sort=True):
        listed = ", ".join(f"row {r} ({u})" for r, u in zip(group["row"].head(examples), group["sop_instance_uid"]))
        more = f" and {len(group) - examples} more" if len(group) > examples else ""
        out.append(f"{REVIEW_DIR / str(source)}: {len(group)} reviewed row(s) name a sop_instance_uid not in the "
                   f"current index, so their verdicts change nothing: {listed}{more}")
    return out


def label_for_training(overrides: pd.DataFrame, recorded: pd.Series) -> pd.Series:
    """The region each reviewed image should train with: the reviewer's, the recorded one after a
    reject, or None (out of domain: no label).

    Args:
        overrides: :func:`read_reviews` output.
        recorded: Recorded region per UID (index = UID).
    """
    ov = overrides.set_index("sop_instance_uid")
    region = ov["region"].astype(object)
    rejected = (ov["verdict"] == "reject").to_numpy()
    region[rejected] = recorded.reindex(ov.index[rejected]).to_numpy()
    return region.where(region.notna(), None)


def apply_to_issues(issues: pd.DataFrame, overrides: pd.DataFrame) -> pd.DataFrame:
    """Suppress flags that reviewers resolved; re-flag a rejected one only if the evidence grew clearly.

    Adds a column ``review`` (the verdict, or None) and clears ``issue`` where suppressed.
    """
    out = issues.copy()
    ov = overrides.set_index("sop_instance_uid")
    verdict = out["sop_instance_uid"].map(ov["verdict"])
    out["review"] = verdict.astype(object).where(verdict.notna(), None)
    resolved = verdict.isin(["confirm", "region", "out_of_domain"]).to_numpy()
    reviewed_quality = out["sop_instance_uid"].map(ov["reviewed_quality"]).to_numpy(dtype=float)
    grew = out["label_quality"].to_numpy(dtype=float) < REFLAG_FACTOR * np.nan_to_num(reviewed_quality, nan=0.0)
    suppressed = resolved | ((verdict == "reject").to_numpy() & ~grew)
    issue = out["issue"].astype(object)
    issue[suppressed] = None
    out["issue"] = issue.where(issue.notna(), None)
    return out
