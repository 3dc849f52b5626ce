"""One writer per data dir: an advisory lock that a second run waits for, or fails on with a clear line.

Two runs on one data dir (a nightly job and a steward's materialization from the Dagster UI, two
CLI runs) would otherwise interleave their writes. The CLI holds :func:`data_dir_lock` for its
whole run, so another run's steps wait for all of it; a run started from the UI holds it step by
step (every file is still replaced whole, but a CLI run may slip in between two of its steps).

The lock is a POSIX record lock (``lockf``) on ``<data dir>/.radaudit.lock``: the kernel drops it
when its holder dies (kill -9 included), so a crashed run never leaves a stale lock; unlike
``flock``, the holder's forked workers (decoders, data loaders) do not inherit it, so they cannot
keep a killed run's lock. A POSIX lock is also dropped when its process closes *any* descriptor
of the file, so nothing but this module opens ``.radaudit.lock``; ``.radaudit.holder`` names the
holder (pid, what, since) for the message a waiting run prints. Re-entrant within one process
(the CLI's in-process steps; one thread). Taking it removes the temporary files a killed writer
left (:func:`radaudit.pacs.io.remove_stale_temps`).

    with data_dir_lock("data", what="radaudit audit", wait_s=0):
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from radaudit.pacs.checks import InputError
from radaudit.pacs.io import remove_stale_temps, write_text
from radaudit.pacs.layout import HOLDER_FILE, LOCK_FILE

__all__ = ["HOLDER_FILE", "LOCK_FILE", "DataDirBusy", "data_dir_lock"]

log = logging.getLogger(__name__)
_held: dict[str, int] = {}  # resolved lock path -> depth, in this process
_guard = threading.Lock()


class DataDirBusy(InputError):
    """Another run holds the data dir's lock."""


def _holder(path: Path) -> str:
    """What the holder file says about the lock's holder ("" if unreadable)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def data_dir_lock(data_dir: str | os.PathLike[str], *, what: str, wait_s: float = 0.0, poll_s: float = 1.0,
                  on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the data dir's lock for the block.

    Args:
        data_dir: The data dir (created if missing: a run writes there anyway).
        what: Who holds it, shown to a run that waits (e.g. ``"radaudit audit"``, ``"asset ingest"``).
        wait_s: Seconds to wait for another holder; 0 = fail at once.
        poll_s: Seconds between tries while waiting.
        on_wait: Called once with the holder's description when the lock is busy.

    Raises:
        DataDirBusy: The lock stayed busy for ``wait_s`` seconds; the message names the holder.
    """
    if wait_s < 0:
        raise ValueError(f"wait_s must be >= 0, got {wait_s}")
    path = Path(data_dir) / LOCK_FILE
    holder_file = path.with_name(HOLDER_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform reports it
                holder = _holder(holder_file) or "another process"
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise DataDirBusy(f"data dir {data_dir} is in use by {holder}{waited}; wait for that run to "
                                      "end, or give another data dir") from None
                if not told and on_wait is not None:
                    on_wait(f"data dir {data_dir} is in use by {holder}; waiting up to {wait_s:g} s")
                    told = True
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        write_text(holder_file, f"pid {os.getpid()} ({what}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')})\n")
        stale = remove_stale_temps(path.parent)
        if stale:
            log.info("removed %d temporary files a stopped run left in %s", len(stale), path.parent)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            write_text(holder_file, "")
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
