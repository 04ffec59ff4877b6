# Shared helpers and input functions. Everything that reads the cohort goes through the two
# global checkpoints (select, split): the cohort is discovered once, never per subject.
import json
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cohortseg.codehash import stage_hash
from cohortseg.config import check_semantics, loader_workers, section_hash
from cohortseg.prepare import CONFIG_SECTIONS as PREPARE_SECTIONS, shard_of, shards

validate(config, "../config/config.schema.yaml", set_default=True)
check_semantics(config)

PRIV = config["private_dir"].rstrip("/")
N_FOLDS = config["split"]["folds"]
RES = config["resources"]
PREFIX = config["pseudonym"]["prefix"]
DIGITS = config["prepare"]["shard_digits"]
SUBJECT_RE = re.escape(PREFIX) + "[0-9a-f]+"


wildcard_constraints:
    subject=SUBJECT_RE,
    fold=r"\d+",
    shard=f"[0-9a-f]{{{DIGITS}}}",


# config sections each stage reads: a change there reruns the stage (params trigger)
STAGE_CONFIG = {
    "index": ["source", "dicom_dir", "nifti", "masks", "private_dir", "pseudonym", "index", "labels"],
    "select": ["select"],
    "prepare": list(PREPARE_SECTIONS),
    "split": ["split", "seed"],
    "train": ["train", "preprocess", "labels", "seed", "deterministic"],
    "ensemble": ["split"],
    "export": ["export", "study", "seed"],
    "infer": ["infer", "seed", "deterministic"],
    "metrics": ["labels"],
    "report": ["report"],
    "provenance": sorted(config),
    "repro": sorted(config),
}


def fingerprint(stage):
    """Params value: the stage's package code hash and its config sections' hash."""
    return f"{stage_hash(stage)}-{section_hash(config, *STAGE_CONFIG[stage])}"


def index_inputs(wildcards):
    """The cohort the index reads: the DICOM export, or the NIfTI folders / table."""
    if config["source"] == "nifti":
        nc = config["nifti"]
        return {k: nc[k] for k in ("table",) if nc[k]} or {k: nc[k] for k in ("images", "labels") if nc[k]}
    return {"dicom": config["dicom_dir"]}


_CACHE = {}


def _cached(name, path, read):
    """Read a checkpoint output once per DAG build (input functions run once per job)."""
    key = (name, str(path), os.stat(path).st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = read(path)
    return _CACHE[key]


def included_table():
    return _cached("included", checkpoints.select.get().output.included,
                   lambda p: pd.read_csv(p, sep="\t", dtype={"subject": str}))


def shard_subjects():
    """{shard: [subjects]} of the included subjects (prepare.shard_digits hex digits of the pseudonym)."""
    return _cached("shards", checkpoints.select.get().output.included,
                   lambda p: shards(list(included_table()["subject"]), PREFIX, DIGITS))


def prepared(subjects):
    """The shard manifests that prove ``subjects`` are converted (and, if labelled, preprocessed)."""
    return sorted({f"results/prepared/{shard_of(s, PREFIX, DIGITS)}.json" for s in subjects})


def ensemble_shards():
    """{shard: [subjects]} of the subjects the ensemble predicts (test + unlabelled)."""
    return _cached("ensemble_shards", checkpoints.split.get().output.splits,
                   lambda p: shards(ensemble_subjects(), PREFIX, DIGITS))


def ensemble_prediction(subject):
    return f"results/predictions/shards/{shard_of(subject, PREFIX, DIGITS)}.json"


def labelled_subjects():
    inc = included_table()
    return sorted(inc.loc[inc["has_mask"].astype(str).str.lower() == "true", "subject"])


def splits():
    return _cached("splits", checkpoints.split.get().output.splits, lambda p: json.loads(Path(p).read_text()))


def fold_subjects(fold):
    f = splits()["folds"][int(fold)]
    return sorted(f["train"] + f["val"])


def fold_val(fold):
    return splits()["folds"][int(fold)]["val"]


def fold_models():
    return [f"results/models/fold{k}/model.pt" for k in range(N_FOLDS)]


def prediction_pairs():
    """(model, subject) of every prediction that has a reference: fold validation + ensemble test."""
    sp = splits()
    pairs = [(f"fold{k}", s) for k, f in enumerate(sp["folds"]) for s in f["val"]]
    pairs += [("ensemble", s) for s in sp["test"]]
    return pairs


def ensemble_subjects():
    sp = splits()
    return sorted(sp["test"] + sp.get("unlabelled", []))


def external_cases():
    out = []
    for name, folder in config["infer"]["cohorts"].items():
        for p in sorted(Path(folder).glob("*.nii*")):
            case = re.sub(r"\.nii(\.gz)?$", "", p.name)
            out.append((name, case))
    return out


def external_image(wildcards):
    folder = Path(config["infer"]["cohorts"][wildcards.cohort])
    for cand in (folder / f"{wildcards.case}.nii.gz", folder / f"{wildcards.case}.nii"):
        if cand.exists():
            return str(cand)
    raise ValueError(f"no image {wildcards.case}.nii[.gz] in cohort {wildcards.cohort} ({folder})")


def metrics_inputs(wildcards):
    pairs = prediction_pairs()
    return {
        "fold_preds": [f"results/predictions/fold{k}" for k in range(N_FOLDS)],
        "ensemble_preds": sorted({ensemble_prediction(s) for m, s in pairs if m == "ensemble"}),
        "refs": prepared([s for m, s in pairs]),
        "train_info": [f"results/models/fold{k}/train.json" for k in range(N_FOLDS)],
    }


def overlay_subjects():
    return splits()["test"][: config["report"]["overlays"]]


def all_targets(wildcards):
    return all_outputs(wildcards) + ["results/provenance.json"]


def all_outputs(wildcards):
    targets = [
        "results/cohort/excluded.tsv",
        "results/models/ensemble.json",
        "results/metrics/summary.tsv",
        "results/report/selection.png",
        "results/report/dice.png",
    ]
    targets += [f"results/models/fold{k}/curves.png" for k in range(N_FOLDS)]
    targets += [f"results/predictions/shards/{shard}.json" for shard in ensemble_shards()]
    targets += [f"results/report/overlays/{s}.png" for s in overlay_subjects()]
    targets += [f"results/predictions_external/{c}/{k}.nii.gz" for c, k in external_cases()]
    if config["export"]["enabled"]:
        targets.append("results/export/export.json")
    return targets
