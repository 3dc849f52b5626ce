"""Pseudonymization: path identity across runs, identifier tokens and path redaction."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from radaudit.pacs.discover import display_path
from radaudit.pacs.layout import KEY_FILE
from radaudit.pacs.pseudo import Redactor, identifier_tokens, path_key, redact_path

KEY = b"test key"


def _hmac(msg: bytes) -> str:
    return hmac.new(KEY, msg, hashlib.sha256).hexdigest()[:20]


@pytest.mark.parametrize("path", ["PAT1/ST1/SE1/IM0002.DCM", "PAT2/Röntgen/älter.dcm", "Bild mit leerzeichen.dcm "])
def test_path_key_of_a_utf8_path_is_what_it_always_was(path: str) -> None:
    """Existing indexes identify files by this hash: it must not change for ordinary names."""
    assert path_key(path, KEY) == _hmac(b"path\x00" + path.strip().encode("utf-8"))


def test_path_key_of_a_name_that_is_not_utf8_hashes_its_real_bytes() -> None:
    latin1 = os.fsdecode(b"M\xfcller/Bild 1.dcm")
    assert path_key(latin1, KEY) == _hmac(b"path\x00M\xfcller/Bild 1.dcm")
    assert path_key(latin1, KEY) != path_key("Müller/Bild 1.dcm", KEY)
    assert path_key(os.fsdecode(b"M\xdcller/Bild 1.dcm"), KEY) != path_key(latin1, KEY)


def test_display_path_is_valid_utf8() -> None:
    shown = display_path(os.fsdecode(b"Sch\xe4del/M\xfcller.dcm"))
    assert shown == "Sch\\xe4del/M\\xfcller.dcm"
    shown.encode("utf-8")
    assert display_path("Müller/Knie li.dcm") == "Müller/Knie li.dcm"


@pytest.mark.parametrize(
    ("name", "path", "kept"),
    [
        ("O'Brien^Mary", "O_Brien Mary (4711234)/Knie li", "/Knie li"),
        ("O'Brien^Mary", "OBrien_Mary/Knie li", "/Knie li"),
        ("O'Brien^Mary", "o-brien mary/Knie li", "/Knie li"),
        ("Müller^Hans", "MUELLER_HANS_2021/Knie", "_2021/Knie"),
        ("Müller^Hans", "Muller Hans/Knie", "/Knie"),
        ("Müller^Hans", "M_ller Hans/Knie", "/Knie"),
        ("MÜLLER^HANS", "müller hans/Knie", "/Knie"),
        ("Groß^Anna", "Groß Anna/Hand", "/Hand"),
        ("Groß^Anna", "GROSS_ANNA/Hand", "/Hand"),
        ("Meyer-Lüdenscheidt^Karl-Heinz", "Meyer_Luedenscheidt KarlHeinz/Fuss", "/Fuss"),
        ("Meyer-Lüdenscheidt^Karl-Heinz", "Meyer-Lüdenscheidt Karl Heinz/Fuss", "/Fuss"),
        ("Müller^Hans", display_path(os.fsdecode(b"M\xfcller Hans/Knie")), "/Knie"),
        ("Müller^Hans", display_path(os.fsdecode(b"M\xdcLLER HANS/Knie")), "/Knie"),
        ("Müller^Hans", "Mu\u0308ller Hans/Knie", "/Knie"),  # decomposed, as macOS writes names
        ("Mu\u0308ller^Hans", "Müller Hans/Knie", "/Knie"),  # a decomposed name in the header
        ("Müller^Hans", "Mu_ller Hans/Knie", "/Knie"),  # the decomposed name through a sanitizer
    ],
)
def test_folded_and_joined_name_forms_are_redacted(name: str, path: str, kept: str) -> None:
    tokens = identifier_tokens(name, "4711234", "19560312")
    redacted = redact_path(path, tokens, "patient-x")
    assert redacted.startswith("patient-x") and redacted.endswith(kept), redacted


def test_short_fragments_and_titles_are_not_tokens() -> None:
    """The "O" of O'Brien and a "Dr." prefix must not redact ordinary words."""
    tokens = identifier_tokens("O'Brien^Al^^Dr.", "12", None)
    assert all(len(t) >= 3 for t in tokens)
    assert not {"o", "al", "dr", "dr.", "12"} & tokens
    path = "Orthopaedie/Dr. Keller/Knie Ost/Bild 1.dcm"
    assert redact_path(path, tokens, "patient-x") == path


def test_birth_date_and_id_forms_are_tokens() -> None:
    tokens = identifier_tokens("Weber^Lea", "KH-2019/00815", "19560312")
    assert {"19560312", "1956-03-12", "12.03.1956", "12031956", "kh-2019_00815", "kh201900815"} <= tokens


def test_redactor_takes_the_longest_token_and_many_patients() -> None:
    tokens: set[str] = set()
    for i in range(2000):
        tokens |= identifier_tokens(f"Name{i:04d}^Vorname{i:04d}", f"ID{i:06d}", None)
    redactor = Redactor(tokens)
    assert redactor.redact("Name1234 Vorname1234 (ID001234)/Knie", "patient-x") == "patient-x (patient-x)/Knie"
    assert redactor.redact("Knie li/Bild 1.dcm", "patient-x") == "Knie li/Bild 1.dcm"


def test_sanitized_form_keeps_enough_real_letters() -> None:
    """"Çam" written with "_" for the Ç would be "_am": that would redact ordinary words."""
    tokens = identifier_tokens("Çam^Ayşe", None, None)
    assert "_am" not in tokens and {"çam", "cam"} <= tokens
    assert "ay_e" in tokens
    path = "Knie_am_Morgen/Bild 1.dcm"
    assert redact_path(path, tokens, "patient-x") == path


def test_two_processes_creating_the_key_at_once_agree(tmp_path, monkeypatch) -> None:
    """The loser of the race reads the winner's key instead of replacing it."""
    from radaudit.pacs import pseudo

    real_link = os.link

    def race(src, dst):
        Path(dst).write_bytes(b"the other process's key")
        os.chmod(dst, 0o600)
        real_link(src, dst)

    monkeypatch.setattr(pseudo.os, "link", race)
    assert pseudo.load_or_create_key(tmp_path) == b"the other process's key"
    monkeypatch.setattr(pseudo.os, "link", real_link)
    assert pseudo.load_or_create_key(tmp_path) == b"the other process's key"
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["pseudonym.key"]


def test_without_hard_links_the_key_is_still_written_atomically(tmp_path, monkeypatch) -> None:
    """SMB shares without Unix extensions and exFAT refuse os.link."""
    from radaudit.pacs import pseudo

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pseudo.os, "link", refuse)
    key = pseudo.load_or_create_key(tmp_path)
    assert len(key) == 64 and (tmp_path / KEY_FILE).read_bytes() == key
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["pseudonym.key"]
    assert pseudo.load_or_create_key(tmp_path) == key


def test_only_whole_tokens_are_replaced_and_brackets_stay() -> None:
    """The cases of issue 14: a short ID inside a file name, a bracketed ID, a name glued to a year."""
    short = Redactor(identifier_tokens("Roe^Jo", "00001", None))
    assert short.redact("ST1/IM000001", "patient-x") == "ST1/IM000001"
    assert short.redact("ST1/IM00001", "patient-x") == "ST1/IM00001"  # a 5-digit ID glued to letters
    assert short.redact("ST1/00001.dcm", "patient-x") == "ST1/patient-x.dcm"
    assert short.redact("ST1/scan_00001_b.dcm", "patient-x") == "ST1/scan_patient-x_b.dcm"
    bauer = Redactor(identifier_tokens("Bauer^Margaret", "52020514", None))
    assert bauer.redact("Bauer Margaret (52020514)/IM000001", "patient-x") == "patient-x (patient-x)/IM000001"
    assert bauer.redact("X52020514/Bauerstrasse/Margaret2021", "patient-x") == "Xpatient-x/Bauerstrasse/patient-x2021"


def test_a_damaged_name_that_swallowed_other_text_adds_no_ordinary_words() -> None:
    """Fuzzer finding: a Patient Name whose length field was damaged ran over the file's other text,
    and words such as "image" then vanished from every error reason of the run."""
    swallowed = "Roe^Jane" + "\x00\x10" * 40 + " DERIVED image Secondary Capture"
    tokens = identifier_tokens(swallowed, "X" * 70 + "image", None)
    assert {"roe", "jane"} <= tokens
    assert not {"image", "secondary", "capture", "derived"} & tokens
    assert Redactor(tokens).redact("not an image: truncated", "patient-x") == "not an image: truncated"


def test_names_and_ids_written_together_are_still_found() -> None:
    """Whole tokens must not let through what exports glue together (a second read of issue 14's fix)."""
    redactor = Redactor(identifier_tokens("MUELLER^HANS", "4711234", "19520101"))
    assert redactor.redact("MuellerHans/IM1", "P") == "P/IM1"
    assert redactor.redact("HansMueller/x", "P") == "P/x"
    assert redactor.redact("MUELLERHANS/x", "P") == "P/x"
    assert redactor.redact("PID4711234/x", "P") == "PIDP/x"
    assert redactor.redact("Annotation/Hansen/x", "P") == "Annotation/Hansen/x"  # other words stay
    ann = Redactor(identifier_tokens("Ann^Lee", "12", None))
    assert ann.redact("Annotation/Ann Lee/x", "P") == "Annotation/P/x"
