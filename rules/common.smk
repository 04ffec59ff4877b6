# Shared helpers and input functions. Everything that reads the cohort goes through the two
# global checkpoints (select, split): the cohort is discovered once, never per subject.
import json
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cohortseg import codehash
from cohortseg.config import (SCHEMA, check_semantics, check_unique_keys, loader_workers, model_config, model_names)
from cohortseg.prepare import ALL, SUBJECT_SECTIONS, shard_bits, shard_of, shards

check_unique_keys(list(workflow.configfiles))
validate(config, str(SCHEMA), set_default=True)
check_semantics(config)

PRIV = config["private_dir"].rstrip("/")
N_FOLDS = config["split"]["folds"]
RES = config["resources"]
PREFIX = config["pseudonym"]["prefix"]
PER_JOB = config["prepare"]["subjects_per_job"]
SUBJECT_RE = re.escape(PREFIX) + "[0-9a-f]+"
# the study's models (config `models`, or one named after train.model): a dimension of the DAG
MODELS = model_names(config)


wildcard_constraints:
    subject=SUBJECT_RE,
    fold=r"\d+",
    shard=f"{ALL}|[01]+",
    model="|".join(re.escape(m) for m in MODELS),


def fingerprint(stage):
    """Params value: the hash of the package code the stage runs and of the config sections its module
    declares (its `class Config`): a change to either reruns the stage (params trigger)."""
    return codehash.fingerprint(stage, config)


def train_code(wildcards):
    """A model's training params: its own merged configuration (adding or editing another model reruns
    nothing of this one)."""
    return codehash.fingerprint("train", model_config(config, wildcards.model))


def plan_model_code(wildcards):
    return codehash.fingerprint("plans", model_config(config, wildcards.model), ("train", "plans", "labels", "resources"))


def plan_dataset_code(wildcards):
    return codehash.fingerprint("plans", config, ("preprocess", "plans", "labels"))


def index_inputs(wildcards):
    """The cohort the index reads: the DICOM export, or the NIfTI folders / table."""
    if config["source"] == "nifti":
        nc = config["nifti"]
        return {k: nc[k] for k in ("table",) if nc[k]} or {k: nc[k] for k in ("images", "labels") if nc[k]}
    if config["source"] == "pacs":  # the index reads private_dir/raw, which the retrieval fills
        return {"retrieved": "results/cohort/retrieved.tsv"}
    return {"dicom": config["dicom_dir"]}


def select_query_table():
    """source: pacs: the retrieval's table (series left in the PACS by the query, with their reason)."""
    return {"retrieved": "results/cohort/retrieved.tsv"} if config["source"] == "pacs" else {}


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
    """The shard manifests that prove ``subjects`` are converted (with their mask and survey)."""
    bits = shard_bits(len(included_table()), PER_JOB)
    return sorted({f"results/prepared/{shard_of(s, PREFIX, bits)}.json" for s in subjects})


def splits():
    return _cached("splits", checkpoints.split.get().output.splits, _read_json)


def cv_subjects():
    """The labelled subjects of the folds (training + validation): what plans, preprocessing and training see."""
    return sorted({s for f in splits()["folds"] for s in f["train"] + f["val"]})


def test_subjects():
    return sorted(splits()["test"])


def ensemble_subjects():
    """What the study's selection predicts: the test subjects and the unlabelled ones."""
    sp = splits()
    return sorted(sp["test"] + sp.get("unlabelled", []))


def _shards_by(name, subjects):
    return _cached(name, checkpoints.split.get().output.splits, shards_of(subjects))


def preprocess_shards():
    """{shard: [subjects]} of the cross-validation subjects."""
    return _shards_by("preprocess_shards", cv_subjects())


def test_shards():
    return _shards_by("test_shards", test_subjects())


def study_shards():
    return _shards_by("study_shards", ensemble_subjects())


def _shard_file(folder, subject, subjects):
    return f"{folder}/{shard_of(subject, PREFIX, shard_bits(len(subjects), PER_JOB))}.json"


def all_preprocessed(wildcards):
    """Every preprocess shard manifest: all cross-validation subjects preprocessed (rule ready)."""
    return preprocessed(cv_subjects())


def preprocessed(subjects):
    """The preprocess shard manifests that prove ``subjects`` are preprocessed."""
    cv = cv_subjects()
    return sorted({_shard_file("results/preprocessed", s, cv) for s in subjects})


def fold_subjects(fold):
    f = splits()["folds"][int(fold)]
    return sorted(f["train"] + f["val"])


def fold_val(fold):
    return splits()["folds"][int(fold)]["val"]


def fold_models(model):
    return [f"results/models/{model}/fold{k}/model.pt" for k in range(N_FOLDS)]


def fold_infos(model):
    return [f"results/models/{model}/fold{k}/train.json" for k in range(N_FOLDS)]


def all_fold_models():
    return [p for m in MODELS for p in fold_models(m)]


def all_manifests():
    return [f"results/models/{m}/ensemble.json" for m in MODELS]


def package_dir():
    """results/model/<study>-v<version>: the model package's folder."""
    return f"results/model/{config['study']}-v{config['package']['version']}"


def external_cohort(name):
    """[(case, image)] of an extra cohort's folder (infer.cohorts): its NIfTI files, named by file."""
    folder = Path(config["infer"]["cohorts"][name])
    return [(re.sub(r"\.nii(\.gz)?$", "", p.name), str(p)) for p in sorted(folder.glob("*.nii*"))]


def external_images(wildcards):
    return [image for _, image in external_cohort(wildcards.cohort)]


def external_runtime(wildcards, attempt):
    return attempt * (10 + 2 * len(external_cohort(wildcards.cohort)))


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


def survey_prepared(wildcards):
    return prepared(cv_subjects())


def survey_files(wildcards):
    """The surveys the plan reads: the cross-validation subjects' only (test subjects influence nothing)."""
    return [f"results/nifti/{s}/survey.json" for s in cv_subjects()]


def plan_models(wildcards):
    return [f"results/plans/models/{m}.json" for m in MODELS]


def preprocess_job_subjects(wildcards):
    return preprocess_shards()[wildcards.shard]


def preprocess_prepared(wildcards):
    return prepared(preprocess_shards()[wildcards.shard])


def preprocess_runtime(wildcards, attempt):
    n = len(preprocess_shards()[wildcards.shard])
    return attempt * (10 + 2 * -(-n // RES["light_threads"]))


def train_preprocessed(wildcards):
    return preprocessed(fold_subjects(wildcards.fold))


def train_threads(wildcards):
    """The network's threads plus the loader's worker processes where the model may train on patches
    (an explicit or planned patch: the script uses them only in patch mode). In deterministic mode the
    network runs on train.compute_threads whatever the job's threads, so the job reserves at least those:
    two 1-thread jobs each computing on 2 threads on 2 cores ran an epoch 10-30x slower (the demo's audit)."""
    mc = model_config(config, wildcards.model)
    network = RES["train_threads"]
    if config["deterministic"]:
        network = max(network, mc["train"]["compute_threads"])
    return network + loader_workers(mc)


def train_mem_mb(wildcards, attempt):
    return RES["train_mem_mb"] * attempt


def train_runtime(wildcards, attempt):
    """A retry after the wall time resumes from the checkpoint, with twice (three times...) the time."""
    return RES["train_runtime_min"] * attempt


def ensemble_models(wildcards):
    return fold_models(wildcards.model)


def ensemble_infos(wildcards):
    """Each fold's metadata (labels, window, architecture, validation Dice), read without torch."""
    return fold_infos(wildcards.model)


def export_preprocessed(wildcards):
    return preprocessed(fold_val(0)[:1])


def export_volume(wildcards):
    """The preprocessed image the exported programs are checked on: fold 0's first validation subject."""
    return f"results/preproc/{fold_val(0)[0]}/image.nii"


def prediction_cases(folder, subjects):
    """(case, image, prediction, timing json) of ``subjects`` predicted into ``folder``."""
    return [(s, f"results/nifti/{s}/image.nii.gz", f"{folder}/{s}.nii.gz", f"{folder}/{s}.json") for s in subjects]


def fold_val_prepared(wildcards):
    return prepared(fold_val(wildcards.fold))


def fold_model(wildcards):
    return [f"results/models/{wildcards.model}/fold{wildcards.fold}/model.pt"]


def fold_val_cases(wildcards, output):
    return prediction_cases(output.preds, fold_val(wildcards.fold))


def fold_predictor_name(wildcards):
    return f"{wildcards.model}/fold{wildcards.fold}"


def test_shard_prepared(wildcards):
    return prepared(test_shards()[wildcards.shard])


def model_manifest(wildcards):
    return [f"results/models/{wildcards.model}/ensemble.json"]


def test_shard_cases(wildcards):
    return prediction_cases(f"results/predictions/{wildcards.model}/test", test_shards()[wildcards.shard])


def test_shard_runtime(wildcards, attempt):
    return attempt * (10 + 2 * len(test_shards()[wildcards.shard]))


def ensemble_predictor_name(wildcards):
    return f"{wildcards.model}/ensemble"


def study_shard_prepared(wildcards):
    return prepared(study_shards()[wildcards.shard])


def study_shard_cases(wildcards):
    return prediction_cases("results/predictions/study", study_shards()[wildcards.shard])


def study_shard_runtime(wildcards, attempt):
    return attempt * (10 + 2 * len(MODELS) * len(study_shards()[wildcards.shard]))


def external_cohort_cases(wildcards, output):
    """(case, image, prediction, timing json) of every image of a cohort."""
    return [(f"{wildcards.cohort}/{case}", image, f"{output.preds}/{case}.nii.gz", f"{output.preds}/{case}.json")
            for case, image in external_cohort(wildcards.cohort)]


def cv_prediction_folders(wildcards):
    return [f"results/predictions/{m}/fold{k}" for m in MODELS for k in range(N_FOLDS)]


def cv_references(wildcards):
    return prepared(cv_subjects())


def cv_cases(wildcards):
    """(subject, {model: probabilities}, reference) of every cross-validation subject (cohortseg.study)."""
    return [(s, {m: f"results/predictions/{m}/fold{k}/{s}.probs.npz" for m in MODELS},
             f"results/nifti/{s}/label.nii.gz") for k, f in enumerate(splits()["folds"]) for s in f["val"]]


def models_list(wildcards):
    return MODELS


def _test_shard_file(model, subject):
    return _shard_file(f"results/predictions/{model}/test_shards", subject, test_subjects())


def _study_shard_file(subject):
    return _shard_file("results/predictions/study/shards", subject, ensemble_subjects())


def metric_pairs(wildcards):
    """(model, predictor, set, subject, prediction, reference) of every scored prediction, in source space:
    each model's folds on their validation subjects, its fold ensemble and the study's selection on the test
    subjects."""
    sp = splits()
    ref = "results/nifti/{}/label.nii.gz".format
    pairs = [(m, f"fold{k}", "cv", s, f"results/predictions/{m}/fold{k}/{s}.nii.gz", ref(s))
             for m in MODELS for k, f in enumerate(sp["folds"]) for s in f["val"]]
    pairs += [(m, "ensemble", "test", s, f"results/predictions/{m}/test/{s}.nii.gz", ref(s))
              for m in MODELS for s in sp["test"]]
    pairs += [("study", "selected", "test", s, f"results/predictions/study/{s}.nii.gz", ref(s)) for s in sp["test"]]
    return pairs


def metrics_inputs(wildcards):
    tests = test_subjects()
    return {
        "fold_preds": cv_prediction_folders(wildcards),
        "test_preds": sorted({_test_shard_file(m, s) for m in MODELS for s in tests}),
        "study_preds": sorted({_study_shard_file(s) for s in tests}),
        "refs": prepared(cv_subjects() + tests),
        "train_info": [p for m in MODELS for p in fold_infos(m)],
    }


def metric_pred_info(wildcards):
    return [re.sub(r"\.nii\.gz$", ".json", p[4]) for p in metric_pairs(wildcards)]


def all_train_infos(wildcards):
    return [p for m in MODELS for p in fold_infos(m)]


def all_histories(wildcards):
    return [f"results/models/{m}/fold{k}/history.tsv" for m in MODELS for k in range(N_FOLDS)]


def overlay_prepared(wildcards):
    return prepared([wildcards.subject])


def overlay_predictions(wildcards):
    return [_test_shard_file(m, wildcards.subject) for m in MODELS] + [_study_shard_file(wildcards.subject)]


def overlay_panels(wildcards):
    """(name, prediction) of every panel row: each model's ensemble, then the study's selection."""
    s = wildcards.subject
    return [(m, f"results/predictions/{m}/test/{s}.nii.gz") for m in MODELS] + [
        ("study (selected)", f"results/predictions/study/{s}.nii.gz")]


def provenance_prepared(wildcards):
    return prepared(included_table()["subject"])


def provenance_sidecars(wildcards):
    return [f"results/nifti/{s}/image.json" for s in included_table()["subject"]]


def results_folder(wildcards, output):
    """The results/ folder, as the folder of the provenance manifest (every output under it is listed)."""
    return os.path.dirname(output.manifest)


def repro_threads():
    """Enough for the repro.runs executions with the first thread count side by side, and for the
    execution with the most threads alone (cohortseg.repro.waves); capped at --cores."""
    r = config["repro"]
    return max(max(r["threads"]), r["runs"] * r["threads"][0])


def repro_runtime(wildcards):
    return 4 * RES["train_runtime_min"] * len(MODELS) * (config["repro"]["runs"] + len(config["repro"]["threads"]))


def overlay_subjects():
    return test_subjects()[: config["report"]["overlays"]]


def dicomseg_enabled():
    """DICOM SEGs are written for DICOM cohorts (a NIfTI cohort has no source series to reference)."""
    return config["source"] in ("dicom", "pacs") and config["dicomseg"]["enabled"]


def dicomseg_records(wildcards):
    return [f"results/dicomseg/{shard}.json" for shard in study_shards()]


def dicomseg_folders(wildcards):
    return [f"{PRIV}/dicomseg/{shard}" for shard in study_shards()]


def all_targets(wildcards):
    return all_outputs(wildcards) + ["results/provenance.json"]


def all_outputs(wildcards):
    targets = [
        "results/cohort/excluded.tsv",
        "results/plans/plans.json",
        "results/metrics/summary.tsv",
        "results/study/selection.json",
        "results/study/comparison.tsv",
        "results/report/selection.png",
        "results/report/dice.png",
    ]
    targets += all_manifests()
    targets += [f"results/models/{m}/fold{k}/curves.png" for m in MODELS for k in range(N_FOLDS)]
    targets += [f"results/predictions/study/shards/{shard}.json" for shard in study_shards()]
    targets += [f"results/report/overlays/{s}.png" for s in overlay_subjects()]
    targets += [f"results/predictions_external/{c}" for c in config["infer"]["cohorts"] if external_cohort(c)]
    if config["export"]["enabled"]:
        targets.append("results/export")
    if config["package"]["enabled"]:
        targets.append(package_dir())
    if dicomseg_enabled():
        targets += dicomseg_records(wildcards)
        if config["pacs"]["push"]:
            targets.append("results/pacs/pushed.tsv")
    return targets
