"""Preparing a cohort for training: cohortseg's workflow against nnU-Net v2's plan-and-preprocess, on the
208 MSD Hippocampus cases (../shared/data/hippocampus), the same cores, in the same run.

- cohortseg: ``snakemake --profile profiles/local --cores N ready`` (the target rule that leaves the cohort
  ready for training, as nnU-Net's command leaves its dataset), in a fresh work folder with
  config/hippocampus.yaml and ``split.test_fraction: 0`` (so, like nnU-Net's raw dataset, every case is a
  training case): the NIfTI cohort's index, selection, split, prepare (import and checks,
  ``prepare.subjects_per_job`` as shipped), the per-case surveys, the dataset and model plans and the
  preprocessing of every case to the plan's space. Every job's start-up and Snakemake's own (its DAG, its
  job scheduling) are counted.
- nnU-Net v2 (``make nnunet-env``): the same 208 cases linked as Dataset004's raw dataset,
  ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -npfp N -np N`` (fingerprint, plans, preprocessing;
  N processes each, its defaults are 8), its start-up counted the same way.

Equal terms: the same N (default 2, the machine's cores), the same cases, both from their raw NIfTI files,
a fresh output folder each, cohortseg first (the page cache warmed by cohortseg's reads helps nnU-Net).
Prints key=value lines: both wall times, cohortseg's jobs per rule (from its Snakemake log) and, last, the
headline ``ratio`` = cohortseg / nnU-Net wall time (target <= 1.0).
Usage: .venv/bin/python benchmarks/bench_prepare.py [--cores 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from bench_hippocampus import (DATA, add_nnunet_arguments, nnunet_plan_and_preprocess,  # noqa: E402
                               nnunet_python_or_exit, nnunet_raw_dataset)
from bench_plan import copy_workflow  # noqa: E402

LABELS = ["anterior", "posterior"]


def snakemake(wd: Path, cores: int, extra: Path, *args: str) -> tuple[float, str]:
    cmd = [str(Path(sys.executable).parent / "snakemake"), *args, "--profile", "profiles/local", "--cores",
           str(cores), "--configfile", "config/hippocampus.yaml", str(extra)]  # last: --configfile takes 1+ values
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(wd)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return seconds, proc.stderr


def run_cohortseg(wd: Path, cores: int) -> tuple[float, dict[str, int]]:
    """Wall seconds of ``snakemake ready`` (the workflow up to the plans and the preprocessing of every
    cross-validation case, one invocation, its Snakemake start-up counted against us) and its jobs per rule."""
    extra = wd / "bench_prepare.yaml"
    extra.write_text(json.dumps({"nifti": {"images": str(DATA / "imagesTr"), "labels": str(DATA / "labelsTr")},
                                 "split": {"test_fraction": 0}}))
    seconds, log = snakemake(wd, cores, extra, "ready")
    jobs = collections.Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", log, re.M))
    if not jobs.get("preprocess"):
        raise RuntimeError("no preprocess job ran")
    return seconds, dict(jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    add_nnunet_arguments(ap)
    args = ap.parse_args()
    nn_python = nnunet_python_or_exit(args.nnunet_python)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_prepare_"))
    cases = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "imagesTr").glob("*.nii.gz") if not p.name.startswith("."))
    ours, jobs = run_cohortseg(copy_workflow(work / "cohortseg"), args.cores)
    nnunet_raw_dataset(work / "nnunet", LABELS, cases)
    theirs = nnunet_plan_and_preprocess(work / "nnunet", nn_python, args.cores)
    print(f"cases={len(cases)} cores={args.cores}")
    print("cohortseg_jobs=" + ",".join(f"{rule}:{n}" for rule, n in sorted(jobs.items())))
    print(f"cohortseg_s={ours:.1f}")
    print(f"nnunet_plan_and_preprocess_s={theirs:.1f}")
    print(f"workdir={work}")
    print(f"ratio={ours / theirs:.2f}")


if __name__ == "__main__":
    main()
