"""Segmentation metrics in millimetres: Dice, IoU, HD95, HD, average Hausdorff, volumes.

Distances are computed between surface voxels with an exact Euclidean distance transform
that takes the voxel spacing (so anisotropic volumes are measured in mm). Conventions:
- HD95 = max of the two directed 95th-percentile surface distances (as MONAI and medpy);
- average Hausdorff = mean of the two directed mean surface distances;
- an empty prediction or reference is reported in ``status``: Dice/IoU are 0 (1 when both
  are empty) and the distances are NA with that status, never a silent NaN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from .settings import StageConfig
from .util import log, write_tsv


@dataclass(frozen=True)
class Config(StageConfig):
    labels: tuple[str, ...]

METRICS = ["dice", "iou", "hd95", "hd", "avg_hd", "vol_ref_mm3", "vol_pred_mm3", "vol_diff_mm3", "vol_diff_pct"]


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``."""
    sb = _surface(b)
    dt = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dt[_surface(a)]


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], percentile: float = 95) -> dict[str, Any]:
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
                   hd95=np.nan, hd=np.nan, avg_hd=np.nan)
        return out
    d_pr = directed_distances(pred, ref, spacing)
    d_rp = directed_distances(ref, pred, spacing)
    out.update(
        status="ok",
        dice=2.0 * inter / (np_ + nr),
        iou=inter / (np_ + nr - inter),
        hd95=float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))),
        hd=float(max(d_pr.max(), d_rp.max())),
        avg_hd=float((d_pr.mean() + d_rp.mean()) / 2.0),
    )
    return out


def evaluate_case(pred_path: str | Path, ref_path: str | Path, labels: list[str]) -> list[dict[str, Any]]:
    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    if pred_img.shape != ref_img.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: prediction grid {pred_img.shape} differs from reference grid {ref_img.shape}")
    pred, ref = np.asanyarray(pred_img.dataobj), np.asanyarray(ref_img.dataobj)
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    rows = []
    for v, name in enumerate(labels, start=1):
        rows.append({"label": name, **case_metrics(pred == v, ref == v, spacing)})
    return rows


def summarise(cases: pd.DataFrame) -> pd.DataFrame:
    """mean, sd, median per model (each fold, the pooled cross-validation, the ensemble), label and metric."""
    groups = []
    for model, grp in cases.groupby("model", sort=True):
        groups.append((model, grp))
    folds = cases[cases["model"].str.startswith("fold")]
    if folds["model"].nunique() > 1:
        groups.append(("cv_pooled", folds))
    rows = []
    for model, grp in groups:
        for label, g in grp.groupby("label", sort=False):
            for m in METRICS:
                vals = pd.to_numeric(g[m], errors="coerce").dropna()
                rows.append({"model": model, "label": label, "metric": m, "n": len(vals), "n_cases": len(g),
                             "mean": vals.mean() if len(vals) else np.nan,
                             "sd": vals.std(ddof=1) if len(vals) > 1 else np.nan,
                             "median": vals.median() if len(vals) else np.nan})
    return pd.DataFrame(rows)


def run(config: Config, pairs: list[tuple[str, str, str, str]], train_infos: list[str], pred_infos: list[str],
        cases_out: str | Path, summary_out: str | Path, timing_out: str | Path) -> pd.DataFrame:
    """``pairs``: (model, subject, prediction path, reference path)."""
    rows = []
    for model, subject, pred, ref in pairs:
        for r in evaluate_case(pred, ref, list(config.labels)):
            rows.append({"model": model, "subject": subject, **r})
    cols = ["model", "subject", "label", "status"] + METRICS
    cases = pd.DataFrame(rows, columns=cols)
    summary = summarise(cases)
    timing = []
    for p in train_infos:
        info = json.loads(Path(p).read_text())
        timing.append({"step": "train", "model": f"fold{info['fold']}", "subject": "", "seconds": info["train_seconds_total"],
                       "epochs": info["epochs_run"], "device": info["device"]})
    for p in pred_infos:
        info = json.loads(Path(p).read_text())
        timing.append({"step": "predict", "model": info["model"], "subject": info["subject"], "seconds": info["seconds"],
                       "epochs": np.nan, "device": info["device"]})
    write_tsv(cases_out, cases)
    write_tsv(summary_out, summary)
    write_tsv(timing_out, pd.DataFrame(timing, columns=["step", "model", "subject", "seconds", "epochs", "device"]))
    dice = summary[(summary["metric"] == "dice")][["model", "label", "n", "mean", "sd", "median"]]
    log.info("Dice:\n%s", dice.to_string(index=False))
    return cases
