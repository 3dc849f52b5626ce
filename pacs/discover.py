"""Find DICOM files in an export tree by content, never by name.

A file is DICOM when it has the Part 10 preamble ("DICM" at byte 128) or starts like a raw
dataset without preamble (a group 0x0002 or 0x0008 tag), as some exporters write.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}


class Kind(enum.Enum):
    """What the first bytes of a file say it is."""

    PART10 = "part10"
    RAW = "raw"
    EMPTY = "empty"
    NOT_DICOM = "not_dicom"


@dataclass(frozen=True)
class FoundFile:
    """One regular file under the export root."""

    path: str  # relative to the export root, POSIX separators; bytes that are not UTF-8 as surrogate escapes
    size: int
    mtime_ns: int


def walk(root: str | os.PathLike[str], *, folder: str | None = None,
         subfolders: bool = True) -> Iterator[FoundFile | tuple[str, str]]:
    """Yield every regular file under ``root`` in a stable order.

    Entries that cannot be read as files (broken links, permission errors, sockets) are
    yielded as ``(relative_path, reason)`` so the caller can record them instead of losing them.

    Args:
        root: The export root; every path is relative to it.
        folder: Walk only this top-level folder of ``root`` (one ingest partition).
        subfolders: False: only the entries directly in the start folder, none below it.
    """
    root = Path(root)
    start = root / folder if folder is not None else root
    # (folder, its path relative to the root with a trailing "/", or "" for the root itself)
    stack: list[tuple[str, str]] = [(str(start), "" if folder is None else folder + "/")]
    while stack:
        current, rel_folder = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            yield (_rel(Path(current), root), f"cannot list folder: {exc.strerror or exc}")
            continue
        subdirs = []
        for entry in entries:
            rel = rel_folder + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, rel + "/"))
                    continue
                if not entry.is_file(follow_symlinks=True):
                    yield (rel, "not a regular file (broken link, socket or device)")
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                yield (rel, f"cannot stat: {exc.strerror or exc}")
                continue
            yield FoundFile(rel, st.st_size, st.st_mtime_ns)
        if subfolders:
            stack.extend(reversed(subdirs))


def display_path(text: str) -> str:
    """``text`` as valid UTF-8, for outputs: a name's bytes that are not UTF-8 written as ``\\xfc``.

    File names from Windows or CD-viewer exports are often Latin-1 (``M\\xfcller.dcm``); Python
    keeps their undecodable bytes as surrogate escapes, which UTF-8 and so Parquet cannot store.
    Valid text comes back unchanged.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def sniff(path: str | os.PathLike[str]) -> Kind:
    """Classify a file by its first 132 bytes."""
    with open(path, "rb") as f:
        head = f.read(132)
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> Kind:
    """Classify the first 132 (or fewer) bytes of a file."""
    if not head:
        return Kind.EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return Kind.PART10
    if len(head) >= 8:
        group_le = int.from_bytes(head[0:2], "little")
        group_be = int.from_bytes(head[0:2], "big")
        explicit = head[4:6] in _VRS
        if group_le in (0x0002, 0x0008) and (explicit or int.from_bytes(head[4:8], "little") < 1 << 16):
            return Kind.RAW
        if group_be == 0x0008 and explicit:
            return Kind.RAW
    return Kind.NOT_DICOM
