"""Reviewers' verdicts: parsing returned CSVs, clear errors, and how verdicts change labels and flags."""

import pandas as pd
import pytest

from pacs.regions import DEFAULT_REGIONS
from pacs.review import ReviewFileError, apply_to_issues, label_for_training, read_review_file, read_reviews

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
