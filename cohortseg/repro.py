"""Reproducibility audit: re-execute chosen stages in separate output trees and measure what differs.

An *execution* is a Snakemake run of the workflow in a folder of its own under ``repro.dir``, with the
same config, study key and inputs as the main run; ``repro.runs`` executions use the first thread count
of ``repro.threads``, and one more execution runs with each further thread count. Two modes:

- ``isolated`` (default): each chosen stage is re-executed alone, on the main run's outputs of the stages
  before it (hard links, never written to), so a difference is that stage's own: e.g. inference is
  judged on the main run's models even where training differs across thread counts.
- ``chain``: every stage from the first chosen one to the last is re-executed end to end, so differences
  propagate as they would in a rerun of the study; the metrics' test-retest variability then measures
  their effect on the results.

Executions that fit side by side in the repro job's cores run at the same time (:func:`waves`); every
job keeps its threads, so only the audit's wall time depends on it.

Nothing of the main run is written: each tree is a workflow folder of its own, with its own ``private/``
(a copy of the study key and the private maps, mode 600), and an existing tree is an error.

Per stage the audit reports whether every output is bitwise identical (SHA-256) across executions with
the same threads and across thread counts. Fields that record the execution rather than its result (wall
times, thread counts, machine) are taken out of JSON and TSV outputs before hashing; the audit counts
the files concerned (``timing_fields_excluded``). Where outputs differ, it measures by how much: max abs
voxel difference of images, Dice between repeated segmentations, max abs difference of model weights and
of numeric table columns. For the metrics, per model, label and metric: inter-execution SD against
inter-subject SD and ICC(3,1) (two-way mixed, consistency, single execution; Shrout & Fleiss 1979), with
an alert where the SD ratio exceeds ``repro.alert_ratio``.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .settings import StudyConfig
from .util import write_text, write_tsv


@dataclass(frozen=True)
class Config(StudyConfig):
    """The audit replays the whole configuration in every execution."""


@dataclass(frozen=True)
class Outputs:
    stages: str
    files: str
    variability: str
    dashboard: str
    summary: str

    @classmethod
    def default(cls, folder: str | Path) -> Outputs:
        d = Path(folder)
        return cls(*(str(d / n) for n in ("stages.tsv", "files.tsv", "metrics_variability.tsv", "dashboard.png",
                                          "summary.txt")))

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

# stage -> (its rules, its outputs as globs in a tree), in DAG order
STAGES: dict[str, tuple[list[str], list[str]]] = {
    "index": (["index"], ["results/cohort/series.tsv", "results/cohort/subjects.tsv"]),
    "select": (["select"], ["results/cohort/included.tsv", "results/cohort/excluded.tsv",
                            "results/cohort/exclusion_summary.tsv", "results/cohort/summary.txt"]),
    # split before prepare (both need only the selection): the DAG of a tree is then complete from
    # prepare on, so `--until prepare` finds the prepare jobs
    "split": (["split"], ["results/splits.json"]),
    "prepare": (["prepare"], ["results/nifti/*/*", "results/prepared/*"]),
    "plans": (["plan_dataset", "plan_model", "plans"], ["results/plans/*.json", "results/plans/models/*"]),
    "preprocess": (["preprocess"], ["results/preproc/*/*", "results/preprocessed/*"]),
    "train": (["train"], ["results/models/*/fold*/*"]),
    "ensemble": (["ensemble"], ["results/models/*/ensemble.json"]),
    # each model's predictions (CV with probabilities, test); then the study's selection and what predicts
    # with it (the test subjects, new cohorts)
    "infer": (["infer_fold", "infer_ensemble"], ["results/predictions/*/fold*/*", "results/predictions/*/test/*",
                                                 "results/predictions/*/test_shards/*"]),
    "study": (["study", "infer_study", "infer_external"],
              ["results/study/selection.*", "results/predictions/study/*", "results/predictions/study/shards/*",
               "results/predictions_external/*/*"]),
    "metrics": (["metrics"], ["results/metrics/*"]),
    "report": (["selection_chart", "dice_chart", "overlay"], ["results/report/*.png", "results/report/overlays/*"]),
}
# private maps the index writes (copied for executions that start after it)
PRIVATE_FILES = ("key", "series_files.json", "masks.json", "id_map.tsv", "file_map.tsv")
# fields that record the execution, not its result
VOLATILE = re.compile(r"seconds|^time$|_time$|wall|threads|memory_mb|^machine$|hostname|^date")


class ReproError(ValueError):
    """The audit was asked for something it cannot do."""


def plan(config: Config) -> list[tuple[str, int]]:
    """The executions: (name, threads)."""
    r = config.repro
    unknown = [s for s in r.stages if s not in STAGES]
    if unknown:
        raise ReproError(f"repro.stages: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    if r.runs < 2:
        raise ReproError(f"repro.runs must be >= 2 to compare executions, got {r.runs}")
    threads = list(r.threads)
    execs = [(f"exec{i + 1}-t{threads[0]}", threads[0]) for i in range(r.runs)]
    execs += [(f"exec{r.runs + j + 1}-t{t}", t) for j, t in enumerate(threads[1:])]
    return execs


def stage_range(config: Config) -> list[str]:
    """Every stage from the first chosen to the last chosen one (downstream stages are re-executed too)."""
    order = list(STAGES)
    idx = sorted(order.index(s) for s in config.repro.stages)
    return order[idx[0]: idx[-1] + 1]


def _abs(path: str | None, base: Path) -> str | None:
    return None if path is None else str((base / path).resolve())


def execution_config(cfg: dict[str, Any], threads: int, main: Path, seed_offset: int = 0) -> dict[str, Any]:
    """The main run's config with absolute input paths, the tree's own private/ and ``threads`` everywhere;
    with ``seed_offset`` (repro.vary_seed) another seed and the main run's split pinned."""
    c = copy.deepcopy(cfg)
    c["dicom_dir"] = _abs(c["dicom_dir"], main)
    c["masks"]["dir"] = _abs(c["masks"].get("dir"), main)
    c["nifti"] = {k: _abs(v, main) if k in ("images", "labels", "table") else v for k, v in c["nifti"].items()}
    c["private_dir"] = "private"
    c["infer"]["cohorts"] = {k: _abs(v, main) for k, v in c["infer"]["cohorts"].items()}
    if c["split"].get("file"):
        c["split"]["file"] = _abs(c["split"]["file"], main)
    if seed_offset:
        c["seed"] = int(c["seed"]) + seed_offset
        c["split"]["file"] = str((main / "results" / "splits.json").resolve())
    c["index"]["threads"] = threads
    for k in ("light_threads", "train_threads", "infer_threads"):
        c["resources"][k] = threads
    return c


def tree_files(tree: Path, stage: str) -> list[str]:
    out: set[str] = set()
    for pattern in STAGES[stage][1]:
        out.update(os.path.relpath(p, tree) for p in glob.glob(str(tree / pattern)) if os.path.isfile(p))
    return sorted(f for f in out if not os.path.basename(f).startswith("."))


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the main run's file, read only by the execution (writers replace, never modify)
    except OSError:
        shutil.copy2(src, dst)


def execute(cfg: dict[str, Any], name: str, threads: int, main: Path, trees: Path, stages: list[str],
            snakefile: Path = REPO / "Snakefile", cores: int = 1, seed_offset: int = 0) -> Path:
    """One execution of ``stages`` (consecutive) in ``trees/name`` on the main run's earlier outputs."""
    tree = trees / name
    make_tree(cfg, tree, threads, main, stages[0], seed_offset)
    return run_in_tree(tree, name, stages, threads, snakefile, cores)


def make_tree(cfg: dict[str, Any], tree: Path, threads: int, main: Path, first: str, seed_offset: int = 0) -> None:
    """A workflow folder of its own: the study key and the main run's private maps (mtimes kept: nothing
    upstream looks newer) in its own private/ (outside its results/, like the main run's), the execution's
    config, and the main run's outputs of every stage before ``first`` (hard links, never written to)."""
    main_private = (main / cfg["private_dir"]).resolve()
    tree.mkdir(parents=True)
    private = tree / "private"
    private.mkdir(mode=0o700)
    for f in PRIVATE_FILES:
        src = main_private / f
        if not src.exists():
            continue
        if f in ("series_files.json", "masks.json"):  # input paths relative to the main run: made absolute
            data = json.loads(src.read_text())
            data = {k: [_abs(p, main) for p in v] if isinstance(v, list) else _abs(v, main) for k, v in data.items()}
            (private / f).write_text(json.dumps(data))
            st = src.stat()
            os.utime(private / f, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            shutil.copy2(src, private / f)
        os.chmod(private / f, 0o600)
    (tree / "config").mkdir()
    shutil.copy2(REPO / "config" / "config.yaml", tree / "config" / "config.yaml")
    ecfg = execution_config(cfg, threads, main, seed_offset)
    ecfg.pop("repro", None)
    import yaml

    (tree / "config" / "repro.yaml").write_text(yaml.safe_dump(ecfg, sort_keys=True))
    for stage in list(STAGES)[: list(STAGES).index(first)]:
        files = tree_files(main, stage)
        if not files:
            raise ReproError(f"the main run has no outputs of stage {stage!r} under {main}/results: run the workflow "
                             f"first, or include {stage!r} in repro.stages")
        for f in files:
            _link_or_copy(main / f, tree / f)


# a stage's rules that others of the same stage consume: Snakemake's --until stops at the first rule named,
# so only the stage's final rules are named (plan_dataset -> plan_model -> plans; study -> infer_study)
UNTIL = {"plans": ["plans"], "study": ["infer_study", "infer_external"]}


def until_rules(stage: str) -> list[str]:
    """The rules --until names for ``stage``: its final rules."""
    return UNTIL.get(stage, STAGES[stage][0])


def run_in_tree(tree: Path, name: str, stages: list[str], threads: int, snakefile: Path = REPO / "Snakefile",
                cores: int = 1) -> Path:
    """Snakemake re-executes ``stages`` (consecutive) in ``tree``, on what the tree holds before them."""
    first, last = STAGES[stages[0]][0], until_rules(stages[-1])
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(tree),
           # all cores for independent jobs side by side; each job's threads are the execution's `threads`
           "--configfile", str(tree / "config" / "repro.yaml"), "--cores", str(max(threads, cores)),
           "--rerun-triggers", "mtime",
           "--forcerun", *first, "--until", *last, "--quiet", "rules"]
    # the main run's environment: the installed packages' bytecode, compiled at install (make install), is
    # read as it is (a PYTHONPYCACHEPREFIX here would hide it and compile every package again)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log.info("%s: stages %s with %d thread(s)", name, "..".join(dict.fromkeys([stages[0], stages[-1]])), threads)
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    with open(tree / "snakemake.log", "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"execution {name} failed (log: {tree / 'snakemake.log'}):\n{proc.stderr[-3000:]}")
    if "Nothing to be done" in proc.stdout + proc.stderr:
        raise RuntimeError(f"execution {name} ran no job (log: {tree / 'snakemake.log'})")
    return tree


def canonical(path: Path) -> tuple[bytes, bool]:
    """The bytes compared: JSON and TSV without the volatile fields; (bytes, whether any were removed)."""
    if path.suffix == ".json":
        removed = [False]

        def strip(o: Any) -> Any:
            if isinstance(o, dict):
                keep = {k: strip(v) for k, v in o.items() if not VOLATILE.search(str(k))}
                removed[0] |= len(keep) != len(o)
                return keep
            if isinstance(o, list):
                return [strip(v) for v in o]
            return o

        data = strip(json.loads(path.read_text()))
        return json.dumps(data, sort_keys=True).encode(), removed[0]
    if path.suffix == ".tsv":
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        drop = [c for c in df.columns if VOLATILE.search(c)]
        buf = io.StringIO()
        df.drop(columns=drop).to_csv(buf, sep="\t", index=False)
        return buf.getvalue().encode(), bool(drop)
    return path.read_bytes(), False


def digest(path: Path) -> tuple[str, bool]:
    data, removed = canonical(path)
    return hashlib.sha256(data).hexdigest(), removed


def difference(a: Path, b: Path) -> dict[str, float]:
    """How much two differing outputs differ: voxels, segmentations, weights or table values."""
    name = a.name
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            x, y = np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj)
            if x.shape != y.shape:
                return {"shape_differs": 1.0}
            out = {"max_abs_diff": float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))}
            if np.issubdtype(x.dtype, np.integer) and max(len(np.unique(x)), len(np.unique(y))) <= 64:
                dices = []
                for v in sorted((set(np.unique(x)) | set(np.unique(y))) - {0}):
                    px, py = x == v, y == v
                    den = px.sum() + py.sum()
                    dices.append(1.0 if den == 0 else 2.0 * float((px & py).sum()) / float(den))
                if dices:
                    out["dice"] = float(min(dices))
            return out
        if name.endswith(".pt"):
            import torch

            sa = torch.load(a, weights_only=True, map_location="cpu")["state_dict"]
            sb = torch.load(b, weights_only=True, map_location="cpu")["state_dict"]
            diffs = [float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if k in sb and sa[k].numel()]
            return {"max_abs_diff": max(diffs, default=0.0)}
        if name.endswith(".tsv"):
            x, y = pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t")
            cols = [c for c in x.select_dtypes("number").columns if c in y and not VOLATILE.search(c)]
            if len(x) != len(y) or not cols:
                return {}
            return {"max_abs_diff": float(np.nanmax(np.abs(x[cols].to_numpy(float) - y[cols].to_numpy(float)),
                                                    initial=0.0))}
    except Exception as exc:  # a measurement, never a reason to stop the audit
        log.warning("cannot measure the difference of %s: %s", name, exc)
    return {}


def icc_3_1(data: np.ndarray) -> float:
    """ICC(3,1) of an n subjects x k executions matrix: (MS_R - MS_E) / (MS_R + (k - 1) MS_E)."""
    n, k = data.shape
    grand = data.mean()
    ss_rows = k * ((data.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    ms_r = ss_rows / (n - 1)
    ms_e = ss_err / ((n - 1) * (k - 1))
    den = ms_r + (k - 1) * ms_e
    return float("nan") if den <= 0 else float((ms_r - ms_e) / den)


def metric_variability(trees: list[Path], threshold: float) -> pd.DataFrame:
    """Per model, label and metric: inter-execution SD, inter-subject SD, their ratio, ICC(3,1), alert.
    The metrics are the numeric columns of ``cases.tsv`` (the metrics stage's table)."""
    tables = []
    for i, t in enumerate(trees):
        p = t / "results" / "metrics" / "cases.tsv"
        if p.exists():
            tables.append(pd.read_csv(p, sep="\t").assign(execution=i))
    if len(tables) < 2:
        return pd.DataFrame()
    cases = pd.concat(tables, ignore_index=True)
    metrics = [c for c in cases.columns if c not in ("model", "subject", "label", "status", "execution")
               and pd.api.types.is_numeric_dtype(cases[c])]
    rows = []
    for (model, label), g in cases.groupby(["model", "label"], sort=True):
        for m in metrics:
            wide = g.pivot_table(index="subject", columns="execution", values=m, aggfunc="first").dropna()
            if len(wide) < 2 or wide.shape[1] < 2:
                continue
            x = wide.to_numpy(float)
            # deviations from each subject's first execution: identical executions give exactly 0 (the
            # variance of three equal floats around their computed mean can be 1e-35, not 0)
            within = float(np.sqrt(np.mean(np.var(x - x[:, :1], axis=1, ddof=1))))
            between = float(np.std(x.mean(axis=1), ddof=1))
            ratio = within / between if between > 0 else (0.0 if within == 0 else float("inf"))
            rows.append({"model": model, "label": label, "metric": m, "subjects": len(wide), "executions": x.shape[1],
                         "inter_execution_sd": within, "inter_subject_sd": between, "sd_ratio": ratio,
                         "icc_3_1": icc_3_1(x), "alert": bool(ratio > threshold)})
    return pd.DataFrame(rows)


def compare(trees: list[Path], threads: list[int], stages: list[str],
            names: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per file and per stage: identical across the same-thread executions and across thread counts."""
    ref, ref_threads = trees[0], threads[0]
    names = names or [t.name for t in trees]
    file_rows = []
    for stage in stages:
        files_of_stage = sorted(set().union(*(tree_files(t, stage) for t in trees)))
        for f in files_of_stage:
            d0 = digest(ref / f) if (ref / f).exists() else None
            for t, th, name in zip(trees[1:], threads[1:], names[1:]):
                row: dict[str, Any] = {"stage": stage, "file": f, "execution": name, "threads": th,
                                       "same_threads": th == ref_threads}
                if d0 is None or not (t / f).exists():
                    row.update(identical=False, note="missing in one execution")
                else:
                    d1 = digest(t / f)
                    row.update(identical=d0[0] == d1[0], timing_fields_excluded=d0[1] or d1[1])
                    if d0[0] != d1[0]:
                        row.update(difference(ref / f, t / f))
                file_rows.append(row)
    files = pd.DataFrame(file_rows)
    stage_rows = []
    for stage in stages:
        g = files[files["stage"] == stage] if len(files) else files
        same, other = (g[g["same_threads"]], g[~g["same_threads"]]) if len(g) else (g, g)
        row = {"stage": stage, "files": g["file"].nunique() if len(g) else 0,
               "identical_same_threads": bool(same["identical"].all()) if len(same) else None,
               "identical_across_threads": bool(other["identical"].all()) if len(other) else None,
               "differing_files": int(g.loc[~g["identical"], "file"].nunique()) if len(g) else 0,
               "timing_fields_excluded": int(g.loc[g["timing_fields_excluded"].fillna(False).astype(bool), "file"]
                                             .nunique()) if "timing_fields_excluded" in g else 0}
        for col, agg in (("max_abs_diff", "max"), ("dice", "min")):
            vals = g[col].dropna() if col in g else pd.Series(dtype=float)
            row[f"{agg}_{col}" if col == "dice" else col] = float(getattr(vals, agg)()) if len(vals) else np.nan
        stage_rows.append(row)
    return pd.DataFrame(stage_rows), files


def dashboard(stages: pd.DataFrame, variability: pd.DataFrame, threshold: float, out: str | Path) -> None:
    """Left: per stage, identical or not (same threads / across threads). Right: per metric, the spread
    between executions beside the spread between subjects (SD, log scale), alert where the first exceeds
    ``threshold`` times the second."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(variability[variability["metric"].isin(SHOWN)]) if len(variability) else 0
    fig = Figure(figsize=(13, 0.42 * max(len(stages), n, 6) + 1.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    _stage_grid(left, stages)
    _spread_bars(right, variability, threshold)
    fig.tight_layout()
    from .util import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


SHOWN = ("dice", "hd95", "avg_hd", "vol_pred_mm3")


def _stage_grid(ax: Any, stages: pd.DataFrame) -> None:
    from matplotlib.patches import Rectangle

    cols = ["identical_same_threads", "identical_across_threads"]
    colour = {True: "#2e7d32", False: "#c62828", None: "#bdbdbd"}
    for i, (_, r) in enumerate(stages.iterrows()):
        for j, c in enumerate(cols):
            v = bool(r[c]) if isinstance(r[c], (bool, np.bool_)) else None
            ax.add_patch(Rectangle((j, i), 0.95, 0.9, color=colour[v]))
            ax.text(j + 0.47, i + 0.45, {True: "identical", False: "differs", None: "n/a"}[v], ha="center",
                    va="center", color="white", fontsize=9)
    ax.set_xlim(0, 2)
    ax.set_ylim(len(stages), 0)
    ax.set_yticks([i + 0.45 for i in range(len(stages))], stages["stage"])
    ax.set_xticks([0.47, 1.47], ["same threads", "across threads"])
    ax.set_title("bitwise (SHA-256) across executions")


def _spread_bars(ax: Any, variability: pd.DataFrame, threshold: float) -> None:
    if not len(variability):
        ax.text(0.5, 0.5, "no metrics stage audited", ha="center", va="center")
        ax.set_axis_off()
        return
    v = variability[variability["metric"].isin(SHOWN)].reset_index(drop=True)
    positive = pd.concat([v["inter_execution_sd"], v["inter_subject_sd"]])
    floor = float(positive[positive > 0].min()) / 10 if (positive > 0).any() else 1e-6
    y = np.arange(len(v))
    ax.barh(y - 0.2, np.maximum(v["inter_execution_sd"], floor), height=0.38,
            color=["#c62828" if a else "#2e7d32" for a in v["alert"]], label="between executions")
    ax.barh(y + 0.2, np.maximum(v["inter_subject_sd"], floor), height=0.38, color="#9e9e9e", label="between subjects")
    for i, e in enumerate(v["inter_execution_sd"]):
        if e == 0:
            ax.text(floor * 1.2, i - 0.2, "0 (identical)", va="center", fontsize=7)
    ax.set_yticks(y, [f"{r.model} {r.label} {r.metric}" for r in v.itertuples()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"SD (log scale; red: between executions > {threshold:g} x between subjects)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("metrics: spread between executions and between subjects")


def run(config: Config, main: str | Path, out: Outputs, snakefile: Path = REPO / "Snakefile",
        cores: int = 1) -> pd.DataFrame:
    """The whole audit: executions, comparison, tables, dashboard; returns the per-stage table. ``cores``:
    what each execution may use for independent jobs side by side (never changes a job's threads)."""
    r, cfg = config.repro, config.to_dict()
    main = Path(main).resolve()
    execs = plan(config)
    trees_dir = check_trees(main, r.dir, execs)
    audit = Audit(cfg, main, trees_dir, execs, snakefile, cores, r.vary_seed)
    if r.mode == "chain":
        stage_table, files, metric_trees = audit.chain(stage_range(config))
    else:
        stage_table, files, metric_trees = audit.stagewise([s for s in STAGES if s in r.stages], r.mode == "propagate")
    variability = metric_variability(metric_trees, r.alert_ratio) if metric_trees else pd.DataFrame()
    write_tsv(out.stages, stage_table)
    write_tsv(out.files, files)
    write_tsv(out.variability, variability)
    dashboard(stage_table, variability, r.alert_ratio, out.dashboard)
    lines = summary_lines(config, execs, stage_table, variability)
    write_text(out.summary, "\n".join(lines) + "\n")
    for line in lines:
        (log.warning if line.startswith("ALERT") else log.info)("%s", line)
    return stage_table


def check_trees(main: Path, folder: str, execs: list[tuple[str, int]]) -> Path:
    """The audit's folder: not results/ nor the workflow folder, and no execution tree in it yet."""
    trees_dir = (main / folder).resolve()
    existing = [trees_dir / n for n, _ in execs if (trees_dir / n).exists()]
    if existing:
        raise ReproError(f"audit output tree(s) already exist: {', '.join(map(str, existing))}; remove them "
                         f"(rm -r {trees_dir}) or set repro.dir")
    results = (main / "results").resolve()
    if trees_dir == results or results in trees_dir.parents or trees_dir in results.parents or trees_dir == main:
        raise ReproError(f"repro.dir {folder!r} must be a folder of its own, not results/ or the workflow folder")
    return trees_dir


def waves(threads: list[int], cores: int) -> list[list[int]]:
    """The executions (indices into ``threads``, their thread counts) in groups that run side by side:
    consecutive executions while their threads add up to at most ``cores``; an execution with more
    threads than ``cores`` runs alone."""
    out: list[list[int]] = []
    used = cores + 1
    for k, th in enumerate(threads):
        if used + th > cores:
            out.append([])
            used = 0
        out[-1].append(k)
        used += th
    return out


class Audit:
    """The executions of one audit (name, threads; the k-th seeded seed + k under repro.vary_seed)."""

    def __init__(self, cfg: dict[str, Any], main: Path, trees: Path, execs: list[tuple[str, int]], snakefile: Path,
                 cores: int, vary_seed: bool) -> None:
        self.cfg, self.main, self.trees, self.execs = cfg, main, trees, execs
        self.snakefile, self.cores, self.vary_seed = snakefile, cores, vary_seed
        self.threads = [th for _, th in execs]

    def side_by_side(self, run_one: Callable[[int, int], Path], stages: list[str]) -> list[Path]:
        """``run_one(k, cores)`` for every execution k, as many at once as their threads fit in the job's
        cores (:func:`waves`); the trees in execution order. Jobs keep their threads whatever runs beside
        them, so this changes the audit's wall time, never what it compares. Executions that train run one
        at a time: a training job computes on ``train.compute_threads`` whatever the execution's threads
        (deterministic mode), and two 1-thread executions each training on 2 threads on 2 cores run an
        epoch 10-30x slower."""
        trees: dict[int, Path] = {}
        if "train" in stages and self.cfg.get("deterministic", True):
            groups = [[k] for k in range(len(self.execs))]
        else:
            groups = waves(self.threads, self.cores)
        for wave in groups:
            if len(wave) == 1:
                trees[wave[0]] = run_one(wave[0], self.cores)
                continue
            with ThreadPoolExecutor(len(wave)) as pool:
                for k, tree in zip(wave, pool.map(lambda k: run_one(k, self.threads[k]), wave)):
                    trees[k] = tree
        return [trees[k] for k in range(len(self.execs))]

    def new_trees(self, suffix: str, stages: list[str]) -> list[Path]:
        def run_one(k: int, cores: int) -> Path:
            name, th = self.execs[k]
            return execute(self.cfg, f"{name}{suffix}", th, self.main, self.trees, stages, self.snakefile, cores,
                           k if self.vary_seed else 0)

        return self.side_by_side(run_one, stages)

    def go_on(self, own: list[Path], stage: str) -> list[Path]:
        """``stage`` in each execution's own tree, on its own earlier outputs."""
        def run_one(k: int, cores: int) -> Path:
            name, th = self.execs[k]
            return run_in_tree(own[k], f"{name}/{stage}", [stage], th, self.snakefile, cores)

        return self.side_by_side(run_one, [stage])

    def chain(self, stages: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
        """Every stage from the first chosen to the last, end to end, in every execution."""
        trees = self.new_trees("", stages)
        st, files = compare(trees, self.threads, stages, [n for n, _ in self.execs])
        return st.assign(compared_on="each execution's own outputs (chain)"), files, trees

    def stagewise(self, stages: list[str], propagate: bool) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
        """Each stage alone on the main run's inputs; with ``propagate``, from the first stage whose outputs
        differ on, each execution goes on in its own tree with its own outputs."""
        tables, file_tables, metric_trees, own = [], [], [], None
        for stage in stages:
            if own is None:
                trees, basis = self.new_trees(f"/{stage}", [stage]), "the main run's outputs"
            else:
                trees = self.go_on(own[1], stage)
                basis = f"each execution's own {own[0]} outputs (propagated)"
            st, fi = compare(trees, self.threads, [stage], [n for n, _ in self.execs])
            tables.append(st.assign(compared_on=basis))
            file_tables.append(fi)
            differs = int(st["differing_files"].iloc[0]) > 0
            if propagate and own is None and differs:
                own = (stage, trees)
            if stage == "metrics":
                metric_trees = trees
        return pd.concat(tables, ignore_index=True), pd.concat(file_tables, ignore_index=True), metric_trees


def summary_lines(config: Config, execs: list[tuple[str, int]], stage_table: pd.DataFrame,
                  variability: pd.DataFrame) -> list[str]:
    r = config.repro
    lines = [f"reproducibility audit ({r.mode}): {len(execs)} executions ({', '.join(n for n, _ in execs)}) of "
             f"stages {', '.join(stage_table['stage'])}", stage_table.to_string(index=False)]
    if r.vary_seed:
        lines.append(f"repro.vary_seed: execution k used seed {config.seed} + k (the main run's split): differences "
                     f"measure the results' sensitivity to the seed, not their reproducibility")
    if r.mode == "isolated":
        lines.append("isolated mode: every stage ran on the main run's inputs, so a difference in training did not "
                     "reach inference or the metrics: their variability below is not what training's does to results "
                     "(repro.mode propagate measures it)")
    alerts = variability[variability["alert"]] if len(variability) else variability
    if len(alerts):
        lines.append(f"ALERT: {len(alerts)} metric(s) vary between executions more than {r.alert_ratio:g} x "
                     f"between subjects:\n" + alerts.to_string(index=False))
    elif len(variability):
        lines.append(f"no alert: every metric's inter-execution SD is <= {r.alert_ratio:g} x its inter-subject SD")
    return lines
