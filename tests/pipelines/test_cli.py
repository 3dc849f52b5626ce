"""The radaudit command line: clear errors for bad arguments, and a working ingest."""

from pathlib import Path

import pandas as pd
import pytest

from radaudit.pacs.index import read_index
from radaudit.pacs.layout import ERRORS_DIR
from radaudit.models.presets import PRESETS
from radaudit.pipelines.cli import main, print_truth_scores


def test_synth_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "e"), "--truth", str(tmp_path / "t.parquet"), "--n", "-3"])
    assert rc == 2
    assert "error" in capsys.readouterr().err
    rc = main(["synth", "--out", str(tmp_path / "e"), "--truth", str(tmp_path / "t.parquet"), "--noise", "1.5"])
    assert rc == 2


def test_synth_devices_options(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path / "e"), "--truth", str(tmp_path / "t.parquet"), "--n", "4", "--size", "32",
            "--ood", "0", "--duplicates", "0"]
    assert main(args + ["--devices", "bedside", "--device-correlation", "0.3"]) == 0
    assert set(pd.read_parquet(tmp_path / "t.parquet")["device"]) == {"bedside"}
    assert main(args + ["--force", "--devices", "ct_scanner"]) == 2
    assert "devices='ct_scanner'" in capsys.readouterr().err
    assert main(args + ["--force", "--devices", "mixed", "--device-correlation", "2"]) == 2
    assert "device_correlation=2.0" in capsys.readouterr().err


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
    index = read_index(data)
    assert len(index) == sum(1 for o in expected.values() if o == "index")
    assert str(data / ERRORS_DIR) in out and "mapped" in out


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


def test_audit_then_rematerialize_one_backbone_from_scratch(tmp_path, capsys, monkeypatch):
    from radaudit.pacs.synth import generate_export

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    export, data = tmp_path / "export", tmp_path / "data"
    generate_export(export, tmp_path / "truth.parquet", n=40, seed=3, size=64)
    tiny = ["--export", str(export), "--data", str(data), "--size", "32", "--workers", "1",
            "--epochs", "1", "--batch-size", "16", "--image-size", "32"]
    assert main(["audit", *tiny]) == 0
    out = capsys.readouterr().out
    report = pd.read_csv(data / "reports" / "mislabel_report.csv", encoding="utf-8-sig")
    assert "backbone/byol" in out and "mislabel_report" in out and str(data / "reports") in out
    assert list(report["rank"]) == list(range(1, len(report) + 1))

    weights = sorted((data / "models" / "simclr" / "checkpoints").rglob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    assert main(["materialize", "--select", "backbone/simclr", "--from-scratch", *tiny]) == 0
    assert "materialized 1 assets: backbone/simclr" in capsys.readouterr().out
    after = sorted((data / "models" / "simclr" / "checkpoints").rglob("*.safetensors"))
    assert after and any(p not in before or p.stat().st_mtime_ns != before[p] for p in after)


def test_instance_copies_the_settings_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["instance"]) == 0
    written = (tmp_path / "home" / "dagster.yaml").read_text()
    assert "radaudit/gpu" in written and "default_limit: 1" in written
    capsys.readouterr()
    assert main(["instance"]) == 0 and "already holds radaudit's settings" in capsys.readouterr().out  # identical
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # a steward's own edit
    assert main(["instance"]) == 2
    err = capsys.readouterr().err
    assert "differs from radaudit's settings" in err and "--force" in err
    assert main(["instance", "--force"]) == 0
    assert (tmp_path / "home" / "dagster.yaml").read_text() == written


def test_materialize_names_the_assets_when_the_selection_is_wrong(tmp_path, capsys):
    paths = ["--export", str(tmp_path), "--data", str(tmp_path / "data")]
    assert main(["materialize", "--select", "backbone/resnet", *paths]) == 2
    err = capsys.readouterr().err
    assert "backbone/resnet" in err and "backbone/byol" in err and "mislabel_report" in err
    assert not (tmp_path / "data").exists()


def test_instance_without_a_checkout_uses_the_installed_settings(tmp_path, monkeypatch, capsys):
    from radaudit.pipelines import cli

    installed = tmp_path / "share" / "dagster.yaml"
    installed.parent.mkdir()
    installed.write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setattr(cli, "REPO_SETTINGS", tmp_path / "site-packages" / "dagster.yaml")  # not there
    monkeypatch.setattr(cli, "_installed_settings", lambda: installed if installed.exists() else None)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["instance"]) == 0
    assert (tmp_path / "home" / "dagster.yaml").read_text() == installed.read_text()
    installed.unlink()
    assert main(["instance", "--force"]) == 2
    assert "reinstall radaudit" in capsys.readouterr().err
    (tmp_path / "data" / "dagster").mkdir(parents=True)
    (tmp_path / "data" / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cli.data_dir_instance(tmp_path / "data").dispose()  # its own copy is enough to run


def test_the_install_record_names_the_installed_settings(tmp_path, monkeypatch):
    """A wheel install (venv, --user or /usr/local alike) records share/radaudit/dagster.yaml
    relative to site-packages; the CLI finds it from that record."""
    from importlib import metadata

    from radaudit.pipelines import cli

    site = tmp_path / "lib" / "python3.11" / "site-packages"
    info = site / "radaudit-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: radaudit\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("pipelines/cli.py,,\n../../../share/radaudit/dagster.yaml,,\n")
    settings = tmp_path / "share" / "radaudit" / "dagster.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(info))
    assert Path(cli._installed_settings()).resolve() == settings.resolve()
    settings.unlink()
    assert cli._installed_settings() is None


def test_an_old_copy_of_the_settings_in_the_data_dir_is_reported(tmp_path, caplog):
    from radaudit.pipelines.cli import data_dir_instance, settings_file

    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # before the GPU pool
    instance = data_dir_instance(tmp_path)
    instance.dispose()
    assert "--force" in caplog.text and "differs" in caplog.text
    assert (tmp_path / "dagster" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"  # kept
    caplog.clear()
    fresh = tmp_path / "fresh"
    data_dir_instance(fresh).dispose()
    assert (fresh / "dagster" / "dagster.yaml").read_bytes() == settings_file().read_bytes()
    assert "differs" not in caplog.text


def test_locate_prints_the_real_path_behind_a_hash(tmp_path, capsys, monkeypatch):
    from radaudit.pacs.pseudo import load_or_create_key, path_key

    monkeypatch.delenv("RADAUDIT_PSEUDONYM_KEY", raising=False)
    export, data = tmp_path / "export", tmp_path / "data"
    (export / "Schmidt Erika").mkdir(parents=True)
    (export / "Schmidt Erika" / "IM1").write_bytes(b"x")
    paths = ["--export", str(export), "--data", str(data)]
    (data / "secrets").mkdir(parents=True)
    assert main(["locate", *paths, "0" * 20]) == 2  # no key: this data dir never ingested anything
    assert "pseudonymization key" in capsys.readouterr().err
    assert not any((data / "secrets").iterdir())  # and locate made none
    h = path_key("Schmidt Erika/IM1", load_or_create_key(data))
    assert main(["locate", *paths, h]) == 0
    assert capsys.readouterr().out == f"{h}\tSchmidt Erika/IM1\n"
    assert main(["locate", *paths, h, "f" * 20]) == 1
    assert "(not in the export)" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_the_whole_audit_and_scores_it_against_the_truth(tmp_path, capsys, monkeypatch):
    """The README's main command, at the smallest settings: export made, graph run, figures printed."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # runs go to the demo's data dir, not a real instance
    args = ["demo", "--dir", str(tmp_path / "demo"), "--n", "72", "--epochs", "1", "--batch-size", "16",
            "--size", "32", "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "demo" / "data" / "reports" / "mislabel_report.csv").exists()
    assert "making the synthetic demo export" in out and "mislabel_report.html" in out
    assert "against the synthetic ground truth (" in out and "mislabel_precision_at_k" in out
    assert "report order" in out and "plain self-confidence" in out
    # The demo export mixes the device profiles: one table row per device, together every image.
    from radaudit.pacs.synth.devices import PROFILES

    device_rows = [line.split() for line in out.splitlines() if line.startswith("    ") and
                   line.split()[0] in PROFILES]
    images = [int(line.split()[1]) for line in out.splitlines() if line.startswith("  images ")]
    assert len(device_rows) >= 3 and len({row[0] for row in device_rows}) == len(device_rows)
    assert sum(int(row[1]) for row in device_rows) == images[0]
    assert "demo wall time:" in out and "on a GPU (one H200" in out
    methods = PRESETS["cpu-demo"].methods
    accuracy = [line.split() for line in out.splitlines() if line.strip().startswith(tuple(f"{m} " for m in
                                                                                            (*methods, "ensemble")))]
    assert [row[0] for row in accuracy] == [*methods, "ensemble"]
    for row in accuracy:
        assert row[1:] == ["1%:", row[2], "10%:", row[4], "100%:", row[6]]
        assert all(0.0 <= float(v) <= 1.0 for v in row[2::2])


def test_embed_crop_outside_zero_to_one_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--export", str(tmp_path), "--data", str(tmp_path / "data"), "--embed-crop", "2"])
    assert exc.value.code == 2
    assert "--embed-crop: the value must be a share in (0, 1], e.g. 0.875; got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_thumbnail_above_256_px_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--export", str(tmp_path), "--data", str(tmp_path / "data"), "--thumbnail", "512"])
    assert exc.value.code == 2
    assert "--thumbnail: '512': give pixels from 0 to 256 (0: no images)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_demo_prints_the_figures_then_one_line_per_device(capsys):
    device = {"images": 40, "in_domain": 38, "labelled_in_domain": 36, "truly_mislabelled": 4, "precision_at_k": 0.75,
              "false_flags": 1, "false_flag_rate": 1 / 36, "ood_false_positives": 0, "ood_fp_share": 0.0,
              "out_of_domain": 2, "ood_recall": 1.0, "ood_fp_ok": True, "false_flags_ok": True}
    blank = {**device, "images": 10, "in_domain": 10, "truly_mislabelled": 0, "precision_at_k": float("nan"),
             "false_flags": 3, "false_flag_rate": 0.3, "ood_false_positives": 1, "ood_fp_share": 0.1,
             "out_of_domain": 0, "ood_recall": float("nan"), "ood_fp_ok": False, "false_flags_ok": False}
    print_truth_scores({"images": 50, "mislabel_precision_at_k": 0.75, "truly_mislabelled": 4,
                        "report_precision_at_k": 0.5, "self_confidence_precision_at_k": 1.0, "false_flags": 4,
                        "false_flag_rate": 0.087, "false_flag_limit": 0.14,
                        "per_device": {"cr_reader": device, "bedside": blank}})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["  images                         50", "  mislabel_precision_at_k        0.750",
                         "  truly_mislabelled              4", "  false_flags                    4"]
    assert lines[4] == ("  precision@k of wrong labels (k = 4): label quality 0.750  report order 0.500  "
                        "plain self-confidence 1.000")
    assert "1.5 x 0.087 + 0.01 = 0.140" in lines[5]
    assert lines[7].split() == ["cr_reader", "40", "4", "0.750", "1", "(0.028)", "ok", "0", "(0.000)", "ok", "1.000"]
    assert lines[8].split() == ["bedside", "10", "0", "nan", "3", "(0.300)", "OVER", "1", "(0.100)", "OVER", "nan"]
    assert len(lines) == 9
