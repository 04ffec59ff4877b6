"""Planning speed: the dry run of cohortseg's workflow on a synthetic 10,000-subject cohort, against
a naive Snakefile with one job per subject per step (5 steps), measured in the same run.

The cohort is given as an index table (results/cohort/series.tsv and the private maps, one
usable series and a mask per subject, written here), selection and split run through the
package, then ``snakemake --dry-run`` plans every remaining job (prepare shards, training,
inference, metrics, report). Both dry runs use the rerun triggers of the shipped profiles
(``profiles/local``: mtime, params, input, code; read from it, so they stay the same). Prints
key=value lines, the headline ratio
(naive dry-run time / cohortseg dry-run time; target >= 5 with cohortseg <= 10 s) last.
Usage: .venv/bin/python benchmarks/bench_plan.py [--subjects 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAIVE = '''
SUBJECTS = [f"sub-{{i:06d}}" for i in range({n})]
rule all:
    input: expand("out/{{s}}/e.txt", s=SUBJECTS)
rule a:
    output: "out/{{s}}/a.txt"
    shell: "touch {{output}}"
rule b:
    input: "out/{{s}}/a.txt"
    output: "out/{{s}}/b.txt"
    shell: "touch {{output}}"
rule c:
    input: "out/{{s}}/b.txt"
    output: "out/{{s}}/c.txt"
    shell: "touch {{output}}"
rule d:
    input: "out/{{s}}/c.txt"
    output: "out/{{s}}/d.txt"
    shell: "touch {{output}}"
rule e:
    input: "out/{{s}}/d.txt"
    output: "out/{{s}}/e.txt"
    shell: "touch {{output}}"
'''


def bench_env(wd: Path, tools: Path) -> dict[str, str]:
    """The environment of both dry runs. Two start-up costs that are not planning are taken out of both:
    bytecode is cached (in a folder of the run, as a normal installation has its .pyc files; some
    machines set PYTHONDONTWRITEBYTECODE, costing ~5 s of compiling per start), and the slurm executor
    plugin's import-time probe ``scontrol show config`` (10 s timeout where SLURM's tools are installed
    but no controller answers, as on a CI machine) meets a stub that fails at once."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(wd), "PYTHONPYCACHEPREFIX": str(tools / "pycache"),
            "PATH": f"{tools}:{Path(sys.executable).parent}:{os.environ['PATH']}"}


def shipped_triggers() -> list[str]:
    """The rerun triggers every shipped profile uses (profiles/local/config.yaml)."""
    import yaml

    return list(yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())["rerun-triggers"])


def dry_run(wd: Path, tools: Path, *args: str) -> tuple[float, int]:
    env = bench_env(wd, tools)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--quiet", "rules", "--cores", "1",
                           "--rerun-triggers", *shipped_triggers(), *args],
                          cwd=wd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"dry run failed in {wd}:\n{proc.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    return dt, int(total.group(1)) if total else 0


def make_cohort(wd: Path, n: int) -> None:
    import pandas as pd

    from cohortseg.config import load
    from cohortseg.index import SERIES_COLUMNS
    from cohortseg import select, split
    from cohortseg.util import write_json, write_tsv

    (wd / "data" / "dicom").mkdir(parents=True)
    # pseudonyms are keyed hashes: uniformly spread hex digits (they decide the prepare shards)
    subjects = [f"sub-{hashlib.sha256(str(i).encode()).hexdigest()[:10]}" for i in range(n)]
    rows = []
    for i, s in enumerate(subjects):
        rows.append({c: None for c in SERIES_COLUMNS} | {
            "subject": s, "study": f"stu-{i:010x}", "series": f"ser-{i:010x}", "status": "ok", "series_number": 3,
            "modality": "MR", "sop_class": "mr", "is_image": True, "series_description": "AX T1 MPRAGE +C",
            "image_type": "ORIGINAL\\PRIMARY", "contrast": True, "postop": False, "study_order": 0, "n_files": 176,
            "n_slices": 176, "n_volumes": 1, "n_frames": 1, "duplicates": 0, "rows": 256, "cols": 256,
            "slice_spacing": 1.0, "slice_thickness": 1.0, "plane": "axial", "obliquity_deg": 0.0,
            "gantry_tilt_deg": 0.0, "slice_gaps_uneven": False, "missing_slices": 0, "geometry_consistent": True,
            "transfer_syntax": "ExplicitVRLittleEndian", "decodable": True, "mosaic": False})
    cohort = wd / "results" / "cohort"
    write_tsv(cohort / "series.tsv", pd.DataFrame(rows, columns=SERIES_COLUMNS))
    write_tsv(cohort / "subjects.tsv", pd.DataFrame({"subject": subjects, "n_studies": 1, "n_series": 1, "has_mask": True}))
    priv = wd / "private"
    priv.mkdir(mode=0o700)
    write_json(priv / "series_files.json", {f"ser-{i:010x}": [f"/nonexistent/{i}.dcm"] for i in range(n)})
    write_json(priv / "masks.json", {s: f"/nonexistent/{s}.nii.gz" for s in subjects})
    (priv / "id_map.tsv").write_text("subject\tpatient_id\n")
    (priv / "file_map.tsv").write_text("file\tpath\n")
    cfg = load(wd / "config" / "bench.yaml")
    select.run(select.Config.from_config(cfg), cohort / "series.tsv", cohort / "subjects.tsv", cohort / "included.tsv",
               cohort / "excluded.tsv", cohort / "exclusion_summary.tsv", cohort / "summary.txt")
    split.run(split.Config.from_config(cfg), cohort / "included.tsv", wd / "results" / "splits.json")


def copy_workflow(wd: Path) -> Path:
    """The workflow's files (Snakefile, rules, scripts, config, profiles, package) copied into a new folder
    ``wd``, which its jobs import the package from."""
    wd.mkdir(parents=True)
    for name in ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "report", "cohortseg"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / name)
    return wd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as t:
        wd = copy_workflow(Path(t) / "cohortseg")
        (wd / "config" / "bench.yaml").write_text(
            "study: bench-plan\ndicom_dir: data/dicom\nmasks: {dir: null}\nprivate_dir: private\n")
        t0 = time.perf_counter()
        sys.path.insert(0, str(wd))
        make_cohort(wd, args.subjects)
        setup_s = time.perf_counter() - t0
        tools = Path(t) / "tools"
        tools.mkdir()
        (tools / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (tools / "scontrol").chmod(0o755)
        naive = Path(t) / "naive"
        naive.mkdir()
        # warm-up: both workflows' modules imported once (bytecode cached), nothing planned
        for d, a in ((wd, ["--configfile", "config/bench.yaml"]), (naive, [])):
            (naive / "Snakefile").write_text(NAIVE.format(n=10))
            subprocess.run([sys.executable, "-m", "snakemake", "--list-rules", *a], cwd=d, env=bench_env(d, tools),
                           capture_output=True, check=True)
        ours_s, ours_jobs = dry_run(wd, tools, "--configfile", "config/bench.yaml")
        (naive / "Snakefile").write_text(NAIVE.format(n=args.subjects))
        naive_s, naive_jobs = dry_run(naive, tools)
    print(f"subjects={args.subjects}")
    print(f"rerun_triggers={','.join(shipped_triggers())}")
    print(f"index_select_split_setup_s={setup_s:.2f}")
    print(f"cohortseg_jobs_planned={ours_jobs}")
    print(f"cohortseg_dry_run_s={ours_s:.2f}")
    print(f"naive_jobs_planned={naive_jobs}")
    print(f"naive_dry_run_s={naive_s:.2f}")
    print(f"cohortseg_target_met={ours_s <= 10 and naive_s / ours_s >= 5}")
    print(f"ratio={naive_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
