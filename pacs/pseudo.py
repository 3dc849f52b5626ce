"""Pseudonymization: a keyed HMAC of the Patient ID, so no raw identifier reaches any output.

The key comes from configuration (``RADAUDIT_PSEUDONYM_KEY``) or is generated once and kept
under the data dir with 0600 permissions. The same key gives the same patient key across runs,
so folds grouped by patient stay stable; without the key the mapping cannot be reversed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
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
