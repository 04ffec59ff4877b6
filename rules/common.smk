# Shared helpers and input functions. Everything that reads the cohort goes through the two
# global checkpoints (select, split): the cohort is discovered once, never per subject.
import json
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cohortseg import codehash
from cohortseg.config import SCHEMA, check_semantics, loader_workers
from cohortseg.prepare import ALL, SUBJECT_SECTIONS, shard_bits, shard_of, shards

validate(config, str(SCHEMA), set_default=True)
check_semantics(config)

PRIV = config["private_dir"].rstrip("/")
N_FOLDS = config["split"]["folds"]
RES = config["resources"]
PREFIX = config["pseudonym"]["prefix"]
PER_JOB = config["prepare"]["subjects_per_job"]
SUBJECT_RE = re.escape(PREFIX) + "[0-9a-f]+"


wildcard_constraints:
    subject=SUBJECT_RE,
    fold=r"\d+",
    shard=f"{ALL}|[01]+",


def fingerprint(stage):
    """Params value: the hash of the package code the stage runs and of the config sections its module
    declares (its `class Config`): a change to either reruns the stage (params trigger)."""
    return codehash.fingerprint(stage, config)


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


def _read_included(path):
    return pd.read_csv(path, sep="\t", dtype={"subject": str})


def _read_json(path):
    return json.loads(Path(path).read_text())


def shards_of(subjects):
    """A reader for _cached: the shards of ``subjects`` (the path only keys the cache)."""

    def read(_path):
        return shards(subjects, PREFIX, PER_JOB)

    return read


def included_table():
    return _cached("included", checkpoints.select.get().output.included, _read_included)


def shard_subjects():
    """{shard: [subjects]} of the included subjects (prepare.subjects_per_job: cohortseg.prepare)."""
    path = checkpoints.select.get().output.included
    return _cached("shards", path, shards_of(list(included_table()["subject"])))


def prepared(subjects):
    """The shard manifests that prove ``subjects`` are converted (and, if labelled, preprocessed)."""
    bits = shard_bits(len(included_table()), PER_JOB)
    return sorted({f"results/prepared/{shard_of(s, PREFIX, bits)}.json" for s in subjects})


def ensemble_shards():
    """{shard: [subjects]} of the subjects the ensemble predicts (test + unlabelled)."""
    return _cached("ensemble_shards", checkpoints.split.get().output.splits, shards_of(ensemble_subjects()))


def ensemble_prediction(subject):
    bits = shard_bits(len(ensemble_subjects()), PER_JOB)
    return f"results/predictions/shards/{shard_of(subject, PREFIX, bits)}.json"


def labelled_subjects():
    inc = included_table()
    return sorted(inc.loc[inc["has_mask"].astype(str).str.lower() == "true", "subject"])


def splits():
    return _cached("splits", checkpoints.split.get().output.splits, _read_json)


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


def external_cohort(name):
    """[(case, image)] of an extra cohort's folder (infer.cohorts): its NIfTI files, named by file."""
    folder = Path(config["infer"]["cohorts"][name])
    return [(re.sub(r"\.nii(\.gz)?$", "", p.name), str(p)) for p in sorted(folder.glob("*.nii*"))]


def external_images(wildcards):
    return [image for _, image in external_cohort(wildcards.cohort)]


def external_runtime(wildcards, attempt):
    return attempt * (10 + 2 * len(external_cohort(wildcards.cohort)))


def metrics_inputs(wildcards):
    pairs = prediction_pairs()
    return {
        "fold_preds": [f"results/predictions/fold{k}" for k in range(N_FOLDS)],
        "ensemble_preds": sorted({ensemble_prediction(s) for m, s in pairs if m == "ensemble"}),
        "refs": prepared([s for m, s in pairs]),
        "train_info": [f"results/models/fold{k}/train.json" for k in range(N_FOLDS)],
    }


def metric_pairs(wildcards):
    """(model, subject, prediction, reference) of every scored prediction, in source space."""
    return [(m, s, f"results/predictions/{m}/{s}.nii.gz", f"results/nifti/{s}/label.nii.gz")
            for m, s in prediction_pairs()]


def metric_pred_info(wildcards):
    return [f"results/predictions/{m}/{s}.json" for m, s in prediction_pairs()]


# --- named input, params and resource functions of the rules (no lambdas in rules/) ---------------


def shard_job_subjects(wildcards):
    return shard_subjects()[wildcards.shard]


def subject_stamp(wildcards):
    """What each prepared subject's stamp holds: the stage's code and the sections that shape its files
    (not the job size, so re-sharding redoes no subject)."""
    return codehash.fingerprint("prepare", config, SUBJECT_SECTIONS)


def prepare_mem_mb(wildcards, attempt):
    return RES["light_mem_mb"] * attempt


def prepare_runtime(wildcards, attempt):
    """10 min plus 5 per subject and thread, scaled by attempt."""
    n = len(shard_subjects()[wildcards.shard])
    return attempt * (10 + 5 * -(-n // RES["light_threads"]))


def train_prepared(wildcards):
    return prepared(fold_subjects(wildcards.fold))


def train_mem_mb(wildcards, attempt):
    return RES["train_mem_mb"] * attempt


def train_runtime(wildcards, attempt):
    """A retry after the wall time resumes from the checkpoint, with twice (three times...) the time."""
    return RES["train_runtime_min"] * attempt


def export_prepared(wildcards):
    return prepared(fold_val(0)[:1])


def export_volume(wildcards):
    """The preprocessed image the exported programs are checked on: fold 0's first validation subject."""
    return f"results/preproc/{fold_val(0)[0]}/image.nii"


def prediction_cases(folder, subjects):
    """(case, image, prediction, timing json) of ``subjects`` predicted into ``folder``."""
    return [(s, f"results/nifti/{s}/image.nii.gz", f"{folder}/{s}.nii.gz", f"{folder}/{s}.json") for s in subjects]


def fold_val_prepared(wildcards):
    return prepared(fold_val(wildcards.fold))


def fold_val_cases(wildcards, output):
    return prediction_cases(output.preds, fold_val(wildcards.fold))


def ensemble_shard_prepared(wildcards):
    return prepared(ensemble_shards()[wildcards.shard])


def ensemble_shard_cases(wildcards):
    return prediction_cases("results/predictions/ensemble", ensemble_shards()[wildcards.shard])


def ensemble_shard_runtime(wildcards, attempt):
    return attempt * (10 + 2 * len(ensemble_shards()[wildcards.shard]))


def external_cohort_cases(wildcards, output):
    """(case, image, prediction, timing json) of every image of a cohort."""
    return [(f"{wildcards.cohort}/{case}", image, f"{output.preds}/{case}.nii.gz", f"{output.preds}/{case}.json")
            for case, image in external_cohort(wildcards.cohort)]


def overlay_prepared(wildcards):
    return prepared([wildcards.subject])


def overlay_prediction(wildcards):
    return ensemble_prediction(wildcards.subject)


def provenance_prepared(wildcards):
    return prepared(included_table()["subject"])


def provenance_sidecars(wildcards):
    return [f"results/nifti/{s}/image.json" for s in included_table()["subject"]]


def results_folder(wildcards, output):
    """The results/ folder, as the folder of the provenance manifest (every output under it is listed)."""
    return os.path.dirname(output.manifest)


def repro_runtime(wildcards):
    return 4 * RES["train_runtime_min"] * (config["repro"]["runs"] + len(config["repro"]["threads"]))


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
    targets += [f"results/predictions_external/{c}" for c in config["infer"]["cohorts"] if external_cohort(c)]
    if config["export"]["enabled"]:
        targets.append("results/export")
    return targets
