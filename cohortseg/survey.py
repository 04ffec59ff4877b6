"""The dataset survey (nnU-Net's "dataset fingerprint"): what the planner needs to know of each case and of
the cohort. Per case, taken by the prepare stage while the converted image and label are in memory:
voxel spacing and shape, foreground intensities (a seeded sample of at most ``SAMPLE`` voxel values under
the label, and their percentiles), label volumes and bounding-box extents in mm. The cohort summary (``summarise``) gives medians, percentiles and the anisotropy the planner uses.
(Named *survey* so as not to clash with the code-hash ``fingerprint()`` helpers of the rules.) Spacing and
shape are in RAS axis order, the order preprocessing turns every volume to, so a sagittal and an axial
acquisition are summarised axis by axis like the arrays the network sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE = 2_000  # foreground intensity values kept per case (pooled: 600,000 for 300 cases)


def ras_axes(affine: np.ndarray) -> list[int]:
    """For each voxel axis, the RAS axis it becomes after canonical reorientation (as preprocessing does)."""
    from nibabel import orientations

    return [int(a) for a in orientations.io_orientation(np.asarray(affine, float))[:, 0]]


def case_survey(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, n_labels: int,
                modality: str | None = None, seed: int = 0) -> dict[str, Any]:
    """One case's survey: spacing and shape in RAS axis order (as preprocessing reorients), the DICOM
    modality, foreground intensities (mean, SD, 0.5/99.5 percentiles and a seeded sample of at most
    ``SAMPLE`` values), label volumes and extents (mm). ``image`` and ``label`` are on one grid."""
    voxel_spacing = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    axes = ras_axes(affine)
    spacing, shape = [0.0] * 3, [0] * 3
    for voxel_axis, ras in enumerate(axes):
        spacing[ras], shape[ras] = round(float(voxel_spacing[voxel_axis]), 6), int(image.shape[voxel_axis])
    out: dict[str, Any] = {"spacing": spacing, "shape": shape, "modality": modality, "labels": {}}
    if label is None:
        return out
    fg = label > 0
    values = np.asarray(image, dtype=np.float64)[fg]
    if len(values):
        rng = np.random.default_rng(seed)
        sample = values if len(values) <= SAMPLE else rng.choice(values, SAMPLE, replace=False)
        out["foreground"] = {"n_voxels": int(fg.sum()), "mean": float(values.mean()), "sd": float(values.std()),
                             "p00_5": float(np.percentile(values, 0.5)), "p99_5": float(np.percentile(values, 99.5)),
                             "sample": np.round(sample, 4).tolist()}
    for v in range(1, n_labels + 1):
        where = np.argwhere(label == v)
        extent = ((where.max(axis=0) - where.min(axis=0) + 1) * voxel_spacing) if len(where) else np.zeros(3)
        extent_ras = [0.0] * 3
        for voxel_axis, ras in enumerate(axes):
            extent_ras[ras] = round(float(extent[voxel_axis]), 3)
        out["labels"][str(v)] = {"voxels": int(len(where)), "volume_mm3": float(len(where) * voxel_spacing.prod()),
                                 "extent_mm": extent_ras}
    return out


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The cohort: spacing and shape medians and percentiles, anisotropy, foreground intensity statistics
    (over the pooled samples, as nnU-Net's CT normalisation uses them), label volumes."""
    if not cases:
        raise ValueError("the dataset survey has no case")
    spacings = np.array([c["spacing"] for c in cases], float)
    shapes = np.array([c["shape"] for c in cases], float)
    median_spacing = np.median(spacings, axis=0)
    extent_mm = shapes * spacings
    pooled = np.concatenate([np.asarray(c["foreground"]["sample"], float) for c in cases if "foreground" in c] or [np.zeros(0)])
    modalities = [str(c.get("modality") or "").upper() for c in cases]
    out: dict[str, Any] = {
        "n_cases": len(cases),
        "modalities": {m or "unknown": modalities.count(m) for m in sorted(set(modalities))},
        "spacing": {"median": median_spacing.tolist(), "p10": np.percentile(spacings, 10, axis=0).tolist(),
                    "p90": np.percentile(spacings, 90, axis=0).tolist()},
        "shape": {"median": np.median(shapes, axis=0).tolist(), "max": shapes.max(axis=0).tolist()},
        "extent_mm": {"median": np.median(extent_mm, axis=0).tolist(), "max": extent_mm.max(axis=0).tolist()},
        "anisotropy": float(median_spacing.max() / median_spacing.min()),
    }
    if len(pooled):
        out["foreground"] = {"n_sampled": int(len(pooled)), "mean": float(pooled.mean()), "sd": float(pooled.std()),
                             "p00_5": float(np.percentile(pooled, 0.5)), "p99_5": float(np.percentile(pooled, 99.5))}
    labels = sorted({k for c in cases for k in c.get("labels", {})})
    out["labels"] = {k: {"median_volume_mm3": float(np.median([c["labels"][k]["volume_mm3"] for c in cases
                                                                 if k in c.get("labels", {})])),
                         "cases_empty": int(sum(c["labels"].get(k, {}).get("voxels", 0) == 0 for c in cases))}
                     for k in labels}
    return out
