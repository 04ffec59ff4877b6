"""A radiologist's mask stored as DICOM SEG (BINARY, FRACTIONAL or LABELMAP), read with highdicom onto the
converted image's grid, for ``masks`` files that are DICOM SEG (``prepare`` imports them like NIfTI masks;
an RTSTRUCT goes to ``rtstruct``).

Each frame of the SEG carries its own plane (position, orientation, pixel spacing), so the mask is placed by
its own geometry, not by the order of the source slices: every pixel maps to a voxel centre of the image
(``dicomgeom``; a SEG of another grid is refused with how far off it lies). Segments map to the config's
``labels`` by segment label (case-insensitive), else by its segmented property type code (masks.segment_codes);
a generic label ("Segment_1") maps by its segment number.
Refused with the reason: a SEG that references neither the selected series nor its frame of reference (or
names instances the series does not hold), a segment label the config does not declare, an empty segment,
segments that overlap, frames outside the image. FRACTIONAL segments count where the fraction is at least one half.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .dicomgeom import GeometryError, frame_voxels, series_identity

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}


class MaskError(ValueError):
    """A DICOM SEG that cannot become the subject's label image (the reason says why)."""


def is_dicom(path: str | Path) -> bool:
    """A DICOM Part 10 file (preamble + DICM), whatever its name."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


GENERIC = re.compile(r"^(segment[ _-]?)?\d+$", re.I)  # "Segment_1", "segment 2", "3": no name, a number


def label_values(segments: dict[int, str], labels: tuple[str, ...],
                 codes: dict[int, tuple[str, str]] | None = None,
                 label_codes: dict[str, Any] | None = None) -> dict[int, int]:
    """Segment number -> label value (1-based index in ``labels``): by segment label (case-insensitive); else by
    its segmented property type code (``codes``: number -> (value, scheme)) among ``masks.segment_codes``
    (``label_codes``: label -> [[value, scheme], ...]); else a generic label ("Segment_1", "2") by its number."""
    wanted = {name.lower(): i + 1 for i, name in enumerate(labels)}
    by_code = {(str(v), str(scheme).upper()): wanted[name.lower()] for name, pairs in (label_codes or {}).items()
               if name.lower() in wanted for v, scheme in pairs}
    out = {}
    for number, name in sorted(segments.items()):
        code = (codes or {}).get(number)
        if name.lower() in wanted:
            out[number] = wanted[name.lower()]
        elif code is not None and (code[0], code[1].upper()) in by_code:
            out[number] = by_code[(code[0], code[1].upper())]
        elif GENERIC.match(name.strip()) and number <= len(labels):
            out[number] = number
        else:
            what = f" (code {code[0]} {code[1]})" if code else ""
            raise MaskError(f"segment {number} {name!r}{what} is not declared in the config's labels {list(labels)}"
                            + (" nor in masks.segment_codes" if label_codes else ""))
    return out


def segment_codes(seg: Any) -> dict[int, tuple[str, str]]:
    """Segment number -> (code value, coding scheme) of its segmented property type, where it has one."""
    out = {}
    for s in seg.SegmentSequence:
        item = (s.get("SegmentedPropertyTypeCodeSequence") or [None])[0]
        if item is not None and item.get("CodeValue"):
            out[int(s.SegmentNumber)] = (str(item.CodeValue), str(item.get("CodingSchemeDesignator", "")))
    return out


def _frame_planes(seg: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    shared = seg.SharedFunctionalGroupsSequence[0]

    def item(fr: Any, name: str) -> Any:
        if name in fr:
            return getattr(fr, name)[0]
        if name in shared:
            return getattr(shared, name)[0]
        raise MaskError(f"the SEG's frames carry no {name}: its geometry is unknown")

    return [(np.asarray(item(fr, "PlanePositionSequence").ImagePositionPatient, float),
             np.reshape(np.asarray(item(fr, "PlaneOrientationSequence").ImageOrientationPatient, float), (2, 3)),
             np.asarray(item(fr, "PixelMeasuresSequence").PixelSpacing, float))
            for fr in seg.PerFrameFunctionalGroupsSequence]


def _frame_segments(seg: Any, n_frames: int) -> list[int] | None:
    """The segment number of each frame (None: LABELMAP, whose pixel values are segment numbers)."""
    if str(seg.SegmentationType) == "LABELMAP":
        return None
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = []
    for fr in seg.PerFrameFunctionalGroupsSequence[:n_frames]:
        ident = fr if "SegmentIdentificationSequence" in fr else shared  # one segment: shared by every frame
        out.append(int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
    return out


def check_references(seg: Any, files: list[str] | None) -> None:
    """Refuse a SEG that references neither the selected series (``files``) nor its frame of reference, or
    that names instances of the selected series it does not hold. None: no DICOM series (geometry decides)."""
    if not files:
        return
    target = series_identity(files)
    refs = {str(se.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in se.get("ReferencedInstanceSequence", [])}
            for se in seg.get("ReferencedSeriesSequence", [])}
    own = set(refs) & target["series"]
    if own:
        missing = set().union(*(refs[s] for s in own)) - target["instances"]
        if missing:
            raise MaskError(f"the SEG names {len(missing)} instance(s) of the selected series that the series does "
                            "not hold: it was made from another version of the series")
        return
    if str(seg.get("FrameOfReferenceUID", "")) in target["frames"]:
        return
    raise MaskError(f"the SEG references {len(refs)} series, none of them the selected series, and not its frame "
                    "of reference: it was made on another image")


def seg_to_label(path: str | Path, affine: np.ndarray, shape: tuple[int, ...], labels: tuple[str, ...],
                 series_files: list[str] | None = None, label_codes: dict[str, Any] | None = None) -> np.ndarray:
    """The SEG at ``path`` as a uint8 label volume of the image grid (``affine``, ``shape``); ``series_files``:
    the selected series' DICOM files, for the reference check (None: geometry only)."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is this file's reason
        raise MaskError(f"not a readable DICOM SEG ({type(e).__name__}: {e})") from None
    if str(seg.SOPClassUID) not in SEG_CLASSES:
        raise MaskError(f"SOP class {seg.SOPClassUID} is not a Segmentation")
    check_references(seg, series_files)
    segments = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) > 0}
    if not segments:
        raise MaskError("the SEG declares no segment")
    values = label_values(segments, labels, segment_codes(seg), label_codes)
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = (pixels.astype(np.float64) / float(seg.MaximumFractionalValue) >= 0.5).astype(np.uint8)
    try:
        voxels = frame_voxels(_frame_planes(seg), int(seg.Rows), int(seg.Columns), affine, shape)
    except GeometryError as e:
        raise MaskError(f"the SEG does not lie on the selected series' grid: {e}") from None
    per_frame = _frame_segments(seg, pixels.shape[0])
    out = np.zeros(shape[:3], dtype=np.uint8)
    owner = np.zeros(shape[:3], dtype=np.int32)  # which segment set the voxel (overlap check)
    counts = dict.fromkeys(segments, 0)
    for f in range(pixels.shape[0]):
        frame = pixels[f]
        idx = voxels[f]
        for number in ([per_frame[f]] if per_frame is not None else sorted(segments)):
            hit = (frame > 0) if per_frame is not None else (frame == number)
            if not hit.any():
                continue
            if number not in values:
                raise MaskError(f"frame {f + 1} belongs to segment {number}, which the SEG does not declare")
            i, j, k = idx[hit, 0], idx[hit, 1], idx[hit, 2]
            clash = (owner[i, j, k] != 0) & (owner[i, j, k] != number)
            if clash.any():
                other = int(owner[i, j, k][clash][0])
                raise MaskError(f"segments {segments.get(other, other)!r} and {segments[number]!r} overlap in "
                                f"{int(clash.sum())} voxels: a label image needs one label per voxel")
            owner[i, j, k] = number
            out[i, j, k] = values[number]
            counts[number] += int(hit.sum())
    empty = sorted(segments[n] for n, c in counts.items() if c == 0)
    if empty:
        raise MaskError(f"segment(s) {empty} are empty")
    return out
