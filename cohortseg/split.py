"""Seeded k-fold split with a held-out test set, persisted as ``splits.json``.

The split is a pure function of (seed, sorted labelled subjects, folds, test fraction), so it is
reproduced exactly on a rerun; ``split.file`` pins an existing split instead (its subjects must
be exactly the labelled subjects of the cohort, so a grown cohort is never split silently anew).
Subjects without a mask are listed as ``unlabelled``: the ensemble predicts them, nothing trains
or is scored on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .settings import SplitSettings, StageConfig
from .util import is_true, log, read_rows, write_json


@dataclass(frozen=True)
class Config(StageConfig):
    split: SplitSettings
    seed: int


def make_split(subjects: list[str], folds: int, test_fraction: float, seed: int) -> dict[str, Any]:
    subjects = sorted(subjects)
    n = len(subjects)
    n_test = int(round(n * test_fraction))
    if n - n_test < folds:
        raise ValueError(f"{n} labelled subjects leave {n - n_test} for {folds} folds; need at least one per fold")
    rng = np.random.default_rng(seed)
    order = [subjects[i] for i in rng.permutation(n)]
    test, rest = sorted(order[:n_test]), order[n_test:]
    chunks = [sorted(rest[i::folds]) for i in range(folds)]
    out = {"seed": seed, "n_folds": folds, "test_fraction": test_fraction, "test": test, "folds": []}
    for k in range(folds):
        train = sorted(s for j, c in enumerate(chunks) if j != k for s in c)
        out["folds"].append({"train": train, "val": chunks[k]})
    return out


def check_split(split: dict[str, Any], labelled: list[str], folds: int) -> None:
    if len(split["folds"]) != folds:
        raise ValueError(f"split file has {len(split['folds'])} folds, config asks for {folds}")
    in_split = set(split["test"]) | {s for f in split["folds"] for s in f["val"]}
    missing, extra = sorted(set(labelled) - in_split), sorted(in_split - set(labelled))
    if missing or extra:
        raise ValueError(f"split file does not match the cohort: new subjects {missing}, unknown subjects {extra}")
    for k, f in enumerate(split["folds"]):
        if set(f["train"]) & set(f["val"]) or set(f["val"]) & set(split["test"]):
            raise ValueError(f"split file fold {k} overlaps between train/val/test")


def run(config: Config, included_tsv: str | Path, out: str | Path) -> dict[str, Any]:
    rows = read_rows(included_tsv)
    labelled = sorted(r["subject"] for r in rows if is_true(r["has_mask"]))
    unlabelled = sorted(r["subject"] for r in rows if not is_true(r["has_mask"]))
    sc = config.split
    if sc.file:
        split = json.loads(Path(sc.file).read_text())
        check_split(split, labelled, sc.folds)
        log.info("reusing split %s", sc.file)
    else:
        split = make_split(labelled, sc.folds, sc.test_fraction, config.seed)
    split["unlabelled"] = unlabelled
    write_json(out, split)
    log.info("split: %d test, %d folds of %s validation subjects, %d unlabelled", len(split["test"]), len(split["folds"]),
             [len(f["val"]) for f in split["folds"]], len(unlabelled))
    return split
