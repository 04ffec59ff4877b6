"""Comparing a converted image with a reference conversion: voxel grid and voxel values.

Both images are first brought to the closest canonical (RAS+) orientation, so a converter that
stores the same grid with another axis order or direction still compares equal. The grid is
equal when the shapes match, the voxel centres of the corner voxels agree within ``tol_mm`` and
the axis directions within ``tol_rad``; voxel values are compared exactly, or after the linear
rescale (slope, intercept) that maps one onto the other when both are stored as integers and
one converter applied the DICOM rescale and the other did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .util import import_nibabel

nib = import_nibabel()


@dataclass
class Comparison:
    shape: tuple[int, ...]
    ref_shape: tuple[int, ...]
    same_shape: bool
    max_offset_mm: float  # largest distance between corresponding corner voxel centres
    max_angle_rad: float  # largest angle between corresponding axes
    zooms_diff: float
    voxels: str  # identical | rescaled(slope,intercept) | differ | n/a
    max_abs_diff: float

    def grid_ok(self, tol_mm: float = 1e-3, tol_rad: float = 1e-4) -> bool:
        return self.same_shape and self.max_offset_mm <= tol_mm and self.max_angle_rad <= tol_rad

    def ok(self, tol_mm: float = 1e-3, tol_rad: float = 1e-4) -> bool:
        return self.grid_ok(tol_mm, tol_rad) and self.voxels != "differ"


def canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        img = nib.Nifti1Image(data[..., 0], img.affine, img.header)
    return nib.as_closest_canonical(img)


def _corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    return (affine @ idx.T).T[:, :3]


def _angles(a: np.ndarray, b: np.ndarray) -> float:
    worst = 0.0
    for ax in range(3):
        u, v = a[:3, ax], b[:3, ax]
        c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        worst = max(worst, float(np.arccos(np.clip(c, -1.0, 1.0))))
    return worst


def compare(img: nib.Nifti1Image, ref: nib.Nifti1Image) -> Comparison:
    a, b = canonical(img), canonical(ref)
    sa, sb = tuple(int(x) for x in a.shape), tuple(int(x) for x in b.shape)
    same = sa == sb
    if same:
        offset = float(np.linalg.norm(_corners(a.affine, sa) - _corners(b.affine, sb), axis=1).max())
    else:
        offset = float("inf")
    angle = _angles(a.affine, b.affine)
    zooms = float(np.abs(np.array(a.header.get_zooms()[:3]) - np.array(b.header.get_zooms()[:3])).max())
    voxels, diff = "n/a", float("nan")
    if same:
        # raw stored values first (both converters store the scanner's integers), then scaled values
        x = np.asanyarray(a.dataobj).astype(np.float64)
        y = np.asanyarray(b.dataobj).astype(np.float64)
        diff = float(np.abs(x - y).max()) if x.size else 0.0
        if diff == 0:
            voxels = "identical"
        else:
            voxels = _rescale_match(x, y) or "differ"
    return Comparison(sa, sb, same, offset, angle, zooms, voxels, diff)


def _rescale_match(x: np.ndarray, y: np.ndarray) -> str | None:
    """'rescaled(s,i)' when y == s*x + i exactly for some slope and intercept, else None."""
    xs, ys = x.ravel(), y.ravel()
    if np.ptp(xs) == 0:
        return None
    i0, i1 = int(np.argmin(xs)), int(np.argmax(xs))
    slope = (ys[i1] - ys[i0]) / (xs[i1] - xs[i0])
    inter = ys[i0] - slope * xs[i0]
    if np.allclose(slope * xs + inter, ys, rtol=0, atol=1e-3 * max(1.0, abs(slope))):
        return f"rescaled({slope:g},{inter:g})"
    return None


def compare_summary(img: nib.Nifti1Image, ref: dict[str, Any]) -> dict[str, Any]:
    """Compare with a reference known only by its summary (dcm_qa's regen_summary.jsonl: shape,
    axis codes, affine rounded to 4 decimals). The image is turned to the reference's axis codes,
    then shape and affine elements are compared (the rounding allows 5e-5 per element)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    turned = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(ref["axcodes"]))))
    same = list(turned.shape[:3]) == list(ref["shape"][:3])
    diff = float(np.abs(np.round(turned.affine, 4) - np.array(ref["affine"], dtype=float)).max())
    out = {"same_shape": same, "affine_max_diff": diff, "ok": same and diff <= 1.01e-4}
    if "min" in ref:
        data = np.asanyarray(turned.dataobj)
        out.update(min_equal=float(data.min()) == ref["min"], max_equal=float(data.max()) == ref["max"])
        out["ok"] = out["ok"] and out["min_equal"] and out["max_equal"]
    return out
