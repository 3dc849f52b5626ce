"""Reviewers' verdicts: parsing returned CSVs, clear errors, and how verdicts change labels and flags."""

import pandas as pd
import pytest

from radaudit.pacs.regions import DEFAULT_REGIONS
from radaudit.pacs.review import (ReviewFileError, apply_to_issues, label_for_training, read_review_file, read_reviews,
                         unknown_uid_warnings)

HEADER = "rank,sop_instance_uid,recorded_region,suggested_region,label_quality,issue,verdict\n"


def write(path, body: str, *, sep: str = ",") -> None:
    path.write_bytes(("\ufeff" + (HEADER + body).replace(",", sep)).encode("utf-8"))


def test_verdicts_become_override_rows(tmp_path):
    f = tmp_path / "review.csv"
    write(f, "1,1.1,hip,pelvis,0.05,mislabel,confirm\n2,1.2,knee,elbow,0.10,mislabel,reject\n"
             "3,1.3,hand,foot,0.20,mislabel,Knee\n4,1.4,,chest,0.0,out_of_domain,out of domain\n5,1.5,,hip,,missing_label,\n")
    rows = read_review_file(f, DEFAULT_REGIONS).set_index("sop_instance_uid")
    assert list(rows.index) == ["1.1", "1.2", "1.3", "1.4"]
    assert rows.loc["1.1", ["verdict", "region"]].tolist() == ["confirm", "pelvis"]
    assert rows.loc["1.2", "verdict"] == "reject" and rows.loc["1.2", "region"] is None
    assert rows.loc["1.3", ["verdict", "region"]].tolist() == ["region", "knee"]
    assert rows.loc["1.4", "verdict"] == "out_of_domain"
    assert rows.loc["1.2", "reviewed_quality"] == pytest.approx(0.10) and rows.loc["1.3", "row"] == 4


def test_confirming_an_out_of_domain_row_confirms_the_finding(tmp_path):
    """An out-of-domain row shows no suggested region: 'confirm' there means 'yes, out of domain'."""
    f = tmp_path / "review.csv"
    write(f, "1,1.1,knee,,,out_of_domain,confirm\n2,1.2,hip,pelvis,0.05,mislabel,confirm\n")
    rows = read_review_file(f, DEFAULT_REGIONS).set_index("sop_instance_uid")
    assert rows.loc["1.1", "verdict"] == "out_of_domain" and rows.loc["1.1", "region"] is None
    assert rows.loc["1.2", ["verdict", "region"]].tolist() == ["confirm", "pelvis"]
    # Without the issue column a confirm still needs a suggestion.
    g = tmp_path / "bare.csv"
    g.write_text("sop_instance_uid,suggested_region,label_quality,verdict\n1.1,,,confirm\n", encoding="utf-8")
    with pytest.raises(ReviewFileError, match="suggested_region"):
        read_review_file(g, DEFAULT_REGIONS)


def test_semicolon_files_from_german_spreadsheets_are_read(tmp_path):
    f = tmp_path / "r.csv"
    write(f, "1;1.1;hip;pelvis;0.05;mislabel;confirm\n", sep=";")
    assert read_review_file(f, DEFAULT_REGIONS)["region"].tolist() == ["pelvis"]


@pytest.mark.parametrize("body,row,column,words", [
    ("1,1.1,hip,pelvis,0.05,mislabel,maybe\n", 2, "verdict", "unknown verdict 'maybe'"),
    ("1,1.1,hip,femur,0.05,mislabel,confirm\n", 2, "suggested_region", "confirm"),
    ("1,1.1,hip,pelvis,abc,mislabel,reject\n", 2, "label_quality", "not a number"),
    ("1,1.1,hip,pelvis,0.1,mislabel,reject\n2,1.1,hip,pelvis,0.1,mislabel,confirm\n", 3, "sop_instance_uid", "row 2"),
])
def test_malformed_rows_are_named(tmp_path, body, row, column, words):
    f = tmp_path / "bad.csv"
    write(f, body)
    with pytest.raises(ReviewFileError) as err:
        read_review_file(f, DEFAULT_REGIONS)
    assert (err.value.row, err.value.column) == (row, column)
    assert "bad.csv" in str(err.value) and words in str(err.value)


def test_a_file_without_a_verdict_column_is_refused(tmp_path):
    f = tmp_path / "noverdict.csv"
    f.write_text("rank,sop_instance_uid,suggested_region,label_quality\n1,1.1,hip,0.1\n", encoding="utf-8")
    with pytest.raises(ReviewFileError, match="verdict"):
        read_review_file(f, DEFAULT_REGIONS)


def test_newest_file_wins(tmp_path):
    (tmp_path / "review").mkdir()
    old, new = tmp_path / "review" / "a.csv", tmp_path / "review" / "b.csv"
    write(old, "1,1.1,hip,pelvis,0.05,mislabel,confirm\n")
    write(new, "1,1.1,hip,pelvis,0.05,mislabel,reject\n")
    import os
    os.utime(old, ns=(1, 1))
    assert read_reviews(tmp_path, DEFAULT_REGIONS)["verdict"].tolist() == ["reject"]
    assert read_reviews(tmp_path / "nowhere", DEFAULT_REGIONS).empty


def test_training_labels_and_flags_follow_the_verdicts():
    overrides = pd.DataFrame({
        "sop_instance_uid": ["a", "b", "c", "d"], "verdict": ["confirm", "reject", "reject", "out_of_domain"],
        "region": ["pelvis", None, None, None], "reviewed_quality": [0.05, 0.2, 0.2, 0.0],
        "source": "r.csv", "row": [2, 3, 4, 5],
    })
    trusted = label_for_training(overrides, pd.Series({"a": "hip", "b": "knee", "c": "hand", "d": "chest"}))
    assert trusted.to_dict() == {"a": "pelvis", "b": "knee", "c": "hand", "d": None}
    issues = pd.DataFrame({"sop_instance_uid": ["a", "b", "c", "d", "e"],
                           "issue": ["out_of_domain", "mislabel", "mislabel", "out_of_domain", "mislabel"],
                           "label_quality": [0.9, 0.15, 0.05, 0.1, 0.01]})
    out = apply_to_issues(issues, overrides).set_index("sop_instance_uid")
    assert out["issue"].to_dict() == {"a": None, "b": None, "c": "mislabel", "d": None, "e": "mislabel"}
    assert out.loc["c", "review"] == "reject" and out.loc["e", "review"] is None


# What spreadsheets write back (German Excel / LibreOffice).

def write_semicolons(path, body: str, encoding: str = "utf-8-sig") -> None:
    """A semicolon file whose body is written as given (decimal commas stay commas)."""
    path.write_bytes((HEADER.replace(",", ";") + body).encode(encoding))


def test_decimal_commas_in_label_quality_are_read(tmp_path):
    f = tmp_path / "r.csv"
    write_semicolons(f, "1;1.1;hip;pelvis;0,05;mislabel;reject\n2;1.2;hip;pelvis;5,0E-02;mislabel;reject\n"
                        "3;1.3;hip;pelvis;1.234,5;mislabel;reject\n4;1.4;hip;pelvis;;mislabel;reject\n")
    q = read_review_file(f, DEFAULT_REGIONS)["reviewed_quality"].tolist()
    assert q[:3] == pytest.approx([0.05, 0.05, 1234.5]) and pd.isna(q[3])


@pytest.mark.parametrize("value", ["0,0,5", "0.1,5", "1,234.5", "#NV"])
def test_an_unparseable_quality_still_names_file_row_and_column(tmp_path, value):
    f = tmp_path / "bad.csv"
    write_semicolons(f, f"1;1.1;hip;pelvis;0,1;mislabel;\n2;1.2;hip;pelvis;{value};mislabel;reject\n")
    with pytest.raises(ReviewFileError, match="bad.csv.*not a number") as err:
        read_review_file(f, DEFAULT_REGIONS)
    assert (err.value.row, err.value.column) == (3, "label_quality")


def test_an_unquoted_decimal_comma_in_a_comma_file_is_not_misread(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text(HEADER + "1,1.1,hip,pelvis,0,05,mislabel,reject\n", encoding="utf-8")
    with pytest.raises(ReviewFileError, match="bad.csv, row 2.*must be quoted"):
        read_review_file(f, DEFAULT_REGIONS)


NOTE_BODY = "1;1.1;hip;pelvis;0.05;mislabel;Reject;Überprüft, Größe ok\n"


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8", "utf-8-sig"])  # the last two worked before
def test_encodings_spreadsheets_save(tmp_path, encoding):
    f = tmp_path / "r.csv"
    f.write_bytes((HEADER.rstrip("\n").replace(",", ";") + ";Notiz\n" + NOTE_BODY).encode(encoding))
    assert read_review_file(f, DEFAULT_REGIONS)["verdict"].tolist() == ["reject"]


def test_a_cp1252_file_gives_a_readable_error_naming_row_and_column(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes((HEADER + "1,1.1,hip,pelvis,0.05,mislabel,Hüfte\n").encode("cp1252"))
    with pytest.raises(ReviewFileError, match="unknown verdict 'Hüfte'") as err:
        read_review_file(f, DEFAULT_REGIONS)
    assert (err.value.row, err.value.column) == (2, "verdict")


def test_bytes_that_are_neither_utf8_nor_cp1252_do_not_crash(tmp_path):
    f = tmp_path / "r.csv"
    f.write_bytes((HEADER.rstrip("\n") + ",note\n1,1.1,hip,pelvis,0.05,mislabel,reject,").encode() + b"\x81\x8d\xfc\n")
    assert read_review_file(f, DEFAULT_REGIONS)["sop_instance_uid"].tolist() == ["1.1"]
    f.write_bytes(f.read_bytes() + b"2,1.2,hip,pelvis,0.05,mislabel,H\xfcfte\x81,\n")
    with pytest.raises(ReviewFileError, match="r.csv, row 3, column 'verdict': unknown verdict"):
        read_review_file(f, DEFAULT_REGIONS)


@pytest.mark.parametrize("sep", ["\t", ";", ","])  # already worked before; kept as a guard
def test_tab_semicolon_and_comma_files(tmp_path, sep):
    f = tmp_path / "r.csv"
    write(f, "1,1.1,hip,pelvis,0.05,mislabel,confirm\n2,1.2,hip,pelvis,0.05,mislabel,foot\n", sep=sep)
    assert read_review_file(f, DEFAULT_REGIONS)["region"].tolist() == ["pelvis", "foot"]


@pytest.mark.parametrize("sep,newline", [("\t", "\r"), (";", "\n"), (",", "\r\n")])
def test_blank_rows_and_old_mac_line_endings_keep_spreadsheet_row_numbers(tmp_path, sep, newline):
    f = tmp_path / "r.csv"
    write(f, "1,1.1,hip,pelvis,0.05,mislabel,confirm\n\n3,1.3,hip,pelvis,0.05,mislabel,foot\n".replace("\n", newline),
          sep=sep)
    rows = read_review_file(f, DEFAULT_REGIONS)
    assert rows["region"].tolist() == ["pelvis", "foot"] and rows["row"].tolist() == [2, 4]


def test_an_excel_sep_hint_line_is_honoured(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("sep=;\n" + (HEADER + "1,1.1,hip,pelvis,0.05,mislabel,maybe\n").replace(",", ";"), encoding="utf-8")
    with pytest.raises(ReviewFileError) as err:
        read_review_file(f, DEFAULT_REGIONS)
    assert (err.value.row, err.value.column) == (2, "verdict")


@pytest.mark.parametrize("typed,verdict,region", [
    ("Out  of-Domain", "out_of_domain", None), ("out_of _domain", "out_of_domain", None),
    ("cervical - spine", "region", "cervical_spine"),
    # these worked before; kept as a guard
    ("Confirm ", "confirm", "pelvis"), ("REJECT", "reject", None), ("\u00a0reject\u00a0", "reject", None),
    ("Cervical Spine", "region", "cervical_spine"),
])
def test_verdicts_as_people_type_them(tmp_path, typed, verdict, region):
    f = tmp_path / "r.csv"
    write_semicolons(f, f"1;1.1;hip;Pelvis ;0.05;mislabel;{typed}\n")
    row = read_review_file(f, DEFAULT_REGIONS).iloc[0]
    assert (row["verdict"], row["region"]) == (verdict, region)


def test_header_names_ignore_case_and_a_doubled_verdict_column_is_refused(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("SOP_Instance_UID; Verdict ;suggested_region;Label_Quality\n1.1;reject;hip;0,1\n", encoding="cp1252")
    assert read_review_file(f, DEFAULT_REGIONS)["verdict"].tolist() == ["reject"]
    f.write_text("sop_instance_uid,verdict,suggested_region,label_quality,verdict\n1.1,reject,hip,0.1,confirm\n")
    with pytest.raises(ReviewFileError, match="appears 2 times") as err:
        read_review_file(f, DEFAULT_REGIONS)
    assert (err.value.row, err.value.column) == (1, "verdict")


def test_verdicts_on_uids_not_in_the_index_are_reported_not_dropped(tmp_path):
    (tmp_path / "review").mkdir()
    write(tmp_path / "review" / "a.csv",
          "1,1.1,hip,pelvis,0.05,mislabel,confirm\n2,9.9,hip,pelvis,0.05,mislabel,reject\n3,9.8,hip,pelvis,0.05,mislabel,\n")
    overrides = read_reviews(tmp_path, DEFAULT_REGIONS)
    assert sorted(overrides["sop_instance_uid"]) == ["1.1", "9.9"]
    warnings = unknown_uid_warnings(overrides, ["1.1", "1.2"])
    assert len(warnings) == 1 and "a.csv" in warnings[0] and "row 3 (9.9)" in warnings[0] and "9.8" not in warnings[0]
    assert unknown_uid_warnings(overrides, ["1.1", "9.9"]) == []
    many = pd.DataFrame({"sop_instance_uid": [f"u{i}" for i in range(12)], "source": "b.csv", "row": range(2, 14)})
    assert unknown_uid_warnings(many, [], examples=3)[0].endswith("row 4 (u2) and 9 more")
