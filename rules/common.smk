# Shared helpers and input functions. Everything that reads the cohort goes through the two
# global checkpoints (select, split): the cohort is discovered once, never per subject.
import json
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cohortseg.codehash import stage_hash
from cohortseg.config import check_semantics, section_hash

validate(config, "../config/config.schema.yaml", set_default=True)
check_semantics(config)

PRIV = config["private_dir"].rstrip("/")
N_FOLDS = config["split"]["folds"]
RES = config["resources"]
SUBJECT_RE = re.escape(config["pseudonym"]["prefix"]) + "[0-9a-f]+"


wildcard_constraints:
    subject=SUBJECT_RE,
    fold=r"\d+",


# config sections each stage reads: a change there reruns the stage (params trigger)
STAGE_CONFIG = {
    "index": ["dicom_dir", "masks", "private_dir", "pseudonym", "index"],
    "select": ["select"],
    "convert": ["convert", "labels"],
    "preprocess": ["preprocess", "labels"],
    "split": ["split", "seed"],
    "train": ["train", "preprocess", "labels", "seed", "deterministic"],
    "ensemble": ["split"],
    "infer": ["infer", "seed", "deterministic"],
    "metrics": ["labels"],
    "report": ["report"],
    "provenance": sorted(config),
}


def fingerprint(stage):
    """Params value: the stage's package code hash and its config sections' hash."""
    return f"{stage_hash(stage)}-{section_hash(config, *STAGE_CONFIG[stage])}"


def included_table():
    return pd.read_csv(checkpoints.select.get().output.included, sep="\t", dtype={"subject": str})


def labelled_subjects():
    inc = included_table()
    return sorted(inc.loc[inc["has_mask"].astype(str).str.lower() == "true", "subject"])


def splits():
    with open(checkpoints.split.get().output.splits) as fh:
        return json.load(fh)


def fold_subjects(fold):
    f = splits()["folds"][int(fold)]
    return sorted(f["train"] + f["val"])


def fold_val(fold):
    return splits()["folds"][int(fold)]["val"]


def preproc_inputs(wildcards):
    subs = fold_subjects(wildcards.fold)
    return {
        "images": [f"results/preproc/{s}/image.nii" for s in subs],
        "labels": [f"results/preproc/{s}/label.nii" for s in subs],
    }


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
        "ensemble_preds": [f"results/predictions/{m}/{s}.nii.gz" for m, s in pairs if m == "ensemble"],
        "refs": [f"results/nifti/{s}/label.nii.gz" for m, s in pairs],
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
    targets += [f"results/predictions/ensemble/{s}.nii.gz" for s in ensemble_subjects()]
    targets += [f"results/report/overlays/{s}.png" for s in overlay_subjects()]
    targets += [f"results/predictions_external/{c}/{k}.nii.gz" for c, k in external_cases()]
    return targets
