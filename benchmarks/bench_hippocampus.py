"""Quality on real data, measured as the field measures it: cohortseg against nnU-Net v2 on the 208 MSD
Hippocampus cases (../shared/data/hippocampus), one wall-clock budget B for both, the split's test subjects
scored once, in their original space, by the same code.

- The split: cohortseg's (config/hippocampus.yaml, its study key in the work folder): fold 0's training and
  validation subjects, and the held-out test subjects. The test subjects are held out from both tools'
  training, planning and every choice.
- cohortseg: the stages a user runs (``cohortseg index, select, split, prepare, plans, preprocess, train``),
  auto-configured (the config sets no spacing, size, normalisation or batch: the plan does), fold 0 of the
  config's model family with ``train.max_minutes = B`` (epochs fitted to B after the first, cosine schedule
  completing in B), its epoch chosen on fold 0's validation subjects only; then ``cohortseg infer --images``
  of the test subjects.
- nnU-Net v2 (``make nnunet-env``; torchvision removed, see the Makefile): the non-test cases as its raw
  dataset, ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, fold 0 = the same train/validation subjects
  (splits_final.json), the standard ``nnUNetTrainer`` (250 training and 50 validation iterations an epoch),
  as many epochs as fit B at its first epoch's pace (at least one), its poly schedule fitted to them, final
  weights; ``nnUNetv2_predict`` of the test subjects (its standard sliding window with mirroring).
- Both tools' test predictions are scored by ``cohortseg.metrics.evaluate_case`` against the MSD label
  files, in each case's original grid.

Printed (key=value): the split sizes, every stage's seconds for both tools, the epochs each ran, Dice per
label and mean for both, ``reused`` (true: cohortseg's side comes from an earlier run in --work and the
figures are not a headline), and ``dice_ratio`` = cohortseg mean / nnU-Net mean last (target >= 1.0).

Usage: .venv/bin/python benchmarks/bench_hippocampus.py [--budget-min 32] [--work DIR] [--threads 2]
       [--no-nnunet] [--reuse]
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
MODEL = "unet"  # config/hippocampus.yaml's train.model: its one model


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
iterations = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # 0: the standard 250 (+ 50 validation) an epoch
torch.set_num_threads(threads)


class BudgetTrainer(nnUNetTrainer):
    # the standard trainer (250 + 50 iterations an epoch); the number of epochs fitted to the budget after
    # the first, and the poly schedule with it. nnUNetTrainer.__init__ records its arguments from locals().
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1000
        if iterations:  # a model only to time prediction with (bench_predict.py), never to score
            self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = iterations, 1

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
        self.on_train_end()  # writes checkpoint_final.pth
        return time.perf_counter() - t0


# its output folder and checkpoint carry the standard trainer's name, whose network it builds unchanged, so
# that nnUNetv2_predict finds the folder and rebuilds the network (it looks the trainer class up by name)
BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = "nnUNetTrainer"


plans = load_json(f"{pre}/nnUNetPlans.json")
plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args sets
dataset = load_json(f"{pre}/dataset.json")
trainer = BudgetTrainer(plans, "3d_fullres", 0, dataset, device=torch.device("cpu"))
seconds = trainer.run_training()
print("NNUNET_RESULT " + json.dumps({"train_s": seconds, "epochs": trainer.num_epochs,
                                     "iterations_per_epoch": trainer.num_iterations_per_epoch,
                                     "output": str(trainer.output_folder)}), flush=True)
"""


def link_cases(folder: Path, names: list[str], images: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = DATA / ("imagesTr" if images else "labelsTr") / f"{name}.nii.gz"
        dst = folder / (f"{name}_0000.nii.gz" if images else f"{name}.nii.gz")
        if not dst.exists():
            dst.symlink_to(src)


def add_nnunet_arguments(ap: argparse.ArgumentParser) -> None:
    """--work and --nnunet-python, as the benchmarks against nnU-Net take them."""
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one; must be empty)")
    ap.add_argument("--nnunet-python", default=str(REPO / ".venv-nnunet" / "bin" / "python"))


def nnunet_python_or_exit(python: str) -> Path:
    """The nnU-Net environment's interpreter, once the shared cases and it are there (else exit saying which
    is missing)."""
    if not DATA.exists():
        sys.exit(f"{DATA} is missing (see ../shared/README.md)")
    if not Path(python).exists():
        sys.exit(f"{python} is missing: make nnunet-env")
    return Path(python)


def nnunet_env(work: Path, threads: int) -> dict[str, str]:
    return {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": str(threads)}


def nnunet_raw_dataset(work: Path, labels: list[str], cases: list[str]) -> None:
    """Dataset004_Hippocampus in nnUNet_raw: links to ``cases`` (MSD names) and its dataset.json."""
    ds = work / "nnUNet_raw" / "Dataset004_Hippocampus"
    link_cases(ds / "imagesTr", cases, images=True)
    link_cases(ds / "labelsTr", cases, images=False)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(labels)}},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))


def nnunet_plan_and_preprocess(work: Path, python: Path, threads: int) -> float:
    """``nnUNetv2_plan_and_preprocess -c 3d_fullres`` with ``threads`` processes for the fingerprint and the
    preprocessing (its defaults are 8 of each); wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([str(python.parent / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres",
                    "-npfp", str(threads), "-np", str(threads)], check=True, env=nnunet_env(work, threads),
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def nnunet_train_fold0(work: Path, python: Path, fold: dict[str, list[str]], budget_s: float, threads: int,
                       iterations: int = 0) -> dict:
    """Fold 0 (``fold``: its train/val MSD names) by the standard trainer within ``budget_s`` (``iterations``:
    fewer iterations an epoch, for a model that only times prediction)."""
    pre = work / "nnUNet_preprocessed" / "Dataset004_Hippocampus"
    (pre / "splits_final.json").write_text(json.dumps([fold]))
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-c", NNUNET_DRIVER, str(pre), str(budget_s), str(threads), str(iterations)],
                          env=nnunet_env(work, threads), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("NNUNET_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"nnU-Net failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(line.split(" ", 1)[1]), "train_job": seconds}


def nnunet_predict(work: Path, python: Path, images: Path, out: Path, threads: int, *extra: str) -> float:
    """``nnUNetv2_predict -f 0`` of the images in ``images`` (one process each for pre- and post-processing);
    wall seconds, its start-up included."""
    t0 = time.perf_counter()
    subprocess.run([str(python.parent / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", "4", "-c",
                    "3d_fullres", "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1",
                    *extra], check=True, env=nnunet_env(work, threads), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_nnunet(work: Path, python: Path, labels: list[str], cv: list[str], fold: dict[str, list[str]],
               test: list[str], budget_s: float, threads: int) -> dict:
    """nnU-Net v2: plan and preprocess the cross-validation cases, train fold 0 for ``budget_s``, predict
    the test cases; names are MSD case names."""
    nnunet_raw_dataset(work, labels, cv)
    link_cases(work / "nnunet_test_images", test, images=True)
    times = {"plan_and_preprocess": nnunet_plan_and_preprocess(work, python, threads)}
    out = nnunet_train_fold0(work, python, fold, budget_s, threads)
    times["train_job"] = out.pop("train_job")
    times["predict"] = nnunet_predict(work, python, work / "nnunet_test_images", work / "nnunet_test_pred", threads)
    return {**out, "times": times, "predictions": {n: work / "nnunet_test_pred" / f"{n}.nii.gz" for n in test}}


def score(predictions: dict[str, Path], labels: list[str]) -> dict[str, float]:
    """Mean Dice per label over the test cases, each prediction against the MSD label file in its grid."""
    import numpy as np

    from cohortseg.metrics import Config, evaluate_case
    from cohortseg.config import load

    settings = Config.from_config(load(None, {"labels": labels})).metrics
    rows = [r for name, pred in predictions.items()
            for r in evaluate_case(pred, DATA / "labelsTr" / f"{name}.nii.gz", labels, settings)]
    per = {lab: float(np.mean([r["dice"] for r in rows if r["label"] == lab])) for lab in labels}
    return {**per, "mean": float(np.mean(list(per.values())))}


def run_cohortseg(work: Path, cfg: Path, over: dict, threads: int) -> dict[str, float]:
    import pandas as pd

    from cohortseg.config import load
    from cohortseg.prepare import shards

    conf = load(cfg, over)
    times = {"index": stage(work, cfg, over, "index"), "select": stage(work, cfg, over, "select"),
             "split": stage(work, cfg, over, "split")}
    inc = list(pd.read_csv(work / "results" / "cohort" / "included.tsv", sep="\t")["subject"])
    t0 = time.perf_counter()
    for sh in sorted(shards(inc, conf["pseudonym"]["prefix"], conf["prepare"]["subjects_per_job"])):
        stage(work, cfg, over, "prepare", "--shard", sh, "--threads", str(threads))
    times["prepare"] = time.perf_counter() - t0
    times["plans"] = stage(work, cfg, over, "plans")
    splits = json.loads((work / "results" / "splits.json").read_text())
    todo = splits["folds"][0]["train"] + splits["folds"][0]["val"] + splits["test"]
    times["preprocess"] = stage(work, cfg, over, "preprocess", *todo, "--threads", str(threads))
    times["train_fold0"] = stage(work, cfg, over, "train", "0", "--model-name", MODEL, "--threads", str(threads))
    (work / "test_images").mkdir(exist_ok=True)
    images = []
    for s in splits["test"]:  # named by subject: --images names each prediction after its file
        link = work / "test_images" / f"{s}.nii.gz"
        if not link.exists():
            link.symlink_to(work / "results" / "nifti" / s / "image.nii.gz")
        images.append(str(link))
    times["predict"] = stage(work, cfg, over, "infer", "--model", f"results/models/{MODEL}/fold0/model.pt",
                             "--images", *images, "--out-dir", "test_pred", "--threads", str(threads))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=32.0, help="training wall time B of both tools (minutes)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net baseline")
    ap.add_argument("--nnunet-python", default=str(REPO / ".venv-nnunet" / "bin" / "python"))
    ap.add_argument("--reuse", action="store_true", help="cohortseg's side from an earlier run in --work (never a headline)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing (see ../shared/README.md)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_hippocampus_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = REPO / "config" / "hippocampus.yaml"
    over = {"nifti": {"images": str(DATA / "imagesTr"), "labels": str(DATA / "labelsTr")},
            "train": {"max_minutes": args.budget_min}}
    times_file = work / "bench_times.json"
    if args.reuse:
        if not times_file.exists():
            sys.exit(f"--reuse: {times_file} is missing (run once without --reuse)")
        times = json.loads(times_file.read_text())
    else:
        times = run_cohortseg(work, cfg, over, args.threads)
        times_file.write_text(json.dumps(times))
    labels = ["anterior", "posterior"]
    splits = json.loads((work / "results" / "splits.json").read_text())
    ids = dict(line.split("\t") for line in (work / "private" / "id_map.tsv").read_text().splitlines()[1:] if line)
    test = {ids[s]: work / "test_pred" / f"{s}.nii.gz" for s in splits["test"]}  # MSD name -> prediction
    fold = {k: [ids[s] for s in splits["folds"][0][k]] for k in ("train", "val")}
    cv = sorted({ids[s] for f in splits["folds"] for s in f["train"] + f["val"]})
    info = json.loads((work / "results" / "models" / MODEL / "fold0" / "train.json").read_text())
    plans = json.loads((work / "results" / "plans" / "plans.json").read_text())
    print(f"reused={'true' if args.reuse else 'false'} budget_min={args.budget_min} threads={args.threads}")
    print(f"cases={len(ids)} train={len(fold['train'])} val={len(fold['val'])} test={len(test)}")
    print(f"plan_spacing={plans['dataset']['preprocess']['spacing']} plan_size={plans['dataset']['preprocess']['size']} "
          f"plan_normalisation={plans['dataset']['preprocess']['normalisation']} "
          f"plan_batch={plans['models'][MODEL]['batch_size']} plan_window={plans['models'][MODEL]['window']}")
    for k, v in times.items():
        print(f"cohortseg_{k}_s={v:.1f}")
    print(f"cohortseg_epochs={info['epochs_run']} cohortseg_best_epoch={info['best_epoch']} "
          f"cohortseg_val_dice_best_epoch={info['best_val_dice']:.4f}")
    ours = score(test, labels)
    for lab in labels:
        print(f"cohortseg_test_dice_{lab}={ours[lab]:.4f}")
    print(f"cohortseg_test_dice_mean={ours['mean']:.4f}")
    nn_python = Path(args.nnunet_python)
    if args.no_nnunet or not nn_python.exists():
        print(f"nnunet=not_run ({'--no-nnunet' if args.no_nnunet else f'{nn_python} missing: make nnunet-env'})")
        print(f"workdir={work}")
        return
    nn = run_nnunet(work, nn_python, labels, cv, fold, list(test), args.budget_min * 60, args.threads)
    for k, v in nn["times"].items():
        print(f"nnunet_{k}_s={v:.1f}")
    print(f"nnunet_train_s={nn['train_s']:.1f} nnunet_epochs={nn['epochs']} "
          f"nnunet_iterations_per_epoch={nn['iterations_per_epoch']}")
    theirs = score(nn["predictions"], labels)
    for lab in labels:
        print(f"nnunet_test_dice_{lab}={theirs[lab]:.4f}")
    print(f"nnunet_test_dice_mean={theirs['mean']:.4f}")
    print(f"workdir={work}")
    print(f"dice_ratio={ours['mean'] / theirs['mean']:.3f}" if theirs["mean"] > 0 else "dice_ratio=inf (nnU-Net's Dice is 0)")


if __name__ == "__main__":
    main()
