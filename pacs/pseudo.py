"""Pseudonymization: a keyed HMAC of the Patient ID, so no raw identifier reaches any output.

The key comes from configuration (``RADAUDIT_PSEUDONYM_KEY``) or is generated once and kept
under the data dir with 0600 permissions. The same key gives the same patient key across runs,
so folds grouped by patient stay stable; without the key the mapping cannot be reversed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from radaudit.pacs.layout import KEY_FILE

KEY_ENV = "RADAUDIT_PSEUDONYM_KEY"


def read_key(data_dir: str | os.PathLike[str], configured: str | None = None) -> bytes | None:
    """The pseudonymization key from configuration or the data dir's key file; None if neither has one.

    Raises:
        PermissionError: If the key file is readable by group or others.
    """
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{path} has permissions {oct(mode)}; the pseudonymization key must be private: run `chmod 600 {path}`"
        )
    return path.read_bytes()


def load_or_create_key(data_dir: str | os.PathLike[str], configured: str | None = None) -> bytes:
    """Return the pseudonymization key, generating and keeping one on first use.

    Args:
        data_dir: The pipeline's data dir; the generated key lives in ``secrets/pseudonym.key``.
        configured: A key given by configuration (any string); wins over the file.

    Raises:
        PermissionError: If the key file is readable by group or others.
    """
    existing = read_key(data_dir, configured)
    if existing is not None:
        return existing
    path = Path(data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    try:
        # A hard link never replaces an existing file: when two processes (a sensor and a run, two
        # runs) create the key at once, one wins and both use its key, never a half-written file.
        os.link(tmp, path)
    except FileExistsError:
        return path.read_bytes()
    except OSError:
        # No hard links here (SMB without Unix extensions, exFAT, some FUSE mounts): an atomic
        # rename, which a racing process could only replace with a key nothing has used yet.
        if path.exists():
            return path.read_bytes()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def pseudonymize(value: str | None, key: bytes, *, issuer: str | None = None) -> str | None:
    """Keyed hash (HMAC-SHA256, 20 hex chars) of an identifier; None for a blank one.

    ``issuer`` (Issuer of Patient ID) keeps equal IDs from different issuers apart.
    """
    if value is None or not str(value).strip():
        return None
    msg = f"{(issuer or '').strip()}\x00{str(value).strip()}".encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:20]


# Characters that join the pieces of one name component ("O'Brien", "Karl-Heinz", "von Arnim"), and
# what exports turn them into: removed ("OBrien"), "_" (file-name sanitizers), a space or a hyphen.
_JOINTS = re.compile(r"[\s'’`´_.\-]+")
_JOINED = ("", "_", " ", "-")
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
MIN_TOKEN = 3
_MAX_VALUE = 64  # characters of a PN component group or an LO value (DICOM PS3.5, 6.2)
_NO_TOKENS: tuple[list[int], frozenset[str]] = ([], frozenset())


def _letter_forms(text: str) -> set[str]:
    """``text`` lower-cased, case-folded and with its non-ASCII letters written as exports write them.

    German transliteration ("müller" -> "mueller"), the bare letter ("muller"), decomposed Unicode
    (macOS file names), "_" for every non-ASCII character ("m_ller", what file-name sanitizers
    write; only where at least ``MIN_TOKEN`` real letters remain, so "Çam" does not make "_am" a
    token) and the escaped Latin-1 bytes of a file name that is not UTF-8 ("m\\xfcller", see
    ``radaudit.pacs.discover.display_path``).
    """
    low = unicodedata.normalize("NFC", text).lower()
    forms = {low, low.casefold(), low.translate(_TRANSLIT)}
    decomposed = unicodedata.normalize("NFD", low)  # macOS writes file names decomposed: "u" + U+0308
    bare = "".join(c for c in unicodedata.normalize("NFKD", low.replace("ß", "ss")) if not unicodedata.combining(c))
    forms |= {bare, decomposed}
    for spelled in (low, decomposed):  # a sanitizer's "_" for each non-ASCII character; needs real letters
        sanitized = "".join(c if c.isascii() else "_" for c in spelled)
        if sum(c.isalnum() for c in sanitized) >= MIN_TOKEN:
            forms.add(sanitized)
    for case in (low, low.upper()):
        try:
            forms.add(case.encode("cp1252").decode("utf-8", "backslashreplace").lower())
        except UnicodeEncodeError:
            pass
    return forms


@functools.lru_cache(maxsize=4096)  # one patient has many files
def identifier_tokens(
    patient_name: str | None, patient_id: str | None, birth_date: str | None = None
) -> frozenset[str]:
    """Lower-case pieces of a patient's name, ID and birth date that must not appear in any output path.

    Tokens come from the family, given and middle names (not prefix or suffix such as "Dr."):
    each name, each piece of it ("Meyer-Lüdenscheidt" -> "meyer", "lüdenscheidt") and the name
    with its joints removed or replaced ("o'brien" -> "obrien", "o_brien", "o brien", "o-brien"),
    each also with its umlauts folded (see ``_letter_forms``). Pieces shorter than 3 characters
    (initials, the "O" of "O'Brien") are not tokens, so ordinary words stay. The ID counts also
    with other characters than letters and digits as "_" or removed; a DICOM birth date YYYYMMDD
    counts also as YYYY-MM-DD, DD.MM.YYYY and DDMMYYYY.
    """
    texts: set[str] = set()
    # A component group (PN) and a Patient ID (LO) hold at most 64 characters: a longer value is a
    # damaged length that swallowed the file's other text, whose words ("image") are no identifiers.
    for group in str(patient_name or "").split("=")[:3]:  # alphabetic, ideographic, phonetic
        group = group[:_MAX_VALUE]
        family_given = [re.sub(r"[\s'’`´_.\-,;]+", "", c) for c in group.split("^")[:2]]
        if len(family_given) == 2 and all(family_given):  # written together: "MUELLERHANS", "HansMueller"
            texts |= {family_given[0] + family_given[1], family_given[1] + family_given[0]}
        for component in group.split("^")[:3]:  # family, given, middle
            for name in re.split(r"[,;\x00-\x1f\x7f]+", component):  # control bytes: a damaged value
                pieces = [p for p in _JOINTS.split(name) if p]
                texts |= set(pieces)
                if len(pieces) > 1:
                    texts |= {joint.join(pieces) for joint in _JOINED}
    tokens = {form for text in texts for form in _letter_forms(text)}
    pid = str(patient_id or "").strip().lower()[:_MAX_VALUE]
    if pid:
        tokens |= {pid, re.sub(r"[^\w-]", "_", pid), re.sub(r"[\W_]+", "", pid)}
    date = str(birth_date or "").strip()
    if re.fullmatch(r"\d{8}", date):
        y, m, d = date[:4], date[4:6], date[6:]
        tokens |= {date, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}{m}{y}"}
    return frozenset(t for t in tokens if len(t) >= MIN_TOKEN)


class Redactor:
    """Finds the identifier tokens of many patients in paths, case-insensitively, as whole tokens.

    A token counts only where it stands alone: between characters that are not letters or digits
    ("Bauer Margaret (52020514)"), where letters meet digits ("Mueller2021") or where a lower-case
    letter meets an upper-case one ("MuellerHans"); family and given name written together
    ("MUELLERHANS") are tokens of their own (:func:`identifier_tokens`). An ID made only of digits
    glued to letters counts from :data:`MIN_GLUED_DIGITS` digits on ("PID4711234"), so a short
    Patient ID is not cut out of "IM00001", nor "Ann" out of "Annotation".

    One regular expression over thousands of tokens costs milliseconds per path (an archive's
    first ingest meets thousands of patients); here each position of a path costs a dict lookup
    of its first ``MIN_TOKEN`` characters and, where a token starts so, one set lookup per token
    length, longest first, as the alternation matched.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        heads: dict[str, set[str]] = {}
        for token in {t.lower() for t in tokens if len(t) >= MIN_TOKEN}:
            heads.setdefault(token[:MIN_TOKEN], set()).add(token)
        # head -> (token lengths, longest first; the tokens): a few set lookups per position.
        self._by_head = {
            head: (sorted({len(t) for t in group}, reverse=True), frozenset(group)) for head, group in heads.items()
        }

    def redact(self, path: str, replacement: str) -> str:
        """Replace the identifier parts of ``path`` by ``replacement``, keeping every other character.

        ``MÜLLER^HANS 4711/Knie`` becomes ``<replacement>/Knie``; ``MUELLER_HANS_2021`` becomes
        ``<replacement>_2021``, so different folders of one patient stay apart. Tokens joined only
        by spaces, ``_``, ``-``, ``^``, ``,`` or ``.`` become one replacement; brackets stay:
        ``Bauer Margaret (52020514)`` becomes ``<replacement> (<replacement>)``.
        """
        if not self._by_head:
            return path
        low = path.lower()
        if len(low) != len(path):  # a character whose lower case is longer ("İ"): keep positions
            low = "".join(c if len(c.lower()) != 1 else c.lower() for c in path)
        parts: list[str] = []
        start = i = 0
        while i <= len(low) - MIN_TOKEN:
            if i and not _boundary(path[i - 1], path[i]):
                i += 1
                continue
            lengths, group = self._by_head.get(low[i : i + MIN_TOKEN], _NO_TOKENS)
            for n in lengths:
                token = low[i : i + n]
                if token in group and (i + n == len(low) or _boundary(path[i + n - 1], path[i + n])) \
                        and _stands_alone(low, i, n):
                    parts += [path[start:i], "\0"]
                    start = i = i + n
                    break
            else:
                i += 1
        if not parts:
            return path
        marked = "".join(parts) + path[start:]
        return re.sub(r"\0(?:[\s_\-^,.]*\0)*", replacement, marked)


# A token of digits only (a Patient ID, a birth date) glued to letters counts from this length
# ("PID4711234"); a shorter one there is likely a file number ("IM000001").
MIN_GLUED_DIGITS = 6


def _boundary(before: str, after: str) -> bool:
    """Whether a token may end before ``after`` / start after ``before`` (two adjacent characters):
    one is neither a letter nor a digit, one is a letter and the other a digit, or a lower-case
    letter meets an upper-case one ("MuellerHans")."""
    return (not before.isalnum() or not after.isalnum() or before.isalpha() != after.isalpha()
            or (before.islower() and after.isupper()))


def _stands_alone(low: str, i: int, n: int) -> bool:
    """A digits-only token glued to a letter needs :data:`MIN_GLUED_DIGITS` digits ("IM00001" keeps a
    5-digit ID)."""
    if not low[i : i + n].isdigit() or n >= MIN_GLUED_DIGITS:
        return True
    return not ((i and low[i - 1].isalpha()) or (i + n < len(low) and low[i + n].isalpha()))


def redact_path(path: str, tokens: Iterable[str], replacement: str) -> str:
    """``Redactor(tokens).redact(path, replacement)``; build one ``Redactor`` for many paths."""
    return Redactor(tokens).redact(path, replacement)


def path_key(path: str, key: bytes) -> str:
    """Keyed hash of a path relative to the export root: its identity in the index without the path.

    Hashes the path's UTF-8 bytes, or, for a name that is not UTF-8 (Latin-1 bytes from a Windows
    export, which ``os.fsdecode`` keeps as surrogate escapes), the real bytes of the name.
    """
    path = path.strip()
    if not path:
        return ""
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
    return hmac.new(key, b"path\x00" + raw, hashlib.sha256).hexdigest()[:20]
