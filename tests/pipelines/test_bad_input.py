"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing created that was not asked for;
the Dagster UI shows the same line as the step's failure; two runs on one data dir take turns."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from radaudit.pacs import io
from radaudit.pacs.layout import HOLDER_FILE, LOCK_FILE
from radaudit.pacs.lock import DataDirBusy, data_dir_lock
from radaudit.pipelines.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_a_missing_export_is_one_line_and_creates_nothing(tmp_path, capsys):
    rc, err = run_cli(capsys, "audit", "--export", str(tmp_path / "nope"), "--data", str(tmp_path / "data"))
    assert rc == 2
    assert err == f"radaudit audit: error: export {tmp_path / 'nope'} does not exist (a missing mount or a typo?)\n"
    assert files_under(tmp_path) == []


def test_an_export_that_is_a_file_or_unreadable_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "export.zip").write_bytes(b"PK")
    rc, err = run_cli(capsys, "ingest", "--export", str(tmp_path / "export.zip"), "--data", str(tmp_path / "data"))
    assert rc == 2 and err.count("\n") == 1 and "is not a folder" in err
    (tmp_path / "export").mkdir()
    real_scandir = os.scandir

    def denied(path):  # the tests run as root, which chmod cannot lock out
        if Path(path) == tmp_path / "export":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    rc, err = run_cli(capsys, "ingest", "--export", str(tmp_path / "export"), "--data", str(tmp_path / "data"))
    assert rc == 2 and err == f"radaudit ingest: error: export {tmp_path / 'export'} cannot be read: Permission denied\n"
    assert not (tmp_path / "data").exists()


def test_an_unwritable_data_dir_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "export").mkdir()
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" and mode & os.W_OK
                        else real_access(p, mode))
    rc, err = run_cli(capsys, "ingest", "--export", str(tmp_path / "export"), "--data", str(tmp_path / "ro" / "data"))
    assert rc == 2 and err.count("\n") == 1
    assert f"data dir {tmp_path / 'ro' / 'data'} is not writable (its parent {tmp_path / 'ro'} is not writable" in err
    assert files_under(tmp_path / "ro") == []
    (tmp_path / "file").write_text("x")
    rc, err = run_cli(capsys, "ingest", "--export", str(tmp_path / "export"), "--data", str(tmp_path / "file" / "d"))
    assert rc == 2 and "is not a folder" in err


def test_an_export_without_dicom_fails_at_ingest_with_what_it_found(tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "notes.txt").write_text("hello")
    (export / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (export / "zero.dcm").write_bytes(b"")
    rc, err = run_cli(capsys, "audit", "--export", str(export), "--data", str(tmp_path / "data"))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"radaudit audit: error: no DICOM image in export {export}: none of its 3 files is DICOM")
    assert "not DICOM x2" in err


def test_an_export_whose_every_image_fails_says_so(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    export = tmp_path / "export"
    export.mkdir()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (export / "IM1.dcm").write_bytes(ct[: len(ct) - 20000])  # the header reads, the pixels are cut off
    rc, err = run_cli(capsys, "ingest", "--export", str(export), "--data", str(tmp_path / "data"), "--size", "32",
                      "--workers", "1")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"radaudit ingest: error: every DICOM image in export {export} failed (1 files in "
                          "index/ingest_errors/; most common:")


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, messy_export):
    export, _ = messy_export

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "write_parquet", lambda table, path: no_space(path))
    rc, err = run_cli(capsys, "ingest", "--export", str(export), "--data", str(tmp_path / "data"), "--size", "32",
                      "--workers", "1")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("radaudit ingest: error: no space left on the device (")
    assert "free space or give another --data" in err
    assert not list((tmp_path / "data").rglob("*.parquet"))  # nothing half-written


def test_the_dagster_ui_shows_the_same_line_as_the_step_failure(tmp_path):
    """A run started from the UI fails its step with the line the CLI prints, and is not retried."""
    from radaudit.assets.ingest import ingest
    from radaudit.assets.resources import RadauditConfig

    export = tmp_path / "export"
    export.mkdir()
    (export / "notes.txt").write_text("hello")
    from radaudit.pipelines.jobs import all_folders_tags

    resource = RadauditConfig(export_dir=str(export), data_dir=str(tmp_path / "data"))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([ingest], resources={"radaudit": resource}, instance=instance,
                            tags=all_folders_tags(instance, resource), raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failure.step_failure_data
    line = f"no DICOM image in export {export}: none of its 1 files is DICOM (most common: not DICOM x1, " \
           "e.g. 'not DICOM: text file'); is this the export's root folder?"
    assert data.user_failure_data.description == line
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


HOLDER = textwrap.dedent("""
    import sys, time
    from radaudit.pacs.lock import data_dir_lock
    with data_dir_lock(sys.argv[1], what="radaudit audit"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold_lock(data: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data), str(seconds)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_busy_data_dir_fails_with_who_holds_it(tmp_path, capsys, messy_export):
    export, _ = messy_export
    data = tmp_path / "data"
    holder = hold_lock(data, 30)
    try:
        rc, err = run_cli(capsys, "ingest", "--export", str(export), "--data", str(data), "--size", "32")
        assert rc == 2 and err.count("\n") == 1
        assert f"data dir {data} is in use by pid {holder.pid} (radaudit audit, since " in err
        assert "wait for that run to end" in err
        assert files_under(data) == [HOLDER_FILE, LOCK_FILE]  # nothing written beside the holder's lock
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a killed holder's lock: no stale lock, the next run goes ahead.
    rc, err = run_cli(capsys, "ingest", "--export", str(export), "--data", str(data), "--size", "32", "--workers", "1")
    assert rc == 0, err


def test_a_run_that_may_wait_goes_ahead_when_the_holder_ends(tmp_path):
    holder = hold_lock(tmp_path, 1.5)
    said: list[str] = []
    t0 = time.monotonic()
    with data_dir_lock(tmp_path, what="test", wait_s=30, poll_s=0.1, on_wait=said.append):
        assert time.monotonic() - t0 > 1.0  # it waited for the holder's 1.5 s
    assert len(said) == 1 and "waiting up to 30 s" in said[0]
    holder.wait()
    with pytest.raises(DataDirBusy, match="after waiting 0.2 s"):
        other = hold_lock(tmp_path, 30)
        try:
            with data_dir_lock(tmp_path, what="test", wait_s=0.2, poll_s=0.05):
                pass
        finally:
            other.kill()
            other.wait()


PROBE = textwrap.dedent("""
    import sys
    from radaudit.pacs.lock import DataDirBusy, data_dir_lock
    try:
        with data_dir_lock(sys.argv[1], what="probe"):
            print("free")
    except DataDirBusy:
        print("busy")
""")


def probe(data: Path) -> str:
    """Whether another process could take the lock now."""
    return subprocess.run([sys.executable, "-c", PROBE, str(data)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], check=True).stdout.strip()


def test_the_lock_is_reentrant_in_one_process_and_holds_until_the_outer_block_ends(tmp_path):
    with data_dir_lock(tmp_path, what="outer"):
        with data_dir_lock(tmp_path, what="inner"):  # the CLI holds it while its steps take it again
            assert "outer" in (tmp_path / HOLDER_FILE).read_text()
        assert probe(tmp_path) == "busy"  # the inner block's end released nothing
        (tmp_path / HOLDER_FILE).read_text()  # reading who holds it does not release it either
        assert probe(tmp_path) == "busy"
    assert (tmp_path / HOLDER_FILE).read_text() == ""
    assert probe(tmp_path) == "free"


def test_taking_the_lock_sweeps_what_a_killed_writer_left(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / ".dicom_index.parquet.k2j3.tmp").write_bytes(b"half")
    (tmp_path / "models" / ".epoch-0002.tmp").mkdir(parents=True)
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / ".runs.db.tmp").write_bytes(b"Dagster's own")
    (tmp_path / "index" / "dicom_index.parquet").write_bytes(b"whole")
    with data_dir_lock(tmp_path, what="test"):
        pass
    assert files_under(tmp_path) == sorted([HOLDER_FILE, LOCK_FILE, "dagster", "dagster/.runs.db.tmp", "index",
                                            "index/dicom_index.parquet", "models"])


def test_a_step_from_the_ui_waits_for_the_cli_run_then_fails_with_who_holds_it(tmp_path):
    """A steward materializes from the UI while a CLI run holds the data dir: the step waits
    ``lock_wait_s``, then fails (not retried) naming the holder."""
    from radaudit.assets.labels import region_labels
    from radaudit.assets.resources import RadauditConfig

    (tmp_path / "export").mkdir()
    holder = hold_lock(tmp_path / "data", 30)
    try:
        resource = RadauditConfig(export_dir=str(tmp_path / "export"), data_dir=str(tmp_path / "data"),
                                  lock_wait_s=0.5)
        result = dg.materialize([region_labels], resources={"radaudit": resource}, raise_on_error=False)
    finally:
        holder.kill()
        holder.wait()
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"data dir {tmp_path / 'data'} is in use by pid {holder.pid} (radaudit audit, since ")
    assert "after waiting 0.5 s" in description


def test_a_gpu_step_gives_its_pool_slot_back_while_the_data_dir_is_busy(tmp_path):
    """A UI step of the GPU pool must not sit on its slot waiting for a CLI run that needs the slot:
    it asks to be retried (slot released), and fails with the holder's line once lock_wait_s is used."""
    from radaudit.assets.models import method_assets
    from radaudit.assets.resources import AuditConfig, RadauditConfig

    (tmp_path / "export").mkdir()
    holder = hold_lock(tmp_path / "data", 60)
    try:
        resource = RadauditConfig(export_dir=str(tmp_path / "export"), data_dir=str(tmp_path / "data"),
                                  lock_wait_s=0.5, pool_retry_s=0.2)
        _, embeddings = method_assets("simclr")
        result = dg.materialize([embeddings], resources={"radaudit": resource, "audit": AuditConfig()},
                                raise_on_error=False)
    finally:
        holder.kill()
        holder.wait()
    kinds = [e.event_type_value for e in result.all_events]
    assert kinds.count("STEP_UP_FOR_RETRY") == 3  # ceil(0.5 / 0.2) retries, each with its slot released
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_failure_data.user_failure_data.description.startswith(
        f"data dir {tmp_path / 'data'} is in use by pid {holder.pid}")
