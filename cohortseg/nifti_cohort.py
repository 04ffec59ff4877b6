"""NIfTI cohorts as input (``source: nifti``): an images + labels folder in the Medical Segmentation
Decathlon / nnU-Net layout (``imagesTr/<case>.nii.gz`` or ``<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``)
or a TSV of paths (columns ``case``, ``image`` and optionally ``label``).

The index step reads every pair once (header and voxels: a few ms per case for brain crops) and writes
the same tables as the DICOM index: one "series" per case under a keyed-hash pseudonym (the case name,
which may carry an identifier, stays in the private id map), with a reason where the pair cannot be
used. The select step then leaves those cases out with their reason in the cohort audit:

- ``unreadable``: not a readable NIfTI file (or a stray file such as macOS ``._`` copies);
- ``not_3d``: image or label not a 3D volume;
- ``nan_image``: NaN or infinite voxels in the image;
- ``geometry_mismatch``: label shape, spacing or affine differs from the image's (no silent resampling
  of a reference segmentation);
- ``undeclared_label``: label values outside ``0..len(labels)`` or not integers;
- ``empty_label``: a label file with no foreground voxel;
- ``duplicate_case``: two images with one case name.

Conversion then writes the image with a fresh header (affine kept, sform/qform code 1, no
description or other free-text field of the source) under the pseudonym.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .pseudonym import Pseudonymiser
from .settings import NiftiSettings
from .util import import_nibabel, log

nib = import_nibabel()


NIFTI_RE = re.compile(r"^(?P<case>.+?)(?:_(?P<channel>\d{4}))?\.nii(?:\.gz)?$")
REASONS = ("unreadable", "not_3d", "nan_image", "geometry_mismatch", "undeclared_label", "empty_label",
           "duplicate_case")


def case_name(filename: str) -> str | None:
    """``hippocampus_001.nii.gz`` / ``BRATS_001_0000.nii.gz`` -> the case name; None for a non-NIfTI name."""
    m = NIFTI_RE.match(filename)
    return m.group("case") if m and not filename.startswith(".") else None


def find_cases(nc: NiftiSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(cases: case, image, label or None) and (stray files: path, reason) of a NIfTI cohort."""
    cases: list[dict[str, Any]] = []
    stray: list[dict[str, Any]] = []
    if nc.table:
        tab = pd.read_csv(nc.table, sep="\t", dtype=str, keep_default_na=False)
        missing = {"case", "image"} - set(tab.columns)
        if missing:
            raise ValueError(f"{nc.table}: missing column(s) {', '.join(sorted(missing))} (need case, image[, label])")
        base = Path(nc.table).parent
        for r in tab.to_dict("records"):
            img = str(base / r["image"]) if not os.path.isabs(r["image"]) else r["image"]
            lab = r.get("label") or None
            if lab and not os.path.isabs(lab):
                lab = str(base / lab)
            cases.append({"case": r["case"], "image": img, "label": lab})
        return cases, stray
    if not nc.images or not Path(nc.images).is_dir():
        raise FileNotFoundError(f"nifti.images: {nc.images} is not a folder")
    images = Path(nc.images)
    labels = Path(nc.labels) if nc.labels else None
    label_files: dict[str, str] = {}
    if labels is not None:
        for f in sorted(labels.iterdir()):
            c = case_name(f.name)
            if c is not None and f.is_file():
                label_files[c] = str(f)
    for f in sorted(images.iterdir()):
        if not f.is_file():
            continue
        c = case_name(f.name)
        if c is None:
            stray.append({"path": str(f), "reason": "unreadable", "detail": "not a NIfTI file name (.nii / .nii.gz)"})
            continue
        cases.append({"case": c, "image": str(f), "label": label_files.get(c)})
    return cases, stray


def _affine_close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return bool(np.allclose(a, b, atol=tol))


def check_case(image: str, label: str | None, n_labels: int, tol: float) -> dict[str, Any]:
    """Geometry and voxel checks of one image/label pair: a row of the index (``status`` ok or a reason)."""
    row: dict[str, Any] = {"status": "ok", "detail": ""}
    try:
        img = nib.load(image)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - any reader error makes the case unusable
        return {"status": "unreadable", "detail": f"image: {type(exc).__name__}"}
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    row.update(shape="x".join(map(str, data.shape)), spacing="x".join(f"{z:g}" for z in zooms),
               n_slices=int(data.shape[2]) if data.ndim >= 3 else 0, slice_thickness=zooms[2] if len(zooms) > 2 else None,
               slice_spacing=zooms[2] if len(zooms) > 2 else None, orientation="".join(nib.aff2axcodes(img.affine)),
               dtype=str(img.get_data_dtype()))
    if data.ndim != 3:
        return {**row, "status": "not_3d", "detail": f"image shape {data.shape}"}
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        return {**row, "status": "nan_image", "detail": f"{int((~np.isfinite(data)).sum())} NaN/infinite voxels"}
    if label is None:
        return row
    try:
        lab = nib.load(label)
        ldata = np.asanyarray(lab.dataobj)
    except Exception as exc:  # noqa: BLE001
        return {**row, "status": "unreadable", "detail": f"label: {type(exc).__name__}"}
    if ldata.ndim == 4 and ldata.shape[3] == 1:
        ldata = ldata[..., 0]
    if ldata.ndim != 3:
        return {**row, "status": "not_3d", "detail": f"label shape {ldata.shape}"}
    lzooms = [float(z) for z in lab.header.get_zooms()[:3]]
    if ldata.shape != data.shape:
        return {**row, "status": "geometry_mismatch", "detail": f"label shape {ldata.shape} != image {data.shape}"}
    if not np.allclose(lzooms, zooms, atol=tol):
        return {**row, "status": "geometry_mismatch", "detail": f"label spacing {lzooms} != image {zooms}"}
    if not _affine_close(lab.affine, img.affine, tol):
        worst = float(np.abs(lab.affine - img.affine).max())
        return {**row, "status": "geometry_mismatch", "detail": f"label affine differs from the image's by up to {worst:.4g}"}
    if not np.all(np.isfinite(ldata)):
        return {**row, "status": "undeclared_label", "detail": "NaN/infinite label values"}
    values = np.unique(ldata)
    bad = [v for v in values.tolist() if v != round(v) or not 0 <= v <= n_labels]
    if bad:
        return {**row, "status": "undeclared_label",
                "detail": f"label values {bad[:5]} not in 0..{n_labels} (config labels)"}
    if values.max() == 0:
        return {**row, "status": "empty_label", "detail": "no foreground voxel"}
    row["label_voxels"] = ";".join(f"{v}:{int((ldata == v).sum())}" for v in range(1, n_labels + 1))
    return row


def build_index(nc: NiftiSettings, n_labels: int, pseudo: Pseudonymiser,
                workers: int = 1) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The series table (one row per case or stray file) and the private maps of a NIfTI cohort."""
    cases, stray = find_cases(nc)
    seen: dict[str, int] = {}
    for c in cases:
        seen[c["case"]] = seen.get(c["case"], 0) + 1
    with ThreadPoolExecutor(max(1, workers)) as pool:
        checks = list(pool.map(lambda c: check_case(c["image"], c["label"], n_labels, nc.tolerance), cases))
    rows, series_files, masks, id_map, file_map = [], {}, {}, {}, {}
    for c, chk in zip(cases, checks):
        subject = pseudo.subject(c["case"])
        series = pseudo.series(f"nifti:{c['image']}")
        id_map[subject] = c["case"]
        file_map[series] = c["image"]
        if seen[c["case"]] > 1:
            chk = {**chk, "status": "duplicate_case", "detail": f"{seen[c['case']]} images with this case name"}
        rows.append({"subject": subject, "study": pseudo.study(f"nifti:{c['case']}"), "series": series,
                     "series_number": 1, "has_label": c["label"] is not None, **chk})
        if chk["status"] == "ok":
            series_files[series] = [c["image"]]
            if c["label"] is not None:
                masks[subject] = c["label"]
    for s in stray:
        series = pseudo.file(s["path"])
        file_map[series] = s["path"]
        rows.append({"subject": "unknown", "study": "", "series": series, "series_number": 0, "has_label": False,
                     "status": s["reason"], "detail": s["detail"]})
    df = pd.DataFrame(rows)
    for col in ("shape", "spacing", "n_slices", "slice_thickness", "slice_spacing", "orientation", "dtype", "label_voxels"):
        if col not in df:
            df[col] = None
    df = df.sort_values(["subject", "series"], kind="stable").reset_index(drop=True)
    counts = df["status"].value_counts().to_dict()
    log.info("NIfTI cohort: %d cases, %d stray files; %s", len(cases), len(stray), counts)
    return df, {"series_files": series_files, "masks": masks, "id_map": id_map, "file_map": file_map}


def select(series: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Included (one row per usable case, ``has_mask`` from its label) and excluded (with reason)."""
    df = series.copy()
    df["reason"] = df["status"].where(df["status"] != "ok")
    df["n_failed_rules"] = df["reason"].notna().astype(int)
    df["geometry_correction"] = ""
    included = df[df["reason"].isna()].drop(columns=["reason", "n_failed_rules"])
    included = included.assign(has_mask=included["has_label"].astype(str).str.lower() == "true")
    included = included.sort_values("subject").reset_index(drop=True)
    excluded = df[df["reason"].notna()].reset_index(drop=True)
    excluded = excluded[["subject", "study", "series", "reason"] +
                        [c for c in excluded.columns if c not in ("subject", "study", "series", "reason")]]
    return included, excluded


def import_image(path: str) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """The source image under a fresh header: same voxels and affine, no free-text field of the source."""
    src = nib.load(path)
    data = np.asanyarray(src.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"image is not 3D (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ValueError("image contains NaN or infinite voxels")
    affine = src.affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    meta = {"tool": "nibabel", "tool_version": nib.__version__, "shape": list(data.shape),
            "zooms": [float(z) for z in img.header.get_zooms()[:3]],
            "orientation": "".join(nib.aff2axcodes(affine)), "dtype": str(data.dtype)}
    return img, meta
