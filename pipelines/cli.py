"""The ``radaudit`` command line.

    radaudit demo                                   # synthetic export -> full pipeline, in ./demo
    radaudit ingest --export EXPORT --data DATA     # index, cache and label a real export
    radaudit audit --export EXPORT --data DATA      # the whole audit: ingest -> backbones -> report
    radaudit materialize --select 'backbone/byol' --from-scratch   # re-run part of the graph
    radaudit instance                               # set up $DAGSTER_HOME with radaudit's dagster.yaml
    radaudit locate PATH_HASH ...                   # the real file behind a redacted path
    radaudit folders                                # each export folder's partition key (terminal only)
    radaudit synth --out EXPORT --truth truth.parquet --n 500 --seed 0
    radaudit synth --out EXPORT --truth truth.parquet --n 500 --devices mixed
    radaudit synth --preview sheet.png

Runs execute in-process through Dagster and are recorded in the instance at ``DAGSTER_HOME``, or
by default in SQLite under ``<data dir>/dagster`` (``dagster dev`` with that ``DAGSTER_HOME`` shows them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radaudit.models.methods import METHODS
from radaudit.pacs.layout import DAGSTER_DIR, REPORT_CSV, REPORT_HTML

log = logging.getLogger("radaudit")
REPO_SETTINGS = Path(__file__).resolve().parents[1] / "dagster.yaml"


def _installed_settings() -> Path | None:
    """The dagster.yaml a non-editable install put under ``<scheme>/share/radaudit`` (pyproject.toml:
    data-files), wherever the scheme is (a venv, ``--user``, ``/usr/local``), from the install record."""
    from importlib import metadata

    try:
        files = metadata.distribution("radaudit").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "dagster.yaml" and f.parent.name == "radaudit" and f.parent.parent.name == "share":
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def settings_file() -> Path:
    """radaudit's dagster.yaml: the checkout's, else the installed copy."""
    if REPO_SETTINGS.is_file():
        return REPO_SETTINGS
    installed = _installed_settings()
    if installed is None:
        raise FileNotFoundError(f"radaudit's dagster.yaml is neither in the checkout ({REPO_SETTINGS}) nor installed "
                                "with the package; reinstall radaudit, or copy dagster.yaml from its repository")
    return installed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radaudit`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Dagster warns about its own beta parameters that its selection parser uses: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*is currently in beta")
    for ours in ("radaudit", "pacs", "models", "augment"):
        logging.getLogger(ours).setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - a user's problem becomes one line; anything else propagates
        line = one_line_error(exc)
        if line is None:
            raise
        print(f"radaudit {args.command}: error: {line}", file=sys.stderr)
        return 2


def one_line_error(exc: BaseException) -> str | None:
    """The one line to show for a problem the user must fix (also when a Dagster step failed of it),
    or None for anything else (a bug: its traceback is worth having)."""
    from radaudit.pacs.checks import InputError, disk_error

    while getattr(exc, "user_exception", None) is not None:  # a Dagster step error wraps the step's own
        exc = exc.user_exception  # type: ignore[attr-defined]
    if type(exc).__name__ == "Failure" and type(exc).__module__.startswith("dagster"):
        return str(getattr(exc, "description", None) or exc)
    if isinstance(exc, InputError):
        return str(exc)
    disk = disk_error(exc)
    if disk is not None:
        return str(disk)
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, PermissionError)):
        return str(exc)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radaudit", description="Find wrong or missing body-part labels in radiograph exports.")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="index, decode and cache an export, and map its region labels")
    _add_paths(ingest)
    _add_ingest_options(ingest)
    ingest.set_defaults(func=_cmd_ingest)

    audit = sub.add_parser("audit", help="run the whole audit on an export: ingest, pretraining (resumed or "
                           "kept where done), embeddings, heads, ensemble, label issues, report")
    _add_paths(audit)
    _add_ingest_options(audit)
    _add_audit_options(audit)
    audit.set_defaults(func=_cmd_audit, selection=None)

    mat = sub.add_parser("materialize", help="re-run chosen assets, e.g. one method's backbone, or all of them")
    _add_paths(mat)
    mat.add_argument("--select", dest="selection", required=True,
                     help="Dagster asset selection: 'backbone/byol', 'group:audit', 'embeddings/simclr+', '*'")
    _add_ingest_options(mat)
    _add_audit_options(mat)
    mat.set_defaults(func=_cmd_audit)

    inst = sub.add_parser("instance", help="copy radaudit's dagster.yaml into $DAGSTER_HOME (or <data dir>/dagster) "
                          "so that `dagster dev` runs with its queue, GPU pool and retry settings")
    inst.add_argument("--data", default=os.environ.get("RADAUDIT_DATA_DIR"),
                      help="data dir whose dagster/ folder to use when DAGSTER_HOME is not set")
    inst.add_argument("--force", action="store_true", help="replace an existing dagster.yaml")
    inst.set_defaults(func=_cmd_instance)

    locate = sub.add_parser("locate", help="print the real path of files named by their path_hash (index and "
                            "error tables show redacted paths): for your terminal, never written anywhere")
    _add_paths(locate, wait=False)
    locate.add_argument("hashes", nargs="+", metavar="PATH_HASH", help="path_hash values from the index or errors")
    locate.set_defaults(func=_cmd_locate)

    folders = sub.add_parser("folders", help="print the partition key of each top-level export folder (the Dagster "
                             "UI shows keys, not folder names: they may be patients' names) and add new folders "
                             "as partitions to the Dagster instance; the names go to your terminal only")
    _add_paths(folders, wait=False)
    folders.set_defaults(func=_cmd_folders)

    synth = sub.add_parser("synth", help="write a synthetic PACS export with known ground truth")
    synth.add_argument("--out", type=Path, help="export folder to create")
    synth.add_argument("--truth", type=Path, help="ground-truth file (.parquet or .csv), outside the export")
    synth.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--noise", type=float, default=0.08, help="fraction of corrupted recorded labels")
    synth.add_argument("--missing", type=float, default=0.05, help="fraction of missing labels")
    synth.add_argument("--ood", type=float, default=0.02, help="fraction of out-of-domain images")
    synth.add_argument("--duplicates", type=float, default=0.03,
                       help="extra files that duplicate in-domain images, as a fraction of --n (default 0.03): "
                       "copies under new UIDs, re-encoded copies, re-exposures and copies under another patient")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--devices", default=None, metavar="MIX",
                       help="acquisition devices: 'mixed' (CR reader, DR room, bedside unit, digitised film and "
                       "a minority CR with 3.5%% of the images) or one profile name; default: the single legacy style")
    synth.add_argument("--device-correlation", type=float, default=0.6, metavar="C",
                       help="how strongly devices follow regions with --devices, in [0, 1] (default 0.6): "
                       "0 independent, 1 each region mostly from its preferred devices")
    synth.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    synth.add_argument("--preview", type=Path, help="write a contact sheet PNG of all regions and artefacts instead")
    synth.set_defaults(func=_cmd_synth)

    from radaudit.models.presets import PRESETS

    preset = PRESETS["cpu-demo"]
    demo = sub.add_parser("demo", help="make the synthetic demo export if missing and run the pipeline on it")
    demo.add_argument("--dir", type=Path, default=Path("demo"), help="demo folder (default ./demo)")
    demo.add_argument("--n", type=int, default=preset.n, help=f"images in the synthetic export (default {preset.n})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--duplicates", type=float, default=preset.duplicates,
                      help=f"share of extra duplicate files in a new demo export, and as many look-alikes that are "
                      f"not duplicates (default {preset.duplicates})")
    demo.add_argument("--devices", default=preset.devices, metavar="MIX",
                      help=f"acquisition devices of a new demo export (default {preset.devices!r}: a CR reader, a DR "
                      "room, a bedside unit, digitised film and a minority CR; 'legacy': the single older style)")
    demo.add_argument("--device-correlation", type=float, default=preset.device_correlation, metavar="C",
                      help=f"how strongly devices follow regions, in [0, 1] (default {preset.device_correlation})")
    demo.add_argument("--methods", nargs="+", default=list(preset.methods), choices=list(METHODS),
                      help=f"methods to pretrain and ensemble (default: {' '.join(preset.methods)})")
    demo.add_argument("--epochs", type=int, default=preset.epochs,
                      help=f"pretraining epochs per method (default {preset.epochs})")
    demo.add_argument("--batch-size", type=int, default=preset.batch_size)
    demo.add_argument("--image-size", type=int, default=preset.image_size,
                      help=f"side of the training views and embedding input (default {preset.image_size})")
    _add_ingest_options(demo, default_size=preset.cache_size)
    _add_wait(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_paths(p: argparse.ArgumentParser, *, wait: bool = True) -> None:
    p.add_argument("--export", default=os.environ.get("RADAUDIT_EXPORT_DIR"),
                   help="root of the DICOM export (default $RADAUDIT_EXPORT_DIR)")
    p.add_argument("--data", default=os.environ.get("RADAUDIT_DATA_DIR"),
                   help="where radaudit writes everything (default $RADAUDIT_DATA_DIR)")
    if wait:
        _add_wait(p)


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another run uses the data dir, wait this long for it (default 0: fail at once)")


def _add_ingest_options(p: argparse.ArgumentParser, default_size: int = 256) -> None:
    p.add_argument("--size", type=int, default=default_size, help=f"cached image side (default {default_size})")
    p.add_argument("--workers", type=int, default=0, help="decode processes (default: all cores)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to decode one file")
    p.add_argument("--full-rebuild", action="store_true", help="ignore earlier runs and process every file again")
    p.add_argument("--retry-errors", action="store_true", help="retry files that failed in earlier runs")
    p.add_argument("--region-map", help="region mapping file (TOML or YAML); default: the packaged one")


def _share(text: str) -> float:
    """An argument that must be a share in (0, 1]."""
    from radaudit.models.validation import check_share

    try:
        return check_share(float(text), "the value", "0.875")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _thumbnail(text: str) -> int:
    """An argument that must be a thumbnail size the report accepts: 0 to MAX_THUMBNAIL pixels."""
    from radaudit.pipelines.stages.reports import MAX_THUMBNAIL

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_THUMBNAIL:
        raise argparse.ArgumentTypeError(f"{text!r}: give pixels from 0 to {MAX_THUMBNAIL} (0: no images)")
    return value


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    from radaudit.assets.resources import AuditConfig
    from radaudit.pipelines.stages.reports import MAX_THUMBNAIL

    defaults = AuditConfig()
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"pretraining epochs (default {defaults.epochs})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"pretraining batch size (default {defaults.batch_size})")
    p.add_argument("--image-size", type=int, default=defaults.image_size,
                   help=f"pretraining view size (default {defaults.image_size})")
    p.add_argument("--backbone", default=defaults.backbone, help=f"timm model name (default {defaults.backbone})")
    p.add_argument("--devices", type=int, default=defaults.devices, help="GPUs to train on per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=int, default=defaults.num_nodes,
                   help="machines that train together (Lightning's DDP over nodes; see the README's 'Scaling out')")
    p.add_argument("--gauge-dir", default=defaults.gauge_dir,
                   help="folder of grey crops of real calibration gauges, inserted beside the drawn ones")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--from-scratch", action="store_true",
                   help="train selected backbones anew instead of resuming or keeping their last checkpoint")
    p.add_argument("--no-accession", action="store_true", help="leave the Accession Number out of the report")
    p.add_argument("--thumbnail", type=_thumbnail, default=defaults.report_thumbnail, metavar="PX",
                   help=f"long side of the report's inlined thumbnails (default {defaults.report_thumbnail}, "
                        f"at most {MAX_THUMBNAIL}; the large view shows the cached image at full size)")
    p.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=list(METHODS),
                   help=f"methods to pretrain and ensemble (default: {' '.join(defaults.methods)})")
    p.add_argument("--embed-crop", type=_share, default=defaults.embed_crop, metavar="SHARE",
                   help="embed each image as the mean over ten crops of this share of its side, e.g. 0.875 "
                        "(default: the whole image)")


def _audit_config(args: argparse.Namespace) -> Any:
    from radaudit.assets.resources import AuditConfig

    return AuditConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                       backbone=args.backbone, seed=args.seed, from_scratch=args.from_scratch,
                       devices=args.devices, num_nodes=args.num_nodes, gauge_dir=args.gauge_dir,
                       include_accession=not args.no_accession, methods=list(dict.fromkeys(args.methods)),
                       embed_crop=args.embed_crop, report_thumbnail=args.thumbnail)


def _resource(export: str | os.PathLike[str], data: str | os.PathLike[str], args: argparse.Namespace) -> Any:
    from radaudit.assets.resources import RadauditConfig

    return RadauditConfig(
        export_dir=str(export), data_dir=str(data), cache_size=args.size, workers=args.workers,
        file_timeout_s=args.timeout, full_rebuild=args.full_rebuild, retry_errors=args.retry_errors,
        region_map=args.region_map,
    )


def run_assets(resource: Any, audit: Any = None, selection: Any = None, *, wait_s: float = 0.0,
               what: str = "radaudit") -> Any:
    """Materialize the code location's assets in-process with these resources, holding the data dir.

    The paths are checked first (nothing is created for a missing export or an unwritable data
    dir; the export only when the selection ingests), then the data dir's lock is taken
    (:mod:`radaudit.pacs.lock`; another run there makes this one wait ``wait_s`` seconds, then fail).

    ``selection``: a Dagster selection string or ``AssetSelection``; None: every asset.
    """
    import dagster as dg

    from radaudit.assets.resources import AuditConfig
    from radaudit.pacs.checks import check_data_dir, check_export
    from radaudit.pacs.lock import data_dir_lock
    from radaudit.pipelines.console import step_lines
    from radaudit.pipelines.definitions import defs
    from radaudit.pipelines.jobs import all_folders_tags

    chosen = dg.AssetSelection.from_string(selection) if isinstance(selection, str) else selection
    ingests = chosen is None or dg.AssetKey("dicom_index") in chosen.resolve(defs.resolve_asset_graph())
    if ingests:
        check_export(resource.export_dir)
    check_data_dir(resource.data_dir)
    with data_dir_lock(resource.data_dir, what=what, wait_s=wait_s, on_wait=log.warning):
        instance = dg_instance(resource.data_dir)
        job = dg.define_asset_job("radaudit_cli", selection=chosen if chosen is not None else dg.AssetSelection.all())
        run_defs = dg.Definitions(assets=list(defs.assets or []), jobs=[job], loggers={"radaudit": step_lines},
                                  resources={"radaudit": resource, "audit": audit or AuditConfig()})
        tags = {"radaudit/launcher": "cli", "radaudit/data_dir": str(Path(resource.data_dir).resolve())}
        try:
            _reap_killed_runs(instance, tags)
            # One machine: every export folder is ingested, one partition after another, in one step.
            folders = all_folders_tags(instance, resource) if ingests else {}
            return run_defs.resolve_job_def("radaudit_cli").execute_in_process(
                instance=instance, raise_on_error=True, run_config={"loggers": {"radaudit": {}}},
                tags={**tags, **folders})
        finally:
            instance.dispose()


def _reap_killed_runs(instance: Any, tags: dict[str, str]) -> list[str]:
    """Mark failed the CLI runs of this data dir that are still "started" in the instance, and free
    their concurrency slots; return their ids.

    Only a run whose process died (kill -9, a power cut) stays "started": the caller holds the
    data dir's lock, so no other CLI run of this data dir is alive. Left alone, the dead run
    would keep its slot of the GPU pool, and every later run would wait for it forever.
    """
    import dagster as dg

    alive = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=alive, tags=tags)):
        instance.report_run_failed(run, message="its radaudit process died (killed or crashed); a later run "
                                   "freed its concurrency slots")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning("run %s of this data dir was left unfinished by a process that died; marked failed", run.run_id)
        reaped.append(run.run_id)
    return reaped


def data_dir_instance(data_dir: str | os.PathLike[str]) -> Any:
    """The Dagster instance kept under ``<data dir>/dagster`` (SQLite), with the repository's settings.

    ``DAGSTER_HOME=<data dir>/dagster dagster dev -m radaudit.pipelines.definitions`` then shows these runs.
    """
    import shutil

    import dagster as dg

    home = Path(data_dir) / DAGSTER_DIR
    home.mkdir(parents=True, exist_ok=True)
    copy = home / "dagster.yaml"
    if not copy.exists():
        shutil.copy(settings_file(), copy)
    else:
        settings = REPO_SETTINGS if REPO_SETTINGS.is_file() else _installed_settings()
        # A steward may have edited it on purpose, so it is not replaced; but an old copy lacks newer
        # settings (the GPU pool), so say so on every run.
        if settings is not None and copy.read_bytes() != settings.read_bytes():
            log.warning("%s differs from radaudit's settings (%s); if it was not edited on purpose, "
                        "`radaudit instance --data %s --force` replaces it", copy, settings, data_dir)
    return dg.DagsterInstance.from_config(str(home))


def _cmd_ingest(args: argparse.Namespace) -> int:
    if not args.export or not args.data:
        raise ValueError("give --export and --data (or set RADAUDIT_EXPORT_DIR and RADAUDIT_DATA_DIR)")
    run_assets(_resource(args.export, args.data, args), selection="group:ingest or group:labels", wait_s=args.wait,
               what="radaudit ingest")
    _print_ingest_summary(Path(args.data))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    if not args.export or not args.data:
        raise ValueError("give --export and --data (or set RADAUDIT_EXPORT_DIR and RADAUDIT_DATA_DIR)")
    if args.selection is not None:
        _check_selection(args.selection)
    selection = args.selection if args.selection is not None else _only_methods(args.methods)
    result = run_assets(_resource(args.export, args.data, args), _audit_config(args), selection=selection,
                        wait_s=args.wait, what=f"radaudit {args.command}")
    done = sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})
    print(f"materialized {len(done)} assets: {', '.join(done)}")
    report = Path(args.data).resolve() / REPORT_CSV
    if report.exists():
        print(f"report: {report}\n        {report.with_suffix('.html')}")
    return 0


def _only_methods(methods: Sequence[str]) -> Any:
    """Every asset but the other methods' backbones, embeddings and heads (None: all methods)."""
    import dagster as dg


    skipped = [dg.AssetKey([kind, m]) for m in METHODS if m not in methods
               for kind in ("backbone", "embeddings", "oof_probabilities")]
    return dg.AssetSelection.all() - dg.AssetSelection.assets(*skipped) if skipped else None


def _check_selection(selection: str) -> None:
    """Fail with the valid asset keys when ``selection`` is malformed or selects nothing."""
    import dagster as dg

    from radaudit.pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    try:
        chosen = dg.AssetSelection.from_string(selection).resolve(graph)
    except Exception as exc:  # noqa: BLE001 - Dagster raises several types for a bad selection string
        raise ValueError(f"cannot read the selection {selection!r} ({exc}); assets: {', '.join(keys)}") from exc
    if not chosen:
        raise ValueError(f"the selection {selection!r} names no asset; assets: {', '.join(keys)}")


def _cmd_instance(args: argparse.Namespace) -> int:
    import shutil

    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    elif args.data:
        home = Path(args.data) / DAGSTER_DIR
    else:
        raise ValueError("set DAGSTER_HOME, or give --data (or set RADAUDIT_DATA_DIR)")
    target = home / "dagster.yaml"
    settings = settings_file()
    if target.exists() and target.read_bytes() == settings.read_bytes():
        print(f"{target} already holds radaudit's settings\nnow: DAGSTER_HOME={home} dagster dev -m radaudit.pipelines.definitions")
        return 0
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists and differs from radaudit's settings ({settings}); --force replaces it")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(settings, target)
    print(f"wrote {target}\nnow: DAGSTER_HOME={home} dagster dev -m radaudit.pipelines.definitions")
    return 0


def _cmd_locate(args: argparse.Namespace) -> int:
    from radaudit.pacs.index import locate
    from radaudit.pacs.pseudo import KEY_ENV, read_key

    if not args.export or not args.data:
        raise ValueError("give --export and --data (or set RADAUDIT_EXPORT_DIR and RADAUDIT_DATA_DIR)")
    key = read_key(args.data, os.environ.get(KEY_ENV))
    if key is None:
        raise FileNotFoundError(f"{args.data} has no pseudonymization key and {KEY_ENV} is not set: give the data "
                                "dir (or the key) the export was ingested with")
    found = locate(args.export, key, args.hashes)
    for h in args.hashes:
        print(f"{h}\t{found.get(h, '(not in the export)')}")
    return 0 if len(found) == len(set(args.hashes)) else 1


def _cmd_folders(args: argparse.Namespace) -> int:
    from radaudit.assets.resources import RadauditConfig
    from radaudit.pacs.checks import check_data_dir, check_export
    from radaudit.pacs.discover import display_path
    from radaudit.pacs.partitions import export_partitions, is_ingested
    from radaudit.pacs.pseudo import KEY_ENV, load_or_create_key
    from radaudit.pipelines.jobs import register_folders

    if not args.export or not args.data:
        raise ValueError("give --export and --data (or set RADAUDIT_EXPORT_DIR and RADAUDIT_DATA_DIR)")
    check_export(args.export)
    check_data_dir(args.data)
    found = export_partitions(args.export, load_or_create_key(args.data, os.environ.get(KEY_ENV)))
    instance = dg_instance(args.data)
    try:
        keys = register_folders(instance, RadauditConfig(export_dir=str(args.export), data_dir=str(args.data)))
    finally:
        instance.dispose()
    for key in keys:
        folder = found.get(key)
        name = "(files directly in the export root)" if key in found and folder is None else \
            display_path(folder) if folder is not None else "(not in the export now)"
        print(f"{key}\t{'ingested' if is_ingested(args.data, key) else 'new':8s}\t{name}")
    return 0


def dg_instance(data_dir: str | os.PathLike[str]) -> Any:
    """The Dagster instance at ``DAGSTER_HOME``, or else the one under ``<data dir>/dagster``."""
    import dagster as dg

    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else data_dir_instance(data_dir)


def _cmd_synth(args: argparse.Namespace) -> int:
    from radaudit.pacs.synth import generate_export, render_preview

    if args.preview:
        render_preview(args.preview, seed=args.seed, size=args.size)
        print(f"preview written to {args.preview}")
        return 0
    if not args.out or not args.truth:
        raise ValueError("give --out and --truth (or --preview PNG)")
    summary = generate_export(args.out, args.truth, n=args.n, seed=args.seed, noise=args.noise,
                              missing=args.missing, ood=args.ood, size=args.size, force=args.force,
                              duplicates=args.duplicates, devices=args.devices,
                              device_correlation=args.device_correlation)
    print(summary)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from radaudit.assets.resources import AuditConfig
    from radaudit.models.presets import GPU_REFERENCE, PRESETS
    from radaudit.pipelines.stages import evaluate_against_truth, load_audit_summary
    from radaudit.pacs.synth import generate_export

    t0 = time.perf_counter()
    preset = PRESETS["cpu-demo"]
    export, data, truth = args.dir / "export", args.dir / "data", args.dir / "truth.parquet"
    if not truth.exists() or not export.is_dir() or not any(export.iterdir()):
        print(f"making the synthetic demo export in {export} ({args.n} images) ...")
        generate_export(export, truth, n=args.n, seed=args.seed, size=max(args.size * 2, preset.export_size),
                        force=True, duplicates=args.duplicates,
                        devices=None if args.devices == "legacy" else args.devices,
                        device_correlation=args.device_correlation)
    methods = list(dict.fromkeys(args.methods))
    audit = AuditConfig(methods=methods, epochs=args.epochs, batch_size=args.batch_size,
                        image_size=min(args.image_size, args.size), supcon_cross_fit=preset.supcon_cross_fit,
                        on_cpu="as_is", tau_base=preset.tau_base, num_workers=min(preset.num_workers, os.cpu_count() or 1),
                        seed=args.seed, truth_path=str(truth), embed_crop=preset.embed_crop)
    result = run_assets(_resource(export, data, args), audit, _only_methods(methods), wait_s=args.wait,
                        what="radaudit demo")
    _print_ingest_summary(data)
    print(f"report: {data.resolve() / REPORT_CSV}")
    print(f"        {data.resolve() / REPORT_HTML}")
    for warning in load_audit_summary(data).get("warnings", []):
        print(f"WARNING: {warning}")
    print(f"against the synthetic ground truth ({', '.join(methods)}, {args.epochs} epochs, "
          f"{min(args.image_size, args.size)} px views):")
    print_truth_scores(evaluate_against_truth(data, truth))
    print("linear-eval accuracy on true regions (test split), by share of labels used:")
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == "ensemble_probabilities"]
    # The ensemble asset measured them with the truth: read its metadata rather than fit them again.
    accuracy = {k.removeprefix("linear_eval/"): v.value for k, v in event.materialization.metadata.items()
                if k.startswith("linear_eval/")}
    for name in [*methods, "ensemble"]:
        print(f"  {name:10s} " + "  ".join(f"{share:>4s}: {a:.3f}" for key, a in accuracy.items()
                                           for m, share in [key.split("@")] if m == name))
    print(f"demo wall time: {time.perf_counter() - t0:.0f} s")
    print(GPU_REFERENCE)
    return 0


# Shown by device_table's lines rather than one per line.
_IN_DEVICE_TABLE = ("per_device", "report_precision_at_k", "self_confidence_precision_at_k", "false_flag_rate",
                    "false_flag_limit")


def print_truth_scores(scores: dict[str, Any]) -> None:
    """:func:`radaudit.pipelines.stages.evaluate_against_truth`'s figures, one a line, then the per-device table."""
    from radaudit.pipelines.stages import device_table

    for key, value in scores.items():
        if key not in _IN_DEVICE_TABLE:
            print(f"  {key:30s} {value:.3f}" if isinstance(value, float) else f"  {key:30s} {value}")
    for line in device_table(scores):
        print(f"  {line}")


def _print_ingest_summary(data: Path) -> None:
    import pandas as pd

    from radaudit.pacs.index import read_errors, read_index
    from radaudit.pacs.layout import ERRORS_DIR, INDEX_DIR, LABELS_PATH

    index, errors = read_index(data), read_errors(data)
    print(f"index:  {data / INDEX_DIR}/  ({len(index)} instances)")
    print(f"errors: {data / ERRORS_DIR}/  ({len(errors)} files; by stage: {errors['stage'].value_counts().to_dict()})")
    if (data / LABELS_PATH).exists():
        labels = pd.read_parquet(data / LABELS_PATH)
        print(f"labels: {data / LABELS_PATH}  ({labels['recorded_region'].notna().sum()} mapped, "
              f"{labels['recorded_region'].isna().sum()} null)")
    print(f"cache:  {data / 'cache'}")


if __name__ == "__main__":
    raise SystemExit(main())
