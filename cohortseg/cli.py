"""``cohortseg <stage>``: every workflow stage as a command, outside Snakemake.

Paths default to the workflow's layout (``results/...``, ``private/...``), so running the
stages one after another in the repository root reproduces what the Snakefile does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__


def _cfg(args: argparse.Namespace) -> dict[str, Any]:
    from .config import load

    overrides = json.loads(args.set) if getattr(args, "set", None) else None
    return load(args.config, overrides)


def cmd_demo_cohort(a: argparse.Namespace) -> None:
    from .demo_cohort import generate

    s = generate(a.out, a.subjects, a.seed, a.phi_marker, a.size)
    print(f"wrote {s['subjects']} subjects, {s['series']} series, {s['files']} files under {a.out}")


def cmd_index(a: argparse.Namespace) -> None:
    from .index import Config, Outputs, run

    import dataclasses

    config = Config.from_config(_cfg(a))
    run(config, dataclasses.replace(Outputs.default("results", config.private_dir), series=a.series, subjects=a.subjects))


def cmd_select(a: argparse.Namespace) -> None:
    from .select import Config, run

    cfg = _cfg(a)
    run(Config.from_config(cfg), a.series, a.subjects, a.included, a.excluded, a.summary, a.summary_txt,
        Path(cfg["private_dir"]) / "descriptors.json")
    print(Path(a.summary_txt).read_text(), end="")


def cmd_convert(a: argparse.Namespace) -> None:
    from .convert import run, run_mask
    from .prepare import Config

    cfg = _cfg(a)
    config = Config.from_config(cfg)
    priv = Path(cfg["private_dir"])
    out = Path(a.out) / a.subject
    run(config.source, config.convert.tool, a.subject, a.included, priv / "series_files.json", out / "image.nii.gz",
        out / "image.json", config.privacy.descriptors)
    masks = json.loads((priv / "masks.json").read_text())
    if a.subject in masks:
        run_mask(len(config.labels), a.subject, out / "image.nii.gz", priv / "masks.json", out / "label.nii.gz")


def cmd_plans(a: argparse.Namespace) -> None:
    from .config import model_config, model_names
    from .plans import Config, run_dataset, run_model, run_summary, table
    from .util import read_json

    cfg = _cfg(a)
    splits = read_json(a.splits)
    cv = sorted({s for f in splits["folds"] for s in f["train"] + f["val"]})
    out = Path(a.out)
    dataset = run_dataset(Config.from_config(cfg), [read_json(Path(a.nifti) / s / "survey.json") for s in cv],
                          str(out / "dataset.json"))
    models = {m: run_model(Config.from_config(model_config(cfg, m)), m, dataset, str(out / "models" / f"{m}.json"))
              for m in model_names(cfg)}
    run_summary(dataset, models, str(out / "plans.json"), str(out / "plans.tsv"))
    print(table(read_json(out / "plans.json")))


def cmd_preprocess(a: argparse.Namespace) -> None:
    from .codehash import fingerprint
    from .preprocess import Config, run

    cfg = _cfg(a)
    run(Config.from_config(cfg), a.plan, a.subjects, a.nifti, a.out, a.manifest, "cli", fingerprint("preprocess", cfg),
        a.threads)


def cmd_prepare(a: argparse.Namespace) -> None:
    from .codehash import fingerprint
    from .prepare import SUBJECT_SECTIONS, Config, Folders, run, shard_bits, shard_of
    from .util import read_tsv

    cfg = _cfg(a)
    config = Config.from_config(cfg)
    priv = Path(cfg["private_dir"])
    prefix = config.pseudonym.prefix
    bits = shard_bits(len(read_tsv(a.included)), config.prepare.subjects_per_job)
    if bool(a.shard) == bool(a.subjects):
        raise ValueError("give either subjects or --shard")
    todo: dict[str, list[str] | None] = {a.shard: None} if a.shard else {}
    for s in a.subjects:
        todo.setdefault(shard_of(s, prefix, bits), []).append(s)  # type: ignore[union-attr]
    for shard, only in todo.items():
        manifest = Path(a.manifests) / f"{shard}.json" if only is None else None
        stamp = fingerprint("prepare", cfg, SUBJECT_SECTIONS)
        m = run(config, shard, a.included, priv / "series_files.json", priv / "masks.json", manifest, stamp,
                Folders(a.nifti), a.threads, only=only, force=a.force or only is not None)
        print(f"shard {shard}: {m['n_subjects']} subjects, {m['n_prepared']} prepared, "
              f"{m['n_subjects'] - m['n_prepared']} up to date")


def cmd_split(a: argparse.Namespace) -> None:
    from .split import Config, run

    run(Config.from_config(_cfg(a)), a.included, a.out)


def _model(cfg: dict[str, Any], name: str | None) -> str:
    from .config import model_names

    names = model_names(cfg)
    if name is None and len(names) > 1:
        raise ValueError(f"the study has several models ({', '.join(names)}): name one with --model-name")
    return name or names[0]


def cmd_train(a: argparse.Namespace) -> None:
    from .codehash import stage_hash
    from .config import model_config
    from .train import Config, FoldPaths, train_fold
    from .util import read_json

    cfg = _cfg(a)
    model = _model(cfg, a.model_name)
    config = Config.from_config(model_config(cfg, model)).with_plans(read_json(Path(a.plans) / "dataset.json"),
                                                                     read_json(Path(a.plans) / "models" / f"{model}.json"))
    train_fold(config, a.fold, read_json(a.splits),
               FoldPaths.default(a.preproc, Path(a.out) / model, Path(a.checkpoints) / model, a.fold),
               stage_hash("train"), a.threads, model)


def cmd_ensemble(a: argparse.Namespace) -> None:
    from .ensemble import Config, run

    cfg = _cfg(a)
    model = _model(cfg, a.model_name)
    config = Config.from_config(cfg)
    folder = Path(a.models) / model
    run(config, [str(folder / f"fold{k}" / "model.pt") for k in range(config.split.folds)], folder / "ensemble.json",
        model)


def cmd_study(a: argparse.Namespace) -> None:
    from .config import model_names
    from .study import Config, run
    from .util import read_json

    cfg = _cfg(a)
    models = model_names(cfg)
    pred = Path(a.predictions)
    cases = [(s, {m: str(pred / m / f"fold{k}" / f"{s}.probs.npz") for m in models}, str(Path(a.nifti) / s / "label.nii.gz"))
             for k, f in enumerate(read_json(a.splits)["folds"]) for s in f["val"]]
    sel = run(Config.from_config(cfg), cases, models, Path(a.out) / "selection.json", Path(a.out) / "selection.tsv")
    print(f"selected {sel['selected']['candidate']} (CV mean Dice {sel['selected']['mean_dice']:.4f}); post-processing "
          f"{sel['postprocessing']} -> {sel['cv_mean_dice_with_postprocessing']:.4f}")


def cmd_compare(a: argparse.Namespace) -> None:
    from .compare import Config, Outputs, incomplete_lines, incomplete_rows, missing_folds, run
    from .config import model_names

    cfg = _cfg(a)
    n_folds = cfg["split"]["folds"]
    missing = missing_folds(a.models, model_names(cfg), n_folds)
    complete = [m for m, ks in missing.items() if not ks]
    for line in incomplete_lines(missing, set(complete), n_folds):
        print(line, file=sys.stderr)
    if not complete:
        raise SystemExit("no model has all its folds trained: nothing to compare")
    folds = [Path(a.models) / m / f"fold{k}" for m in complete for k in range(n_folds)]
    out = Path(a.out)
    run(Config.from_config(cfg), str(Path(a.metrics) / "cases.tsv"), str(Path(a.metrics) / "timing.tsv"),
        [str(f / "train.json") for f in folds], [str(f / "history.tsv") for f in folds],
        Outputs(str(out / "comparison.tsv"), str(out / "pairs.tsv"), str(out / "models.tsv"),
                str(out / "learning_curves.png")), incomplete_rows(missing, n_folds))
    print((out / "comparison.tsv").read_text())


def cmd_show(a: argparse.Namespace) -> None:
    from .show import main

    raise SystemExit(main(a.results))


def cmd_package(a: argparse.Namespace) -> None:
    from .config import model_names
    from .package import Config, package_name, run

    cfg = _cfg(a)
    config = Config.from_config(cfg)
    manifests = [str(Path(a.models) / m / "ensemble.json") for m in model_names(cfg)]
    out = Path(a.out) / package_name(config.study, config.package.version)
    run(config, a.selection, manifests, a.plans, a.comparison, a.included, a.splits, str(out))
    print(f"model package: {out} (card: {out / 'MODEL_CARD.md'})")


def cmd_watch(a: argparse.Namespace) -> None:
    from .watch import Config, run

    rows = run(Config.from_config(_cfg(a)), a.model, a.table, a.max_polls)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "rejected", "failed")}
    print(f"{counts} studies recorded in {a.table}")


def cmd_export(a: argparse.Namespace) -> None:
    from .config import model_names
    from .export import Config, run

    cfg = _cfg(a)
    out = Path(a.out)
    manifests = [str(Path(a.models) / m / "ensemble.json") for m in model_names(cfg)]
    index = run(Config.from_config(cfg), manifests, a.selection, out, a.volume, a.threads)
    for model, entry in index["models"].items():
        info = json.loads((out / model / "export.json").read_text())
        for stem, m in info["models"].items():
            print(f"{model} {stem}: {out / model / m['torchscript']} {out / model / m['onnx']} (max abs diff TorchScript "
                  f"{m['torchscript_max_abs_diff']:.3g}, ONNX {m['onnx_max_abs_diff']:.3g})")
        slicer = info["slicer"]
        print(f"{model} 3D Slicer package: {out / model / slicer['zip'] if 'zip' in slicer else slicer['skipped']}")


def cmd_infer(a: argparse.Namespace) -> None:
    import re

    from .infer import Config, run

    config = Config.from_config(_cfg(a))
    if sum(bool(x) for x in (a.model, a.ensemble, a.exported, a.package)) != 1:
        raise ValueError("give one of --model (repeatable), --ensemble (repeatable, with --selection: the study's "
                         "choice among them), --package or --exported")
    if bool(a.image and a.out) == bool(a.images and a.out_dir):
        raise ValueError("give IMAGE OUT, or --images ... --out-dir DIR (many images, the models loaded once)")
    if a.image:
        out = Path(a.out)
        cases = [(a.case, a.image, str(out), str(out.with_suffix("").with_suffix(".json")))]
    else:
        stems = [re.sub(r"\.nii(\.gz)?$", "", Path(i).name) for i in a.images]
        if len(set(stems)) != len(stems):
            raise ValueError("--images: two images have the same file name")
        d = Path(a.out_dir)
        cases = [(s, i, str(d / f"{s}.nii.gz"), str(d / f"{s}.json")) for s, i in zip(stems, a.images)]
    run(config, a.name, cases, a.model or None, a.ensemble, a.threads, exported=a.exported, selection=a.selection,
        package=a.package)


def cmd_metrics(a: argparse.Namespace) -> None:
    from .metrics import Config, run

    pairs = [tuple(p.split(",")) for p in a.pair]
    run(Config.from_config(_cfg(a)), pairs, a.train_info or [], a.pred_info or [], Path(a.out) / "cases.tsv", Path(a.out) / "summary.tsv",
        Path(a.out) / "timing.tsv")


def cmd_retrieve(a: argparse.Namespace) -> None:
    from .retrieve import Config, raw_dir, run

    cfg = _cfg(a)
    rows = run(Config.from_config(cfg), a.out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("retrieved", "not_retrieved", "failed")}
    print(f"{counts} series; instances in {raw_dir(cfg['private_dir'])}; per series: {a.out}")


def cmd_dicomseg(a: argparse.Namespace) -> None:
    from .dicomseg import Config, run

    cfg = _cfg(a)
    priv = Path(cfg["private_dir"])
    shards = a.shard or sorted(p.stem for p in Path(a.predictions).glob("*.json"))
    for shard in shards:
        rec = run(Config.from_config(cfg), Path(a.predictions) / f"{shard}.json", a.included,
                  priv / "series_files.json", a.selection, priv / "dicomseg" / shard, Path(a.out) / f"{shard}.json")
        failed = {s: r["reason"] for s, r in rec["subjects"].items() if r["status"] != "ok"}
        print(f"shard {shard}: {rec['n_written']} DICOM SEGs in {priv / 'dicomseg' / shard}"
              + "".join(f"\n  {s}: {why}" for s, why in sorted(failed.items())))


def cmd_push(a: argparse.Namespace) -> None:
    from .push import Config, run

    cfg = _cfg(a)
    priv = Path(cfg["private_dir"])
    records = sorted(Path(a.records).glob("*.json"))
    rows = run(Config.from_config(cfg), [str(r) for r in records], [str(priv / "dicomseg" / r.stem) for r in records],
               a.out)
    print(f"{sum(r['status'] == 'stored' for r in rows)} of {len(rows)} SEGs stored in {cfg['pacs']['url']} ({a.out})")


def cmd_overlay(a: argparse.Namespace) -> None:
    from .report import overlay

    overlay(a.image, a.reference, a.prediction, a.out, a.title)


def cmd_repro(a: argparse.Namespace) -> None:
    from .repro import Config, Outputs, run

    table = run(Config.from_config(_cfg(a)), a.main, Outputs.default(a.out), cores=a.cores)
    print((Path(a.out) / "summary.txt").read_text(), end="")
    if table.empty:
        raise RuntimeError("the audit compared nothing")


def cmd_code_hash(a: argparse.Namespace) -> None:
    from .codehash import closure, stage_hash

    for stage in a.stages:
        print(f"{stage}\t{stage_hash(stage)}\t{','.join(closure(stage))}")


def cmd_plan(a: argparse.Namespace) -> None:
    from .plan import run

    args = a.snakemake_args[1:] if a.snakemake_args[:1] == ["--"] else a.snakemake_args
    table = run(args, a.graphs, plans=a.plans)
    if a.plans:
        from .plans import table as plans_table
        from .util import read_json

        print(plans_table(read_json("results/plans/plans.json")))
        print("every choice, its source (plan or config) and why: results/plans/plans.tsv\n")
    print(table.to_string(index=False))
    if a.graphs:
        print(f"rule graph and job DAG: {a.graphs}/rulegraph.svg, {a.graphs}/dag.svg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cohortseg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cohortseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")

    def add(name: str, func: Any, help_: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        if config:
            sp.add_argument("--config", "-c", default="config/config.yaml", help="workflow config YAML")
            sp.add_argument("--set", help='JSON object merged over the config, e.g. \'{"split": {"folds": 3}}\'')
        return sp

    sp = add("demo-cohort", cmd_demo_cohort, "write the synthetic DICOM cohort (dicom/ + masks/)", config=False)
    sp.add_argument("out")
    sp.add_argument("--subjects", type=int, default=16)
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--phi-marker", default="", help="string embedded in every identifying field (privacy tests)")
    sp.add_argument("--size", choices=["demo", "tiny"], default="demo")

    sp = add("index", cmd_index, "read DICOM headers (or check NIfTI image/label pairs) into results/cohort/series.tsv")
    sp.add_argument("--series", default="results/cohort/series.tsv")
    sp.add_argument("--subjects", default="results/cohort/subjects.tsv")

    sp = add("select", cmd_select, "apply the selection rules; write included/excluded/summary")
    sp.add_argument("--series", default="results/cohort/series.tsv")
    sp.add_argument("--subjects", default="results/cohort/subjects.tsv")
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--excluded", default="results/cohort/excluded.tsv")
    sp.add_argument("--summary", default="results/cohort/exclusion_summary.tsv")
    sp.add_argument("--summary-txt", default="results/cohort/summary.txt")

    sp = add("convert", cmd_convert, "convert one subject's selected series (and mask) to NIfTI")
    sp.add_argument("subject")
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--out", default="results/nifti")

    sp = add("plans", cmd_plans, "the dataset plan and every model's plan from the cross-validation subjects' surveys")
    sp.add_argument("--splits", default="results/splits.json")
    sp.add_argument("--nifti", default="results/nifti")
    sp.add_argument("--out", default="results/plans")

    sp = add("preprocess", cmd_preprocess, "reorient/resample/normalise/pad subjects by the dataset plan")
    sp.add_argument("subjects", nargs="+")
    sp.add_argument("--plan", default="results/plans/dataset.json")
    sp.add_argument("--nifti", default="results/nifti")
    sp.add_argument("--out", default="results/preproc")
    sp.add_argument("--manifest", default="results/preprocessed/cli.json")
    sp.add_argument("--threads", type=int, default=1)

    sp = add("prepare", cmd_prepare, "convert, import the mask and survey subjects (one shard or named subjects)")
    sp.add_argument("subjects", nargs="*", help="subjects to redo (always redone); or --shard")
    sp.add_argument("--shard", help="prepare a whole shard (skips up-to-date subjects) and write its manifest")
    sp.add_argument("--force", action="store_true", help="redo up-to-date subjects too")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--nifti", default="results/nifti")
    sp.add_argument("--manifests", default="results/prepared")

    sp = add("split", cmd_split, "seeded k-fold split with held-out test set")
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--out", default="results/splits.json")

    sp = add("train", cmd_train, "train one fold of one model")
    sp.add_argument("fold", type=int)
    sp.add_argument("--model-name", help="the model (config `models`; needed when the study has several)")
    sp.add_argument("--plans", default="results/plans")
    sp.add_argument("--splits", default="results/splits.json")
    sp.add_argument("--preproc", default="results/preproc")
    sp.add_argument("--out", default="results/models")
    sp.add_argument("--checkpoints", default="results/checkpoints")
    sp.add_argument("--threads", type=int, default=1)

    sp = add("ensemble", cmd_ensemble, "check every declared fold of a model and write its ensemble manifest")
    sp.add_argument("--model-name", help="the model (config `models`; needed when the study has several)")
    sp.add_argument("--models", default="results/models")

    sp = add("study", cmd_study, "choose the model/ensemble and post-processing on the cross-validation predictions")
    sp.add_argument("--splits", default="results/splits.json")
    sp.add_argument("--predictions", default="results/predictions")
    sp.add_argument("--nifti", default="results/nifti")
    sp.add_argument("--out", default="results/study")

    sp = add("compare", cmd_compare, "the models side by side: bootstrap CIs, paired tests, time, memory, curves")
    sp.add_argument("--metrics", default="results/metrics")
    sp.add_argument("--models", default="results/models")
    sp.add_argument("--out", default="results/study")

    sp = add("show", cmd_show, "print the comparison and the selection, and name every declared model left out "
             "(exit status 1 then)", config=False)
    sp.add_argument("results", nargs="?", default="results")

    sp = add("package", cmd_package, "the model package: the selected models' weights, selection, plans, config, "
                                     "model card and checksums, in results/model/<study>-v<version>/")
    sp.add_argument("--models", default="results/models")
    sp.add_argument("--selection", default="results/study/selection.json")
    sp.add_argument("--plans", default="results/plans/plans.json")
    sp.add_argument("--comparison", default="results/study/comparison.tsv")
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--splits", default="results/splits.json")
    sp.add_argument("--out", default="results/model")

    sp = add("watch", cmd_watch, "follow the PACS: each new complete study segmented by a model package, its DICOM "
                                 "SEG stored back; every study recorded (SIGTERM stops after the study in hand)")
    sp.add_argument("--model", required=True, help="the model package (results/model/<study>-v<version>/)")
    sp.add_argument("--table", default="results/watch/studies.tsv", help="the run log (pseudonyms only)")
    sp.add_argument("--max-polls", type=int, help="stop after this many polls (default: until SIGTERM)")

    sp = add("export", cmd_export, "TorchScript/ONNX of the selected models' folds and ensembles (parity-checked), "
                                   "3D Slicer packages")
    sp.add_argument("--models", default="results/models")
    sp.add_argument("--selection", default="results/study/selection.json")
    sp.add_argument("--out", default="results/export")
    sp.add_argument("--volume", help="preprocessed image for the parity check (default: a seeded normal volume)")
    sp.add_argument("--threads", type=int, default=1)

    sp = add("infer", cmd_infer, "predict images with fold models, the ensemble or an export, each in its own space")
    sp.add_argument("image", nargs="?", help="one image (or use --images)")
    sp.add_argument("out", nargs="?", help="prediction .nii.gz (a .json with timing is written beside it)")
    sp.add_argument("--images", nargs="+", help="several images, predicted in one process (models loaded once)")
    sp.add_argument("--out-dir", help="folder for the predictions of --images (<name>.nii.gz + .json)")
    sp.add_argument("--name", default="ensemble")
    sp.add_argument("--case", default="case")
    sp.add_argument("--model", action="append", help="fold model.pt (repeatable)")
    sp.add_argument("--ensemble", action="append", help="a model's ensemble manifest (results/models/<model>/ensemble.json)")
    sp.add_argument("--selection", help="the study's selection (results/study/selection.json): with --ensemble of its "
                                        "models, predicts as the workflow's final inference (post-processing too)")
    sp.add_argument("--exported", help="exported program, results/export/<model>/<name>.ts or .onnx (reads export.json "
                                       "beside it)")
    sp.add_argument("--package", help="a model package (results/model/<study>-v<version>/): its selection and "
                                      "post-processing, refused if a file does not match its checksums")
    sp.add_argument("--threads", type=int, default=1)

    sp = add("metrics", cmd_metrics, "Dice/IoU/HD95/HD/average HD/volumes per case and summaries")
    sp.add_argument("--pair", action="append", required=True,
                    help="model,predictor,set,subject,prediction.nii.gz,reference.nii.gz (set: cv or test)")
    sp.add_argument("--train-info", action="append")
    sp.add_argument("--pred-info", action="append")
    sp.add_argument("--out", default="results/metrics")

    sp = add("retrieve", cmd_retrieve, "source: pacs: query the PACS, keep series by pacs.query, retrieve them "
                                       "into private_dir/raw (resumable)")
    sp.add_argument("--out", default="results/cohort/retrieved.tsv")

    sp = add("dicomseg", cmd_dicomseg, "the study's predictions as DICOM SEGs of their source series (private_dir), "
                                       "checked by reading them back")
    sp.add_argument("--shard", action="append", help="a study shard (default: every shard predicted)")
    sp.add_argument("--predictions", default="results/predictions/study/shards")
    sp.add_argument("--included", default="results/cohort/included.tsv")
    sp.add_argument("--selection", default="results/study/selection.json")
    sp.add_argument("--out", default="results/dicomseg")

    sp = add("push", cmd_push, "store the written DICOM SEGs in the PACS by DICOMweb STOW-RS or DIMSE C-STORE (pacs.protocol)")
    sp.add_argument("--records", default="results/dicomseg")
    sp.add_argument("--out", default="results/pacs/pushed.tsv")

    sp = add("overlay", cmd_overlay, "overlay PNG of a prediction (and reference) on an image", config=False)
    sp.add_argument("image")
    sp.add_argument("prediction")
    sp.add_argument("out")
    sp.add_argument("--reference")
    sp.add_argument("--title", default="")

    sp = add("plan", cmd_plan, "jobs per rule with resources (dry run) and the rule graph / DAG", config=False)
    sp.add_argument("--graphs", help="folder for rulegraph.svg and dag.svg (graphviz)")
    sp.add_argument("--plans", action="store_true",
                    help="also convert the cohort and make the dataset and model plans (results/plans/), printed first")
    sp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="arguments for snakemake, e.g. --profile profiles/slurm")

    sp = add("repro", cmd_repro, "reproducibility audit: re-execute stages in separate trees and compare (config repro)")
    sp.add_argument("--main", default=".", help="the workflow folder of the main run")
    sp.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores for independent jobs of an execution")
    sp.add_argument("--out", default="results/repro")

    sp = add("code-hash", cmd_code_hash, "hash of the package code each stage runs (rule params)", config=False)
    sp.add_argument("stages", nargs="+")
    return p


def main(argv: list[str] | None = None) -> int:
    from .util import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"cohortseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
