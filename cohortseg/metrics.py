"""Segmentation metrics in millimetres: Dice, IoU, HD95, HD, average Hausdorff, volumes.

Distances are computed between surface voxels (voxels of the mask with a 6-neighbour outside it) with
an exact Euclidean distance transform that takes the voxel spacing, so anisotropic volumes are measured
in mm. Conventions (``metrics`` in config):

- HD95, ``metrics.hd95``: ``max_directed`` (default) = the larger of the two directed 95th-percentile
  surface distances, as MONAI's ``compute_hausdorff_distance(percentile=95)``; ``union`` = the 95th
  percentile of both directed distance sets pooled, as medpy's ``hd95``. They differ when one surface is
  much larger than the other.
- average Hausdorff = mean of the two directed mean surface distances (checked in the tests against a
  k-d tree over the surface points).
- An empty prediction against a non-empty reference (or the reverse) has no surface distance: it gets
  the penalty ``metrics.empty_distance`` (default ``diagonal``: the image's diagonal in mm, the largest
  distance the image can hold) for HD95, HD and average HD, Dice/IoU 0, and its ``status`` says why.
  Summaries count these cases (``n_penalised``, ``penalised_share``) beside every mean, so a failed case
  pulls a distance mean up instead of silently leaving it. Both empty: Dice/IoU 1, distances NA (nothing
  to measure), counted in ``n_both_empty``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .settings import MetricsSettings, StageConfig
from .util import format_cell, import_nibabel, log, write_rows

nib = import_nibabel()


@dataclass(frozen=True)
class Config(StageConfig):
    labels: tuple[str, ...]
    metrics: MetricsSettings

METRICS = ["dice", "iou", "hd95", "hd", "avg_hd", "vol_ref_mm3", "vol_pred_mm3", "vol_diff_mm3", "vol_diff_pct"]
DISTANCES = ("hd95", "hd", "avg_hd")
PENALISED = ("empty_prediction", "empty_reference")


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``."""
    sb = _surface(b)
    dt = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dt[_surface(a)]


def hd_percentile(d_pr: np.ndarray, d_rp: np.ndarray, percentile: float, convention: str) -> float:
    """The percentile Hausdorff distance of two directed distance sets by ``convention``."""
    if convention == "union":  # medpy
        return float(np.percentile(np.concatenate([d_pr, d_rp]), percentile))
    if convention == "max_directed":  # MONAI
        return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))
    raise ValueError(f"unknown HD95 convention {convention!r} (max_directed or union)")


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], percentile: float = 95,
                 hd95: str = "max_directed", empty_distance: float = float("nan")) -> dict[str, Any]:
    """Metrics of one label of one case; ``empty_distance`` (mm) is the penalty when exactly one mask is empty."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    voxel = float(np.prod(spacing))
    np_, nr = int(pred.sum()), int(ref.sum())
    inter = int((pred & ref).sum())
    out: dict[str, Any] = {
        "vol_ref_mm3": nr * voxel, "vol_pred_mm3": np_ * voxel, "vol_diff_mm3": (np_ - nr) * voxel,
        "vol_diff_pct": 100.0 * (np_ - nr) / nr if nr else np.nan,
    }
    if np_ == 0 and nr == 0:
        out.update(status="both_empty", dice=1.0, iou=1.0, hd95=np.nan, hd=np.nan, avg_hd=np.nan)
        return out
    if np_ == 0 or nr == 0:
        out.update(status="empty_prediction" if np_ == 0 else "empty_reference", dice=0.0, iou=0.0,
                   hd95=empty_distance, hd=empty_distance, avg_hd=empty_distance)
        return out
    d_pr = directed_distances(pred, ref, spacing)
    d_rp = directed_distances(ref, pred, spacing)
    out.update(
        status="ok",
        dice=2.0 * inter / (np_ + nr),
        iou=inter / (np_ + nr - inter),
        hd95=hd_percentile(d_pr, d_rp, percentile, hd95),
        hd=float(max(d_pr.max(), d_rp.max())),
        avg_hd=float((d_pr.mean() + d_rp.mean()) / 2.0),
    )
    return out


def penalty_distance(settings: MetricsSettings, shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """``metrics.empty_distance`` in mm: the image's diagonal, or the configured number."""
    if settings.empty_distance == "diagonal":
        return float(np.linalg.norm(np.asarray(shape[:3], float) * np.asarray(spacing[:3], float)))
    return float(settings.empty_distance)


def evaluate_case(pred_path: str | Path, ref_path: str | Path, labels: list[str],
                  settings: MetricsSettings) -> list[dict[str, Any]]:
    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    if pred_img.shape != ref_img.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: prediction grid {pred_img.shape} differs from reference grid {ref_img.shape}")
    pred, ref = np.asanyarray(pred_img.dataobj), np.asanyarray(ref_img.dataobj)
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    penalty = penalty_distance(settings, ref_img.shape, spacing)
    return [{"label": name, **case_metrics(pred == v, ref == v, spacing, hd95=settings.hd95, empty_distance=penalty)}
            for v, name in enumerate(labels, start=1)]


def _number(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def summarise(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mean, sd, median per model and predictor (each fold; ``cv_pooled``, the folds' validation subjects
    together; the model's fold ensemble and the study's selection on the test subjects), label and metric,
    with the number and share of penalised cases (one mask empty) and of cases with both masks empty.
    (Plain Python over the rows: the metrics job does not import pandas, a second of its start-up.)"""
    keys = list(dict.fromkeys((c["model"], c["predictor"]) for c in cases))
    groups = [(m, p, [c for c in cases if (c["model"], c["predictor"]) == (m, p)]) for m, p in keys]
    for model in dict.fromkeys(m for m, _ in keys):
        folds = [c for c in cases if c["model"] == model and c["set"] == "cv"]
        if len({c["predictor"] for c in folds}) > 1:
            groups.append((model, "cv_pooled", folds))
    return [row for model, predictor, grp in groups for row in summary_rows(model, predictor, grp)]


def summary_rows(model: str, predictor: str, grp: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label in dict.fromkeys(c["label"] for c in grp):
        g = [c for c in grp if c["label"] == label]
        status = [c.get("status", "ok") for c in g]
        n_penalised, n_both = sum(s in PENALISED for s in status), status.count("both_empty")
        for m in METRICS:
            vals = np.array([v for v in (_number(c.get(m)) for c in g) if not np.isnan(v)])
            rows.append({"model": model, "predictor": predictor, "set": g[0]["set"], "label": label, "metric": m,
                         "n": len(vals), "n_cases": len(g),
                         "mean": float(vals.mean()) if len(vals) else np.nan,
                         "sd": float(vals.std(ddof=1)) if len(vals) > 1 else np.nan,
                         "median": float(np.median(vals)) if len(vals) else np.nan,
                         "n_penalised": n_penalised, "penalised_share": n_penalised / len(g) if g else np.nan,
                         "n_both_empty": n_both})
    return rows


SUMMARY_COLUMNS = ["model", "predictor", "set", "label", "metric", "n", "n_cases", "mean", "sd", "median", "n_penalised",
                   "penalised_share", "n_both_empty"]
CASE_COLUMNS = ["model", "predictor", "set", "subject", "label", "status"] + METRICS
TIMING_COLUMNS = ["step", "model", "predictor", "subject", "seconds", "epochs", "device"]


def timing_rows(train_infos: list[str], pred_infos: list[str]) -> list[dict[str, Any]]:
    """Training time per fold and prediction time per case, from train.json and the predictions' JSON."""
    rows = []
    for p in train_infos:
        info = json.loads(Path(p).read_text())
        rows.append({"step": "train", "model": info["model_name"], "predictor": f"fold{info['fold']}", "subject": "",
                     "seconds": info["train_seconds_total"], "epochs": info["epochs_run"], "device": info["device"]})
    for p in pred_infos:
        info = json.loads(Path(p).read_text())
        model, _, predictor = str(info["model"]).partition("/")
        rows.append({"step": "predict", "model": model, "predictor": predictor, "subject": info["subject"],
                     "seconds": info["seconds"], "epochs": None, "device": info["device"]})
    return rows


# a scored prediction: (model, predictor, set, subject, prediction, reference)
Pair = tuple[str, str, str, str, str, str]


def run(config: Config, pairs: list[Pair], train_infos: list[str], pred_infos: list[str],
        cases_out: str | Path, summary_out: str | Path, timing_out: str | Path) -> list[dict[str, Any]]:
    """Score every pair in its source space; returns the per-case rows."""
    cases = [{"model": model, "predictor": predictor, "set": subset, "subject": subject, **r}
             for model, predictor, subset, subject, pred, ref in pairs
             for r in evaluate_case(pred, ref, list(config.labels), config.metrics)]
    summary = summarise(cases)
    write_rows(cases_out, cases, CASE_COLUMNS)
    write_rows(summary_out, summary, SUMMARY_COLUMNS)
    write_rows(timing_out, timing_rows(train_infos, pred_infos), TIMING_COLUMNS)
    shown = [r for r in summary if r["metric"] in ("dice", "hd95")]
    table = "\n".join(f"{r['model']:>10} {r['predictor']:>10} {r['label']:>12} {r['metric']:>5} n={r['n']:<3} "
                      f"mean={format_cell(r['mean']):>8} sd={format_cell(r['sd']):>8} median={format_cell(r['median']):>8} "
                      f"one_empty={r['n_penalised']}" for r in shown)
    log.info("Dice and HD95 (%s; one mask empty: %s):\n%s", config.metrics.hd95, config.metrics.empty_distance, table)
    return cases
