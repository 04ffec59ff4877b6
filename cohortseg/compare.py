"""The model comparison: the study's models side by side, as a paper reports them.

- ``comparison.tsv``: per model and set (``cv``: pooled cross-validation, each subject predicted by the fold
  that did not train on it; ``test``: the held-out subjects, by each model's fold ensemble and by the study's
  selection), label and metric (Dice, IoU, HD95, average HD, volume difference): n, mean, SD, median and a
  95 % percentile bootstrap CI of the mean (``BOOTSTRAP`` resamples of the cases, seeded).
- ``pairs.tsv``: every pair of models on the same cases: median paired difference (a - b) with its bootstrap
  CI, Wilcoxon signed-rank p and Holm-corrected p (over the pairs of one set, label and metric).
- ``models.tsv``: per model: family, parameters, epochs, training time per fold, prediction time per case,
  peak training memory, and the validation Dice of the final epoch against the selected (best) epoch, per
  fold averaged (the selected epoch is chosen on the fold's validation subjects, so its figure is
  optimistic; the pooled CV figures are computed with the selected epochs). A declared model with a fold
  that did not finish training (``cohortseg compare`` run by hand after a failed fold) is a row of its own:
  ``folds`` counts its finished folds, ``missing_folds`` lists the others, and it is compared nowhere.
- ``learning_curves.png``: every model's folds on one figure (training loss, validation Dice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from .settings import StageConfig
from .util import atomic_path, log, read_rows, write_rows

BOOTSTRAP = 2000
COMPARED = ["dice", "iou", "hd95", "avg_hd", "vol_diff_pct"]


@dataclass(frozen=True)
class Config(StageConfig):
    labels: tuple[str, ...]
    seed: int


def _values(rows: list[dict[str, str]], metric: str) -> dict[str, float]:
    """{subject: value} of the rows with a number for ``metric``."""
    out = {}
    for r in rows:
        try:
            v = float(r[metric])
        except (TypeError, ValueError):
            continue
        if not np.isnan(v):
            out[r["subject"]] = v
    return out


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, stat: Any = np.mean) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    stats = stat(values[idx], axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def groups(cases: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(model, set): rows}: cross-validation rows of each model (its folds pooled), test rows of each model's
    ensemble and of the study's selection."""
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in cases:
        out.setdefault((r["model"], r["set"]), []).append(r)
    return out


def summary_table(grouped: dict[tuple[str, str], list[dict[str, str]]], labels: list[str], seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for (model, subset), grp in grouped.items():
        for label in labels:
            for metric in COMPARED:
                v = np.array(list(_values([r for r in grp if r["label"] == label], metric).values()))
                lo, hi = bootstrap_ci(v, rng)
                rows.append({"model": model, "set": subset, "label": label, "metric": metric, "n": len(v),
                             "mean": float(v.mean()) if len(v) else np.nan,
                             "sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                             "median": float(np.median(v)) if len(v) else np.nan, "ci_low": lo, "ci_high": hi})
    return rows


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = np.argsort(pvalues)
    m, adjusted, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (1 when they are all zero)."""
    from scipy.stats import wilcoxon

    if len(diff) == 0 or not np.any(diff):
        return 1.0
    return float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def pair_table(grouped: dict[tuple[str, str], list[dict[str, str]]], labels: list[str], seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed + 1)
    rows = []
    for subset in dict.fromkeys(s for _, s in grouped):
        models = [m for m, s in grouped if s == subset]
        for label in labels:
            for metric in COMPARED:
                family = []
                for a, b in combinations(models, 2):
                    va = _values([r for r in grouped[(a, subset)] if r["label"] == label], metric)
                    vb = _values([r for r in grouped[(b, subset)] if r["label"] == label], metric)
                    common = sorted(set(va) & set(vb))
                    diff = np.array([va[s] - vb[s] for s in common])
                    lo, hi = bootstrap_ci(diff, rng, np.median)
                    family.append({"set": subset, "label": label, "metric": metric, "model_a": a, "model_b": b,
                                   "n_pairs": len(diff), "median_diff": float(np.median(diff)) if len(diff) else np.nan,
                                   "ci_low": lo, "ci_high": hi, "wilcoxon_p": wilcoxon_p(diff)})
                for row, p in zip(family, holm([r["wilcoxon_p"] for r in family])):
                    row["holm_p"] = p
                rows.extend(family)
    return rows


def model_table(train_infos: list[str], histories: list[str], timing: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per model: size, time, memory and the final- vs selected-epoch validation Dice."""
    per: dict[str, dict[str, Any]] = {}
    for info_path, hist_path in zip(train_infos, histories):
        info = json.loads(Path(info_path).read_text())
        hist = read_rows(hist_path)
        m = per.setdefault(info["model_name"], {"model": info["model_name"], "family": info["train"]["model"],
                                                "n_parameters": info.get("n_parameters"), "folds": [], "final": [],
                                                "selected": [], "seconds": [], "epochs": [], "peak": []})
        m["folds"].append(info["fold"])
        m["final"].append(float(hist[-1]["val_dice"]))
        m["selected"].append(float(info["best_val_dice"]))
        m["seconds"].append(float(info["train_seconds_total"]))
        m["epochs"].append(int(info["epochs_run"]))
        m["peak"].append(float(info.get("peak_memory_mb") or np.nan))
    rows = []
    for name, m in per.items():
        pred = [float(t["seconds"]) for t in timing if t["step"] == "predict" and t["model"] == name]
        rows.append({"model": name, "family": m["family"], "n_parameters": m["n_parameters"], "folds": len(m["folds"]),
                     "epochs_mean": float(np.mean(m["epochs"])), "train_seconds_per_fold": float(np.mean(m["seconds"])),
                     "train_seconds_total": float(np.sum(m["seconds"])),
                     "predict_seconds_per_case": float(np.median(pred)) if pred else np.nan,
                     "peak_train_memory_mb": float(np.nanmax(m["peak"])),
                     "val_dice_final_epoch": float(np.mean(m["final"])),
                     "val_dice_selected_epoch": float(np.mean(m["selected"])), "missing_folds": ""})
    return rows


FOLD_FILES = ("model.pt", "train.json", "history.tsv")


def missing_folds(models_dir: str | Path, models: list[str], n_folds: int) -> dict[str, list[int]]:
    """{model: its folds whose training did not finish} for every declared model (an empty list when all did).
    A fold is finished when its weights, ``train.json`` and ``history.tsv`` exist (train writes them last)."""
    root = Path(models_dir)
    return {m: [k for k in range(n_folds) if not all((root / m / f"fold{k}" / f).is_file() for f in FOLD_FILES)]
            for m in models}


def incomplete_rows(missing: dict[str, list[int]], n_folds: int) -> list[dict[str, Any]]:
    """models.tsv rows of the models with a missing fold: how many folds finished and which did not."""
    return [{"model": m, "folds": n_folds - len(ks), "missing_folds": ",".join(map(str, ks))}
            for m, ks in missing.items() if ks]


def incomplete_lines(missing: dict[str, list[int]], compared: set[str], n_folds: int) -> list[str]:
    """What to tell a user of each declared model the comparison leaves out or holds stale, and why
    (``compared``: the models with complete rows in the comparison on disk)."""
    lines = []
    for m, ks in missing.items():
        if ks:
            folds = ", ".join(f"fold{k}" for k in ks)
            where = ("the comparison's rows of it are from an earlier training, stale" if m in compared else
                     "it is in no comparison and no ensemble")
            lines.append(f"{m}: INCOMPLETE, {len(ks)} of {n_folds} folds did not finish training ({folds}: no "
                         f"{', '.join(FOLD_FILES)}); {where}: see its training logs and rerun the workflow")
        elif m not in compared:
            lines.append(f"{m}: all {n_folds} folds trained, not yet compared (the workflow stopped before "
                         f"compare): rerun the workflow")
    return lines


def learning_curves(train_infos: list[str], histories: list[str], out: str | Path) -> None:
    """Training loss and validation Dice of every model's folds on one figure (a colour per model)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    colours: dict[str, str] = {}
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for info_path, hist_path in zip(train_infos, histories):
        info = json.loads(Path(info_path).read_text())
        hist = read_rows(hist_path)
        name = info["model_name"]
        colour = colours.setdefault(name, palette[len(colours) % len(palette)])
        epochs = [int(r["epoch"]) for r in hist]
        label = name if info["fold"] == 0 else None
        ax1.plot(epochs, [float(r["train_loss"]) for r in hist], color=colour, alpha=0.8, lw=1, label=label)
        ax2.plot(epochs, [float(r["val_dice"]) for r in hist], color=colour, alpha=0.8, lw=1, label=label)
    ax1.set_xlabel("epoch"); ax1.set_ylabel("training loss"); ax1.set_title("training loss (every fold)")
    ax2.set_xlabel("epoch"); ax2.set_ylabel("validation Dice"); ax2.set_ylim(0, 1)
    ax2.set_title("validation Dice (every fold)")
    ax1.legend(); ax2.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})


SUMMARY_COLUMNS = ["model", "set", "label", "metric", "n", "mean", "sd", "median", "ci_low", "ci_high"]
PAIR_COLUMNS = ["set", "label", "metric", "model_a", "model_b", "n_pairs", "median_diff", "ci_low", "ci_high",
                "wilcoxon_p", "holm_p"]
MODEL_COLUMNS = ["model", "family", "n_parameters", "folds", "epochs_mean", "train_seconds_per_fold", "train_seconds_total",
                 "predict_seconds_per_case", "peak_train_memory_mb", "val_dice_final_epoch", "val_dice_selected_epoch",
                 "missing_folds"]


@dataclass(frozen=True)
class Outputs:
    comparison: str
    pairs: str
    models: str
    curves: str


def run(config: Config, cases_tsv: str, timing_tsv: str, train_infos: list[str], histories: list[str],
        out: Outputs, incomplete: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Write the comparison of the models whose folds all finished (``incomplete``: models.tsv rows of the
    others, from :func:`incomplete_rows`; their cases are left out of every table)."""
    labels = list(config.labels)
    left_out = {r["model"] for r in incomplete or []}
    cases = [r for r in read_rows(cases_tsv) if r["set"] in ("cv", "test") and r["model"] not in left_out]
    grouped = groups(cases)
    summary = summary_table(grouped, labels, config.seed)
    write_rows(out.comparison, summary, SUMMARY_COLUMNS)
    write_rows(out.pairs, pair_table(grouped, labels, config.seed), PAIR_COLUMNS)
    models = model_table(train_infos, histories, read_rows(timing_tsv)) + list(incomplete or [])
    write_rows(out.models, models, MODEL_COLUMNS)
    learning_curves(train_infos, histories, out.curves)
    log.info("model comparison (Dice):\n%s", text_table(summary, models))
    return summary


def _num(value: Any, digits: int = 3) -> str:
    """A number from a row (float or TSV string) for a printed table: ``digits`` decimals, NA if missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "NA"
    return "NA" if np.isnan(v) else f"{v:.{digits}f}"


def text_table(summary: list[dict[str, Any]], models: list[dict[str, Any]]) -> str:
    """The comparison as the lines ``make demo`` prints (rows as written or as read back from the TSVs)."""
    lines = [f"{'model':<16} {'set':<5} {'label':<12} {'Dice mean [95% CI]':<26} {'HD95 mean':>9} {'avg HD':>7} {'n':>3}"]
    by = {(r["model"], r["set"], r["label"], r["metric"]): r for r in summary}
    for (model, subset, label, metric), r in by.items():
        if metric != "dice":
            continue
        hd, avg = by[(model, subset, label, "hd95")], by[(model, subset, label, "avg_hd")]
        ci = f"{_num(r['mean'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        lines.append(f"{model:<16} {subset:<5} {label:<12} {ci:<26} {_num(hd['mean'], 2):>9} "
                     f"{_num(avg['mean'], 2):>7} {r['n']:>3}")
    for m in models:
        if m.get("missing_folds"):
            lines.append(f"{m['model']}: INCOMPLETE, folds {m['missing_folds']} did not finish training; not compared")
            continue
        lines.append(f"{m['model']}: {m['n_parameters']} parameters, {_num(m['train_seconds_per_fold'], 1)} s per fold, "
                     f"{_num(m['predict_seconds_per_case'], 2)} s per case, peak memory {_num(m.get('peak_train_memory_mb'), 0)} MB, "
                     f"validation Dice final epoch {_num(m['val_dice_final_epoch'])} / selected epoch "
                     f"{_num(m['val_dice_selected_epoch'])}")
    return "\n".join(lines)
