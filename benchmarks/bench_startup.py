"""Job start-up: what each stage's Snakemake job costs beyond its own work, on the tiny synthetic cohort.

The tiny workflow (tests/config/tiny.yaml, 8 synthetic subjects) runs once; then each stage's jobs are
forced again, one stage at a time (``--forcerun <rule> --until <rule> --cores 2``). Per job:

- ``wall``: Snakemake's benchmark file of the job (``logs/benchmarks/...``: the job process, from start to
  end);
- ``work``: what the job itself logs (``job timing: startup_s=.. work_s=..``, cohortseg.smk): the time from
  the end of its imports to its exit;
- ``startup`` = wall - work: interpreter, Snakemake's script preamble, imports.

Baselines measured in the same run: ``python -c pass``, and two Snakemake no-op jobs added to the copied
workflow (a script rule whose script only touches its output, and a shell rule ``touch``): what any job
costs before cohortseg does anything. Prints key=value lines per stage (median over the stage's jobs),
then the worst light stage; the headline ratio last: worst light-stage start-up / the no-op script job's
wall time. Target: every light stage's start-up <= 1.5 s.
Usage: .venv/bin/python benchmarks/bench_startup.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIGHT = ["index", "select", "split", "prepare", "ensemble", "metrics", "selection_chart", "dice_chart", "overlay",
         "provenance"]
HEAVY = ["infer_fold"]  # for reference: start-up of a job that needs torch and MONAI
NOOP_RULES = '''

rule bench_noop_script:
    output: "results/bench/noop_script.txt"
    benchmark: "logs/benchmarks/bench_noop_script.tsv"
    script: "bench_noop.py"


rule bench_noop_shell:
    output: "results/bench/noop_shell.txt"
    benchmark: "logs/benchmarks/bench_noop_shell.tsv"
    shell: "touch {output}"
'''


def copy_workflow(dst: Path) -> None:
    for name in ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "report", "cohortseg", "tests/config"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    with open(dst / "Snakefile", "a") as fh:
        fh.write(NOOP_RULES)
    (dst / "bench_noop.py").write_text("open(snakemake.output[0], 'w').close()\n")


def snakemake(wd: Path, *args: str) -> None:
    env_path = f"{Path(sys.executable).parent}:" + os.environ.get("PATH", "")
    env = {**os.environ, "PYTHONPATH": str(wd), "PATH": env_path}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "tests/config/tiny.yaml", "--cores", "2",
                           *args], cwd=wd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-4000:]}")


def bench_wall(path: Path) -> float:
    with open(path) as fh:
        return float(next(csv.DictReader(fh, delimiter="\t"))["s"])


def job_work(log: Path) -> float | None:
    m = re.search(r"job timing: startup_s=([\d.]+) work_s=([\d.]+)", log.read_text()) if log.exists() else None
    return float(m.group(2)) if m else None


def stage_jobs(wd: Path, rule: str) -> list[tuple[float, float | None]]:
    """(wall, work) of every job of ``rule`` (benchmark file and log of the same job)."""
    bench_root, log_root = wd / "logs" / "benchmarks", wd / "logs"
    found = []
    for b in sorted(bench_root.rglob("*.tsv")):
        rel = b.relative_to(bench_root)
        log = (log_root / rel).with_suffix(".log")
        if _rule_of(rel) == rule:
            found.append((bench_wall(b), job_work(log)))
    return found


def _rule_of(rel: Path) -> str:
    """The rule of a benchmark file from its path (the rules' log layout)."""
    parts = rel.with_suffix("").parts
    named = {"selection": "selection_chart", "dice": "dice_chart", "overlay": "overlay"}
    if parts[0] == "report":
        return named.get(parts[1], parts[1])
    if parts[0] == "infer":
        return "infer_ensemble" if parts[1] == "ensemble" else "infer_fold"
    return parts[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="workflow folder to use and keep (default: a temporary one)")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bench-startup-")
    wd = Path(args.keep or tmp.name) / "wf"  # type: ignore[union-attr]
    wd.mkdir(parents=True, exist_ok=True)
    copy_workflow(wd)
    subprocess.run([sys.executable, "-m", "cohortseg.cli", "demo-cohort", str(wd / "data" / "tiny"), "--subjects", "8",
                    "--seed", "3", "--size", "tiny"], cwd=wd, env={**os.environ, "PYTHONPATH": str(wd)},
                   check=True, capture_output=True)
    (wd / "data" / "external").mkdir()
    snakemake(wd)  # the whole workflow once: every stage's inputs exist, caches are warm
    python_pass = statistics.median(_timed([sys.executable, "-c", "pass"]) for _ in range(5))
    snakemake(wd, "results/bench/noop_script.txt", "results/bench/noop_shell.txt", "--forcerun", "bench_noop_script",
              "bench_noop_shell")
    noop_script = bench_wall(wd / "logs" / "benchmarks" / "bench_noop_script.tsv")
    noop_shell = bench_wall(wd / "logs" / "benchmarks" / "bench_noop_shell.tsv")
    print(f"python_c_pass_s={python_pass:.3f}")
    print(f"snakemake_noop_shell_job_s={noop_shell:.3f}")
    print(f"snakemake_noop_script_job_s={noop_script:.3f}")
    worst = ("", 0.0)
    for rule in LIGHT + HEAVY:
        snakemake(wd, "--forcerun", rule, "--until", rule)
        jobs = stage_jobs(wd, rule)
        if not jobs or any(w is None for _, w in jobs):
            sys.exit(f"no timing for the jobs of {rule} ({jobs})")
        wall = statistics.median(j[0] for j in jobs)
        work = statistics.median(j[1] for j in jobs)  # type: ignore[misc]
        startup = statistics.median(j[0] - j[1] for j in jobs)  # type: ignore[operator]
        print(f"{rule}_jobs={len(jobs)} {rule}_wall_s={wall:.3f} {rule}_work_s={work:.3f} {rule}_startup_s={startup:.3f}")
        if rule in LIGHT and startup > worst[1]:
            worst = (rule, startup)
    print(f"worst_light_stage={worst[0]}")
    print(f"worst_light_startup_s={worst[1]:.3f}")
    print(f"light_startup_target_met={worst[1] <= 1.5}")
    print(f"ratio={worst[1] / noop_script:.2f}")
    if tmp is not None:
        tmp.cleanup()


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
