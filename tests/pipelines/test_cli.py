"""The radaudit command line: clear errors for bad arguments, and a working ingest."""

import pandas as pd

from pacs.index import ERRORS_PATH, INDEX_PATH
from pipelines.cli import main


def test_synth_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "e"), "--truth", str(tmp_path / "t.parquet"), "--n", "-3"])
    assert rc == 2
    assert "error" in capsys.readouterr().err
    rc = main(["synth", "--out", str(tmp_path / "e"), "--truth", str(tmp_path / "t.parquet"), "--noise", "1.5"])
    assert rc == 2


def test_ingest_needs_paths(monkeypatch, capsys):
    monkeypatch.delenv("RADAUDIT_EXPORT_DIR", raising=False)
    monkeypatch.delenv("RADAUDIT_DATA_DIR", raising=False)
    assert main(["ingest"]) == 2
    assert "--export" in capsys.readouterr().err


def test_ingest_command_indexes_an_export(messy_export, tmp_path, capsys):
    export, expected = messy_export
    data = tmp_path / "data"
    assert main(["ingest", "--export", str(export), "--data", str(data), "--size", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    index = pd.read_parquet(data / INDEX_PATH)
    assert len(index) == sum(1 for o in expected.values() if o == "index")
    assert str(data / ERRORS_PATH) in out and "mapped" in out


def test_cli_runs_are_recorded_under_the_data_dir(messy_export, tmp_path, monkeypatch):
    import dagster as dg

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    export, _ = messy_export
    data = tmp_path / "data"
    assert main(["ingest", "--export", str(export), "--data", str(data), "--size", "32", "--workers", "1"]) == 0
    assert (data / "dagster" / "dagster.yaml").exists()
    instance = dg.DagsterInstance.from_config(str(data / "dagster"))
    try:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success
    finally:
        instance.dispose()
