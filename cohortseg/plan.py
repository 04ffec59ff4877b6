"""The plan a reviewer reads before compute is spent: jobs per rule with their resources, and
the rule graph and job DAG as pictures (graphviz).

``cohortseg plan [snakemake arguments]`` first runs the cheap steps that decide the DAG (header
index, selection, split: seconds, no pixel data), then a dry run, and prints one row per rule:
jobs, threads, memory, wall time, GPUs and SLURM partition as the profile in use resolves them.
With ``--graphs DIR`` it also writes ``rulegraph.svg`` and ``dag.svg`` there.

Where SLURM answers (``sinfo``) and the jobs name partitions, every job, and every group job as the
sum of its parallel members, is checked against the cluster before anything is submitted: a missing
partition, more CPUs, memory or GPUs than any node of the partition has, a wall time over the
partition's limit, an unknown node feature, or a resource name the slurm executor does not know (a
typo it would silently ignore) is an error here, not a job pending forever. Unknown profile keys are
already refused by Snakemake itself ("unrecognized arguments").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

CHECKPOINT_RULES = {"index", "select", "split"}
RESOURCE_KEYS = ["threads", "mem_mb", "runtime", "gpu", "slurm_partition", "cpus_per_task", "constraint"]
# resources Snakemake itself sets or the slurm executor plugin turns into sbatch options
KNOWN_RESOURCES = {"_cores", "_nodes", "tmpdir", "disk_mb", "disk", "disk_mib", "mem_mb", "mem", "mem_mib", "runtime",
                   "threads", "gpu", "gpu_model", "gpu_manufacturer", "gres", "slurm_partition", "slurm_account",
                   "slurm_extra", "constraint", "cpus_per_task", "cpus_per_gpu", "tasks", "tasks_per_gpu", "nodes",
                   "mem_mb_per_cpu", "qos", "clusters", "mpi", "nvidia_gpu"}


class PlanError(RuntimeError):
    """The plan asks for something the cluster cannot give."""


def parse_dry_run(text: str) -> pd.DataFrame:
    """One row per planned job: rule, wildcards, the group job it belongs to (if any) and the
    resources Snakemake resolved for it."""
    rows = []
    group = ""
    # grouped jobs (a profile's `groups`) are printed indented under "Group job ...": match those too
    for block in re.split(r"\n(?=[ \t]*(?:local)?(?:rule|checkpoint) \w+:|.*Group job \w+)", "\n" + text):
        g = re.match(r"\s*(?:\[[^\]]*\]\s*)?Group job (\w+)", block)
        if g:
            group = f"{g.group(1)}#{len(rows)}"
            continue
        m = re.match(r"(\s*)(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not m:
            continue
        if not m.group(1):
            group = ""
        row: dict[str, object] = {"rule": m.group(2), "group": group}
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        row["wildcards"] = wc.group(1) if wc else ""
        th = re.search(r"^\s+threads: (\d+)$", block, re.M)
        row["threads"] = int(th.group(1)) if th else 1
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        extra = []
        if res:
            for kv in res.group(1).split(", "):
                k, _, v = kv.partition("=")
                if k in RESOURCE_KEYS:
                    row[k] = v
                if k not in KNOWN_RESOURCES:
                    extra.append(k)
        row["unknown_resources"] = ",".join(extra)
        rows.append(row)
    return pd.DataFrame(rows)


def _minutes(limit: str) -> float:
    """SLURM time limit (``infinite``, ``M``, ``H:M:S``, ``D-H:M:S``) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    h, m, sec = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + sec / 60


def cluster(sinfo: str | None = None) -> dict[str, dict[str, object]] | None:
    """Per partition: the largest node's CPUs, memory (MB), GPUs, the time limit (minutes), node
    features, and whether it is the default; None where SLURM does not answer."""
    if sinfo is None:
        exe = shutil.which("sinfo")
        if not exe:
            return None
        try:
            proc = subprocess.run([exe, "-h", "-o", "%P|%c|%m|%G|%l|%f"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0:
            return None
        sinfo = proc.stdout
    parts: dict[str, dict[str, object]] = {}
    for line in sinfo.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres, limit, feats = line.split("|")
        p = parts.setdefault(name.rstrip("*"), {"cpus": 0, "mem_mb": 0, "gpus": 0, "minutes": _minutes(limit),
                                                "features": set(), "default": name.endswith("*")})
        p["cpus"] = max(int(p["cpus"]), int(cpus.rstrip("+")))  # type: ignore[call-overload]
        p["mem_mb"] = max(int(p["mem_mb"]), int(mem.rstrip("+")))  # type: ignore[call-overload]
        gpus = sum(int(g.group(1)) for g in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", gres))
        p["gpus"] = max(int(p["gpus"]), gpus)  # type: ignore[call-overload]
        p["features"] |= {f for f in feats.split(",") if f and f != "(null)"}  # type: ignore[operator]
    return parts


def _num(v: object) -> float:
    try:
        return float(str(v))
    except ValueError:
        return 0.0


def _option(smk_args: list[str], name: str) -> list[str]:
    """The values of a list option (``--name a b``) from the command line, else from the profile."""
    import yaml

    flag = f"--{name}"
    if flag in smk_args:
        i = smk_args.index(flag) + 1
        items = []
        while i < len(smk_args) and not smk_args[i].startswith("-"):
            items.append(smk_args[i])
            i += 1
        return items
    if "--profile" in smk_args:
        cfg = Path(smk_args[smk_args.index("--profile") + 1]) / "config.yaml"
        if cfg.exists():
            value = (yaml.safe_load(cfg.read_text()) or {}).get(name, [])
            return [str(v) for v in (value if isinstance(value, list) else [value])]
    return []


def group_components(smk_args: list[str]) -> dict[str, int]:
    """`group-components` (group -> jobs per submission) from the command line, else from the profile."""
    return {k: int(v) for k, _, v in (i.partition("=") for i in _option(smk_args, "group-components")) if v}


def one_job_per_group(smk_args: list[str]) -> list[str]:
    """Arguments that make a dry run form one group job per group (``--group-components g=1000000``).
    Snakemake 9.27 rebuilds split group jobs non-idempotently after checkpoints (snakemake/snakemake#1628):
    a dry run with several group jobs of one group may print them forever. The plan rebuilds the
    submissions from ``group-components`` itself (:func:`submissions`)."""
    names = sorted({v for _, _, v in (i.partition("=") for i in _option(smk_args, "groups")) if v})
    return ["--group-components", *(f"{g}=1000000" for g in names)] if names else []


def submissions(jobs: pd.DataFrame, components: dict[str, int] | None = None) -> list[dict[str, object]]:
    """What each sbatch would ask for: a job alone, or a group job of up to `group-components` members with
    their CPUs, memory and GPUs summed (they run side by side) and the longest wall time. (A dry run's
    printout of group jobs repeats members across groups, so the groups are rebuilt here.)"""
    components = components or {}
    for col in RESOURCE_KEYS:
        if col not in jobs:
            jobs = jobs.assign(**{col: None})
    jobs = jobs.drop_duplicates(subset=["rule", "wildcards"])
    chunks: list[tuple[str, pd.DataFrame]] = []
    for group, grp in jobs.groupby(jobs["group"].str.split("#").str[0], sort=False):
        if not group:
            chunks += [("", grp.loc[[i]]) for i in grp.index]
            continue
        n = max(1, components.get(group, 1))
        chunks += [(group, grp.iloc[k: k + n]) for k in range(0, len(grp), n)]
    out = []
    for group, grp in chunks:
        first = grp.iloc[0]
        cpus = [max(_num(r["threads"]), _num(r["cpus_per_task"])) for _, r in grp.iterrows()]
        out.append({"what": f"group job {group} ({len(grp)} jobs)" if group else
                    f"rule {first['rule']}" + (f" ({first['wildcards']})" if first["wildcards"] else ""),
                    "rule": first["rule"], "partition": first["slurm_partition"], "constraint": first["constraint"],
                    "cpus": sum(cpus), "mem_mb": sum(_num(v) for v in grp["mem_mb"]),
                    "gpu": sum(_num(v) for v in grp["gpu"]), "runtime": max(_num(v) for v in grp["runtime"])})
    return out


def check_against_cluster(jobs: pd.DataFrame, parts: dict[str, dict[str, object]],
                          components: dict[str, int] | None = None) -> list[str]:
    """Every reason a planned submission could never start on this cluster (one line per rule and problem)."""
    problems: dict[str, str] = {}
    default = next((n for n, p in parts.items() if p["default"]), None)
    for _, r in jobs[jobs["unknown_resources"] != ""].iterrows() if "unknown_resources" in jobs else []:
        for k in str(r["unknown_resources"]).split(","):
            problems.setdefault(f"res:{r['rule']}:{k}", f"rule {r['rule']}: resource {k!r} is unknown to the slurm "
                                f"executor (a typo in the profile's set-resources?)")
    # in a fixed order: the job named for a rule's problem does not depend on the dry run's job order
    for sub in sorted(submissions(jobs, components), key=lambda s: (s["rule"], s["what"])):
        name = sub["partition"] if isinstance(sub["partition"], str) and sub["partition"] else default
        key = f"{sub['rule']}:{name}"
        if name not in parts:
            problems.setdefault(key + ":partition", f"{sub['what']}: partition {name!r} does not exist "
                                f"(sinfo lists: {', '.join(sorted(parts))})")
            continue
        p = parts[name]
        checks = [("cpus", "CPUs", sub["cpus"]), ("mem_mb", "MB of memory", sub["mem_mb"]), ("gpus", "GPUs", sub["gpu"])]
        for field, unit, want in checks:
            if float(want) > float(p[field]):  # type: ignore[arg-type]
                problems.setdefault(f"{key}:{field}", f"{sub['what']}: asks for {want:g} {unit}, the largest node of "
                                    f"partition {name!r} has {p[field]}")
        if float(sub["runtime"]) > float(p["minutes"]):  # type: ignore[arg-type]
            problems.setdefault(f"{key}:time", f"{sub['what']}: runtime {sub['runtime']:g} min exceeds partition "
                                f"{name!r}'s limit of {p['minutes']:g} min")
        con = sub["constraint"]
        if isinstance(con, str) and con:
            missing = set(re.split(r"[&|,]", con)) - p["features"]  # type: ignore[operator]
            if missing:
                problems.setdefault(f"{key}:constraint", f"{sub['what']}: constraint {con!r}: no node of partition "
                                    f"{name!r} has feature(s) {', '.join(sorted(missing))}")
    return list(problems.values())


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs per rule with their (range of) resources, in first-seen order."""
    out = []
    for rule, grp in jobs.groupby("rule", sort=False):
        row: dict[str, object] = {"rule": rule, "jobs": len(grp)}
        for k in RESOURCE_KEYS:
            if k in grp and grp[k].notna().any():
                vals = sorted({str(v) for v in grp[k].dropna()})
                row[k] = "/".join(vals) if vals else ""
        out.append(row)
    return pd.DataFrame(out).fillna("")


def _snakemake(args: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    """One Snakemake call of the plan; a call that outlives ``timeout`` is killed and reported."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    try:
        return subprocess.run(cmd, text=True, check=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as e:
        raise PlanError(f"snakemake {' '.join(args)} did not finish within {timeout:.0f} s") from e


def run(smk_args: list[str], graphs: str | None = None, check: bool = True, timeout: float = 1800,
        plans: bool = False) -> pd.DataFrame:
    # the checkpoints that decide the DAG: header index, selection, split (no pixel data read); with
    # ``plans`` also conversion and the dataset/model plans (results/plans/plans.json)
    target = "results/plans/plans.json" if plans else "results/splits.json"
    _snakemake([*smk_args, "--cores", "2", target], timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # every job after the checkpoints, as if nothing had run yet (the checkpoints' own outputs kept)
    listed = _snakemake([*smk_args, "--list-rules"], timeout, capture_output=True).stdout
    names = [line.split(" (")[0].strip() for line in listed.splitlines() if line and not line[0].isspace()]
    rules = [r for r in names if re.fullmatch(r"\w+", r) and r not in CHECKPOINT_RULES and r not in ("audit", "repro")]
    force = ["--forcerun", *rules, "--allowed-rules", *rules]
    dry = [*smk_args, "--dry-run", *one_job_per_group(smk_args)]
    proc = _snakemake([*dry, *force], timeout, capture_output=True)
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    cheap = parse_dry_run(_snakemake([*dry, "--forceall", "results/splits.json"], timeout, capture_output=True).stdout)
    every = pd.concat([cheap, jobs], ignore_index=True).drop_duplicates(subset=["rule", "wildcards"])
    table = summarise(every)
    parts = cluster() if check and "slurm_partition" in every else None
    if parts is not None:
        problems = check_against_cluster(every, parts, group_components(smk_args))
        if problems:
            raise PlanError("the plan cannot run on this cluster (sinfo):\n  " + "\n  ".join(problems) +
                            "\n" + table.to_string(index=False))
    if graphs:
        out = Path(graphs)
        out.mkdir(parents=True, exist_ok=True)
        dot = shutil.which("dot")
        for kind in ("rulegraph", "dag"):
            g = _snakemake([*smk_args, f"--{kind}", *force], timeout, capture_output=True)
            src = g.stdout[g.stdout.find("digraph"):]
            (out / f"{kind}.dot").write_text(src)
            if dot:
                subprocess.run([dot, "-Tsvg", "-o", str(out / f"{kind}.svg")], input=src, text=True, check=True,
                               timeout=timeout)
    return table
