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
(the CLI's in-process steps; one thread; the first holder's mode counts). Taking it exclusively
removes the temporary files a killed writer left (:func:`radaudit.pacs.io.remove_stale_temps`).

The ingest of one export folder (a partition, :mod:`radaudit.pacs.partitions`) holds the data dir's
lock *shared* and its partition's lock (:func:`partition_lock`) exclusively, so several folders are
ingested at once, on one machine or several sharing the data dir (``lockf`` locks work over NFS
with its lock manager), while every other step still has the data dir to itself.

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
from radaudit.pacs.layout import HOLDER_FILE, LOCK_FILE, PARTITION_LOCK_DIR

__all__ = ["HOLDER_FILE", "LOCK_FILE", "DataDirBusy", "data_dir_lock", "partition_lock"]

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
                  on_wait: Callable[[str], None] | None = None, shared: bool = False) -> Iterator[None]:
    """Hold the data dir's lock for the block.

    Args:
        data_dir: The data dir (created if missing: a run writes there anyway).
        what: Who holds it, shown to a run that waits (e.g. ``"radaudit audit"``, ``"asset ingest"``).
        wait_s: Seconds to wait for another holder; 0 = fail at once.
        poll_s: Seconds between tries while waiting.
        on_wait: Called once with the holder's description when the lock is busy.
        shared: Hold it with other shared holders (the ingests of several partitions, each also
            holding its :func:`partition_lock`), while no exclusive holder runs. Only an exclusive
            holder removes the temporary files a killed writer left: a shared one cannot know that
            no other writer is alive.

    Raises:
        DataDirBusy: The lock stayed busy for ``wait_s`` seconds; the message names the holder.
    """
    path = Path(data_dir) / LOCK_FILE
    with _file_lock(path, path.with_name(HOLDER_FILE), what=what, wait_s=wait_s, poll_s=poll_s, on_wait=on_wait,
                    shared=shared, busy=f"data dir {data_dir}", sweep=None if shared else path.parent):
        yield


@contextlib.contextmanager
def partition_lock(data_dir: str | os.PathLike[str], partition: str, *, what: str, wait_s: float = 0.0,
                   poll_s: float = 1.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold one ingest partition's lock (``index/locks/<partition>.lock``): one writer per partition.

    The ingests of two partitions hold the data dir's lock shared and each its own partition's
    lock, so they run side by side; two ingests of the same partition take turns. Arguments as
    :func:`data_dir_lock`.
    """
    path = Path(data_dir) / PARTITION_LOCK_DIR / f"{partition}.lock"
    with _file_lock(path, path.with_suffix(".holder"), what=what, wait_s=wait_s, poll_s=poll_s, on_wait=on_wait,
                    shared=False, busy=f"partition {partition} of data dir {data_dir}", sweep=None):
        yield


@contextlib.contextmanager
def _file_lock(path: Path, holder_file: Path, *, what: str, wait_s: float, poll_s: float,
               on_wait: Callable[[str], None] | None, shared: bool, busy: str, sweep: Path | None) -> Iterator[None]:
    """A ``lockf`` lock on ``path``, re-entrant in this process; ``sweep``: the folder whose stale
    temporary files to remove once it is held."""
    if wait_s < 0:
        raise ValueError(f"wait_s must be >= 0, got {wait_s}")
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
                fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform reports it
                holder = _holder(holder_file) or "another process"
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise DataDirBusy(f"{busy} is in use by {holder}{waited}; wait for that run to "
                                      "end, or give another data dir") from None
                if not told and on_wait is not None:
                    on_wait(f"{busy} is in use by {holder}; waiting up to {wait_s:g} s")
                    told = True
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        line = f"pid {os.getpid()} ({what}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')})\n"
        write_text(holder_file, line)
        if sweep is not None:
            stale = remove_stale_temps(sweep)
            if stale:
                log.info("removed %d temporary files a stopped run left in %s", len(stale), sweep)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            # Shared holders overwrite each other's line: leave another holder's line alone.
            if not shared or _holder(holder_file) == line.strip():
                write_text(holder_file, "")
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
