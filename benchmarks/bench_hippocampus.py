"""Quality on real data: one fold of MSD Hippocampus (../shared/data/hippocampus, 208 cases) with the
CPU-sized config (config/hippocampus.yaml), timed, and its validation Dice per label.

Runs the stages as the workflow does, through ``cohortseg <stage>`` in a scratch folder (the data are
read in place): index + checks, select, prepare (every shard), split, train fold 0. Prints key=value
lines: stage times, the fold's best validation Dice per label (anterior, posterior) and their mean,
the epoch it was reached and the training wall time. Target (issue 5): training <= 30 min on 2 cores
and mean foreground Dice >= 0.80.

nnU-Net v2 side (the baseline, same run): the same cases, the same fold-0 train/validation split
(written as nnU-Net's splits_final.json) and the same training wall time on the same cores as
cohortseg's fold 0 took. nnU-Net runs in its own environment, ``.venv-nnunet`` (``make nnunet-env``:
nnunetv2 2.8.1 with the project's CPU torch; torchvision is removed because the only build reachable here
is a CUDA one that fails to import beside CPU torch, and nnU-Net's 3d_fullres training does not import
it). Its standard pipeline: ``nnUNetv2_plan_and_preprocess`` (3d_fullres), then ``nnUNetTrainer`` on the
CPU with epochs of 50 iterations (10 validation iterations) and as many epochs as fit the budget: the
first epoch is timed and the epoch count (and with it the poly learning-rate schedule) is set from it, so
the schedule decays fully within the budget. Then nnU-Net's own validation (sliding window with mirroring,
Dice per label in the original space of the validation cases). Printed: nnU-Net's Dice per label and mean,
and ``dice_ratio`` = cohortseg mean / nnU-Net mean. cohortseg's figure is its best epoch's validation Dice
(per-case mean on the preprocessed grid); nnU-Net's is its final weights' validation Dice.
Without ``.venv-nnunet`` (or with ``--no-nnunet``) the comparison is skipped and said so.
Usage: .venv/bin/python benchmarks/bench_hippocampus.py [--epochs N] [--work DIR] [--threads 2] [--no-nnunet]
       (--work DIR --reuse: cohortseg's side from an earlier run in DIR, nnU-Net's run again)
"""

from __future__ import annotations

import argparse
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


NNUNET_DRIVER = r"""
import json, sys, time
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

pre, budget, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)


class BudgetTrainer(nnUNetTrainer):
    # nnU-Net's trainer, its epochs shortened to 50 iterations and their number fitted to a wall-time budget
    # nnUNetTrainer.__init__ records its own arguments by name from locals(): same signature, no *args
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 10
        self.num_epochs = 1000

    def run_training(self):
        self.on_train_start()
        t0 = time.perf_counter()
        epoch = self.current_epoch
        while epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                vals = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(vals)
            self.on_epoch_end()
            epoch += 1
            if epoch == 1:
                first = time.perf_counter() - t0
                self.num_epochs = max(1, int(budget // first))
                self.lr_scheduler.max_steps = self.num_epochs
                print(f"nnU-Net: first epoch {first:.1f} s -> {self.num_epochs} epochs in {budget:.0f} s", flush=True)
        self.on_train_end()
        return time.perf_counter() - t0


plans = load_json(f"{pre}/nnUNetPlans.json")
plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args sets
dataset = load_json(f"{pre}/dataset.json")
trainer = BudgetTrainer(plans, "3d_fullres", 0, dataset, device=torch.device("cpu"))
seconds = trainer.run_training()
trainer.perform_actual_validation(False)
summary = load_json(f"{trainer.output_folder}/validation/summary.json")
print("NNUNET_RESULT " + json.dumps({"train_s": seconds, "epochs": trainer.num_epochs,
                                     "per_label": {k: v["Dice"] for k, v in summary["mean"].items()},
                                     "mean": summary["foreground_mean"]["Dice"]}), flush=True)
"""


def run_nnunet(work: Path, python: Path, labels: list[str], id_map: dict[str, str], fold: dict, cases: list[str],
               budget: float, threads: int) -> dict:
    """nnU-Net v2 on the same cases and fold-0 split, training for ``budget`` seconds of wall time."""
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    ds = raw / "Dataset004_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    for subject in cases:
        name = id_map[subject]
        for src, dst in ((DATA / "imagesTr" / f"{name}.nii.gz", ds / "imagesTr" / f"{name}_0000.nii.gz"),
                         (DATA / "labelsTr" / f"{name}.nii.gz", ds / "labelsTr" / f"{name}.nii.gz")):
            if not dst.exists():
                dst.symlink_to(src)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(labels)}},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": str(threads)}
    bindir = python.parent
    t0 = time.perf_counter()
    subprocess.run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", str(threads)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    prep_s = time.perf_counter() - t0
    split = [{"train": [id_map[s] for s in fold["train"]], "val": [id_map[s] for s in fold["val"]]}]
    (pre / "Dataset004_Hippocampus" / "splits_final.json").write_text(json.dumps(split))
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-c", NNUNET_DRIVER, str(pre / "Dataset004_Hippocampus"), str(budget), str(threads)],
                          env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("NNUNET_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"nnU-Net failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(line.split(" ", 1)[1])
    return {**out, "preprocess_s": prep_s, "train_and_validation_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net baseline")
    ap.add_argument("--nnunet-python", default=str(REPO / ".venv-nnunet" / "bin" / "python"))
    ap.add_argument("--reuse", action="store_true",
                    help="take cohortseg's side from an earlier run in --work (its times and history) and run nnU-Net")
    ap.add_argument("--nnunet-budget", type=float, default=None,
                    help="nnU-Net training seconds (default: cohortseg's fold-0 training time; smaller for a smoke test)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing (see ../shared/README.md)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_hippocampus_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = REPO / "config" / "hippocampus.yaml"
    over: dict = {"nifti": {"images": str(DATA / "imagesTr"), "labels": str(DATA / "labelsTr")}}
    if args.epochs:
        over["train"] = {"epochs": args.epochs}
    import pandas as pd

    from cohortseg.config import load
    from cohortseg.prepare import shards

    conf = load(cfg, over)
    times_file = work / "bench_times.json"
    if args.reuse:
        if not times_file.exists():
            sys.exit(f"--reuse: {times_file} is missing (run once without --reuse)")
        times = json.loads(times_file.read_text())
        inc = pd.read_csv(work / "results" / "cohort" / "included.tsv", sep="\t")
    else:
        times = {"index": stage(work, cfg, over, "index"), "select": stage(work, cfg, over, "select")}
        inc = pd.read_csv(work / "results" / "cohort" / "included.tsv", sep="\t")
        t0 = time.perf_counter()
        for sh in sorted(shards(list(inc["subject"]), conf["pseudonym"]["prefix"], conf["prepare"]["shard_digits"])):
            stage(work, cfg, over, "prepare", "--shard", sh, "--threads", str(args.threads))
        times["prepare"] = time.perf_counter() - t0
        times["split"] = stage(work, cfg, over, "split")
        times["train_fold0"] = stage(work, cfg, over, "train", "0", "--threads", str(args.threads))
        times_file.write_text(json.dumps(times))
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
    ours = float(best["val_dice"])
    nn_python = Path(args.nnunet_python)
    if args.no_nnunet or not nn_python.exists():
        print(f"nnunet=not_run ({'--no-nnunet' if args.no_nnunet else f'{nn_python} missing: make nnunet-env'})")
        print(f"workdir={work}")
        print(f"val_dice_mean={ours:.4f}")
        return
    rows = (work / "private" / "id_map.tsv").read_text().splitlines()[1:]  # subject -> case name (MSD file stem)
    id_map = dict(line.split("\t") for line in rows if line)
    nn = run_nnunet(work, nn_python, list(conf["labels"]), id_map, splits["folds"][0], list(inc["subject"]),
                    args.nnunet_budget or times["train_fold0"], args.threads)
    print(f"nnunet_preprocess_s={nn['preprocess_s']:.1f} nnunet_train_s={nn['train_s']:.1f} "
          f"nnunet_epochs={nn['epochs']} nnunet_train_and_validation_s={nn['train_and_validation_s']:.1f}")
    for i, name in enumerate(conf["labels"], start=1):
        print(f"nnunet_val_dice_{name}={nn['per_label'][str(i)]:.4f}")
    print(f"nnunet_val_dice_mean={nn['mean']:.4f}")
    print(f"workdir={work}")
    print(f"val_dice_mean={ours:.4f}")
    print(f"dice_ratio={ours / nn['mean']:.3f}" if nn["mean"] > 0 else "dice_ratio=inf (nnU-Net's Dice is 0)")


if __name__ == "__main__":
    main()
