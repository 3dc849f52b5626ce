"""The reviewers' loop: verdicts from returned report CSVs become label overrides.

Radiologists return ``reports/mislabel_report.csv`` with a ``verdict`` column, into ``review/``
under the data dir:

- ``confirm``: the recorded label is wrong and the suggestion is right;
- ``reject``: the recorded label is right;
- a region name (e.g. ``knee``): the right region;
- ``out_of_domain``: the image does not belong to the vocabulary;
- empty: not reviewed.

The next run trusts overridden labels as ground truth for the heads, does not flag resolved
images again, and keeps a rejected flag suppressed unless the label's quality has since fallen
below ``REFLAG_FACTOR`` times its quality at review. A malformed file stops the run with an
error naming the file, row and column, and changes nothing.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

REVIEW_DIR = Path("review")
OVERRIDES_PATH = Path("labels") / "label_overrides.parquet"
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

    Rows are numbered as a spreadsheet shows them (the header is row 1).

    Raises:
        ReviewFileError: Missing columns, an unknown verdict, a confirm without a valid
            suggestion, a bad label quality, or a UID given two verdicts.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReviewFileError(path, None, None, f"not UTF-8 text ({exc.reason}); save it as CSV UTF-8") from exc
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    needed = {"sop_instance_uid", "verdict", "suggested_region", "label_quality"}
    missing = sorted(needed - set(reader.fieldnames or []))
    if missing:
        raise ReviewFileError(path, 1, missing[0], f"missing column(s) {missing}; return the report with its columns "
                                                    "and add a 'verdict' column")
    regions = {r.casefold(): r for r in vocabulary}
    rows, seen = [], {}
    for n, rec in enumerate(reader, start=2):
        verdict = (rec.get("verdict") or "").strip()
        if not verdict:
            continue
        uid = (rec.get("sop_instance_uid") or "").strip()
        if not uid:
            raise ReviewFileError(path, n, "sop_instance_uid", "empty UID in a reviewed row")
        if uid in seen:
            raise ReviewFileError(path, n, "sop_instance_uid", f"{uid} already has a verdict in row {seen[uid]}")
        seen[uid] = n
        key = verdict.casefold().replace(" ", "_").replace("-", "_")
        if key == "confirm":
            suggestion = (rec.get("suggested_region") or "").strip().casefold()
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
            quality = float(rec.get("label_quality") or "nan")
        except ValueError as exc:
            raise ReviewFileError(path, n, "label_quality", f"not a number: {rec.get('label_quality')!r}") from exc
        rows.append({"sop_instance_uid": uid, "verdict": verdict_name, "region": region,
                     "reviewed_quality": quality, "source": path.name, "row": n})
    return _frame(rows)


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
