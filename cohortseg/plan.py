"""The plan a reviewer reads before compute is spent: jobs per rule with their resources, and
the rule graph and job DAG as pictures (graphviz).

``cohortseg plan [snakemake arguments]`` first runs the cheap steps that decide the DAG (header
index, selection, split: seconds, no pixel data), then a dry run, and prints one row per rule:
jobs, threads, memory, wall time, GPUs and SLURM partition as the profile in use resolves them.
With ``--graphs DIR`` it also writes ``rulegraph.svg`` and ``dag.svg`` there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

CHECKPOINT_RULES = {"index", "select", "split"}
RESOURCE_KEYS = ["threads", "mem_mb", "runtime", "gpu", "slurm_partition", "cpus_per_task"]


def parse_dry_run(text: str) -> pd.DataFrame:
    """One row per planned job: rule, wildcards and the resources Snakemake resolved for it."""
    rows = []
    # grouped jobs (a profile's `groups`) are printed indented under "group job ...": match those too
    for block in re.split(r"\n(?=[ \t]*(?:local)?(?:rule|checkpoint) \w+:)", "\n" + text):
        m = re.match(r"\s*(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not m:
            continue
        row: dict[str, object] = {"rule": m.group(1)}
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        row["wildcards"] = wc.group(1) if wc else ""
        th = re.search(r"^\s+threads: (\d+)$", block, re.M)
        row["threads"] = int(th.group(1)) if th else 1
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if res:
            for kv in res.group(1).split(", "):
                k, _, v = kv.partition("=")
                if k in RESOURCE_KEYS:
                    row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs per rule with their (range of) resources, in first-seen order."""
    out = []
    for rule, grp in jobs.groupby("rule", sort=False):
        row: dict[str, object] = {"rule": rule, "jobs": len(grp)}
        for k in RESOURCE_KEYS:
            if k in grp:
                vals = sorted({str(v) for v in grp[k].dropna()})
                row[k] = "/".join(vals) if vals else ""
        out.append(row)
    return pd.DataFrame(out).fillna("")


def run(smk_args: list[str], graphs: str | None = None) -> pd.DataFrame:
    snakemake = [sys.executable, "-m", "snakemake"]
    # the checkpoints that decide the DAG: header index, selection, split (no pixel data read)
    subprocess.run([*snakemake, *smk_args, "--cores", "2", "results/splits.json"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # every job after the checkpoints, as if nothing had run yet (the checkpoints' own outputs kept)
    listed = subprocess.run([*snakemake, *smk_args, "--list-rules"], capture_output=True, text=True, check=True).stdout
    names = [line.split(" (")[0].strip() for line in listed.splitlines() if line and not line[0].isspace()]
    rules = [r for r in names if re.fullmatch(r"\w+", r) and r not in CHECKPOINT_RULES and r != "audit"]
    force = ["--forcerun", *rules, "--allowed-rules", *rules]
    proc = subprocess.run([*snakemake, *smk_args, "--dry-run", *force], capture_output=True, text=True, check=True)
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    cheap = parse_dry_run(subprocess.run([*snakemake, *smk_args, "--dry-run", "--forceall", "results/splits.json"],
                                         capture_output=True, text=True, check=True).stdout)
    table = summarise(pd.concat([cheap, jobs], ignore_index=True))
    if graphs:
        out = Path(graphs)
        out.mkdir(parents=True, exist_ok=True)
        dot = shutil.which("dot")
        for kind in ("rulegraph", "dag"):
            g = subprocess.run([*snakemake, *smk_args, f"--{kind}", *force], capture_output=True, text=True, check=True)
            src = g.stdout[g.stdout.find("digraph"):]
            (out / f"{kind}.dot").write_text(src)
            if dot:
                subprocess.run([dot, "-Tsvg", "-o", str(out / f"{kind}.svg")], input=src, text=True, check=True)
    return table
