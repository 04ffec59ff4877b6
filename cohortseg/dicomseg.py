"""DICOM SEG out: each study prediction as a DICOM Segmentation that a PACS viewer loads beside the series
the model read.

The SEG is written with highdicom (BINARY, one segment per configured label, segment codes from
``dicomseg.segments``, algorithm identification with cohortseg's version and the selected model's id) and
references every instance of the subject's selected series. highdicom copies the patient and study
modules from those source instances, so the SEG carries the patient's identifiers: it is built only in
``private_dir/dicomseg/`` (what goes back to the PACS). ``results/dicomseg/<shard>.json`` records, per
pseudonymous subject, the frames, the voxels per segment and the read-back check, and no identifier.

Geometry: every pixel of every source frame is mapped through the frame's position, orientation and pixel
spacing (LPS) into the converted NIfTI's voxel grid (RAS affine); the mapping must land on voxel centres
(within ``dicomgeom.GRID_TOLERANCE`` of a voxel) and inside the volume, else the subject is refused with the reason
(e.g. a gantry-tilted CT that the converter resampled). The same mapping read backwards scatters the SEG's
frames into the NIfTI grid: the read-back check requires every voxel covered and equal to the prediction.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dicomgeom import GeometryError, frame_planes, frame_voxels, frames_to_volume, volume_to_frames
from .pseudonym import PRIVATE_MODE, ensure_private_dir
from .settings import DicomSegSettings, StageConfig
from .util import atomic_path, read_rows, sha256_file, write_json

log = logging.getLogger(__name__)

# a label without an entry in dicomseg.segments: SNOMED CT "Tissue" / "Tissue" (DICOM CID 7150 / 7151)
DEFAULT_CODE = {"category": ["85756007", "SCT", "Tissue"], "type": ["85756007", "SCT", "Tissue"]}


@dataclass(frozen=True)
class Config(StageConfig):
    study: str
    labels: tuple[str, ...]
    dicomseg: DicomSegSettings


class SegError(GeometryError):
    """A prediction that cannot become a SEG of its source series (the reason names the subject)."""


def read_source(files: list[str]) -> list[Any]:
    """The series' instances with pixel data, in slice order (single-frame) or as the one multi-frame
    instance; the pixel data are not needed (highdicom reads the headers)."""
    import pydicom

    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    dss = [d for d in dss if "Rows" in d]
    if not dss:
        raise SegError("the series has no image instance")
    if len(dss) == 1 and int(getattr(dss[0], "NumberOfFrames", 1) or 1) > 1:
        return dss
    normal = np.cross(*np.reshape(np.asarray(dss[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(dss, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def coded(code: list[str]) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=str(code[0]), scheme_designator=str(code[1]), meaning=str(code[2]))


def segment_descriptions(labels: tuple[str, ...], segments: dict[str, Any], model_id: str, model_name: str) -> list[Any]:
    """One BINARY segment per label (numbered as the label values), coded from ``dicomseg.segments``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    algo = hd.AlgorithmIdentificationSequence(
        name=f"cohortseg {model_name}"[:64], version=__version__, family=codes.cid7162.ArtificialIntelligence,
        source="cohortseg", parameters={"model_id": model_id})
    out = []
    for n, name in enumerate(labels, start=1):
        code = {**DEFAULT_CODE, **segments.get(name, {})}
        out.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=coded(code["category"]),
            segmented_property_type=coded(code["type"]), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_uid=hd.UID(), tracking_id=f"cohortseg {name}"))
    return out


def build_seg(source: list[Any], frames: np.ndarray, descriptions: list[Any], model_name: str) -> Any:
    """The highdicom Segmentation of ``frames`` (label values, frame order of ``source``)."""
    import highdicom as hd

    from . import __version__

    return hd.seg.Segmentation(
        source_images=source, pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=9901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="cohortseg", manufacturer_model_name=f"cohortseg {model_name}"[:64],
        software_versions=__version__, device_serial_number="cohortseg",
        series_description=f"cohortseg {model_name}"[:64])


def read_back(seg_path: str | Path, source: list[Any], n_labels: int) -> np.ndarray:
    """The SEG file read with highdicom as label frames (frames, rows, cols) in the frame order of ``source``."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    numbers = list(range(1, n_labels + 1))
    if len(source) == 1 and int(getattr(source[0], "NumberOfFrames", 1) or 1) > 1:
        n = int(source[0].NumberOfFrames)
        return np.asarray(seg.get_pixels_by_source_frame(
            source_sop_instance_uid=source[0].SOPInstanceUID, source_frame_numbers=list(range(1, n + 1)),
            segment_numbers=numbers, combine_segments=True, assert_missing_frames_are_empty=True))
    return np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source], segment_numbers=numbers,
        combine_segments=True, assert_missing_frames_are_empty=True))


def write_subject_seg(prediction: str | Path, files: list[str], out: str | Path, labels: tuple[str, ...],
                      segments: dict[str, Any], model_id: str, model_name: str) -> dict[str, Any]:
    """Write one subject's SEG to ``out`` (atomically) and check it: read back and scattered into the
    prediction's grid it must cover every voxel and equal the prediction. Returns the identifier-free record."""
    import nibabel as nib

    img = nib.load(str(prediction))
    pred = np.asarray(img.dataobj).astype(np.int64)
    if pred.ndim != 3:
        raise SegError(f"the prediction has {pred.ndim} dimensions, expected 3")
    if pred.min() < 0 or pred.max() > len(labels):
        raise SegError(f"the prediction holds values outside 0..{len(labels)} (labels {list(labels)})")
    source = read_source(files)
    rows, cols = int(source[0].Rows), int(source[0].Columns)
    try:
        voxels = frame_voxels(frame_planes(source), rows, cols, img.affine, pred.shape)
    except GeometryError as e:
        raise SegError(str(e)) from None
    frames = volume_to_frames(pred, voxels)
    seg = build_seg(source, frames, segment_descriptions(labels, segments, model_id, model_name), model_name)
    with atomic_path(out, mode=PRIVATE_MODE) as tmp:  # it carries the patient's identifiers
        seg.save_as(tmp)
    back, uncovered = frames_to_volume(read_back(out, source, len(labels)).astype(np.int64), voxels, pred.shape)
    differ = int((back != pred).sum())
    if uncovered or differ:
        Path(out).unlink()
        raise SegError(f"read-back check failed: {uncovered} voxels of the prediction have no source pixel, "
                       f"{differ} differ")
    return {"frames": int(frames.shape[0]), "rows": rows, "cols": cols,
            "voxels": {name: int((pred == n).sum()) for n, name in enumerate(labels, start=1)},
            "readback_equal": True, "readback_voxels": int(pred.size)}


def model_identity(selection: str | Path) -> tuple[str, str]:
    """(name, id) of the study's selected predictor: its candidate and the hash of the selection file that
    binds it (the models' manifests and their SHA-256s are in that selection's inputs)."""
    sel = json.loads(Path(selection).read_text())
    name = str(sel.get("selected", {}).get("candidate", "selected"))
    return name, f"{name}-{sha256_file(selection)[:12]}"


def run(config: Config, shard_manifest: str | Path, included_tsv: str | Path, series_files_json: str | Path,
        selection: str | Path, seg_dir: str | Path, record_out: str | Path) -> dict[str, Any]:
    """The stage: a SEG per predicted subject of the shard in ``seg_dir`` (private), the pseudonymous record
    in ``record_out``. A subject that cannot be written gets its reason in the record; the others go on."""
    from tqdm import tqdm

    predictions = json.loads(Path(shard_manifest).read_text())["predictions"]
    series_of = {r["subject"]: r["series"] for r in read_rows(included_tsv)}
    series_files = json.loads(Path(series_files_json).read_text())
    name, model_id = model_identity(selection)
    ensure_private_dir(Path(seg_dir).parent)  # mode 700, like private_dir itself
    ensure_private_dir(seg_dir)
    subjects: dict[str, Any] = {}
    for subject in tqdm(sorted(predictions), desc="DICOM SEG", unit="subject"):
        t0 = time.time()
        try:
            files = series_files[series_of[subject]]
            rec = write_subject_seg(predictions[subject]["prediction"], files, Path(seg_dir) / f"{subject}.dcm",
                                    config.labels, config.dicomseg.segments, model_id, name)
            subjects[subject] = {"status": "ok", **rec}
            log.info("%s: DICOM SEG of %d frames in %.2f s", subject, rec["frames"], time.time() - t0)
        except (SegError, KeyError, ValueError, OSError) as e:  # noqa: PERF203 - one subject's error stays its own
            reason = str(e) if not isinstance(e, KeyError) else f"no selected series for {e}"
            log.warning("%s: no DICOM SEG: %s", subject, reason)
            subjects[subject] = {"status": "failed", "reason": reason}
    record = {"model": name, "model_id": model_id, "subjects": subjects,
              "n_written": sum(s["status"] == "ok" for s in subjects.values())}
    write_json(record_out, record)
    log.info("%d of %d subjects written as DICOM SEG", record["n_written"], len(subjects))
    return record
