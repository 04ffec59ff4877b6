"""The reproducibility audit's parts: ICC(3,1) against Shrout & Fleiss (1979), test-retest SD ratios,
the comparison that ignores wall-clock fields only, the size of a difference, and the refusals
(K < 2, an unknown stage, existing output trees). The audit of a whole run:
tests/test_e2e.py::test_repro_audit_of_the_tiny_workflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohortseg.config import ConfigError, load
from cohortseg.repro import Config, Outputs, ReproError, canonical, difference, icc_3_1, metric_variability, plan, run
from cohortseg.repro import stage_range, waves

from .conftest import REPO

REPO_TINY = REPO / "tests" / "config" / "tiny.yaml"

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(3,1) = 0.71
SF = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float)


def test_icc_3_1_matches_shrout_fleiss() -> None:
    assert icc_3_1(SF) == pytest.approx(0.7148, abs=1e-4)
    assert icc_3_1(np.repeat(SF[:, :1], 3, axis=1)) == 1.0


def test_metric_variability_and_alert(tmp_path: Path) -> None:
    trees = []
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, size=8)
    for i, noise in enumerate([0.0, 0.0, 0.05]):
        t = tmp_path / f"e{i}"
        (t / "results" / "metrics").mkdir(parents=True)
        dice = base + (rng.normal(0, noise, size=8) if noise else 0)
        pd.DataFrame({"model": "ensemble", "subject": [f"s{j}" for j in range(8)], "label": "lesion", "status": "ok",
                      "dice": dice, "hd95": 2.0 * base}).to_csv(t / "results" / "metrics" / "cases.tsv", sep="\t", index=False)
        trees.append(t)
    same = metric_variability(trees[:2], 0.1).set_index("metric")
    assert same.loc["dice", "inter_execution_sd"] == 0 and same.loc["dice", "icc_3_1"] == 1.0
    assert not same["alert"].any()
    noisy = metric_variability(trees, 0.1).set_index("metric")
    assert noisy.loc["dice", "sd_ratio"] > 0.1 and noisy.loc["dice", "alert"]
    assert noisy.loc["dice", "icc_3_1"] < 1.0 and not noisy.loc["hd95", "alert"]
    # three identical executions: SD exactly 0 (around their computed mean, three 0.7s vary by 1.8e-32)
    for t in trees:
        pd.DataFrame({"model": "ensemble", "subject": ["s0", "s1"], "label": "lesion", "status": "ok",
                      "dice": [0.7, 0.1 + 0.2]}).to_csv(t / "results" / "metrics" / "cases.tsv", sep="\t", index=False)
    assert metric_variability(trees, 0.1).set_index("metric").loc["dice", "inter_execution_sd"] == 0


def test_wall_clock_fields_are_left_out_of_the_comparison(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"fold": 0, "seconds": 1.5, "config": {"resources": {"train_threads": 1}}, "dice": 0.8}))
    b.write_text(json.dumps({"fold": 0, "seconds": 9.1, "config": {"resources": {"train_threads": 2}}, "dice": 0.8}))
    assert canonical(a) == canonical(b) and canonical(a)[1] is True
    b.write_text(json.dumps({"fold": 0, "seconds": 9.1, "config": {"resources": {"train_threads": 2}}, "dice": 0.81}))
    assert canonical(a)[0] != canonical(b)[0]
    t1, t2 = tmp_path / "h1.tsv", tmp_path / "h2.tsv"
    t1.write_text("epoch\tloss\tseconds\n0\t0.5\t1.0\n")
    t2.write_text("epoch\tloss\tseconds\n0\t0.5\t2.0\n")
    assert canonical(t1) == canonical(t2)
    assert difference(t1, t2) == {"max_abs_diff": 0.0}


def test_difference_of_segmentations(tmp_path: Path) -> None:
    x = np.zeros((10, 10, 10), np.uint8)
    x[2:6, 2:6, 2:6] = 1
    y = x.copy()
    y[2:6, 2:6, 5] = 0
    nib.save(nib.Nifti1Image(x, np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(y, np.eye(4)), tmp_path / "b.nii.gz")
    d = difference(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    assert d["max_abs_diff"] == 1.0 and d["dice"] == pytest.approx(2 * 48 / (64 + 48))


def _cfg(**repro: object) -> Config:
    return Config.from_config(load(None, {"repro": repro}))


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="minimum"):
        _cfg(runs=1)
    with pytest.raises(ConfigError, match="is not one of"):
        _cfg(stages=["train", "segment"])
    cfg = _cfg(stages=["split", "infer"], threads=[1, 2, 4])
    assert stage_range(cfg) == ["split", "prepare", "plans", "preprocess", "train", "ensemble", "infer"]
    assert plan(cfg) == [("exec1-t1", 1), ("exec2-t1", 1), ("exec3-t2", 2), ("exec4-t4", 4)]
    # the schema refuses these; the audit refuses them again when handed a config built otherwise
    with pytest.raises(ReproError, match=">= 2"):
        plan(dataclasses.replace(cfg, repro=dataclasses.replace(cfg.repro, runs=1)))
    with pytest.raises(ReproError, match="unknown stage"):
        plan(dataclasses.replace(cfg, repro=dataclasses.replace(cfg.repro, stages=("nope",))))


def test_executions_run_side_by_side_within_the_jobs_cores() -> None:
    """Executions start together while their threads fit in the repro job's cores, in plan order; one
    with more threads than the job has runs alone."""
    assert waves([1, 1, 2], 2) == [[0, 1], [2]]
    assert waves([1, 1, 1], 2) == [[0, 1], [2]]
    assert waves([2, 2, 4], 4) == [[0, 1], [2]]
    assert waves([1, 4, 1], 2) == [[0], [1], [2]]
    assert waves([1, 1], 1) == [[0], [1]]


def test_executions_that_train_run_one_at_a_time_with_all_cores(tmp_path: Path) -> None:
    """The audit's scheduling: two 1-thread executions share the 2 cores (each with 1) except in a stage
    that trains, where each runs alone with both; the 2-thread execution always runs alone."""
    import threading
    import time

    from cohortseg.repro import Audit

    audit = Audit({"deterministic": True}, tmp_path, tmp_path, [("a", 1), ("b", 1), ("c", 2)], tmp_path, 2, False)
    running, calls, lock = [], [], threading.Lock()

    def run_one(k: int, cores: int) -> Path:
        with lock:
            running.append(k)
            calls.append((k, cores, sorted(running)))
        time.sleep(0.2)
        with lock:
            running.remove(k)
        return tmp_path / str(k)

    assert audit.side_by_side(run_one, ["infer"]) == [tmp_path / "0", tmp_path / "1", tmp_path / "2"]
    assert sorted((k, c) for k, c, _ in calls) == [(0, 1), (1, 1), (2, 2)]
    assert any(together == [0, 1] for _, _, together in calls) and calls[-1] == (2, 2, [2])
    calls.clear()
    audit.side_by_side(run_one, ["train"])
    assert calls == [(0, 2, [0]), (1, 2, [1]), (2, 2, [2])]


def test_existing_trees_are_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = _cfg()
    (tmp_path / "repro" / "exec1-t1").mkdir(parents=True)
    (tmp_path / "results").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = Outputs.default(tmp_path / "results" / "repro")
    with pytest.raises(ReproError, match="already exist"):
        run(cfg, tmp_path, out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    with pytest.raises(ReproError, match="folder of its own"):
        run(dataclasses.replace(cfg, repro=dataclasses.replace(cfg.repro, dir="results/audit")), tmp_path, out)


def test_index_select_split_are_bitwise_identical_across_runs_and_threads(tmp_path: Path, tiny_cohort: Path) -> None:
    """The audit's first stages, in-process: two runs with 1 worker and one with 2 write the same bytes."""
    import os

    from cohortseg import index, select, split
    from cohortseg.provenance import sha256_file

    key = tmp_path / "key"
    key.write_text("ab" * 32 + "\n")
    digests = []
    for i, workers in enumerate([1, 1, 2]):
        d = tmp_path / f"run{i}"
        (d / "private").mkdir(parents=True, mode=0o700)
        (d / "private" / "key").write_bytes(key.read_bytes())
        os.chmod(d / "private" / "key", 0o600)
        cfg = load(REPO_TINY, {"dicom_dir": str(tiny_cohort / "dicom"), "masks": {"dir": str(tiny_cohort / "masks")},
                               "private_dir": str(d / "private"), "index": {"threads": workers}})
        c = d / "results" / "cohort"
        index.run(index.Config.from_config(cfg), index.Outputs.default(d / "results", d / "private"), workers=workers)
        select.run(select.Config.from_config(cfg), c / "series.tsv", c / "subjects.tsv", c / "included.tsv",
                   c / "excluded.tsv", c / "exclusion_summary.tsv", c / "summary.txt")
        split.run(split.Config.from_config(cfg), c / "included.tsv", d / "results" / "splits.json")
        files = sorted(p for p in (d / "results").rglob("*") if p.is_file())
        digests.append({str(p.relative_to(d)): sha256_file(p) for p in files})
    assert len(digests[0]) == 7 and digests[0] == digests[1] == digests[2]


def test_until_names_only_a_stages_final_rules() -> None:
    """--until stops at the first rule it names: a stage whose rules feed each other names only its last ones
    (the demo's audit stopped after plan_dataset before this)."""
    from cohortseg.repro import STAGES, until_rules

    assert until_rules("plans") == ["plans"] and until_rules("study") == ["infer_study", "infer_external"]
    assert until_rules("infer") == STAGES["infer"][0]
    assert all(set(until_rules(s)) <= set(STAGES[s][0]) for s in STAGES)
