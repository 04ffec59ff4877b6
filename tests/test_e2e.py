"""End-to-end Snakemake runs on a tiny synthetic cohort (a few minutes on 2 cores).

One run of the whole DAG, then: nothing left to do; editing a package module reruns exactly the
stages that import it; the audit lists the bad inputs; no identifier reaches any output, log or
Snakemake metadata; `snakemake --lint` has no findings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, copy_workflow, skip_or_fail

pytestmark = pytest.mark.e2e
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
MARKER = "ZQXPHI"


def smk(wd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(wd), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run([*SNAKEMAKE, "--configfile", "tests/config/tiny.yaml", "--cores", "2", *args], cwd=wd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory, tiny_cohort: Path) -> Path:
    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    (wd / "data").mkdir()
    (wd / "data" / "tiny").symlink_to(tiny_cohort)
    # a fixed study key: the same pseudonyms, so the same prepare shards (and job counts), every run
    (wd / "private").mkdir(mode=0o700)
    (wd / "private" / "key").write_text("5a" * 32 + "\n")
    os.chmod(wd / "private" / "key", 0o600)
    smk(wd)
    # a new cohort of NIfTI images named in config (infer.cohorts): picked up by the next run
    (wd / "data" / "external").mkdir()
    test_subject = json.loads((wd / "results" / "splits.json").read_text())["test"][0]
    os.link(wd / "results" / "nifti" / test_subject / "image.nii.gz", wd / "data" / "external" / "case01.nii.gz")
    jobs = planned_jobs(smk(wd, "-n"))
    assert jobs == {"infer_external": 1, "provenance": 1, "all": 1}, jobs
    smk(wd)
    smk(wd, "--report", "results/report.html")
    return wd


MODELS = ("unet", "segresnet")  # tests/config/tiny.yaml


def test_pipeline_outputs(workflow: Path) -> None:
    r = workflow / "results"
    splits = json.loads((r / "splits.json").read_text())
    assert len(splits["folds"]) == 2 and splits["test"]
    cases = pd.read_csv(r / "metrics" / "cases.tsv", sep="\t")
    expected = {(m, f"fold{k}", "cv", s) for m in MODELS for k, f in enumerate(splits["folds"]) for s in f["val"]}
    expected |= {(m, "ensemble", "test", s) for m in MODELS for s in splits["test"]}
    expected |= {("study", "selected", "test", s) for s in splits["test"]}
    assert set(zip(cases["model"], cases["predictor"], cases["set"], cases["subject"])) == expected
    assert cases["status"].isin(["ok", "empty_prediction", "empty_reference", "both_empty"]).all()
    summary = pd.read_csv(r / "metrics" / "summary.tsv", sep="\t")
    for m in MODELS:
        assert {"fold0", "fold1", "cv_pooled", "ensemble"} <= set(summary[summary["model"] == m]["predictor"])
    timing = pd.read_csv(r / "metrics" / "timing.tsv", sep="\t")
    assert set(timing["step"]) == {"train", "predict"} and set(MODELS) <= set(timing["model"])
    for m in MODELS:
        for k in range(2):
            fold = r / "models" / m / f"fold{k}"
            hist = pd.read_csv(fold / "history.tsv", sep="\t")
            assert len(hist) == 3 and {"train_loss", "val_dice", "val_dice_lesion", "lr"} <= set(hist.columns)
            assert (fold / "curves.png").stat().st_size > 1000
            assert json.loads((fold / "train.json").read_text())["model_name"] == m
            assert not (r / "checkpoints" / m / f"fold{k}.pt").exists(), "a finished fold leaves no checkpoint behind"
        ens = json.loads((r / "models" / m / "ensemble.json").read_text())
        assert [f["fold"] for f in ens["folds"]] == [0, 1] and ens["model"] == m
    # plans: every automatic choice with its source; the models' plans fit the CPU budget
    plans = json.loads((r / "plans" / "plans.json").read_text())
    assert set(plans["models"]) == set(MODELS) and all(p["fits"] for p in plans["models"].values())
    assert plans["dataset"]["preprocess"]["normalisation"] in ("zscore", "percentile", "ct")
    # the selection, made on cross-validation only: the test subjects are nowhere in its evidence
    sel = json.loads((r / "study" / "selection.json").read_text())
    cv = {s for f in splits["folds"] for s in f["val"]}
    assert sel["n_subjects"] == len(cv) and set(sel["selected"]["models"]) <= set(MODELS)
    assert {c["candidate"] for c in sel["candidates"]} >= set(MODELS)
    # the comparison: both models, both sets; every pair of models compared on the same cases
    comp = pd.read_csv(r / "study" / "comparison.tsv", sep="\t")
    assert {(m, s) for m in MODELS for s in ("cv", "test")} <= set(zip(comp["model"], comp["set"]))
    pairs = pd.read_csv(r / "study" / "pairs.tsv", sep="\t")
    assert {"wilcoxon_p", "holm_p", "median_diff"} <= set(pairs.columns) and len(pairs) > 0
    models = pd.read_csv(r / "study" / "models.tsv", sep="\t")
    assert set(models["model"]) == set(MODELS) and (models["n_parameters"] > 0).all()
    assert (r / "study" / "learning_curves.png").stat().st_size > 1000
    # DICOM SEGs of the study's predictions: every predicted subject, read back equal, built in private_dir
    predicted = set(splits["test"]) | set(splits.get("unlabelled", []))
    records = {s: v for p in (r / "dicomseg").glob("*.json") for s, v in json.loads(p.read_text())["subjects"].items()}
    assert set(records) == predicted and all(v["status"] == "ok" and v["readback_equal"] for v in records.values())
    segs = sorted((workflow / "private" / "dicomseg").rglob("*.dcm"))
    assert {p.stem for p in segs} == predicted and all(p.stat().st_mode & 0o077 == 0 for p in segs)
    # the exports: the selected models' folds and ensembles, parity-checked, with the selection recorded
    index = json.loads((r / "export" / "export.json").read_text())
    assert set(index["models"]) == set(sel["selected"]["models"])
    assert index["selection"]["postprocessing"] == sel["postprocessing"]
    for m in index["models"]:
        export = json.loads((r / "export" / m / "export.json").read_text())
        assert set(export["models"]) == {"fold0", "fold1", "ensemble"}
        assert export["test_volume"] == "preprocessed test image"
        assert all(v["onnx_max_abs_diff"] <= 1e-4 and (r / "export" / m / v["onnx"]).exists()
                   for v in export["models"].values())


def test_ready_target_stops_at_preprocessing(workflow: Path) -> None:
    """`snakemake ready` (the cohort ready for training, as nnUNetv2_plan_and_preprocess leaves a dataset)
    asks for the plans and every preprocessing shard, nothing downstream, and prints the plans."""
    jobs = planned_jobs(smk(workflow, "ready", "-n", "--forcerun", "preprocess"))
    assert set(jobs) == {"preprocess", "ready"} and jobs["preprocess"] >= 2, jobs
    smk(workflow, "ready")
    assert "preprocess.spacing" in (workflow / "logs" / "ready.log").read_text()


def test_provenance_manifest(workflow: Path) -> None:
    from cohortseg.provenance import sha256_file

    man = json.loads((workflow / "results" / "provenance.json").read_text())
    assert {"versions", "git", "config", "config_sha256", "hardware", "inputs", "outputs"} <= set(man)
    assert man["versions"]["torch"].startswith("2.13.0") and man["hardware"]["cpu_count"] >= 1
    inc = pd.read_csv(workflow / "results" / "cohort" / "included.tsv", sep="\t")
    assert set(man["inputs"]) == set(inc["subject"])
    assert all(len(v["source_sha256"]) == 64 and len(v["mask_sha256"]) == 64 for v in man["inputs"].values())
    outs = man["outputs"]
    assert "results/metrics/summary.tsv" in outs and "results/models/unet/fold0/model.pt" in outs
    assert "results/study/selection.json" in outs and "results/plans/plans.json" in outs
    for path, digest in outs.items():
        assert sha256_file(workflow / path) == digest, path


def test_predictions_are_in_source_space(workflow: Path) -> None:
    import nibabel as nib
    import numpy as np

    r = workflow / "results"
    splits = json.loads((r / "splits.json").read_text())
    for s in splits["test"]:
        src = nib.load(str(r / "nifti" / s / "image.nii.gz"))
        for pred_path in [r / "predictions" / "study" / f"{s}.nii.gz",
                          *[r / "predictions" / m / "test" / f"{s}.nii.gz" for m in MODELS]]:
            pred = nib.load(str(pred_path))
            assert pred.shape == src.shape
            np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
            assert pred.header["descrip"].tobytes().strip(b"\x00") == b""


def test_one_case_gives_one_segmentation_on_every_path(workflow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same case through the workflow's infer_fold / infer_ensemble / infer_study rules, through
    `cohortseg infer` (fold model, ensemble manifest, the study's selection) and through the exported
    TorchScript and ONNX programs of the selected model (`cohortseg infer --exported`, which apply the
    selection's post-processing when the model was selected alone): identical voxels on the PyTorch paths,
    Dice >= 0.999 for ONNX."""
    import nibabel as nib
    import numpy as np

    from cohortseg import postprocess
    from cohortseg.cli import main

    r = workflow / "results"
    splits = json.loads((r / "splits.json").read_text())
    sel = json.loads((r / "study" / "selection.json").read_text())
    m = sel["selected"]["models"][0]
    val, test = splits["folds"][0]["val"][0], splits["test"][0]
    monkeypatch.chdir(workflow)
    cfg = "tests/config/tiny.yaml"

    def cli(subject: str, out: Path, *model: str) -> np.ndarray:
        assert main(["infer", "-c", cfg, *model, str(r / "nifti" / subject / "image.nii.gz"), str(out)]) == 0
        return np.asarray(nib.load(str(out)).dataobj)

    def saved(path: Path) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2 * float(((a > 0) & (b > 0)).sum()) / max(1, int((a > 0).sum() + (b > 0).sum()))

    alone = len(sel["selected"]["models"]) == 1

    def as_exported(seg: np.ndarray) -> np.ndarray:
        return postprocess.apply(seg, sel["postprocessing"], ["lesion"]) if alone else seg

    tmp = workflow / "paths"
    fold_rule = saved(r / "predictions" / m / "fold0" / f"{val}.nii.gz")
    ensemble_rule = saved(r / "predictions" / m / "test" / f"{test}.nii.gz")
    study_rule = saved(r / "predictions" / "study" / f"{test}.nii.gz")
    manifests = [a for x in sel["selected"]["models"] for a in ("--ensemble", f"results/models/{x}/ensemble.json")]
    paths = {
        "fold0: cohortseg infer --model": (fold_rule, cli(val, tmp / "fold0_cli.nii.gz", "--model",
                                                          f"results/models/{m}/fold0/model.pt")),
        "ensemble: cohortseg infer --ensemble": (ensemble_rule, cli(test, tmp / "ens_cli.nii.gz", "--ensemble",
                                                                    f"results/models/{m}/ensemble.json")),
        "study: cohortseg infer --selection": (study_rule, cli(test, tmp / "study_cli.nii.gz", *manifests,
                                                              "--selection", "results/study/selection.json")),
        "fold0: TorchScript": (as_exported(fold_rule), cli(val, tmp / "fold0_ts.nii.gz", "--exported",
                                                           f"results/export/{m}/fold0.ts")),
        "ensemble: TorchScript": (as_exported(ensemble_rule), cli(test, tmp / "ens_ts.nii.gz", "--exported",
                                                                  f"results/export/{m}/ensemble.ts")),
    }
    onnx = {
        "fold0: ONNX": (as_exported(fold_rule), cli(val, tmp / "fold0_onnx.nii.gz", "--exported",
                                                    f"results/export/{m}/fold0.onnx")),
        "ensemble: ONNX": (as_exported(ensemble_rule), cli(test, tmp / "ens_onnx.nii.gz", "--exported",
                                                           f"results/export/{m}/ensemble.onnx")),
    }
    for name, (rule, other) in {**paths, **onnx}.items():
        print(f"{name}: {int((other > 0).sum())} foreground voxels, rule's {int((rule > 0).sum())}, "
              f"identical voxels {float((rule == other).mean()):.6f}, Dice {dice(rule, other):.6f}")
    assert (fold_rule > 0).any() and (ensemble_rule > 0).any(), "empty predictions would make the comparison empty"
    for name, (rule, other) in paths.items():
        assert np.array_equal(rule, other), name
    for name, (rule, other) in onnx.items():
        assert dice(rule, other) >= 0.999, name


def test_external_cohort_is_predicted_in_its_own_space(workflow: Path) -> None:
    import nibabel as nib
    import numpy as np

    src = nib.load(str(workflow / "data" / "external" / "case01.nii.gz"))
    pred = nib.load(str(workflow / "results" / "predictions_external" / "external" / "case01.nii.gz"))
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
    info = json.loads((workflow / "results" / "predictions_external" / "external" / "case01.json").read_text())
    assert info["n_models"] == 2 and info["subject"] == "external/case01"


def test_audit_lists_bad_inputs(workflow: Path) -> None:
    exc = pd.read_csv(workflow / "results" / "cohort" / "excluded.tsv", sep="\t")
    reasons = set(exc["reason"])
    assert {"unreadable", "not_dicom", "missing_slices", "localizer", "no_contrast", "postoperative", "too_few_slices",
            "derived", "not_t1"} <= reasons
    text = (workflow / "results" / "cohort" / "summary.txt").read_text()
    assert "without a usable series" in text
    inc = pd.read_csv(workflow / "results" / "cohort" / "included.tsv", sep="\t")
    assert inc["subject"].is_unique and len(inc) == 6


PHI_FIELDS = ("NAME", "ID", "ACC", "INST", "REF", "DESC", "DIR", "FILE", "COMMENT", "OPER", "STATION", "PRIVATE")


def phi_canaries(cohort: Path) -> dict[str, str]:
    """Marker string -> the field it came from: one marker per identifying field (PatientName,
    PatientID, AccessionNumber, InstitutionName, ReferringPhysicianName, StudyDescription, folder
    and file names) and per free-text or private tag (ImageComments, OperatorsName, StationName, a private
    tag), and every patient's birth date and study date in the spellings the generator types into series
    descriptions (with the name and the id) and more."""
    import pydicom

    canaries = {f"{MARKER}{f}": f for f in PHI_FIELDS}
    for f in sorted((cohort / "dicom").rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the cohort's deliberately unreadable file
            continue
        for field in ("PatientBirthDate", "StudyDate"):
            d = str(ds.get(field, ""))
            if len(d) == 8:
                for spelled in (d, f"{d[:4]}-{d[4:6]}-{d[6:]}", f"{d[6:]}.{d[4:6]}.{d[:4]}", f"{d[6:]}/{d[4:6]}/{d[:4]}"):
                    canaries[spelled] = field
    return canaries


def slurm_submissions(wd: Path) -> list[str]:
    """The job name, comment and log path the slurm executor plugin would give every job of the
    workflow, from a dry run with the slurm profile (the plugin's own wildcard formatting)."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.utils import get_job_wildcards

    rules = ["prepare", "plan_dataset", "plan_model", "plans", "preprocess", "train", "ensemble", "export", "infer_fold",
             "infer_ensemble", "study", "infer_study", "compare", "infer_external", "metrics", "selection_chart", "dice_chart", "overlay", "provenance", "all"]
    proc = smk(wd, "--profile", "profiles/slurm", "-n", "--forcerun", "prepare", "--allowed-rules", *rules)
    out = proc.stdout + proc.stderr
    subs = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", out):  # grouped jobs are indented
        m = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not m:
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        values = [kv.split("=", 1)[1] for kv in wc.group(1).split(", ")] if wc else []
        wildcard_str = get_job_wildcards(SimpleNamespace(wildcards=values))
        comment = f"rule_{m.group(1)}_wildcards_{wildcard_str}" if wildcard_str else f"rule_{m.group(1)}"
        log = f".snakemake/slurm_logs/rule_{m.group(1)}/{wildcard_str}/%j.log"
        subs += [comment, log]
    assert len(subs) > 20, out[-3000:]
    return [*subs, out]


def shard_list(wd: Path, subjects: list[str] | None = None) -> set[str]:
    """The prepare shards of the included subjects (or of ``subjects``), as the tiny config makes them."""
    from cohortseg.prepare import shards

    if subjects is None:
        subjects = list(pd.read_csv(wd / "results" / "cohort" / "included.tsv", sep="\t")["subject"])
    return set(shards(subjects, "sub-", 2))  # tests/config/tiny.yaml: prepare.subjects_per_job 2


def _edited(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}"
    path.write_text(text.replace(old, new, 1))
    return text


def test_rerun_triggers_follow_the_parsed_code(workflow: Path) -> None:
    """Rerun exactly what a code change touches: a comment or docstring edit reruns nothing; an edit of a
    function of train.py reruns training and what consumes models, never the cohort stages; an edit of
    metrics.py reruns metrics and what reads them, never training or inference; an edit of preprocess.py
    (a stage of its own now) reruns preprocessing and what follows, never conversion or the plans."""
    assert planned_jobs(smk(workflow, "-n")) == {}
    pkg = workflow / "cohortseg"
    train_py, metrics_py, preprocess_py = pkg / "train.py", pkg / "metrics.py", pkg / "preprocess.py"
    original = _edited(train_py, '    """Dice of integer maps per label; 1.0 when both are empty."""\n',
                       '    """Dice per label of two integer maps; 1.0 when both are empty."""\n    # a comment\n\n')
    try:
        cosmetic = planned_jobs(smk(workflow, "-n"))
        print("comment + docstring edit of train.py:", cosmetic or "nothing to be done")
        assert cosmetic == {}, cosmetic
        _edited(train_py, "out.append(1.0 if denom == 0", "out.append(1.0 if denom <= 0")
        jobs = planned_jobs(smk(workflow, "-n"))
        print("function edit of train.py:", jobs)
        # training, and what consumes models; never the cohort, conversion, plans or preprocessing
        assert jobs.get("train") == 4 and jobs.get("infer_fold") == 4 and jobs.get("ensemble") == 2, jobs
        assert {"study", "compare", "export", "metrics", "infer_study", "infer_external"} <= set(jobs), jobs
        assert not {"index", "select", "split", "prepare", "plan_dataset", "plan_model", "preprocess"} & set(jobs), jobs
    finally:
        train_py.write_text(original)
    original = _edited(metrics_py, "voxel = float(np.prod(spacing))", "voxel = float(np.prod(spacing)) * 1.0")
    try:
        jobs = planned_jobs(smk(workflow, "-n"))
        print("function edit of metrics.py:", jobs)
        assert jobs == {"metrics": 1, "compare": 1, "dice_chart": 1, "provenance": 1, "all": 1}, jobs
    finally:
        metrics_py.write_text(original)
    original = _edited(preprocess_py, "return {str(v): int((data == v).sum()) for v in range(1, n_labels + 1)}",
                       "return {str(v): int((data == v).sum() + 0) for v in range(1, n_labels + 1)}")
    try:
        jobs = planned_jobs(smk(workflow, "-n"))
        print("function edit of preprocess.py:", jobs)
        assert jobs.get("preprocess", 0) >= 1 and jobs.get("train") == 4, jobs
        assert not {"index", "select", "split", "prepare", "plan_dataset", "plan_model"} & set(jobs), jobs
    finally:
        preprocess_py.write_text(original)
    assert planned_jobs(smk(workflow, "-n")) == {}


def test_adding_a_model_trains_and_predicts_only_that_model(workflow: Path) -> None:
    """A third model added to the finished study: its plan, folds, ensemble and predictions are planned, and
    what compares or selects across models; no job of the two finished models."""
    from cohortseg.plan import parse_dry_run

    extra = workflow / "three_models.yaml"
    extra.write_text("models:\n  unet: {family: unet}\n  segresnet: {family: segresnet, base_filters: 4}\n"
                     "  small: {family: unet, base_filters: 4}\n")
    proc = smk(workflow, "-n", "--configfile", "tests/config/tiny.yaml", str(extra))
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    per_model = jobs[jobs["rule"].isin(["plan_model", "train", "ensemble", "infer_fold", "infer_ensemble"])]
    print(per_model[["rule", "wildcards"]].to_string())
    assert len(per_model) and per_model["wildcards"].str.contains("model=small").all(), per_model
    assert set(per_model["rule"]) >= {"plan_model", "train", "ensemble", "infer_fold"}
    assert {"study", "compare"} <= set(jobs["rule"]) and "preprocess" not in set(jobs["rule"])


def test_missing_fold_is_an_error(workflow: Path) -> None:
    from cohortseg.ensemble import build_ensemble

    models = [str(workflow / "results" / "models" / "unet" / "fold0" / "model.pt")]
    with pytest.raises(ValueError, match="model 'unet'.*all 2 declared folds"):
        build_ensemble(models, 2, workflow / "ens.json", "unet")
    with pytest.raises(FileNotFoundError, match="model 'unet': fold 1"):
        build_ensemble(models + [str(workflow / "nope.pt")], 2, workflow / "ens.json", "unet")
    assert not (workflow / "ens.json").exists()


# wall-clock timings: the only outputs allowed to differ between two runs
TIMING_OUTPUTS = re.compile(r"(history\.tsv|train\.json|timing\.tsv|study/models\.tsv|predictions[^/]*/.*\.json)$")


def replica(workflow: Path, dst: Path, tiny_cohort: Path) -> Path:
    """A second, empty output tree of the workflow with the same inputs and the same study key."""
    wd = copy_workflow(dst)
    (wd / "data").mkdir()
    (wd / "data" / "tiny").symlink_to(tiny_cohort)
    (wd / "data" / "external").mkdir()
    os.link(workflow / "data" / "external" / "case01.nii.gz", wd / "data" / "external" / "case01.nii.gz")
    (wd / "private").mkdir(mode=0o700)
    (wd / "private" / "key").write_bytes((workflow / "private" / "key").read_bytes())
    os.chmod(wd / "private" / "key", 0o600)
    return wd


def output_checksums(wd: Path) -> dict[str, str]:
    return json.loads((wd / "results" / "provenance.json").read_text())["outputs"]


# the stages whose re-execution needs Snakemake's jobs; index, select and split (seconds each, but
# Snakemake's start-up per execution) are audited in-process by tests/test_repro.py
AUDITED = ["prepare", "train", "infer", "metrics"]


def test_repro_audit_of_the_tiny_workflow(workflow: Path) -> None:
    """`snakemake repro` (default mode propagate): each stage re-executed alone on the main run's inputs,
    twice with 1 thread and once with 2, in trees of its own. On CPU every audited stage is bitwise
    identical across the two 1-thread executions and, with training's computation on a fixed number of
    threads (train.compute_threads), across 1 vs 2 threads too; nothing differs, so nothing propagates; the
    main run is not touched; a second audit into the same trees is refused."""
    from cohortseg.provenance import output_checksums

    before = output_checksums(workflow / "results")
    smk(workflow, "repro", "--config", f"repro={{stages: [{', '.join(AUDITED)}]}}")
    after = output_checksums(workflow / "results")
    assert {k: v for k, v in after.items() if "/repro/" not in k} == before, "the audit wrote into the main run"
    stages = pd.read_csv(workflow / "results" / "repro" / "stages.tsv", sep="\t").set_index("stage")
    print(stages.to_string())
    assert list(stages.index) == AUDITED and (stages["files"] > 0).all()
    assert stages["identical_same_threads"].all() and stages["identical_across_threads"].all(), stages
    assert set(stages["compared_on"]) == {"the main run's outputs"}
    var = pd.read_csv(workflow / "results" / "repro" / "metrics_variability.tsv", sep="\t")
    dice = var[var["metric"] == "dice"]
    assert len(dice) and (dice["inter_execution_sd"] == 0).all() and not var["alert"].any(), var
    assert (workflow / "results" / "repro" / "dashboard.png").stat().st_size > 5000
    again = subprocess.run([sys.executable, "-m", "cohortseg.cli", "repro", "-c", "tests/config/tiny.yaml"], cwd=workflow,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(workflow)}, timeout=600)
    assert again.returncode == 2 and "already exist" in again.stderr, again.stderr


def extra_config(workflow: Path, text: str) -> list[str]:
    """A second config file on top of tiny.yaml (`--config` on the command line turns nested YAML values into
    strings, which the schema then refuses)."""
    path = workflow / "extra_config.yaml"
    path.write_text(text + "\n")
    return ["--configfile", "tests/config/tiny.yaml", str(path)]


def test_repro_audit_alerts_when_executions_differ(workflow: Path) -> None:
    """repro.vary_seed: each execution trains with its own seed, so training differs between executions even
    with one thread; in propagate mode every execution then goes on with its own models through ensemble,
    inference and metrics, and the audit measures what that does to the results: the metrics vary between
    executions as much as between subjects, and it raises its alert."""
    out = workflow / "results" / "repro_seed"
    smk(workflow, "repro", *extra_config(workflow, "repro: {stages: [train, ensemble, infer, metrics], runs: 2, "
                                                   "threads: [1], vary_seed: true, dir: repro_seed}"), "--forcerun", "repro")
    shutil.copytree(workflow / "results" / "repro", out, dirs_exist_ok=True)
    stages = pd.read_csv(out / "stages.tsv", sep="\t").set_index("stage")
    print(stages.to_string())
    assert not stages.loc["train", "identical_same_threads"], "different seeds must give different models"
    assert stages.loc["train", "compared_on"] == "the main run's outputs"
    assert all(v.startswith("each execution's own train outputs") for v in stages.loc[["ensemble", "infer", "metrics"],
                                                                                        "compared_on"])
    var = pd.read_csv(out / "metrics_variability.tsv", sep="\t")
    print(var[var["metric"].isin(["dice", "hd95"])].to_string())
    assert (var.loc[var["metric"] == "dice", "inter_execution_sd"] > 0).any()
    summary = (out / "summary.txt").read_text()
    assert var["alert"].any() and "ALERT" in summary and "vary_seed" in summary, summary


def test_repro_chain_mode(workflow: Path) -> None:
    """repro.mode chain: ensemble, inference and metrics re-executed end to end in each execution's tree
    from the main run's models: bitwise identical, metrics' variability zero, no alert."""
    smk(workflow, "repro", *extra_config(workflow, "repro: {mode: chain, stages: [ensemble, infer, metrics], runs: 2, "
                                                   "threads: [1], dir: repro_chain}"), "--forcerun", "repro")
    stages = pd.read_csv(workflow / "results" / "repro" / "stages.tsv", sep="\t").set_index("stage")
    print(stages.to_string())
    assert list(stages.index) == ["ensemble", "infer", "study", "metrics"] and stages["identical_same_threads"].all()
    assert set(stages["compared_on"]) == {"each execution's own outputs (chain)"}
    var = pd.read_csv(workflow / "results" / "repro" / "metrics_variability.tsv", sep="\t")
    assert len(var) and (var["inter_execution_sd"] == 0).all() and not var["alert"].any()
    assert "reproducibility audit (chain)" in (workflow / "results" / "repro" / "summary.txt").read_text()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A single-node SLURM cluster (slurmctld + slurmd + munged, two fake GPUs), for this module."""
    from . import slurm_cluster

    why = slurm_cluster.available()
    if why:
        skip_or_fail(f"SLURM cannot be started: {why}")
    d = tmp_path_factory.mktemp("slurm")
    env = slurm_cluster.start(d)
    yield env
    slurm_cluster.stop(d)


def test_slurm_run_matches_local_run(workflow: Path, slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                                     tiny_cohort: Path) -> None:
    """The tiny workflow through `--profile profiles/slurm` on a real SLURM: every job goes through sbatch
    with the resources its rule declares (GPU for training and inference), and the results equal the
    local run's (same key, same thread counts) except wall-clock timings."""
    from .slurm_cluster import job_info

    wd = replica(workflow, tmp_path_factory.mktemp("wf_slurm"), tiny_cohort)
    env = {**os.environ, **slurm, "PYTHONPATH": str(wd), "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # site values of the profile overridden for the test cluster: no account, a short first status check
    proc = subprocess.run([*SNAKEMAKE, "--profile", "profiles/slurm", "--configfile", "tests/config/tiny.yaml",
                           "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
                           "--seconds-between-status-checks", "2", "--jobs", "4"],
                          cwd=wd, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", out)
    rules_of = {jid: rule for rule, jid in re.findall(r"\n(?:local)?(?:rule|checkpoint) (\w+):\n(?:.*\n)*?\s+jobid: (\d+)", out)}
    seen: dict[str, int] = {}
    for job, slurm_id in submitted:
        rule = rules_of[job]
        info = job_info(slurm_id, slurm)
        print(f"sbatch {slurm_id:>4} {rule:<16} {info.get('JobState')} partition={info.get('Partition')} "
              f"cpus={info.get('NumCPUs')} mem={info.get('MinMemoryNode')} tres={info.get('TresPerJob', '-')} "
              f"time={info.get('TimeLimit')}")
        assert info.get("JobState") == "COMPLETED", (rule, info)
        seen[rule] = seen.get(rule, 0) + 1
        gpu = "gpu" in info.get("TresPerJob", "")
        if rule in ("train", "infer_fold", "infer_ensemble", "infer_external"):
            assert gpu and info.get("Partition") == "gpu", (rule, info)
        else:
            assert not gpu and info.get("Partition") == "cpu", (rule, info)
        if rule == "train":
            assert info.get("MinMemoryNode") == "4000M", info  # tests/config/tiny.yaml resources.train_mem_mb
    assert {"index", "select", "split", "prepare", "train", "infer_fold", "metrics"} <= set(seen), seen
    # fewer, fuller jobs: one prepare job per shard of subjects, not one per subject and step
    assert seen["prepare"] == len(shard_list(wd)) >= 3, seen
    print("SLURM submissions per rule:", seen)
    a, b = output_checksums(workflow), output_checksums(wd)
    common = a.keys() & b.keys()
    assert len(common) > 40 and a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:10]
    differ = sorted(k for k in common if a[k] != b[k])
    assert [k for k in differ if not TIMING_OUTPUTS.search(k)] == []


def test_training_survives_slurm_time_limit(workflow: Path, slurm: dict[str, str],
                                            tmp_path_factory: pytest.TempPathFactory, tiny_cohort: Path) -> None:
    """Training under SLURM with a wall time too short for it: SLURM sends USR1 before the limit (the
    profile's --signal), the job ends, Snakemake resubmits it (retries, with the runtime scaled by
    attempt) and the retry resumes from the last checkpoint and finishes."""
    from .slurm_cluster import job_info

    wd = replica(workflow, tmp_path_factory.mktemp("wf_timeout"), tiny_cohort)
    # SLURM documents that --signal "may be sent up to 60 seconds earlier than specified", so USR1@S with a
    # limit of L seconds arrives between L - S - 60 and L - S after the start (a 2-minute limit with USR1@70
    # could signal at once: CI's job was signalled after 22 s, before its first checkpoint). Here L = 240,
    # S = 120: the signal comes 60-120 s after the start, after the job step's start-up (Snakemake, torch,
    # data: 15-22 s on CI) and its first checkpoint (after epoch 0, ~0.1 s later). 2,000 epochs of 0.05-0.15 s
    # outlast 120 s on any machine we run, and what is left after the resume (at most 2,000 - 35/0.15 epochs)
    # fits the retry (8 minutes, its own USR1 300 s after its start at the earliest).
    limit_min, signal_s = 4, 120
    (wd / "tests" / "config" / "long_train.yaml").write_text(
        f"train: {{epochs: 2000, patience: 5000}}\nresources: {{train_runtime_min: {limit_min}}}\n")
    # the main run's selection, split and prepared subjects (mtimes kept): only training is left to do
    for sub in ("results/cohort", "results/splits.json", "results/prepared", "results/nifti", "results/plans",
                "results/preprocessed", "results/preproc", "private/series_files.json", "private/masks.json"):
        src, dst = workflow / sub, wd / sub
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=shutil.copy2)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    env = {**os.environ, **slurm, "PYTHONPATH": str(wd), "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([*SNAKEMAKE, "results/models/unet/fold0/model.pt", "--profile", "profiles/slurm",
                           "--configfile", "tests/config/tiny.yaml", "tests/config/long_train.yaml",
                           "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
                           "--seconds-between-status-checks", "2", "--retries", "3", "--rerun-triggers", "mtime",
                           "--set-resources", f"train:slurm_extra='--signal=USR1@{signal_s}'", "train:slurm_partition='gpu'",
                           "train:gpu=1"],
                          cwd=wd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+)", out)
    # the plugin's job comment names the rule: keep the training submissions (not split's)
    jobs = [(i, job_info(i, slurm)) for i in submitted]
    ids = [i for i, info in jobs if info.get("Comment", "").startswith("rule_train")]
    states = [info for i, info in jobs if i in ids]
    for i, info in zip(ids, states):
        print(f"train sbatch {i}: {info.get('JobState')} exit={info.get('ExitCode')} time={info.get('TimeLimit')} "
              f"partition={info.get('Partition')} tres={info.get('TresPerJob', '-')} run={info.get('RunTime')}")
    assert len(ids) >= 2, out[-4000:]
    first, last = states[0], states[-1]
    # SLURM delivers USR1 to every process of the job step: the Snakemake job-step process (srun's task)
    # ends on it too, so the job ends FAILED before its limit (not TIMEOUT) and training loses at most the
    # epoch in progress (its checkpoint is written atomically every epoch)
    assert first.get("JobState") == "FAILED" and first.get("RunTime", "") < first.get("TimeLimit", ""), first
    log = next((wd / ".snakemake" / "slurm_logs" / "rule_train").glob(f"*/{ids[0]}.log")).read_text()
    assert "User defined signal 1" in log, log[-2000:]
    assert first.get("TimeLimit") == f"00:{limit_min:02d}:00", first
    assert last.get("TimeLimit") == f"00:{limit_min * len(ids):02d}:00", (first, last)
    assert last.get("JobState") == "COMPLETED", last
    info = json.loads((wd / "results" / "models" / "unet" / "fold0" / "train.json").read_text())
    retry_log = next((wd / ".snakemake" / "slurm_logs" / "rule_train").glob(f"*/{ids[-1]}.log")).read_text()
    assert info["resumed_from_epoch"] is not None, (log[-3000:], retry_log[-3000:])
    assert info["epochs_run"] == 2000 and 0 <= info["resumed_from_epoch"] < 2000, info
    print(f"first attempt ran {first.get('RunTime')} (limit {first.get('TimeLimit')}, USR1@{signal_s}); the retry "
          f"resumed after epoch {info['resumed_from_epoch']} and ran {last.get('RunTime')}")
    assert not (wd / "results" / "checkpoints" / "unet" / "fold0.pt").exists()


def test_plan_refuses_what_the_cluster_cannot_run(workflow: Path, slurm: dict[str, str]) -> None:
    """`cohortseg plan` against the test cluster: a missing partition, a group job larger than the node,
    a wall time over the partition's limit and a misspelt resource are errors before anything is
    submitted; the plan that fits passes."""
    env = {**os.environ, **slurm, "PYTHONPATH": str(workflow), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def plan(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cohortseg.cli", "plan", "--", "--configfile", "tests/config/tiny.yaml",
                               "--profile", "profiles/slurm", *extra], cwd=workflow, env=env, capture_output=True, text=True,
                              timeout=600)

    # 10 shards per group job: the tiny cohort's shards in one job, more CPUs than the node has (the group
    # options first: set-resources takes every value after it, and replaces the profile's whole set-resources)
    bad = plan("--groups", "prepare=prep", "--group-components", "prep=10",
               "--set-resources", "train:slurm_partition='a100'", "infer_fold:slurm_partition='gpu'",
               "infer_fold:runtime=600", "metrics:slurm_partiton='cpu'")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    err = bad.stderr
    assert re.search(r"rule train \(model=\w+, fold=0\): partition 'a100' does not exist \(sinfo lists: cpu, gpu\)", err), err
    assert re.search(r"group job prep \(\d+ jobs\): asks for \d+ CPUs, the largest node of partition 'cpu' has 2", err), err
    assert "runtime 600 min exceeds partition 'gpu''s limit of 240 min" in err, err
    assert "resource 'slurm_partiton' is unknown to the slurm executor" in err, err
    # 2 shards per group job fit the 2-CPU node (and a dry run with several group jobs of one group ends)
    good = plan("--groups", "prepare=prep", "--group-components", "prep=2")
    assert good.returncode == 0, good.stderr[-3000:]
    assert "prepare" in good.stdout


def test_plan_lists_jobs_and_resources(workflow: Path, tmp_path: Path) -> None:
    """`cohortseg plan` with the slurm profile: every job after the checkpoints, per rule, with the
    GPU partition for training and inference, and the rule graph / DAG rendered."""

    env = {**os.environ, "PYTHONPATH": str(workflow), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "cohortseg.cli", "plan", "--graphs", str(tmp_path), "--",
                           "--configfile", "tests/config/tiny.yaml", "--profile", "profiles/slurm"],
                          cwd=workflow, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    header = lines[0]
    rows = {r[0]: dict(zip(header, r)) for r in lines[1:] if r[0].isidentifier() and len(r) >= header.index("slurm_partition") + 1}
    included = len(pd.read_csv(workflow / "results" / "cohort" / "included.tsv", sep="\t"))
    assert {"prepare", "train"} <= rows.keys(), proc.stdout
    assert int(rows["prepare"]["jobs"]) == len(shard_list(workflow)) <= included and int(rows["train"]["jobs"]) == 4, proc.stdout
    assert rows["train"]["slurm_partition"] == "gpu" and rows["train"].get("gpu") == "1", proc.stdout
    assert rows["prepare"]["slurm_partition"] == "cpu" and "gpu" not in rows["prepare"], proc.stdout
    assert {"ensemble", "infer_ensemble", "metrics", "provenance"} <= rows.keys(), proc.stdout
    assert (tmp_path / "dag.dot").read_text().count("->") > 20
    if not shutil.which("dot"):
        skip_or_fail("graphviz's dot is not installed: the rule graph and DAG are not rendered")
    assert (tmp_path / "rulegraph.svg").stat().st_size > 1000


# what the test copies into the workflow folder (code, configs) and its inputs: everything else it writes
NOT_OUTPUTS = {"Snakefile", "rules", "scripts", "config", "envs", "profiles", "report", "cohortseg", "tests", "data",
               "private"}


def test_no_identifier_anywhere(workflow: Path, tiny_cohort: Path) -> None:
    """Privacy canary, after the full workflow, its report, the export, the reproducibility audit and the
    plan: no marker of any identifying field, free-text or private tag, no birth or study date (the cohort
    types names, ids and dates into series descriptions), reaches a path or a byte of any folder the
    workflow writes outside private_dir (results/, logs/, .snakemake/, repro/, ...), with gzip members,
    zip members and the report's base64 data URIs decoded; nor a SLURM job name, comment or log path."""
    from .canary import scan

    canaries = phi_canaries(tiny_cohort)
    assert len(canaries) > len(PHI_FIELDS) + 8
    # the cohort really carries every marker, and types identifiers into its series descriptions
    names = "\n".join(str(p) for p in (tiny_cohort / "dicom").rglob("*"))
    assert f"{MARKER}DIR" in names and f"{MARKER}FILE" in names
    assert (workflow / "results" / "report.html").stat().st_size > 100_000
    if not (workflow / "results" / "plan").exists():
        env = {**os.environ, "PYTHONPATH": str(workflow), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "cohortseg.cli", "plan", "--graphs", "results/plan", "--",
                        "--configfile", "tests/config/tiny.yaml"], cwd=workflow, env=env, check=True,
                       capture_output=True, timeout=600)
    if not (workflow / "repro").exists():  # run alone (-k): a short audit of its own
        smk(workflow, "repro", "--config", "repro={stages: [metrics]}")
    # the audit trees' own private folders are private_dirs (mode 700), like the main run's
    tree_privates = [p for d in workflow.glob("repro*") for p in d.rglob("private") if p.is_dir()]
    assert tree_privates and all(p.stat().st_mode & 0o077 == 0 for p in tree_privates)
    roots = [p for p in sorted(workflow.iterdir()) if p.name not in NOT_OUTPUTS]
    result = scan(roots, workflow, canaries, skip=lambda rel: rel.startswith("repro") and "private" in rel.split("/"))
    scanned = result.files
    kinds: dict[str, int] = {}
    for label in result.decoded:
        kind = label.split(" > ")[-1].split(":")[0].split("#")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"canary: {len(scanned)} files under {', '.join(p.name for p in roots)}; decoded blobs by layer: {kinds}")
    print("decoded data URIs of the report:", [d for d in result.decoded if d.startswith("results/report.html")][:40])
    for text in slurm_submissions(workflow):
        result.hits += [f"{field} in a SLURM submission: {text[:120]}" for c, field in canaries.items() if c in text]
    assert kinds.get("data-uri", 0) >= 10 and kinds.get("gzip", 0) > 50 and kinds.get("zip", 0) > 10, kinds
    assert any(f.startswith("repro/") for f in scanned) and any(f.startswith("results/plan/") for f in scanned)
    assert not result.hits, result.hits[:10]
    # the private area exists, outside results/, readable only by its owner, and holds what was cleaned
    priv = workflow / "private"
    for f in priv.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f"{f} is readable by others"
    assert f"{MARKER}ID" in (priv / "id_map.tsv").read_text()
    assert f"{MARKER}NAME" in (priv / "descriptors.json").read_text(), "the raw descriptions are kept for a reviewer"


def test_lint_is_clean() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", "config/demo.yaml"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations" in out, out[-5000:]
