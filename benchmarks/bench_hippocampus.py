"""Quality on real data: one fold of MSD Hippocampus (../shared/data/hippocampus, 208 cases) with the
CPU-sized config (config/hippocampus.yaml), timed, and its validation Dice per label.

Runs the stages as the workflow does, through ``cohortseg <stage>`` in a scratch folder (the data are
read in place): index + checks, select, prepare (every shard), split, train fold 0. Prints key=value
lines: stage times, the fold's best validation Dice per label (anterior, posterior) and their mean,
the epoch it was reached and the training wall time. Target (issue 5): training <= 30 min on 2 cores
and mean foreground Dice >= 0.80.

The nnU-Net v2 side of the comparison (the same split and CPU-time budget) runs only where ``nnunetv2``
imports; on this project's CPU machines it does not (its timm dependency pulls a torchvision build that
fails beside CPU torch), and the script says so instead of printing a number.
Usage: .venv/bin/python benchmarks/bench_hippocampus.py [--epochs N] [--work DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COHORTSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "hippocampus"


def stage(work: Path, cfg: Path, overrides: dict, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cohortseg.cli", *args, "-c", str(cfg), "--set", json.dumps(overrides)],
                   cwd=work, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing (see ../shared/README.md)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_hippocampus_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = REPO / "config" / "hippocampus.yaml"
    over: dict = {"nifti": {"images": str(DATA / "imagesTr"), "labels": str(DATA / "labelsTr")}}
    if args.epochs:
        over["train"] = {"epochs": args.epochs}
    times = {"index": stage(work, cfg, over, "index"), "select": stage(work, cfg, over, "select")}
    import pandas as pd

    from cohortseg.config import load
    from cohortseg.prepare import shards

    conf = load(cfg, over)
    inc = pd.read_csv(work / "results" / "cohort" / "included.tsv", sep="\t")
    t0 = time.perf_counter()
    for sh in sorted(shards(list(inc["subject"]), conf["pseudonym"]["prefix"], conf["prepare"]["shard_digits"])):
        stage(work, cfg, over, "prepare", "--shard", sh, "--threads", str(args.threads))
    times["prepare"] = time.perf_counter() - t0
    times["split"] = stage(work, cfg, over, "split")
    times["train_fold0"] = stage(work, cfg, over, "train", "0", "--threads", str(args.threads))
    hist = pd.read_csv(work / "results" / "models" / "fold0" / "history.tsv", sep="\t")
    best = hist.loc[hist["val_dice"].idxmax()]
    splits = json.loads((work / "results" / "splits.json").read_text())
    print(f"cases={len(inc)} train={len(splits['folds'][0]['train'])} val={len(splits['folds'][0]['val'])} "
          f"test={len(splits['test'])}")
    for k, v in times.items():
        print(f"{k}_s={v:.1f}")
    print(f"epochs_run={len(hist)} best_epoch={int(best['epoch'])} seconds_per_epoch={hist['seconds'].mean():.2f}")
    for name in conf["labels"]:
        print(f"val_dice_{name}={best[f'val_dice_{name}']:.4f}")
    if importlib.util.find_spec("nnunetv2") is None:
        print("nnunet=not_run (nnunetv2 not importable here; see the docstring)")
    print(f"workdir={work}")
    print(f"val_dice_mean={best['val_dice']:.4f}")


if __name__ == "__main__":
    main()
