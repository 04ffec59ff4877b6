"""Prediction of new cases with one fold model: cohortseg against nnU-Net v2 on the MSD Hippocampus test
subjects (../shared/data/hippocampus), the same cores, in the same run.

- The cases: the held-out test subjects of cohortseg's split (config/hippocampus.yaml).
- The models: fold 0 of each tool, made in this run on the same fold-0 subjects, each trained only a
  little (cohortseg one epoch, nnU-Net one epoch of a few iterations): prediction time does not depend on how
  long a model trained, and neither model is scored here (bench_hippocampus.py measures quality).
- cohortseg: ``cohortseg infer --model <fold0 model.pt> --images <test images> --threads N``, the code the
  workflow's inference jobs run, as one job's process (interpreter, imports, the model loaded once, every
  case read, predicted by sliding window in the plan's space and written back in its source space).
- nnU-Net: ``nnUNetv2_predict -f 0 -chk checkpoint_final.pth -device cpu -npp 1 -nps 1`` (one worker each
  for pre- and post-processing beside the main process), torch on N threads.
- Both with 8-fold mirroring (nnU-Net's default, cohortseg's ``infer.tta_flip: true``) for the headline,
  and both without (cohortseg's default, nnU-Net's ``--disable_tta``) for reference; each prediction run in a
  fresh process, the tools interleaved.

Prints key=value lines: per case seconds of both tools with and without mirroring (each process's wall time,
start-up included, divided by the number of cases) and, last, the headline ``ratio`` = cohortseg / nnU-Net per
case with mirroring (target <= 1.0).
Usage: .venv/bin/python benchmarks/bench_predict.py [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from bench_hippocampus import (DATA, MODEL, add_nnunet_arguments, link_cases, nnunet_plan_and_preprocess,  # noqa: E402
                               nnunet_predict, nnunet_python_or_exit, nnunet_raw_dataset, nnunet_train_fold0, stage)

LABELS = ["anterior", "posterior"]
NNUNET_ITERATIONS = 5


def cohortseg_fold0(work: Path, cfg: Path, over: dict, threads: int) -> list[str]:
    """The stages up to fold 0's model (one epoch); the test subjects' converted images, named by subject."""
    for name in ("index", "select", "split"):
        stage(work, cfg, over, name)
    from cohortseg.config import load
    from cohortseg.prepare import shards
    from cohortseg.util import read_rows

    conf = load(cfg, over)
    included = [r["subject"] for r in read_rows(work / "results" / "cohort" / "included.tsv")]
    for sh in sorted(shards(included, conf["pseudonym"]["prefix"], conf["prepare"]["subjects_per_job"])):
        stage(work, cfg, over, "prepare", "--shard", sh, "--threads", str(threads))
    stage(work, cfg, over, "plans")
    splits = json.loads((work / "results" / "splits.json").read_text())
    stage(work, cfg, over, "preprocess", *(splits["folds"][0]["train"] + splits["folds"][0]["val"]),
          "--threads", str(threads))
    stage(work, cfg, over, "train", "0", "--model-name", MODEL, "--threads", str(threads))
    images = []
    (work / "test_images").mkdir(exist_ok=True)
    for s in splits["test"]:
        link = work / "test_images" / f"{s}.nii.gz"
        link.symlink_to(work / "results" / "nifti" / s / "image.nii.gz")
        images.append(str(link))
    return images


def cohortseg_predict(work: Path, cfg: Path, over: dict, images: list[str], tta: bool, threads: int) -> float:
    return stage(work, cfg, {**over, "infer": {"tta_flip": tta, "device": "cpu"}}, "infer", "--model",
                 f"results/models/{MODEL}/fold0/model.pt", "--images", *images, "--out-dir",
                 f"pred_tta{int(tta)}", "--threads", str(threads))


def nnunet_fold0(work: Path, python: Path, ids: dict[str, str], splits: dict, threads: int) -> Path:
    """nnU-Net's raw dataset (the cross-validation subjects), its plans and preprocessing, fold 0 trained
    for one short epoch; the folder of the test images."""
    cv = sorted({ids[s] for f in splits["folds"] for s in f["train"] + f["val"]})
    nnunet_raw_dataset(work, LABELS, cv)
    nnunet_plan_and_preprocess(work, python, threads)
    fold = {k: [ids[s] for s in splits["folds"][0][k]] for k in ("train", "val")}
    nnunet_train_fold0(work, python, fold, 0.0, threads, iterations=NNUNET_ITERATIONS)
    link_cases(work / "nnunet_test_images", [ids[s] for s in splits["test"]], images=True)
    return work / "nnunet_test_images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    add_nnunet_arguments(ap)
    args = ap.parse_args()
    nn_python = nnunet_python_or_exit(args.nnunet_python)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = REPO / "config" / "hippocampus.yaml"
    over = {"nifti": {"images": str(DATA / "imagesTr"), "labels": str(DATA / "labelsTr")},
            "train": {"epochs": 1, "min_epochs": 1, "device": "cpu"}}
    images = cohortseg_fold0(work, cfg, over, args.threads)
    splits = json.loads((work / "results" / "splits.json").read_text())
    ids = dict(line.split("\t") for line in (work / "private" / "id_map.tsv").read_text().splitlines()[1:] if line)
    nn_images = nnunet_fold0(work, nn_python, ids, splits, args.threads)
    n = len(images)
    per_case = {}
    for tta in (False, True):
        per_case[("cohortseg", tta)] = cohortseg_predict(work, cfg, over, images, tta, args.threads) / n
        extra = () if tta else ("--disable_tta",)
        per_case[("nnunet", tta)] = nnunet_predict(work, nn_python, nn_images, work / f"nnunet_pred_tta{int(tta)}",
                                                   args.threads, *extra) / n
    print(f"test_cases={n} threads={args.threads} nnunet_train_iterations={NNUNET_ITERATIONS}")
    for (tool, tta), s in per_case.items():
        print(f"{tool}_{'mirroring' if tta else 'no_mirroring'}_s_per_case={s:.2f}")
    print(f"ratio_no_mirroring={per_case[('cohortseg', False)] / per_case[('nnunet', False)]:.2f}")
    print(f"workdir={work}")
    print(f"ratio={per_case[('cohortseg', True)] / per_case[('nnunet', True)]:.2f}")


if __name__ == "__main__":
    main()
