"""Checks of what a user hands radaudit, each failing with one line that says what to fix.

A nightly run on a hospital's archive meets a missing mount, a read-only data dir, an export of
PDFs or a full disk. Each gets an :class:`InputError` whose message is the whole story: the CLI
prints it as one line (exit code 2) and the Dagster UI shows it as the run's failure message.
Nothing here creates a file or folder: a check that fails leaves no trace.

    from radaudit.pacs.checks import check_export, check_data_dir
    check_export("export"); check_data_dir("data")
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd

__all__ = ["InputError", "check_data_dir", "check_export", "check_ingest_result", "disk_error"]


class InputError(ValueError):
    """A problem with what the user gave (paths, files, disk), not a bug: its message is one line."""


def check_export(export_dir: str | os.PathLike[str] | None) -> Path:
    """The export root, or :class:`InputError` when it is missing, not a folder or unreadable."""
    if export_dir is None or not str(export_dir).strip():
        raise InputError("no export given: pass --export EXPORT or set RADAUDIT_EXPORT_DIR")
    root = Path(export_dir)
    if not root.exists():
        raise InputError(f"export {root} does not exist (a missing mount or a typo?)")
    if not root.is_dir():
        raise InputError(f"export {root} is not a folder: give the root folder of the DICOM export")
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        raise InputError(f"export {root} cannot be read: {exc.strerror or exc}") from exc
    return root


def check_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data dir, or :class:`InputError` when radaudit could not write there.

    A data dir that does not exist yet is fine if its nearest existing parent is a writable folder
    (it is created by the run, not here).
    """
    if data_dir is None or not str(data_dir).strip():
        raise InputError("no data dir given: pass --data DATA or set RADAUDIT_DATA_DIR")
    path = Path(data_dir)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"data dir {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its parent {probe} is not writable, so it cannot be created)"
        raise InputError(f"data dir {path} is not writable{where}: give a folder this user may write, "
                         "or fix its permissions")
    if probe == path and not os.access(path, os.R_OK):
        raise InputError(f"data dir {path} is not readable: fix its permissions")
    return path


def check_ingest_result(index: pd.DataFrame, errors: pd.DataFrame, cached: int, export_dir: str | os.PathLike[str]
                        ) -> None:
    """:class:`InputError` when an ingest found no DICOM image, or every image failed.

    Args:
        index: The instance index after the run (rows with ``present``).
        errors: The ingest errors after the run (``present``, ``stage``, ``reason``).
        cached: Images in the image cache that are present in the index.
        export_dir: The export, for the message.
    """
    live_errors = errors[errors["present"].astype(bool)] if len(errors) else errors
    live = int(index["present"].astype(bool).sum()) if len(index) else 0
    if live == 0 and len(live_errors) == 0:
        raise InputError(f"export {export_dir} holds no files")
    if live == 0 and not (live_errors["stage"] != "discover").any():
        common = _most_common(live_errors)
        raise InputError(f"no DICOM image in export {export_dir}: none of its {len(live_errors)} files is DICOM "
                         f"(most common: {common}); is this the export's root folder?")
    if cached == 0:
        common = _most_common(live_errors[live_errors["stage"] != "discover"])
        raise InputError(f"every DICOM image in export {export_dir} failed ({len(live_errors)} files in "
                         f"index/ingest_errors/; most common: {common})")


def _most_common(errors: pd.DataFrame) -> str:
    """The most frequent kind of reason (its text before the first colon), its count and an example."""
    if not len(errors):
        return "no reason recorded"
    reasons = errors["reason"].astype(str)
    kinds = reasons.str.split(":").str[0]
    top = kinds.value_counts()
    example = reasons[kinds == top.index[0]].iloc[0][:80]
    return f"{top.index[0]} x{int(top.iloc[0])}, e.g. {example!r}"


_DISK = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
         errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
         errno.EPERM: "operation not permitted"}


def disk_error(exc: BaseException) -> InputError | None:
    """An :class:`InputError` for an ``OSError`` the user must fix (full disk, read-only, permissions),
    naming the file; None for any other exception."""
    if not isinstance(exc, OSError) or exc.errno not in _DISK:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    hint = "free space or give another --data" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "give a data dir this user may write"
    return InputError(f"{_DISK[exc.errno]}{where}: {hint}")
