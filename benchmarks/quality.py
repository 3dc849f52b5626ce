"""Audit quality end to end on a synthetic export, through the library stages (no Dagster).

Synthetic export (parallel shards) -> ingest -> region labels -> per method: pretraining,
embeddings, out-of-fold heads, that method's own audit -> ensemble -> audit -> figures against
the export's truth. Baseline in the same run: a randomly initialized ResNet18's features through
the same heads and audit (what the pretraining adds).

Figures, per method, for the baseline and for the ensemble, each printed and appended to the
JSON file as soon as its step finishes (a run cut short keeps what it measured):
precision@k of the corrupted labels (by label quality, in the report's order, and in the plain
self-confidence order), mislabel flags against the true count, precision of the top 20 flags,
OOD AUROC / recall / precision / F1, missing-label suggestion accuracy, near-duplicate pair
precision / recall / F1, linear-eval accuracy with 1%, 10% and 100% of the (true) labels, and
each step's seconds. After the ensemble: the per-device table (the truth's ``device``), and
cleanlab's Datalab on the same probabilities and features, side by side (``peer_figures``;
``pip install -e '.[bench]'``, or ``--no-peer``).

``--score DATA_DIR --truth TRUTH`` scores an existing data dir instead (e.g. what
``radaudit demo --dir D`` leaves: ``--score D/data --truth D/truth.parquet``): nothing is trained.

Run from the repository root::

    python benchmarks/quality.py                         # the CPU demo's settings, seed 0 (about 10 min on 2 cores)
    python benchmarks/quality.py --seeds 0 1 2           # three seeds; never tune on one
    python benchmarks/quality.py --gpu                   # 10,000 images, three methods: about 9 min on one H200
    python benchmarks/quality.py --n 200 --epochs 1 --methods simclr   # a smoke test
    python benchmarks/quality.py --json out.json --save-embeddings emb/
    python benchmarks/quality.py --foreign               # plus real CT/MR/US/NM/colour files, also relabelled as DX
    python benchmarks/quality.py --real                  # plus real CR radiographs of other vendors (in domain)
    python benchmarks/quality.py --score demo/data --truth demo/truth.parquet --json demo/quality.json

The JSON goes to ``--json``, else ``$OUT/quality.json`` where ``OUT`` is set, else
``benchmarks/out/quality.json`` (``quality-score.json`` with ``--score``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._figures import default_json_path  # noqa: E402
from radaudit.pipelines import stages  # noqa: E402
from radaudit.models.presets import PRESETS, AuditPreset  # noqa: E402
from radaudit.pacs.io import write_text  # noqa: E402
from radaudit.pacs.layout import EMBED_DIR, ISSUES_PATH, PROB_DIR, WEIGHTS_PATH  # noqa: E402

FIGURES = ("mislabel_precision_at_k", "report_precision_at_k", "self_confidence_precision_at_k", "flagged_mislabel",
           "truly_mislabelled", "false_flag_rate", "top20_precision", "ood_auroc", "ood_recall", "ood_precision",
           "ood_f1", "flagged_out_of_domain", "out_of_domain", "missing_suggestion_accuracy", "duplicate_precision",
           "duplicate_recall", "duplicate_pair_precision", "duplicate_pair_recall", "duplicate_pair_f1",
           "hard_negatives_grouped")
PEER_MISSING = ("cleanlab's Datalab is not installed, so the comparison with it is skipped: pip install "
                "'cleanlab[datalab]>=2.6' (radaudit's extra: pip install -e '.[bench]'); --no-peer skips it on purpose")


class Recorder:
    """Prints each figure and rewrites the JSON file (atomically) after every one."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"settings": settings, "records": []}
        self.flush()

    def flush(self) -> None:
        write_text(self.path, json.dumps(self.doc, indent=1, default=float))

    def add(self, seed: int | str, step: str, *, show: bool = True, **figures: Any) -> None:
        """Record one step's figures for a seed (or, scoring a data dir, its name); ``show``: print them."""
        self.doc["records"].append({"seed": seed, "step": step, **figures})
        self.flush()
        if show:
            shown = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
            self.say(seed, f"{step:24s} {shown}")

    @staticmethod
    def say(seed: int | str, line: str) -> None:
        print(f"[seed {seed}] {line}" if isinstance(seed, int) else f"[{seed}] {line}", flush=True)


# out dir, truth file, images, seed, size, duplicates, devices, device correlation, gauge rates
ShardJob = tuple[str, str, int, int, int, float, str | Mapping[str, float] | None, float, Mapping[str, float] | None]


def _export_shard(job: ShardJob) -> str:
    from radaudit.pacs.synth import generate_export

    out, truth, n, seed, size, duplicates, devices, correlation, gauge_rates = job
    generate_export(out, truth, n=n, seed=seed, size=size, force=True, duplicates=duplicates, devices=devices,
                    device_correlation=correlation, gauge_rates=gauge_rates)
    return truth


def make_export(root: Path, n: int, seed: int, size: int, shards: int, duplicates: float = 0.0,
                devices: str | Mapping[str, float] | None = None, device_correlation: float = 0.6,
                gauge_rates: Mapping[str, float] | None = None) -> Path:
    """A synthetic export in ``shards`` parallel processes (distinct seeds give distinct UIDs); one truth file.

    Shard ``i`` has seed ``seed * 1000 + i``; ``devices``, ``device_correlation`` and ``gauge_rates``
    go to :func:`radaudit.pacs.synth.generate_export`.
    """
    shards = max(1, min(shards, n // 50 or 1))
    sizes = [n // shards + (i < n % shards) for i in range(shards)]
    jobs: list[ShardJob] = [(str(root / "export" / f"shard{i:02d}"), str(root / f"truth{i:02d}.parquet"), k,
                             seed * 1000 + i, size, duplicates, devices, device_correlation, gauge_rates)
                            for i, k in enumerate(sizes)]
    if shards == 1:
        truths = [_export_shard(jobs[0])]
    else:
        with ProcessPoolExecutor(shards) as pool:
            truths = list(pool.map(_export_shard, jobs))
    truth = root / "truth.parquet"
    pd.concat([pd.read_parquet(t) for t in truths], ignore_index=True).to_parquet(truth)
    return truth


# Real foreign DICOM files shipped with pydicom and pydicom-data: CT, MR, US, NM, secondary captures, colour.
FOREIGN_FILES = ("CT_small.dcm", "693_UNCR.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "US1_UNCR.dcm",
                 "examples_palette.dcm", "color-pl.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG2000_UNC.dcm",
                 "SC_rgb.dcm", "SC_rgb_rle.dcm")


def add_foreign_files(root: Path, truth: Path) -> None:
    """The foreign files twice: as stored, and relabelled as DX knee radiographs (only pixels can tell)."""
    from pydicom.data import get_testdata_file

    from radaudit.pacs.synth.foreign import add_foreign

    files = [get_testdata_file(name) for name in FOREIGN_FILES]
    missing = [n for n, f in zip(FOREIGN_FILES, files) if f is None]
    if missing:
        raise SystemExit(f"--foreign needs pydicom-data (pip install pydicom-data): {missing} not found")
    add_foreign(root / "export", truth, files, tag="foreign")
    add_foreign(root / "export", truth, files, tag="relabelled", relabel_as="knee")


def foreign_figures(issues: pd.DataFrame, truth: Path) -> dict[str, Any]:
    """Share of the foreign files reported out_of_domain, as stored and relabelled."""
    t = pd.read_parquet(truth)
    issue = issues.set_index("sop_instance_uid")["issue"]
    out: dict[str, Any] = {}
    for tag in ("foreign", "relabelled"):
        uids = t.loc[t["path"].astype(str).str.startswith(f"{tag}/"), "sop_instance_uid"]
        got = issue.reindex(uids)
        out[f"{tag}_out_of_domain"] = f"{int((got == 'out_of_domain').sum())}/{len(uids)}"
        out[f"{tag}_missed"] = sorted(t.set_index("sop_instance_uid").loc[got.index[got != "out_of_domain"], "path"]
                                      .str.split("/").str[-1])
    return out


REAL_TAG = "real_cr"


def real_figures(issues: pd.DataFrame, truth: Path) -> dict[str, Any]:
    """What the audit made of the real radiographs (``add_real_radiographs``): how many were called out
    of domain or mislabelled, each file's issue, and whether each image's encodings form one group of
    their own."""
    from radaudit.pipelines.stages.truth import duplicate_groups

    t = pd.read_parquet(truth).set_index("sop_instance_uid")
    real = t[t["path"].astype(str).str.startswith(f"{REAL_TAG}/")]
    if real.empty:
        return {}
    rows = issues.set_index("sop_instance_uid")
    got = rows["issue"].reindex(real.index)
    group = duplicate_groups(list(rows.index), [(u, d) for u, d in rows["duplicate_of"].items() if isinstance(d, str)])
    image = real["duplicate_of"].where(real["duplicate_of"].notna(), pd.Series(real.index, index=real.index))
    own = {g: set(image.index[image == g]) for g in image.unique()}
    # An original the audit never saw (its file failed the ingest) has no group: its image is not grouped right.
    members = {u: {v for v in rows.index if group[v] == group[u]} if u in group else set() for u in own}
    return {"real_out_of_domain": f"{int((got == 'out_of_domain').sum())}/{len(real)}",
            "real_not_audited": sorted(real.loc[got.index[got.isna() & ~real.index.isin(rows.index)], "path"]
                                       .str.split("/").str[-1]),
            "real_mislabel": f"{int((got == 'mislabel').sum())}/{len(real)}",
            "real_issue": {real.loc[u, "path"].split("/")[-1]: (got[u] if isinstance(got[u], str) else "")
                           for u in real.index},
            "real_grouped_right": all(members[u] == own[u] for u in own)}


def random_baseline(data: Path, size: int, backbone: str) -> None:
    """Embeddings of a randomly initialized backbone, stored as method ``random-init``."""
    from radaudit.models.backbone import create_backbone
    from radaudit.models.embed import embed

    ts = stages.load_training_set(data)
    feats = embed(create_backbone(backbone, in_chans=1), ts.dataset(data), size=size)
    stages.save_embeddings(data, "random-init", feats, ts.uids)


def evaluate(rec: Recorder, seed: int, data: Path, truth: Path, name: str, evidence: dict[str, Any],
             seconds: float, label: str | None = None) -> None:
    """Record one method's own audit figures and linear-eval accuracies (as ``label``, default its name)."""
    scores = stages.evaluate_method(data, truth, name, evidence=evidence)
    rec.add(seed, f"audit/{label or name}", seconds=round(seconds, 1), **{k: scores[k] for k in FIGURES})
    acc = stages.evaluate_label_fractions(data, truth, [name])[name]
    rec.add(seed, f"linear_eval/{label or name}", **{f"acc@{int(f * 100)}%": a for f, a in acc.items()})


def datalab_missing() -> bool:
    """Whether cleanlab's Datalab cannot be imported (it needs Hugging Face ``datasets``)."""
    try:
        import datasets  # noqa: F401
        from cleanlab.datalab.datalab import Datalab  # noqa: F401
    except ImportError:
        return True
    return False


def data_dir_methods(data: Path) -> list[str]:
    """The methods whose embeddings fed a data dir's audit: those the ensemble combined
    (``probabilities/ensemble.weights.json``), else every name with both ``embeddings/<name>.npy``
    and ``probabilities/<name>.npy``."""
    embedded = {f.stem for f in (data / EMBED_DIR).glob("*.npy")}
    if (data / WEIGHTS_PATH).exists():
        methods = list(json.loads((data / WEIGHTS_PATH).read_text()))
    else:
        methods = sorted(embedded & {f.stem for f in (data / PROB_DIR).glob("*.npy")} - {"ensemble"})
    if not methods or not set(methods) <= embedded:
        raise SystemExit(f"{data} has no audited methods with embeddings ({EMBED_DIR}/) and probabilities "
                         f"({PROB_DIR}/): is it a data dir after a whole audit?")
    return methods


def _rpf(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Recall, precision and F1 of boolean flags against the truth."""
    hit = int((flag & truth).sum())
    recall = hit / int(truth.sum()) if truth.any() else float("nan")
    precision = hit / int(flag.sum()) if flag.any() else float("nan")
    return recall, precision, stages.f1_score(precision, recall)


def peer_figures(data: Path, truth_path: Path, methods: list[str], scores: dict[str, Any]) -> dict[str, Any]:
    """cleanlab's Datalab beside radaudit's audit (``scores``: its :func:`stages.evaluate_against_truth`), on
    the same inputs: the ensemble probabilities and the audit's features (the methods' embeddings through
    :func:`radaudit.models.audit.combine_embeddings`).

    Datalab needs a label for every row, so its default issue types run on the labelled images, and
    both tools are scored there: precision@k of wrong labels (Datalab ranks by ``label_score``; k =
    the labels truly wrong, all of them labelled), the label flags, out-of-domain flags
    (``is_outlier_issue`` vs ``out_of_domain``) and near-duplicate pairs (the groups of Datalab's
    ``near_duplicate_sets`` vs radaudit's ``duplicate_of`` groups). Outliers and near duplicates need no
    label: a second Datalab without labels, with only those two issue types, scores them on every image,
    as radaudit does (the other default types need labels or would only repeat the first run's).
    """
    from cleanlab import Datalab
    from datasets import ClassLabel, Dataset, Features

    from radaudit.models.audit import combine_embeddings

    ts = stages.load_training_set(data)
    truth = stages.read_truth(truth_path)
    is_ood, wrong = stages.truth_status(ts, truth)
    issues = pd.read_parquet(data / ISSUES_PATH).set_index("sop_instance_uid").loc[ts.uids]
    probs = stages.aligned_probabilities(data, "ensemble", ts.uids)
    features = combine_embeddings({m: stages.load_embeddings(data, m, ts.uids) for m in methods})
    lab = np.flatnonzero(ts.labels >= 0)
    uids = np.asarray(ts.uids, dtype=object)

    t = time.perf_counter()
    rows = Dataset.from_dict({"label": ts.labels[lab].tolist()},
                             features=Features({"label": ClassLabel(names=list(ts.vocabulary))}))
    labelled = Datalab(rows, label_name="label", verbosity=0)
    labelled.find_issues(pred_probs=probs[lab], features=features[lab])
    found = labelled.get_issues()
    labelled_s = time.perf_counter() - t
    t = time.perf_counter()
    unlabelled = Datalab({"row": np.arange(len(uids))}, verbosity=0)
    unlabelled.find_issues(features=features, issue_types={"outlier": {}, "near_duplicate": {}})
    everywhere = unlabelled.get_issues()
    unlabelled_s = time.perf_counter() - t

    def sets_groups(lab_of: Datalab, rows_uids: np.ndarray) -> dict[str, int]:
        sets = lab_of.get_info("near_duplicate")["near_duplicate_sets"]
        return stages.duplicate_groups(list(rows_uids), [(rows_uids[i], rows_uids[j]) for i, near in enumerate(sets)
                                                         for j in near])

    true_groups = stages.duplicate_groups(ts.uids, stages.copy_links(truth["duplicate_of"].to_dict())) \
        if "duplicate_of" in truth.columns else {}
    ours_groups = stages.duplicate_groups(ts.uids, stages.copy_links(dict(zip(ts.uids, issues["duplicate_of"]))))
    on_lab = np.zeros(len(uids), dtype=bool)
    on_lab[lab] = True
    ours_ood = (issues["issue"] == "out_of_domain").to_numpy()
    theirs_ood_lab = np.zeros(len(uids), dtype=bool)
    theirs_ood_lab[lab] = found["is_outlier_issue"].to_numpy(dtype=bool)
    theirs_ood_all = everywhere["is_outlier_issue"].to_numpy(dtype=bool)
    theirs_flag = np.zeros(len(uids), dtype=bool)
    theirs_flag[lab] = found["is_label_issue"].to_numpy(dtype=bool)
    ours_flag = (issues["issue"] == "mislabel").to_numpy()
    k = int(wrong.sum())

    out: dict[str, Any] = {"images": len(uids), "labelled": int(lab.size), "k": k,
                           "radaudit_precision_at_k": scores["mislabel_precision_at_k"],
                           "radaudit_report_precision_at_k": scores["report_precision_at_k"],
                           "radaudit_self_confidence_precision_at_k": scores["self_confidence_precision_at_k"],
                           "datalab_precision_at_k": stages.precision_at_k(
                               lab[np.argsort(found["label_score"].to_numpy(), kind="stable")], wrong)}
    for tool, flag in (("radaudit", ours_flag), ("datalab", theirs_flag)):
        recall, precision, _ = _rpf(flag, wrong)
        out.update({f"{tool}_label_flags": int(flag.sum()), f"{tool}_label_flag_precision": precision,
                    f"{tool}_label_flag_recall": recall})
    for rows_name, rows_mask, theirs_ood, theirs_groups in (
            ("labelled", on_lab, theirs_ood_lab, sets_groups(labelled, uids[lab])),
            ("all", np.ones(len(uids), dtype=bool), theirs_ood_all, sets_groups(unlabelled, uids))):
        inside = list(uids[rows_mask & ~is_ood])
        for tool, ood_flag, groups in (("radaudit", ours_ood, ours_groups), ("datalab", theirs_ood, theirs_groups)):
            r, p, f = _rpf(ood_flag[rows_mask], is_ood[rows_mask])
            out.update({f"{tool}_ood_recall_{rows_name}": r, f"{tool}_ood_precision_{rows_name}": p,
                        f"{tool}_ood_f1_{rows_name}": f,
                        f"{tool}_ood_flags_{rows_name}": int(ood_flag[rows_mask].sum())})
            if true_groups:
                pairs = stages.pair_scores(groups, true_groups, inside)
                out.update({f"{tool}_pair_{key}_{rows_name}": pairs[key]
                            for key in ("recall", "precision", "f1", "pairs_reported")})
                out[f"pairs_{rows_name}"] = pairs["pairs"]
    for key, lab_of in (("datalab_issues", labelled), ("datalab_issues_all_images", unlabelled)):
        summary = lab_of.get_issue_summary()
        out[key] = {str(kind): int(n) for kind, n in zip(summary["issue_type"], summary["num_issues"])}
    out["datalab_seconds"] = round(labelled_s, 1)
    out["datalab_all_images_seconds"] = round(unlabelled_s, 1)
    return out


def peer_lines(f: dict[str, Any]) -> list[str]:
    """:func:`peer_figures` side by side, radaudit then Datalab, one figure a line."""
    def rpf(tool: str, what: str, rows: str) -> str:
        return "/".join(f"{f[f'{tool}_{what}_{m}_{rows}']:.2f}" for m in ("recall", "precision", "f1"))

    def flags(tool: str) -> str:
        return (f"{f[f'{tool}_label_flags']} ({f[f'{tool}_label_flag_precision']:.2f}/"
                f"{f[f'{tool}_label_flag_recall']:.2f})")

    plain = f"{f['radaudit_report_precision_at_k']:.3f} / {f['radaudit_self_confidence_precision_at_k']:.3f}"
    lines = [f"vs cleanlab's Datalab on the same probabilities and features: its default issue types on the "
             f"{f['labelled']} labelled images, outliers and near duplicates also on all {f['images']} "
             "(without labels)",
             f"  {'':50s} {'radaudit':>16s} {'Datalab':>16s}",
             f"  {'precision@k of wrong labels (k = ' + str(f['k']) + ')':50s} {f['radaudit_precision_at_k']:16.3f} "
             f"{f['datalab_precision_at_k']:16.3f}",
             f"  {'  radaudit: report order / plain self-conf.':50s} {plain:>16s}",
             f"  {'label flags (precision/recall)':50s} {flags('radaudit'):>16s} {flags('datalab'):>16s}"]
    for rows, name in (("labelled", "labelled images"), ("all", "all images")):
        lines.append(f"  {f'out of domain R/P/F1, {name}':50s} {rpf('radaudit', 'ood', rows):>16s} "
                     f"{rpf('datalab', 'ood', rows):>16s}")
    for rows, name in (("labelled", "labelled images"), ("all", "all images")):
        if f"pairs_{rows}" in f:
            label = f"near-dup. pairs R/P/F1, {name} ({f[f'pairs_{rows}']} true)"
            lines.append(f"  {label:50s} {rpf('radaudit', 'pair', rows):>16s} {rpf('datalab', 'pair', rows):>16s}")
    others = ", ".join(f"{kind} {n}" for kind, n in f["datalab_issues"].items())
    lines.append(f"  Datalab's issues among the labelled: {others} ({f['datalab_seconds']:.1f} s; without labels "
                 f"{f['datalab_all_images_seconds']:.1f} s)")
    return lines


def record_scores(rec: Recorder, seed: int | str, data: Path, truth: Path, methods: list[str], scores: dict[str, Any],
                  peer: bool) -> None:
    """After an ensemble audit: its per-device table and, with ``peer``, Datalab on the same inputs."""
    rec.add(seed, "devices", show=False, per_device=scores["per_device"], false_flags=scores["false_flags"],
            false_flag_rate=scores["false_flag_rate"], false_flag_limit=scores["false_flag_limit"])
    for line in stages.device_table(scores):
        rec.say(seed, line)
    if peer:
        figures = peer_figures(data, truth, methods, scores)
        rec.add(seed, "peer/datalab", show=False, **figures)
        for line in peer_lines(figures):
            rec.say(seed, line)


def run_seed(rec: Recorder, args: argparse.Namespace, preset: AuditPreset, seed: int, root: Path) -> None:
    from radaudit.pacs.cache import CacheParams
    from radaudit.pacs.ingest import IngestConfig, run_ingest

    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    truth = make_export(root, preset.n, seed, preset.export_size, args.shards, preset.duplicates, preset.devices,
                        preset.device_correlation)
    if args.foreign:
        add_foreign_files(root, truth)
    if args.real:
        from radaudit.pacs.synth.foreign import add_real_radiographs

        add_real_radiographs(root / "export", truth, tag=REAL_TAG)
    rec.add(seed, "export", seconds=round(time.perf_counter() - t, 1), images=preset.n,
            foreign=2 * len(FOREIGN_FILES) if args.foreign else 0)
    data = root / "data"
    t = time.perf_counter()
    run_ingest(IngestConfig(export_dir=root / "export", data_dir=data, cache=CacheParams(size=preset.cache_size),
                            workers=args.ingest_workers))
    labels = stages.map_labels(data)
    rec.add(seed, "ingest", seconds=round(time.perf_counter() - t, 1), cached=len(stages.load_training_set(data).uids),
            null_labels=int(labels["recorded_region"].isna().sum()))
    t = time.perf_counter()
    groups = stages.find_near_duplicates(data)
    rec.add(seed, "near_duplicates", seconds=round(time.perf_counter() - t, 1),
            copies=int(groups["duplicate_of"].notna().sum()))
    evidence = stages.issue_inputs(data, stages.load_training_set(data).uids)
    if args.baseline:
        t = time.perf_counter()
        random_baseline(data, preset.image_size, args.backbone)
        stages.compute_oof(data, "random-init", seed=seed)
        evaluate(rec, seed, data, truth, "random-init", evidence, time.perf_counter() - t)
    for method in preset.methods:
        extra = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr)) if v is not None}
        config = preset.pretrain_config(method, seed=seed, backbone=args.backbone, progress_bar=False, **extra)
        t = time.perf_counter()
        result = stages.train_backbone(data, method, config, truth_path=str(truth), from_scratch=True,
                                       cross_fit=preset.cross_fit(method),
                                       log=(lambda line: print("    " + line, flush=True)) if args.verbose else None)
        train_s = time.perf_counter() - t
        monitor = result.metrics[-1] if result.metrics else {}
        rec.add(seed, f"pretrain/{method}", seconds=round(train_s, 1), epochs=len(result.history),
                steps=result.steps, **{f"monitor_{k}": v for k, v in monitor.items() if k != "epoch"})
        t = time.perf_counter()
        stages.compute_embeddings(data, method, reuse=False, crop=preset.embed_crop)
        stages.compute_oof(data, method, seed=seed)
        evaluate(rec, seed, data, truth, method, evidence, time.perf_counter() - t)
    t = time.perf_counter()
    _, weights = stages.combine(data, preset.methods)
    issues = stages.audit(data, preset.methods, seed=seed)
    scores = stages.evaluate_against_truth(data, truth)
    rec.add(seed, "audit/ensemble", seconds=round(time.perf_counter() - t, 1),
            **{k: scores[k] for k in FIGURES}, weights=weights, heads_agreement=issues.attrs["heads_agreement"],
            warnings=len(issues.attrs["warnings"]))
    record_scores(rec, seed, data, truth, list(preset.methods), scores, args.peer)
    if args.foreign:
        rec.add(seed, "foreign", **foreign_figures(issues, truth))
    if args.real:
        rec.add(seed, "real", **real_figures(issues, truth))
    acc = stages.evaluate_label_fractions(data, truth, list(preset.methods))["ensemble"]
    rec.add(seed, "linear_eval/ensemble", **{f"acc@{int(f * 100)}%": a for f, a in acc.items()})
    if args.save_embeddings:
        dest = Path(args.save_embeddings) / f"seed{seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for f in (data / EMBED_DIR).glob("*"):
            shutil.copy2(f, dest / f.name)
        shutil.copy2(truth, dest / "truth.parquet")
    if args.crop_ablation is not None and args.crop_ablation != preset.embed_crop:
        # The same backbones embedded the other way (ten crops, or the whole image), each method alone.
        for method in preset.methods:
            t = time.perf_counter()
            stages.compute_embeddings(data, method, reuse=False, crop=args.crop_ablation)
            stages.compute_oof(data, method, seed=seed)
            evaluate(rec, seed, data, truth, method, evidence, time.perf_counter() - t,
                     label=f"{method}+crop{args.crop_ablation:g}")


def summarize(rec: Recorder) -> None:
    """Over the seeds: mean and spread of the ensemble's and each method's headline figures, mean and
    worst of the precision@k orders (and Datalab's), and per device."""
    df = pd.DataFrame(rec.doc["records"])
    if df.empty or df["seed"].nunique() < 2:
        return
    audits = df[df["step"].str.startswith("audit/")]
    if not audits.empty:
        cols = [c for c in ("mislabel_precision_at_k", "flagged_mislabel", "top20_precision", "ood_auroc",
                            "ood_recall", "ood_precision") if c in audits]
        table = audits.groupby("step")[cols].agg(["mean", "min", "max"]).round(3)
        print("\nover the seeds (mean, min, max):")
        print(table.to_string())
        rec.doc["summary"] = {step: {f"{c}_{stat}": float(table.loc[step, (c, stat)]) for c, stat in table.columns}
                              for step in table.index}
    orders = {}
    ensemble = df[df["step"] == "audit/ensemble"].set_index("seed")
    for name, key in (("label quality", "mislabel_precision_at_k"), ("report order", "report_precision_at_k"),
                      ("plain self-confidence", "self_confidence_precision_at_k")):
        if key in ensemble:
            orders[name] = ensemble[key].astype(float)
    peer = df[df["step"] == "peer/datalab"]
    if not peer.empty:
        orders["Datalab"] = peer.set_index("seed")["datalab_precision_at_k"].astype(float)
    if orders:
        table = pd.DataFrame({name: {"mean": s.mean(), "worst": s.min()} for name, s in orders.items()}).round(3)
        print("\nprecision@k of wrong labels over the seeds, by order:")
        print(table.to_string())
        rec.doc["summary_precision_at_k"] = table.to_dict()
    devices = df[df["step"] == "devices"]
    if not devices.empty:
        rows = pd.DataFrame([{"seed": seed, "device": name, **figures} for seed, per in
                             zip(devices["seed"], devices["per_device"]) for name, figures in per.items()])
        table = rows.groupby("device").agg(
            seeds=("seed", "nunique"), p_at_k_mean=("precision_at_k", "mean"), p_at_k_worst=("precision_at_k", "min"),
            false_flag_rate_mean=("false_flag_rate", "mean"), false_flag_rate_worst=("false_flag_rate", "max"),
            false_flags_ok=("false_flags_ok", "all"), ood_fp_share_mean=("ood_fp_share", "mean"),
            ood_fp_share_worst=("ood_fp_share", "max"), ood_fp_ok=("ood_fp_ok", "all")).round(3)
        print("\nper device over the seeds (worst: lowest precision@k, highest rates; ok: within the limit "
              "in every seed):")
        print(table.to_string())
        rec.doc["summary_devices"] = table.to_dict(orient="index")
    rec.flush()


def score_data_dir(rec: Recorder, data: Path, truth: Path, peer: bool) -> None:
    """Score a data dir's existing audit (e.g. ``radaudit demo``'s ``DIR/data``) against its truth, nothing trained."""
    methods = data_dir_methods(data)
    name = str(data)
    t = time.perf_counter()
    scores = stages.evaluate_against_truth(data, truth)
    rec.add(name, "audit/ensemble", seconds=round(time.perf_counter() - t, 1), methods=methods,
            **{k: scores[k] for k in FIGURES if k in scores})
    record_scores(rec, name, data, truth, methods, scores, peer)
    real = real_figures(pd.read_parquet(data / ISSUES_PATH), truth)
    if real:
        rec.add(name, "real", **real)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU preset (10,000 images, 128 px, three methods)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", help="several seeds (overrides --seed)")
    ap.add_argument("--n", type=int, help="images in the export (default: the preset's)")
    ap.add_argument("--epochs", type=int, help="pretraining epochs per method (default: the preset's)")
    ap.add_argument("--methods", nargs="+", help="methods, in training order (default: the preset's)")
    ap.add_argument("--size", type=int, help="training view side (default: the preset's)")
    ap.add_argument("--supcon-cross-fit", type=int, help="SupCon backbones, each blind to one label fold "
                    "(1: one on all labels; default: the preset's)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], help="default: each method's paper choice")
    ap.add_argument("--lr", type=float, help="base learning rate per 256 images (default: each method's paper value)")
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 1, help="parallel export processes")
    ap.add_argument("--ingest-workers", type=int, default=0, help="decode workers (0: all cores)")
    ap.add_argument("--real", action="store_true", help="add real CR radiographs of other vendors (pydicom-data: "
                    "a Philips chest, a Fuji lower leg, four encodings each) and report what the audit made of them")
    ap.add_argument("--foreign", action="store_true", help="add real foreign DICOM files (pydicom-data), as stored "
                    "and relabelled as DX knee radiographs, and report how many come out out_of_domain")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random-init baseline")
    ap.add_argument("--workdir", type=Path, help="keep the export and data dir here (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="figures file (see the module docstring)")
    ap.add_argument("--save-embeddings", type=Path, help="copy each seed's embeddings and truth here")
    ap.add_argument("--verbose", action="store_true", help="print the pretraining log")
    ap.add_argument("--no-peer", dest="peer", action="store_false",
                    help="skip the comparison with cleanlab's Datalab (pip install -e '.[bench]' installs it)")
    ap.add_argument("--score", type=Path, metavar="DATA_DIR",
                    help="score this data dir's existing audit instead of training (with --truth): radaudit's "
                    "figures, the per-device table and Datalab on the same inputs")
    ap.add_argument("--truth", type=Path, help="the synthetic export's truth file, for --score")
    ap.add_argument("--crop-ablation", type=float, metavar="SHARE",
                    help="at the end, embed again with ten crops of this share of the side and score each method "
                    "alone: the same backbones, embedded the other way (e.g. 0.875 beside the GPU preset's whole images)")
    args = ap.parse_args(argv)
    if (args.score is None) != (args.truth is None):
        ap.error("--score DATA_DIR and --truth TRUTH go together")
    if args.peer and datalab_missing():
        print(PEER_MISSING, flush=True)
        args.peer = False
    if args.score is not None:
        out = args.json or default_json_path("quality-score")
        rec = Recorder(out, {"score": str(args.score), "truth": str(args.truth), "argv": sys.argv[1:]})
        print(f"scoring {args.score} against {args.truth}; figures -> {out}", flush=True)
        score_data_dir(rec, args.score, args.truth, args.peer)
        return
    preset = PRESETS["gpu" if args.gpu else "cpu-demo"]
    changes = {k: v for k, v in (("n", args.n), ("epochs", args.epochs), ("image_size", args.size),
                                 ("supcon_cross_fit", args.supcon_cross_fit)) if v is not None}
    if args.methods:
        changes["methods"] = tuple(args.methods)
    preset = dataclasses.replace(preset, **changes)
    out = args.json or default_json_path("quality")
    seeds = args.seeds or [args.seed]
    rec = Recorder(out, {**dataclasses.asdict(preset), "seeds": seeds, "backbone": args.backbone,
                         "argv": sys.argv[1:]})
    print(f"preset {preset.name}: {preset.n} images, methods {', '.join(preset.methods)}, {preset.epochs} epochs, "
          f"{preset.image_size} px, batch {preset.batch_size}; figures -> {out}", flush=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="radaudit-quality-"))
    t0 = time.perf_counter()
    try:
        for seed in seeds:
            run_seed(rec, args, preset, seed, work / f"seed{seed}")
            rec.add(seed, "total", seconds=round(time.perf_counter() - t0, 1))
        summarize(rec)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
