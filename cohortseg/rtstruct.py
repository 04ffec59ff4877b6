"""A radiologist's mask stored as RTSTRUCT, rasterised onto the converted image's grid with checked geometry.

Why our own rasteriser: rt-utils (the usual reader) fills polygons in the order of the source slices with
OpenCV, trusts the slice a contour's instance reference names and does not check that a contour lies on a
slice plane at all; highdicom does not read RTSTRUCT. Here every contour point goes through the NIfTI's own
affine (LPS -> RAS -> voxel), so a contour is placed by where it is, whatever the series' slice order or
orientation, and refused when it is not on a slice plane of the grid or reaches outside the image.

Rules, each refusal a MaskError whose message names the ROI:
- References: the RTSTRUCT must reference the selected series, or (when it references another series)
  share the selected series' frame of reference; when it references the selected series, every instance its
  contours name must be one of the series' instances.
- Contours: CLOSED_PLANAR contours fill the voxels whose centres lie inside them (boundary included); several
  contours of one ROI on one slice combine by the even-odd rule (an inner contour is a hole, as DICOM
  PS3.3 C.8.8.6 describes for the classic "donut" encoding). POINT and OPEN contours mark nothing.
- ROIs map to the config's ``labels`` by ROI name (case-insensitive); a generic name ("ROI-1", "Segment_2")
  by its ROI number's position. An undeclared ROI, an ROI with no filled voxel, or two ROIs that overlap are
  reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dicomgeom import series_identity

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
PLANE_TOLERANCE = 0.25  # voxels: a contour whose plane lies further than this from a slice centre is refused


class RTStructError(ValueError):
    """An RTSTRUCT that cannot become the subject's label image (the reason says why)."""


def referenced_series(ds: Any) -> set[str]:
    return {str(se.SeriesInstanceUID)
            for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
            for st in fr.get("RTReferencedStudySequence", [])
            for se in st.get("RTReferencedSeriesSequence", [])}


def referenced_frames(ds: Any) -> set[str]:
    out = {str(fr.FrameOfReferenceUID) for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
           if "FrameOfReferenceUID" in fr}
    out |= {str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])
            if "ReferencedFrameOfReferenceUID" in r}
    return out


def check_references(ds: Any, target: dict[str, Any] | None) -> bool:
    """Refuse an RTSTRUCT of another series and frame of reference; True when it names the selected series
    itself (its contours' instance references are then checked too)."""
    if target is None:  # no DICOM series behind the image (source: nifti): geometry alone decides
        return False
    if referenced_series(ds) & target["series"]:
        return True
    if referenced_frames(ds) & target["frames"]:
        return False
    n = len(referenced_series(ds))
    raise RTStructError(f"references {n} series, none of them the selected series, and no frame of reference "
                        "of the selected series: it was drawn on another image")


def roi_names(ds: Any) -> dict[int, str]:
    return {int(r.ROINumber): str(r.get("ROIName", "")).strip() for r in ds.get("StructureSetROISequence", [])}


def label_values(rois: dict[int, str], labels: tuple[str, ...]) -> dict[int, int]:
    """ROI number -> label value: by ROI name; a generic name by the ROI's position among the ROIs."""
    import re

    generic = re.compile(r"^((roi|segment|structure)[ _-]?)?\d+$", re.I)
    wanted = {name.lower(): i + 1 for i, name in enumerate(labels)}
    out = {}
    for position, (number, name) in enumerate(sorted(rois.items()), start=1):
        if name.lower() in wanted:
            out[number] = wanted[name.lower()]
        elif generic.match(name) and position <= len(labels):
            out[number] = position
        else:
            raise RTStructError(f"ROI {number} {name!r} is not declared in the config's labels {list(labels)}")
    return out


def contour_voxels(points_lps: np.ndarray, inv_affine: np.ndarray) -> np.ndarray:
    """Contour points (n, 3) in LPS mm -> continuous voxel coordinates (n, 3) of the NIfTI grid."""
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    return ras @ inv_affine[:3, :3].T + inv_affine[:3, 3]


def slice_of(ijk: np.ndarray, shape: tuple[int, ...], roi: str) -> tuple[int, int]:
    """(through-plane axis, slice index) of a planar contour in voxel coordinates; refused when the plane is
    not a slice of the grid or lies outside the image."""
    spread = ijk.max(axis=0) - ijk.min(axis=0)
    axis = int(np.argmin(spread))
    if spread[axis] > PLANE_TOLERANCE:
        raise RTStructError(f"ROI {roi!r}: a contour is not parallel to the image's slices (it spans "
                            f"{spread[axis]:.2f} voxels through the plane): drawn on a reformatted view?")
    depth = float(ijk[:, axis].mean())
    index = int(np.rint(depth))
    if abs(depth - index) > PLANE_TOLERANCE:
        raise RTStructError(f"ROI {roi!r}: a contour lies {abs(depth - index):.2f} voxel off the nearest slice "
                            "centre: the RTSTRUCT does not belong to this grid")
    if not 0 <= index < shape[axis]:
        raise RTStructError(f"ROI {roi!r}: a contour lies on slice {index} along axis {axis}, outside the image "
                            f"{tuple(shape[:3])}")
    return axis, index


def fill_polygon(uv: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres inside (or on) the closed polygon ``uv`` (in-plane voxel coordinates), as a bool image."""
    from matplotlib.path import Path as MplPath

    lo = np.maximum(np.floor(uv.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + 1, np.asarray(shape))
    out = np.zeros(shape, dtype=bool)
    if (hi <= lo).any():
        return out
    a, b = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    centres = np.column_stack([a.ravel(), b.ravel()]).astype(float)
    path = MplPath(uv)
    # matplotlib's radius grows or shrinks the polygon depending on its winding: both signs, so that a
    # centre exactly on the boundary counts whichever way the contour runs
    inside = path.contains_points(centres, radius=1e-6) | path.contains_points(centres, radius=-1e-6)
    out[lo[0]:hi[0], lo[1]:hi[1]] = inside.reshape(a.shape)
    return out


def rasterise_roi(contours: list[Any], inv_affine: np.ndarray, shape: tuple[int, ...], roi: str,
                  instances: set[str] | None) -> np.ndarray:
    """One ROI's closed contours as a bool volume (even-odd across contours on one slice)."""
    out = np.zeros(shape[:3], dtype=bool)
    for c in contours:
        if str(c.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
            continue
        if instances is not None:
            named = {str(r.ReferencedSOPInstanceUID) for r in c.get("ContourImageSequence", [])}
            if named - instances:
                raise RTStructError(f"ROI {roi!r}: a contour names an instance that is not in the selected series")
        pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        if len(pts) < 3:
            continue
        ijk = contour_voxels(pts, inv_affine)
        axis, index = slice_of(ijk, shape, roi)
        inplane = [a for a in range(3) if a != axis]
        plane = fill_polygon(ijk[:, inplane], (shape[inplane[0]], shape[inplane[1]]))
        sl = [slice(None)] * 3
        sl[axis] = index
        out[tuple(sl)] ^= plane
    return out


def rtstruct_to_label(path: str | Path, affine: np.ndarray, shape: tuple[int, ...], labels: tuple[str, ...],
                      series_files: list[str] | None = None) -> np.ndarray:
    """The RTSTRUCT at ``path`` as a uint8 label volume of the image grid; ``series_files``: the selected
    series' DICOM files, for the reference checks (None: geometry only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is this file's reason
        raise RTStructError(f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_CLASS:
        raise RTStructError(f"SOP class {ds.get('SOPClassUID', '?')} is not an RT Structure Set")
    rois = roi_names(ds)
    if not rois:
        raise RTStructError("the RTSTRUCT declares no ROI")
    values = label_values(rois, labels)
    target = series_identity(series_files) if series_files else None
    instances = target["instances"] if check_references(ds, target) else None
    inv = np.linalg.inv(affine)
    contours = {int(rc.ReferencedROINumber): list(rc.get("ContourSequence", []))
                for rc in ds.get("ROIContourSequence", [])}
    out = np.zeros(shape[:3], dtype=np.uint8)
    for number, name in sorted(rois.items()):
        mask = rasterise_roi(contours.get(number, []), inv, shape, name, instances)
        if not mask.any():
            raise RTStructError(f"ROI {number} {name!r} is empty: no closed contour fills a voxel of the image")
        clash = mask & (out > 0)
        if clash.any():
            raise RTStructError(f"ROI {name!r} overlaps another ROI in {int(clash.sum())} voxels: a label image "
                                "needs one label per voxel")
        out[mask] = values[number]
    return out
