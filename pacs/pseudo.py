"""Pseudonymization: a keyed HMAC of the Patient ID, so no raw identifier reaches any output.

The key comes from configuration (``RADAUDIT_PSEUDONYM_KEY``) or is generated once and kept
under the data dir with 0600 permissions. The same key gives the same patient key across runs,
so folds grouped by patient stay stable; without the key the mapping cannot be reversed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

KEY_ENV = "RADAUDIT_PSEUDONYM_KEY"
KEY_FILE = Path("secrets") / "pseudonym.key"


def load_or_create_key(data_dir: str | os.PathLike[str], configured: str | None = None) -> bytes:
    """Return the pseudonymization key.

    Args:
        data_dir: The pipeline's data dir; the generated key lives in ``secrets/pseudonym.key``.
        configured: A key given by configuration (any string); wins over the file.

    Raises:
        PermissionError: If the key file is readable by group or others.
    """
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{path} has permissions {oct(mode)}; the pseudonymization key must be private: "
                f"run `chmod 600 {path}`"
            )
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.replace(tmp, path)
    return key


def pseudonymize(value: str | None, key: bytes, *, issuer: str | None = None) -> str | None:
    """Keyed hash (HMAC-SHA256, 20 hex chars) of an identifier; None for a blank one.

    ``issuer`` (Issuer of Patient ID) keeps equal IDs from different issuers apart.
    """
    if value is None or not str(value).strip():
        return None
    msg = f"{(issuer or '').strip()}\x00{str(value).strip()}".encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:20]


_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


def identifier_tokens(patient_name: str | None, patient_id: str | None, birth_date: str | None = None) -> set[str]:
    """Casefolded pieces of a patient's name, ID and birth date that must not appear in any output path.

    Name components shorter than 3 characters (initials, "Dr") are not tokens; umlauts also
    count in their transliterated form ("Müller" -> "mueller"); a DICOM birth date YYYYMMDD
    counts also as YYYY-MM-DD, DD.MM.YYYY and DDMMYYYY.
    """
    tokens: set[str] = set()
    for part in re.split(r"[\^\s,._\-=]+", str(patient_name or "")):
        if len(part) >= 3:
            tokens |= {part.casefold(), part.casefold().translate(_TRANSLIT)}
    if patient_id and len(str(patient_id).strip()) >= 3:
        tokens.add(str(patient_id).strip().casefold())
    date = str(birth_date or "").strip()
    if re.fullmatch(r"\d{8}", date):
        y, m, d = date[:4], date[4:6], date[6:]
        tokens |= {date, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}{m}{y}"}
    return tokens


def redact_path(path: str, tokens: set[str], replacement: str) -> str:
    """Replace the identifier parts of ``path`` by ``replacement``, keeping the rest of each name.

    ``MÜLLER^HANS 4711/Knie`` becomes ``<replacement>/Knie``; ``MUELLER_HANS_2021`` becomes
    ``<replacement>_2021``, so different folders of one patient stay apart.
    """
    if not tokens:
        return path
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)), re.IGNORECASE)
    marked = pattern.sub("\0", path)
    return re.sub(r"\0(?:[^\w/]*\0|_+\0)*", replacement, marked)


def path_key(path: str, key: bytes) -> str:
    """Keyed hash of a path relative to the export root: its identity in the index without the path."""
    return pseudonymize(path, key, issuer="path") or ""
