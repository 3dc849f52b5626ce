"""What every asset step does around its work: hold the data dir, and fail in one clear line.

A steward's materialization and a nightly run on the same data dir take turns (:mod:`radaudit.pacs.lock`),
and a problem the user must fix (a missing export, a full disk, an export of PDFs) fails the step
with one line in the Dagster UI, not retried; the CLI prints the same line.
"""

import contextlib
import math
from collections.abc import Iterator

import dagster as dg

from radaudit.assets.resources import RadauditConfig
from radaudit.pacs.checks import InputError, check_data_dir, check_export, disk_error
from radaudit.pacs.lock import DataDirBusy, data_dir_lock


def no_retry(error: Exception) -> dg.Failure:
    """The step's failure for ``error``: one line, not retried (bad input fails the same way every time)."""
    line = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
    return dg.Failure(description=line, allow_retries=False)


@contextlib.contextmanager
def guarded(radaudit: RadauditConfig, what: str, *, reads_export: bool = False,
            pool_retry_number: int | None = None, shared: bool = False) -> Iterator[None]:
    """Hold the data dir's lock (waiting up to ``radaudit.lock_wait_s``) and turn the user's problems
    (:class:`InputError`, ``ValueError``, ``FileNotFoundError``, a full disk or a read-only data dir)
    into a one-line :class:`dagster.Failure`.

    The data dir (and with ``reads_export`` the export) is checked first, so that a step that
    cannot work creates nothing. A step in a concurrency pool passes its ``context.retry_number``
    as ``pool_retry_number``: it does not wait for the lock while holding its pool slot, but asks
    to be retried in ``radaudit.pool_retry_s`` (slot released), until ``lock_wait_s`` is used up.
    ``shared``: hold the lock with other shared holders (the ingests of other partitions, which
    lock their own partition besides)."""
    log = dg.get_dagster_logger()
    try:
        if reads_export:
            check_export(radaudit.export_dir)
        check_data_dir(radaudit.data_dir)
    except (ValueError, OSError) as error:
        _raise_failure(error)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(data_dir_lock(
                radaudit.data_dir, what=f"Dagster step {what}", on_wait=log.warning,
                wait_s=0.0 if pool_retry_number is not None else radaudit.lock_wait_s, shared=shared))
        except DataDirBusy as busy:
            every = radaudit.pool_retry_s
            tries = max(1, math.ceil(radaudit.lock_wait_s / every))
            if pool_retry_number is not None and pool_retry_number < tries:
                log.warning(f"{busy}; giving the GPU slot back and trying again in {every:g} s")
                raise dg.RetryRequested(max_retries=tries, seconds_to_wait=min(every, radaudit.lock_wait_s)) \
                    from busy
            raise no_retry(busy) from busy
        try:
            yield
        except (ValueError, OSError) as error:
            _raise_failure(error)


def _raise_failure(error: Exception) -> None:
    """Raise the one-line failure for a user's problem, or ``error`` itself for anything else (a bug)."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        raise no_retry(error) from error
    disk = disk_error(error)
    if disk is None:
        raise error
    raise no_retry(disk) from error
