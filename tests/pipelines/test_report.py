"""Tests of radaudit.pipelines.stages.reports.write_report: columns, BOM, quoting, order, HTML, images, no PHI."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radaudit.pipelines.stages import reports
from radaudit.pipelines.stages.reports import CSV_COLUMNS, write_report
from radaudit.pacs.cache import read, write_image

NAMES = ["skull", "chest", "hand", "knee"]
NASTY = 'HÜFTE "li", a.p.; 2 Ebenen\nseitl. Größe'


def make_inputs(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    uids = [f"1.2.826.0.1.{i}" for i in range(6)]
    issues = pd.DataFrame({
        "sop_instance_uid": uids,
        "label": [0, 1, -1, 2, 3, 1],
        "label_quality": [0.9, 0.05, np.nan, 0.3, 0.01, 0.8],
        "is_label_issue": [False, True, False, False, True, False],
        "suggested_region": [0, 3, 2, 2, 0, 1],
        "suggested_probability": [0.9, 0.93, 0.7, 0.3, 0.97, 0.8],
        "ood_score": [0.6, 0.62, 0.61, 0.95, 0.64, 0.6],
        "issue": [None, "mislabel", "missing_label", "out_of_domain", "mislabel", None],
        "duplicate_of": [None, None, None, None, "1.2.826.0.1.0", None],
        "suspicion": [0.1, 2.9, 1.7, 3.95, 2.99, 0.2],
        "rank": [6, 3, 4, 1, 2, 5],
    })
    meta = pd.DataFrame({
        "sop_instance_uid": uids[::-1],  # order differs from issues: the report must join, not zip
        "study_instance_uid": [f"1.2.826.0.2.{i}" for i in range(6)][::-1],
        "accession_number": ["ACCNO1", "ACCNO2", "=HYPERLINK(\"x\")", "ACCNO4", "ACCNO5", "ACCNO6"][::-1],
        "path": [f"PAT{i}/Röntgen bild,{i}.dcm" for i in range(6)][::-1],
        "recorded_raw": ["Schädel", "Thorax", None, "Hand", NASTY, "Thorax"][::-1],
        "patient_name": ["Müller^Hans"] * 6,
        "patient_birth_date": ["19500101"] * 6,
        "patient_key": [f"PKEY{i}" for i in range(6)][::-1],
    })
    rng = np.random.default_rng(0)
    for uid in uids[:5]:  # the last one is not cached
        write_image(tmp_path, uid, rng.integers(0, 256, (64, 64), dtype=np.uint8))
    return issues, meta


def test_csv_columns_bom_quoting_and_order(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    files = write_report(issues, meta, tmp_path, class_names=NAMES)
    raw = files.csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False)
    assert list(df.columns) == list(CSV_COLUMNS)
    assert df["rank"].tolist() == [1, 2, 3, 4]
    assert df["issue"].tolist() == ["out_of_domain", "mislabel", "mislabel", "missing_label"]
    assert df["sop_instance_uid"].tolist() == ["1.2.826.0.1.3", "1.2.826.0.1.4", "1.2.826.0.1.1", "1.2.826.0.1.2"]
    row = df[df["sop_instance_uid"] == "1.2.826.0.1.4"].iloc[0]
    assert row["recorded_raw"] == NASTY
    assert row["recorded_region"] == "knee" and row["suggested_region"] == "skull"
    assert row["study_instance_uid"] == "1.2.826.0.2.4"
    assert row["source_path"] == "PAT4/Röntgen bild,4.dcm"
    assert row["duplicate_of"] == "1.2.826.0.1.0" and (df.loc[df["sop_instance_uid"] != "1.2.826.0.1.4",
                                                              "duplicate_of"] == "").all()
    missing = df[df["issue"] == "missing_label"].iloc[0]
    assert missing["recorded_region"] == "" and missing["suggested_region"] == "hand"
    assert missing["accession_number"] == "'=HYPERLINK(\"x\")"  # formula defused
    with open(files.csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 5 and rows[0] == list(CSV_COLUMNS)
    assert NASTY in rows[2]
    # Thumbnails: relative paths that exist and are small PNGs.
    for rel in df["thumbnail"]:
        img = Image.open(files.csv_path.parent / rel)
        assert img.format == "PNG" and max(img.size) <= 128


def test_no_identifying_columns_anywhere(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    files = write_report(issues, meta, tmp_path, class_names=NAMES, include_accession=False, include_all=True)
    text = files.csv_path.read_text(encoding="utf-8-sig") + files.html_path.read_text(encoding="utf-8")
    for secret in ("Müller", "Hans", "19500101", "patient", "ACCNO", "HYPERLINK"):
        assert secret not in text
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False)
    assert list(df.columns) == [c for c in CSV_COLUMNS if c != "accession_number"]
    assert len(df) == 6 and df["rank"].tolist() == list(range(1, 7))
    uncached = df[df["sop_instance_uid"] == "1.2.826.0.1.5"].iloc[0]
    assert uncached["thumbnail"] == ""  # not in the image cache: no thumbnail, still reported
    headers = re.findall(r"<th[^>]*>(.*?)</th>", files.html_path.read_text(encoding="utf-8"))
    assert "Accession" not in headers


def test_html_is_self_contained_sortable_filterable(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    files = write_report(issues, meta, tmp_path, class_names=NAMES, top_html=3)
    page = files.html_path.read_text(encoding="utf-8")
    assert files.n_html_rows == 3 and page.count("<tr data-issue=") == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http" not in page.lower().replace("hyperlink", "")
    assert "<link" not in page and "@import" not in page
    # Each row inlines a JPEG thumbnail; its full image is a file beside the report, named relatively.
    assert page.count('src="data:image/jpeg;base64,') == 3 and page.count('data-large="images/') == 3
    assert 'id="filter"' in page and 'id="kind"' in page and "addEventListener('click'" in page
    # The PACS text is shown escaped (its quotes would end an attribute), never as raw markup.
    assert "HÜFTE &quot;li&quot;, a.p.;" in page and 'HÜFTE "li"' not in page.split('id="review-data">')[0]
    assert page.count("<script>") == 1 and page.count('<script type="application/json" id="review-data">') == 1
    assert page.count("<script") == 2  # the code, and the rows' CSV cells for "Save verdicts" (data, not code)
    # The copy's row names its original (a copy button with the whole UID); the kinds filter offers copies.
    row = re.search(r'<tr data-issue="mislabel" data-uid="1\.2\.826\.0\.1\.4".*?</tr>', page, re.S).group(0)
    assert 'copy of <button class="copy" data-full="1.2.826.0.1.0"' in row
    assert '<option value="near_duplicate">near duplicate</option>' in page


def test_bad_inputs_name_the_fix(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    with pytest.raises(ValueError, match="sop_instance_uids"):
        write_report(issues.drop(columns="sop_instance_uid"), meta, tmp_path, class_names=NAMES)
    with pytest.raises(ValueError, match="include_accession=False"):
        write_report(issues, meta.drop(columns="accession_number"), tmp_path, class_names=NAMES)
    with pytest.raises(ValueError, match="class_names"):
        write_report(issues, meta, tmp_path, class_names=NAMES[:2])
    with pytest.raises(ValueError, match="delimiter"):
        write_report(issues, meta, tmp_path, class_names=NAMES, delimiter=";;")
    with pytest.raises(ValueError, match="thumbnail must be an integer from 0 to 256"):
        write_report(issues, meta, tmp_path, class_names=NAMES, thumbnail=257)
    assert not (tmp_path / "reports" / "mislabel_report.csv").exists()


def test_semicolon_delimiter_round_trips(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    files = write_report(issues, meta, tmp_path, class_names=NAMES, delimiter=";")
    df = pd.read_csv(io.StringIO(files.csv_path.read_text(encoding="utf-8-sig")), sep=";", keep_default_na=False)
    assert NASTY in df["recorded_raw"].tolist()


def test_out_of_domain_rows_carry_a_reason_and_no_region(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    issues["ood_reason"] = ["", "", "", "header: modality CT", "", ""]
    files = write_report(issues, meta, tmp_path, class_names=NAMES)
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False)
    ood = df[df["issue"] == "out_of_domain"].iloc[0]
    assert ood["ood_reason"] == "header: modality CT"
    assert ood["suggested_region"] == "" and ood["suggested_probability"] == ""
    assert (df.loc[df["issue"] != "out_of_domain", "ood_reason"] == "").all()
    assert (df.loc[df["issue"] == "mislabel", "suggested_region"] != "").all()
    assert "header: modality CT" in files.html_path.read_text(encoding="utf-8")


def test_tiny_label_qualities_stay_apart_and_warnings_head_the_html(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    issues["label_quality"] = [0.9, 3.2e-7, np.nan, 0.3, 1.5e-9, 0.8]
    files = write_report(issues, meta, tmp_path, class_names=NAMES,
                         warnings=["features too weak to audit: 41.0% agreement"])
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False, dtype=str)
    mis = df[df["issue"] == "mislabel"]["label_quality"].tolist()
    assert mis == ["1.5e-09", "3.2e-07"]  # not both 0.0000
    assert float(mis[0]) < float(mis[1])
    html_text = files.html_path.read_text(encoding="utf-8")
    assert html_text.index("features too weak to audit: 41.0% agreement") < html_text.index("<table")
    assert 'class="warning"' not in write_report(issues, meta, tmp_path, class_names=NAMES).html_path.read_text()


def test_an_uncertain_suggestion_shows_its_runner_up(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    issues["second_region"] = [1, 2, 3, 0, 3, 0]
    issues["second_probability"] = [0.05, 0.04, 0.2, 0.25, 0.02, 0.1]
    issues.loc[1, ["suggested_probability", "second_probability"]] = [0.48, 0.41]  # knee or hand, nearly tied
    files = write_report(issues, meta, tmp_path, class_names=NAMES)
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False).set_index("sop_instance_uid")
    assert df.loc["1.2.826.0.1.1", ["suggested_region", "second_region"]].tolist() == ["knee", "hand"]
    assert float(df.loc["1.2.826.0.1.1", "second_probability"]) == pytest.approx(0.41)
    assert df.loc["1.2.826.0.1.3", "second_region"] == ""  # out of domain: no region at all
    page = files.html_path.read_text(encoding="utf-8")
    assert page.count('class="second"') == 1 and 'or hand 0.41</small>' in page  # the confident ones show none
    # An issues table of an older version, without the runner-up, still makes a report.
    old = write_report(issues.drop(columns=["second_region", "second_probability"]), meta, tmp_path / "old",
                       class_names=NAMES, thumbnail=0)
    assert (pd.read_csv(old.csv_path, encoding="utf-8-sig", keep_default_na=False)["second_region"] == "").all()


FLAGGED = ["1.2.826.0.1.3", "1.2.826.0.1.4", "1.2.826.0.1.1", "1.2.826.0.1.2"]  # make_inputs' rows, most suspect first


def inlined(page: str) -> list[tuple[bytes, str]]:
    """Each HTML row's inlined thumbnail (decoded) and the relative URL of its large view's file."""
    return [(base64.b64decode(data), full) for full, data in
            re.findall(r'<img class="thumb"[^>]* data-large="([^"]+)" src="data:image/jpeg;base64,([^"]+)"', page)]


def test_thumbnails_are_small_jpegs_and_the_large_view_is_the_cache_lossless(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    # A tall image: the long side scales to the limit, the large view keeps the cache's shape.
    y, x = np.mgrid[0:64, 0:40]
    smooth = 3 * y + 2 * x + np.random.default_rng(1).integers(0, 9, (64, 40))
    write_image(tmp_path, FLAGGED[2], smooth.astype(np.uint8))
    files = write_report(issues, meta, tmp_path, class_names=NAMES, thumbnail=32)
    page = files.html_path.read_text(encoding="utf-8")
    shown = inlined(page)
    assert len(shown) == len(FLAGGED)
    uris = re.findall(r'data:[^"]*', page)
    assert len(uris) == len(set(uris)) == len(FLAGGED)  # one thumbnail per row, nothing inlined twice
    for (jpeg, full), uid in zip(shown, FLAGGED):
        cached = read(tmp_path, uid)
        thumb = Image.open(io.BytesIO(jpeg))
        assert thumb.format == "JPEG" and thumb.mode == "L"
        assert thumb.size == ((20, 32) if uid == FLAGGED[2] else (32, 32))
        assert full.startswith("images/") and (files.html_path.parent / full).parent == files.image_dir
        with Image.open(files.html_path.parent / full) as big:
            assert big.format == "PNG" and big.mode == "L"
            np.testing.assert_array_equal(np.asarray(big), cached)  # lossless, at the cache's size
    # The inlined thumbnail is that image: the smooth one matches its lossless PNG thumbnail closely.
    df = pd.read_csv(files.csv_path, encoding="utf-8-sig", keep_default_na=False).set_index("sop_instance_uid")
    with Image.open(files.csv_path.parent / df.loc[FLAGGED[2], "thumbnail"]) as png:
        assert np.abs(np.asarray(Image.open(io.BytesIO(shown[2][0])), float) - np.asarray(png, float)).mean() < 3


def test_no_identifier_in_any_file_name(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    write_report(issues, meta, tmp_path, class_names=NAMES, include_all=True)
    names = [p.relative_to(tmp_path / "reports").as_posix() for p in (tmp_path / "reports").rglob("*") if p.is_file()]
    assert len(names) == 2 + 5 + 5  # CSV and HTML, every cached image's thumbnail and large view
    secrets = [*meta["sop_instance_uid"], *meta["study_instance_uid"], *meta["patient_key"], "ACCNO", "PAT", "1.2.826"]
    for name in names:
        assert not any(secret in name for secret in secrets), name
        assert re.fullmatch(r"mislabel_report\.(csv|html)|(thumbnails|images)/[0-9a-f]{32}\.png", name), name


def test_a_new_report_removes_the_earlier_ones_images_and_keeps_the_unchanged(tmp_path: Path) -> None:
    issues, meta = make_inputs(tmp_path)
    by_uid = tmp_path / "reports" / "thumbnails" / f"{FLAGGED[0]}.png"  # as reports named them before issue 24
    by_uid.parent.mkdir(parents=True)
    by_uid.write_bytes(b"old")
    first = write_report(issues, meta, tmp_path, class_names=NAMES)
    kept = first.html_path.parent / inlined(first.html_path.read_text(encoding="utf-8"))[1][1]
    inode = kept.stat().st_ino
    write_image(tmp_path, FLAGGED[0], np.full((64, 64), 7, np.uint8))  # re-cached: other pixels, another name
    second = write_report(issues, meta, tmp_path, class_names=NAMES, top_html=2)
    named = {Path(full).name for _, full in inlined(second.html_path.read_text(encoding="utf-8"))}
    assert len(named) == 2 and set(os.listdir(second.image_dir)) == named
    csv_thumbs = pd.read_csv(second.csv_path, encoding="utf-8-sig", keep_default_na=False)["thumbnail"]
    assert set(os.listdir(second.thumbnail_dir)) == {Path(t).name for t in csv_thumbs} and not by_uid.exists()
    assert kept.stat().st_ino == inode  # the unchanged image was not written again
    third = write_report(issues, meta, tmp_path, class_names=NAMES, thumbnail=0)
    assert "data:" not in third.html_path.read_text(encoding="utf-8")
    assert os.listdir(third.image_dir) == [] and os.listdir(third.thumbnail_dir) == []


@pytest.mark.parametrize("crash_at", ["image", "html"])
def test_a_crash_while_writing_leaves_a_whole_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     crash_at: str) -> None:
    issues, meta = make_inputs(tmp_path)
    first = write_report(issues, meta, tmp_path, class_names=NAMES)
    before = first.html_path.read_text(encoding="utf-8")
    pixels = {uid: read(tmp_path, uid) for uid in FLAGGED}
    rng = np.random.default_rng(5)
    for uid in FLAGGED:  # every image re-cached: the next report names other files
        write_image(tmp_path, uid, rng.integers(0, 256, (48, 48), dtype=np.uint8))
    real_bytes, real_text = reports.write_bytes, reports.write_text
    calls: list[Path] = []

    def crashing_bytes(path: Path, data: bytes) -> None:
        calls.append(Path(path))
        if crash_at == "image" and Path(path).parent == first.image_dir and len(calls) > 3:
            raise OSError("No space left on device")
        real_bytes(path, data)

    def crashing_text(path: Path, text: str) -> None:
        if crash_at == "html" and Path(path).suffix == ".html":
            raise OSError("No space left on device")
        real_text(path, text)

    monkeypatch.setattr(reports, "write_bytes", crashing_bytes)
    monkeypatch.setattr(reports, "write_text", crashing_text)
    with pytest.raises(OSError, match="No space"):
        write_report(issues, meta, tmp_path, class_names=NAMES)
    assert first.html_path.read_text(encoding="utf-8") == before  # the earlier report, whole
    for (_, full), uid in zip(inlined(before), FLAGGED):
        with Image.open(first.html_path.parent / full) as big:
            np.testing.assert_array_equal(np.asarray(big), pixels[uid])
    monkeypatch.undo()
    again = write_report(issues, meta, tmp_path, class_names=NAMES)  # the next run tidies up
    named = {Path(full).name for _, full in inlined(again.html_path.read_text(encoding="utf-8"))}
    assert set(os.listdir(again.image_dir)) == named and len(named) == len(FLAGGED)
