"""What every asset step does around its work: hold the data dir, and fail in one clear line.

A steward's materialization and a nightly run on the same data dir take turns (:mod:`pacs.lock`),
and a problem the user must fix (a missing export, a full disk, an export of PDFs) fails the step
with one line in the Dagster UI, not retried; the CLI prints the same line.
"""

import contextlib
from collections.abc import Iterator

import dagster as dg

from assets.resources import RadauditConfig
from pacs.checks import InputError, check_data_dir, check_export, disk_error
from pacs.lock import data_dir_lock


def no_retry(error: Exception) -> dg.Failure:
    """The step's failure for ``error``: one line, not retried (bad input fails the same way every time)."""
    line = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
    return dg.Failure(description=line, allow_retries=False)


@contextlib.contextmanager
def guarded(radaudit: RadauditConfig, what: str, *, reads_export: bool = False) -> Iterator[None]:
    """Hold the data dir's lock (waiting up to ``radaudit.lock_wait_s``) and turn the user's problems
    (:class:`InputError`, ``ValueError``, ``FileNotFoundError``, a full disk or a read-only data dir)
    into a one-line :class:`dagster.Failure`.

    The data dir (and with ``reads_export`` the export) is checked first, so that a step that
    cannot work creates nothing."""
    log = dg.get_dagster_logger()
    try:
        if reads_export:
            check_export(radaudit.export_dir)
        check_data_dir(radaudit.data_dir)
        with data_dir_lock(radaudit.data_dir, what=f"Dagster step {what}", wait_s=radaudit.lock_wait_s,
                           on_wait=log.warning):
            yield
    except (ValueError, FileNotFoundError) as error:
        raise no_retry(error) from error
    except OSError as error:
        disk = disk_error(error)
        if disk is None:
            raise
        raise no_retry(disk) from error
