"""DICOM frame geometry against a NIfTI grid, shared by the DICOM SEG writer (``dicomseg``) and the readers of
masks stored as DICOM SEG (``dicommask``) or RTSTRUCT (``rtstruct``): every pixel of every frame mapped through
the frame's position, orientation and pixel spacing (LPS, mm) into the NIfTI's voxel grid (RAS affine); and
the identity (series, frame of reference, instances) of the series a mask must refer to."""

from __future__ import annotations

from typing import Any

import numpy as np

GRID_TOLERANCE = 0.05  # voxels: a pixel centre further than this from a voxel centre is not on the grid


def series_identity(files: list[str]) -> dict[str, Any]:
    """Series UID, frame of reference and instance UIDs of the selected series (headers only)."""
    import pydicom

    series, frames, instances = set(), set(), set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"])
        series.add(str(ds.get("SeriesInstanceUID", "")))
        frames.add(str(ds.get("FrameOfReferenceUID", "")))
        instances.add(str(ds.get("SOPInstanceUID", "")))
    return {"series": series - {""}, "frames": frames - {""}, "instances": instances - {""}}


class GeometryError(ValueError):
    """Frames that do not lie on the image's grid (the message says how far off, and which frame)."""


def frame_planes(dss: list[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(position, orientation 2x3, pixel spacing [row, column]) of every frame, in highdicom's frame order."""
    if len(dss) == 1 and "PerFrameFunctionalGroupsSequence" in dss[0]:
        ds = dss[0]
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
        out = []
        for fr in ds.PerFrameFunctionalGroupsSequence:
            def item(name: str, fr: Any = fr) -> Any:
                if name in fr:
                    return getattr(fr, name)[0]
                if shared is not None and name in shared:
                    return getattr(shared, name)[0]
                raise GeometryError(f"multi-frame instance without {name}")
            out.append((np.asarray(item("PlanePositionSequence").ImagePositionPatient, float),
                        np.reshape(np.asarray(item("PlaneOrientationSequence").ImageOrientationPatient, float), (2, 3)),
                        np.asarray(item("PixelMeasuresSequence").PixelSpacing, float)))
        return out
    return [(np.asarray(d.ImagePositionPatient, float), np.reshape(np.asarray(d.ImageOrientationPatient, float), (2, 3)),
             np.asarray(d.PixelSpacing, float)) for d in dss]


def frame_voxels(planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int, cols: int,
                 affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Integer voxel indices (frames, rows, cols, 3) of every source pixel in the NIfTI grid; a GeometryError if a
    pixel is off the grid's voxel centres or outside the volume."""
    inv = np.linalg.inv(affine)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    out = np.empty((len(planes), rows, cols, 3), dtype=np.int64)
    for f, (pos, iop, spacing) in enumerate(planes):
        # DICOM: the first orientation vector runs along a row (increasing column), the second down a column
        lps = pos + c[..., None] * spacing[1] * iop[0] + r[..., None] * spacing[0] * iop[1]
        ijk = (lps @ lps_to_ras.T) @ inv[:3, :3].T + inv[:3, 3]
        near = np.rint(ijk)
        off = float(np.abs(ijk - near).max())
        if off > GRID_TOLERANCE:
            raise GeometryError(f"frame {f + 1} is not on the converted image's grid (a pixel lies {off:.2f} voxel "
                           "from the nearest voxel centre: was the series resampled on conversion?)")
        if (near < 0).any() or (near >= np.asarray(shape[:3])).any():
            raise GeometryError(f"frame {f + 1} reaches outside the converted image {tuple(shape[:3])}")
        out[f] = near.astype(np.int64)
    return out


def volume_to_frames(volume: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """The label volume sampled at every source pixel: (frames, rows, cols)."""
    return volume[voxels[..., 0], voxels[..., 1], voxels[..., 2]]


def frames_to_volume(frames: np.ndarray, voxels: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """The frames scattered back into the grid, and how many voxels no source pixel covers."""
    vol = np.zeros(shape[:3], dtype=frames.dtype)
    hit = np.zeros(shape[:3], dtype=bool)
    vol[voxels[..., 0], voxels[..., 1], voxels[..., 2]] = frames
    hit[voxels[..., 0], voxels[..., 1], voxels[..., 2]] = True
    return vol, int((~hit).sum())
