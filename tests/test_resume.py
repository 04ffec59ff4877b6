"""Training survives being stopped: SIGUSR1 (what SLURM sends before the time limit) stops it at a batch
boundary with exit code 75 and the last epoch's checkpoint on disk; a rerun resumes from it and, in
deterministic mode, ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import REPO

SET = {"split": {"folds": 2, "test_fraction": 0.0}, "train": {"epochs": 10, "patience": 50}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_cohort):
    """Index, select, split, prepare, plan and preprocess the tiny cohort once, with the CLI."""
    wd = tmp_path_factory.mktemp("resume")
    (wd / "data").mkdir()
    (wd / "data" / "tiny").symlink_to(tiny_cohort)
    cfg = str(REPO / "tests" / "config" / "tiny.yaml")
    run = lambda *a: subprocess.run([sys.executable, "-m", "cohortseg.cli", *a, "-c", cfg, "--set", json.dumps(SET)],  # noqa: E731
                                    cwd=wd, check=True, capture_output=True, text=True)
    run("index")
    run("select")
    run("split")
    splits = json.loads((wd / "results" / "splits.json").read_text())
    subjects = splits["folds"][0]["train"] + splits["folds"][0]["val"]
    run("prepare", *subjects)
    run("plans")
    run("preprocess", *subjects)
    return wd, cfg


def _train(wd: Path, cfg: str, out: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cohortseg.cli", "train", "0", "-c", cfg, "--set", json.dumps(SET),
                             "--model-name", "unet",
                             "--out", out, "--checkpoints", f"{out}-ckpt"], cwd=wd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_interrupted_training_resumes_to_identical_weights(prepared):
    wd, cfg = prepared
    ref = _train(wd, cfg, "ref")
    assert ref.wait(timeout=600) == 0, ref.stdout.read()

    proc = _train(wd, cfg, "cut")
    ckpt = wd / "cut-ckpt" / "unet" / "fold0.pt"
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() - t0 < 300
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=300) == 75, proc.stdout.read()
    assert ckpt.exists() and not (wd / "cut" / "unet" / "fold0" / "model.pt").exists()
    stopped_after = torch.load(ckpt, weights_only=True)["epoch"]
    assert stopped_after < SET["train"]["epochs"] - 1

    again = _train(wd, cfg, "cut")
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert f"resuming after epoch {stopped_after}" in out
    info = json.loads((wd / "cut" / "unet" / "fold0" / "train.json").read_text())
    assert info["resumed_from_epoch"] == stopped_after and info["epochs_run"] == SET["train"]["epochs"]

    a = torch.load(wd / "ref" / "unet" / "fold0" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(wd / "cut" / "unet" / "fold0" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert not ckpt.exists()


def test_checkpoint_of_another_config_is_ignored(prepared, tmp_path):
    from cohortseg.config import load
    from cohortseg.train import Config, fingerprint

    splits = json.loads((prepared[0] / "results" / "splits.json").read_text())
    c1 = Config.from_config(load(prepared[1], SET))
    c2 = Config.from_config(load(prepared[1], {**SET, "train": {**SET["train"], "lr": 0.01}}))
    assert fingerprint(c1, 0, splits, "x") != fingerprint(c2, 0, splits, "x")
    assert fingerprint(c1, 0, splits, "x") != fingerprint(c1, 0, splits, "y"), "code changes invalidate checkpoints"
