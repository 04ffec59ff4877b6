"""Self-configuration from the dataset survey: the plans (nnU-Net's experiment planning, for cohortseg).

Two steps, two files, so that adding a model to a finished study plans, trains and predicts only that model:

- the **dataset plan** (``results/plans/dataset.json``), from the surveys of the cross-validation cases only
  (the split's test subjects influence nothing): target spacing (median per axis; where the coarsest
  median axis is more than ``plans.anisotropy`` times the finest, that axis takes the 10th percentile of its
  spacings, nnU-Net's rule), the preprocessed volume size (the median resampled shape rounded up to a
  multiple of 16), and the normalisation by modality (CT: clip to the pooled foreground's 0.5-99.5
  percentiles, then z-score with its mean and SD; MR and other: per-image z-score);
- a **model plan** per model (``results/plans/models/<model>.json``): its window (the whole volume, or a
  patch shrunk from it, the axis largest relative to the median shape first, in steps of the network's
  divisor) and its batch (at least 2, grown while the step fits and the batch holds at most 5 % of the
  cross-validation voxels), fitted to the budget: on GPU the estimated memory of one training step
  (:func:`step_bytes`) under ``plans.memory_gb``; on CPU the voxels of one batch under ``plans.cpu_voxels``
  (no network is built, so a CPU plan job imports no PyTorch unless ``plans.cpu_memory_estimate``).

Only keys set to ``auto`` take planned values; explicit values win, and the plan records which is which and
says when an explicit value exceeds the budget. A model that does not fit even at the smallest window and
batch is an error naming the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import divisor
from .settings import AUTO, PlansSettings, PreprocessSettings, ResourcesSettings, StageConfig, TrainSettings
from .survey import summarise
from .util import log, write_json, write_rows

SIZE_MULTIPLE = 16  # the preprocessed size is a multiple of 16 whatever the models (adding one changes no volume)
MIN_BATCH = 2
MAX_BATCH_SHARE = 0.05  # nnU-Net: a batch holds at most 5 % of the dataset's voxels
MIN_SIDE = 16
BYTES_FP32 = 4
BYTES_PER_PARAMETER = 16  # weights, gradients and Adam's two moments, float32


@dataclass(frozen=True)
class Config(StageConfig):
    preprocess: PreprocessSettings
    train: TrainSettings
    plans: PlansSettings
    labels: tuple[str, ...]
    resources: ResourcesSettings


class PlanError(ValueError):
    """A model cannot be planned within the budget."""


# -- the dataset plan --------------------------------------------------------------------------------------


def plan_modality(setting: str, summary: dict[str, Any]) -> tuple[str, str]:
    """(mr | ct, why)."""
    if setting != AUTO:
        return setting, "config"
    counts = summary.get("modalities", {})
    ct = counts.get("CT", 0)
    if ct * 2 > summary["n_cases"]:
        return "ct", f"DICOM Modality CT in {ct} of {summary['n_cases']} cases"
    return "mr", f"DICOM Modality {counts} (CT in at most half of the cases: per-image z-score)"


def plan_spacing(setting: Any, anisotropy: float, cases: list[dict[str, Any]]) -> tuple[list[float], str]:
    """Target spacing in RAS axis order and why."""
    if setting != AUTO:
        return [float(s) for s in setting], "config"
    spacings = np.array([c["spacing"] for c in cases], float)
    median = np.median(spacings, axis=0)
    coarse, fine = int(np.argmax(median)), float(median.min())
    if median[coarse] > anisotropy * fine:
        target = median.copy()
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), fine)
        return [round(float(s), 6) for s in target], (f"anisotropic (median ratio {median[coarse] / fine:.2f} > "
                                                     f"{anisotropy}): axis {coarse} from its 10th percentile")
    return [round(float(s), 6) for s in median], "median spacing of the cross-validation cases"


def resampled_shapes(cases: list[dict[str, Any]], spacing: list[float]) -> np.ndarray:
    """Each case's shape at the target spacing (preprocessing's floor(n * old / new))."""
    return np.array([np.maximum(np.floor(np.array(c["shape"], float) * np.array(c["spacing"], float)
                                         / np.array(spacing, float)), 1) for c in cases])


def plan_size(setting: Any, median_shape: np.ndarray) -> tuple[list[int], str]:
    if setting != AUTO:
        return [int(s) for s in setting], "config"
    size = [max(MIN_SIDE, SIZE_MULTIPLE * math.ceil(float(n) / SIZE_MULTIPLE)) for n in median_shape]
    return size, f"median resampled shape {[int(n) for n in median_shape]} rounded up to a multiple of {SIZE_MULTIPLE}"


def plan_normalisation(pp: PreprocessSettings, modality: str, summary: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the normalisation keys of the preprocess section, why)."""
    method = pp.normalisation if pp.normalisation != AUTO else ("ct" if modality == "ct" else "zscore")
    why = "config" if pp.normalisation != AUTO else f"{modality.upper()}: {method}"
    ct = pp.ct.to_dict()
    if method == "ct":
        fg = summary.get("foreground")
        if fg is None and AUTO in (ct["clip"], ct["mean"], ct["sd"]):
            raise PlanError("ct normalisation needs foreground intensities: no cross-validation case has a label voxel")
        if ct["clip"] == AUTO:
            ct["clip"] = [fg["p00_5"], fg["p99_5"]]
        ct["mean"] = fg["mean"] if ct["mean"] == AUTO else ct["mean"]
        ct["sd"] = fg["sd"] if ct["sd"] == AUTO else ct["sd"]
        why += f" (clip {[round(float(c), 2) for c in ct['clip']]}, mean {float(ct['mean']):.2f}, sd {float(ct['sd']):.2f})"
    return {"normalisation": method, "ct": ct}, why


def plan_dataset(pp: PreprocessSettings, ps: PlansSettings, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The dataset plan from the cross-validation cases' surveys."""
    summary = summarise(cases)
    modality, why_modality = plan_modality(ps.modality, summary)
    spacing, why_spacing = plan_spacing(pp.spacing, ps.anisotropy, cases)
    shapes = resampled_shapes(cases, spacing)
    median_shape = np.median(shapes, axis=0)
    size, why_size = plan_size(pp.size, median_shape)
    norm, why_norm = plan_normalisation(pp, modality, summary)
    preprocess = {**pp.to_dict(), "spacing": spacing, "size": size, **norm}
    choices = [{"key": "modality", "value": modality, "source": _source(ps.modality), "why": why_modality},
               {"key": "preprocess.spacing", "value": spacing, "source": _source(pp.spacing), "why": why_spacing},
               {"key": "preprocess.size", "value": size, "source": _source(pp.size), "why": why_size},
               {"key": "preprocess.normalisation", "value": norm["normalisation"], "source": _source(pp.normalisation),
                "why": why_norm}]
    return {"n_cases": len(cases), "modality": modality, "preprocess": preprocess,
            "median_shape": [int(n) for n in median_shape],
            "cv_voxels": int(np.maximum(shapes, np.array(size)).prod(axis=1).sum()),
            "choices": choices, "survey": summary}


def _source(value: Any) -> str:
    return "plan" if value == AUTO else "config"


# -- a model's plan -----------------------------------------------------------------------------------------


def leaf_activations(net: Any, shape: tuple[int, ...]) -> int:
    """Elements of every leaf module's output for one forward pass of an input of ``shape``, on PyTorch's
    meta device (shapes only, no memory): what autograd keeps for the backward pass."""
    import torch

    total = [0]

    def count(module: Any, inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                total[0] += t.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    net.eval()  # the same outputs; training-mode norms would refuse a 1-voxel bottleneck before plan_model can
    try:
        with torch.no_grad():
            net(torch.empty(shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def step_bytes(ts: TrainSettings, n_labels: int, window: list[int], batch: int) -> float:
    """Estimated memory of one training step: float32 activations of every layer (kept for the backward
    pass), 16 bytes per parameter (weights, gradients, Adam's moments), the input and target.
    benchmarks/bench_plan_memory.py compares it with measured CPU peaks."""
    import torch

    from .model import build_model

    with torch.device("meta"):
        net = build_model(ts, n_labels, list(window))
    acts = leaf_activations(net, (batch, 1, *window))
    params = sum(p.numel() for p in net.parameters())
    return float(BYTES_FP32 * acts + BYTES_PER_PARAMETER * params + 2 * BYTES_FP32 * batch * int(np.prod(window)))


class Budget:
    """Whether a (window, batch) step fits: GPU memory (estimated) or CPU voxels per batch."""

    def __init__(self, ps: PlansSettings, target: str, ts: TrainSettings, n_labels: int) -> None:
        self.ps, self.target, self.ts, self.n_labels = ps, target, ts, n_labels

    def fits(self, window: list[int], batch: int) -> bool:
        if self.target == "gpu":
            return step_bytes(self.ts, self.n_labels, window, batch) <= self.ps.memory_gb * 2**30
        return batch * int(np.prod(window)) <= self.ps.cpu_voxels

    def describe(self) -> str:
        if self.target == "gpu":
            return f"GPU step memory <= {self.ps.memory_gb} GB (estimated)"
        return f"CPU batch <= {self.ps.cpu_voxels} voxels"


def plan_target(ps: PlansSettings, ts: TrainSettings, resources: ResourcesSettings) -> str:
    if ps.target != AUTO:
        return ps.target
    return "gpu" if resources.gpus_train > 0 and ts.device != "cpu" else "cpu"


def deep_enough(window: list[int], div: int) -> bool:
    """Whether the network's deepest level gets more than one voxel (instance norm needs two)."""
    return any(w // div >= 2 for w in window)


def shrink_window(name: str, budget: Budget, size: list[int], median_shape: list[int], div: int, batch: int) -> list[int]:
    """The largest window from ``size`` down that fits at ``batch``: one divisor step at a time off the axis
    largest relative to the median shape (nnU-Net's rule)."""
    window = [div * (s // div) for s in size]
    smallest = max(div, MIN_SIDE)
    if not deep_enough(window, div):
        raise PlanError(f"model {name!r}: a {window} window leaves its deepest level 1 voxel (divisor {div}); "
                        f"raise preprocess.size or lower the model's levels")
    while not budget.fits(window, batch):
        axes = [a for a in range(3) if window[a] - div >= smallest
                and deep_enough([w - div if i == a else w for i, w in enumerate(window)], div)]
        if not axes:
            raise PlanError(f"model {name!r}: even a {window} window at batch {batch} exceeds the budget "
                            f"({budget.describe()}); raise the budget, or lower base_filters/levels")
        axis = max(axes, key=lambda a: window[a] / max(median_shape[a], 1))
        window[axis] -= div
    return window


def plan_batch(budget: Budget, window: list[int], cv_voxels: int) -> tuple[int, str]:
    cap = max(MIN_BATCH, int(MAX_BATCH_SHARE * cv_voxels / int(np.prod(window))))
    batch = MIN_BATCH
    while batch < cap and budget.fits(window, batch + 1):
        batch += 1
    why = "the budget" if batch < cap else f"the 5 % cap ({cap})"
    return batch, f"grown from {MIN_BATCH} until {why}"


def plan_model(name: str, ts: TrainSettings, dataset: dict[str, Any], ps: PlansSettings, target: str,
               n_labels: int) -> dict[str, Any]:
    """Window (whole volume or patch) and batch of one model, fitted to the budget."""
    budget = Budget(ps, target, ts, n_labels)
    size, div = list(dataset["preprocess"]["size"]), divisor({"model": ts.model, "levels": ts.levels})
    explicit_batch = None if ts.batch_size == AUTO else int(ts.batch_size)
    if ts.patch.size == AUTO:
        window = shrink_window(name, budget, size, dataset["median_shape"], div, explicit_batch or MIN_BATCH)
        why_window = ("the whole volume fits" if window == size else
                      f"the volume {size} shrunk to fit {budget.describe()}")
    else:
        window = list(ts.patch.size) if ts.patch.size is not None else size
        why_window = "config"
    if not deep_enough(window, div):
        raise PlanError(f"model {name!r}: a {window} window leaves its deepest level 1 voxel (divisor {div}); "
                        f"raise preprocess.size or lower the model's levels")
    if explicit_batch is None:
        batch, why_batch = plan_batch(budget, window, dataset["cv_voxels"])
    else:
        batch, why_batch = explicit_batch, "config"
    estimate = step_bytes(ts, n_labels, window, batch) if target == "gpu" or ps.cpu_memory_estimate else None
    fits = budget.fits(window, batch)
    plan = {"model": name, "family": ts.model, "target": target, "budget": budget.describe(), "divisor": div,
            "window": window, "patch": None if window == size else window, "batch_size": batch,
            "voxels_per_batch": batch * int(np.prod(window)),
            "estimated_step_gb": None if estimate is None else round(estimate / 2**30, 3),
            "fits": fits,
            "choices": [{"key": f"{name}.window", "value": window, "source": _source(ts.patch.size), "why": why_window},
                        {"key": f"{name}.batch_size", "value": batch, "source": _source(ts.batch_size), "why": why_batch}]}
    if not fits:
        log.warning("model %s: the configured window %s x batch %d exceeds the budget (%s)", name, window, batch,
                    budget.describe())
    return plan


# -- the stage ------------------------------------------------------------------------------------------------


def run_dataset(config: Config, surveys: list[dict[str, Any]], out: str) -> dict[str, Any]:
    """The dataset plan of the cross-validation cases' surveys."""
    if not surveys:
        raise PlanError("no cross-validation case to plan from")
    plan = plan_dataset(config.preprocess, config.plans, surveys)
    write_json(out, plan)
    for c in plan["choices"]:
        log.info("plan %s = %s (%s: %s)", c["key"], c["value"], c["source"], c["why"])
    return plan


def run_model(config: Config, name: str, dataset: dict[str, Any], out: str) -> dict[str, Any]:
    """Model ``name``'s plan; ``config.train`` is the model's merged training section."""
    target = plan_target(config.plans, config.train, config.resources)
    plan = plan_model(name, config.train, dataset, config.plans, target, len(config.labels))
    write_json(out, plan)
    log.info("plan %s: window %s, batch %d (%s%s)", name, plan["window"], plan["batch_size"], plan["budget"],
             step_memory_text(plan, ", estimated step {} GB"))
    return plan


PLAN_COLUMNS = ["key", "value", "source", "why"]
NOT_ESTIMATED = "; not estimated on a CPU plan (plans.cpu_memory_estimate)"


def step_memory_text(plan: dict[str, Any], estimated: str, not_estimated: str = "") -> str:
    """``estimated`` with the plan's step memory in its ``{}``, or ``not_estimated`` where the plan made none
    (a CPU plan, whose budget needs no network)."""
    gb = plan["estimated_step_gb"]
    return not_estimated if gb is None else estimated.format(gb)


def run_summary(dataset: dict[str, Any], models: dict[str, dict[str, Any]], out_json: str, out_tsv: str) -> None:
    """plans.json (the dataset plan and every model's) and plans.tsv (every choice, where it came from, why)."""
    write_json(out_json, {"dataset": {k: v for k, v in dataset.items() if k != "choices"},
                          "models": models})
    rows = list(dataset["choices"]) + [c for m in models.values() for c in m["choices"]]
    rows += [{"key": f"{n}.estimated_step_gb", "value": "-" if m["estimated_step_gb"] is None else m["estimated_step_gb"],
              "source": "plan", "why": f"{m['budget']}; fits: {m['fits']}{step_memory_text(m, '', NOT_ESTIMATED)}"}
             for n, m in models.items()]
    write_rows(out_tsv, [{**r, "value": str(r["value"])} for r in rows], PLAN_COLUMNS)


def table(plans: dict[str, Any]) -> str:
    """The plans as a few readable lines (``make plan``, the log)."""
    d = plans["dataset"]
    pp = d["preprocess"]
    lines = [f"dataset plan ({d['n_cases']} cross-validation cases, {d['modality'].upper()}): spacing {pp['spacing']} mm, "
             f"size {pp['size']}, normalisation {pp['normalisation']}, median resampled shape {d['median_shape']}"]
    for name, m in plans["models"].items():
        lines.append(f"  {name:<12} {m['family']:<9} window {m['window']} ({'patch' if m['patch'] else 'whole volume'}), "
                     f"batch {m['batch_size']}{step_memory_text(m, ', ~{} GB a step')} ({m['budget']})")
    return "\n".join(lines)
