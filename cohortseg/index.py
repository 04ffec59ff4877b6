"""DICOM header index: read every file's header once (never pixel data) into a series table.

``results/cohort/series.tsv`` holds one row per series under pseudonymous ids with the tags
and derived geometry that selection rules use. Identifiers (PatientID, names, dates, UIDs,
paths, institution, study descriptions) never reach it: they stay in ``private_dir``
(mode 600): the pseudonym map, the files of each series, the masks.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from .pseudonym import PRIVATE_MODE, Pseudonymiser, ensure_private_dir
from .util import log, write_json, write_tsv

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
    "Modality", "SeriesDescription", "StudyDescription", "ProtocolName", "ImageType",
    "ContrastBolusAgent", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "SliceThickness", "Rows", "Columns", "StudyDate", "StudyTime", "SeriesNumber", "InstanceNumber",
    "NumberOfFrames", "Manufacturer", "MagneticFieldStrength", "EchoTime", "GantryDetectorTilt",
    "AcquisitionNumber",
]
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
}
CONTRAST_DESC = re.compile(r"\+\s*c\b|\bpost[ _-]?(gad|gd|contrast|kм)|\bgad|\bgd\b|contrast|\bce\b|\+gd|\bkm\b", re.I)
SERIES_COLUMNS = [
    "subject", "study", "series", "status", "series_number", "modality", "sop_class", "is_image",
    "series_description", "image_type", "contrast", "postop", "study_order", "days_from_first",
    "n_files", "n_slices", "n_volumes", "n_frames", "duplicates", "rows", "cols",
    "pixel_spacing_row", "pixel_spacing_col", "slice_spacing", "slice_thickness", "plane",
    "obliquity_deg", "gantry_tilt_deg", "slice_gaps_uneven", "missing_slices", "geometry_consistent",
    "manufacturer", "field_strength",
]


@dataclass
class FileHeader:
    path: str
    status: str  # ok | unreadable | not_dicom | dicomdir
    tags: dict[str, Any]


def _value(ds: pydicom.Dataset, name: str) -> Any:
    v = ds.get(name)
    if v is None:
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        return [x for x in v]
    return v


def read_header(path: str) -> FileHeader:
    """Read the header tags of one file; classify non-DICOM and corrupt files."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        # some exports omit the 128-byte preamble: accept only if real tags come out
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=True)
            if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
                return FileHeader(path, _not_dicom_or_corrupt(path), {})
        except Exception:
            return FileHeader(path, _not_dicom_or_corrupt(path), {})
    except Exception:
        return FileHeader(path, "unreadable", {})
    meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if meta_class == DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
        return FileHeader(path, "dicomdir", {})
    tags: dict[str, Any] = {}
    try:
        for name in HEADER_TAGS:
            v = _value(ds, name)
            if v is None:
                continue
            if name in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
                v = [float(x) for x in v]
            elif name in ("SliceThickness", "MagneticFieldStrength", "EchoTime", "GantryDetectorTilt"):
                v = float(v)
            elif name in ("Rows", "Columns", "SeriesNumber", "InstanceNumber", "NumberOfFrames", "AcquisitionNumber"):
                v = int(v)
            elif name == "ImageType":
                v = "\\".join(str(x) for x in (v if isinstance(v, list) else [v]))
            else:
                v = str(v)
            tags[name] = v
    except Exception:
        return FileHeader(path, "unreadable", {})
    if "SeriesInstanceUID" not in tags:
        return FileHeader(path, "unreadable", {})
    return FileHeader(path, "ok", tags)


def _not_dicom_or_corrupt(path: str) -> str:
    """A file that looks like it was meant to be DICOM is corrupt; anything else is not DICOM."""
    name = os.path.basename(path).lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return "unreadable"
    if head[128:132] == b"DICM" or name.endswith((".dcm", ".ima", ".dicom")) or "." not in name:
        return "unreadable"
    return "not_dicom"


def list_files(root: str | Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            files.append(os.path.join(dirpath, f))
    return files


def read_headers(files: list[str], workers: int = 1) -> list[FileHeader]:
    from tqdm import tqdm

    if workers <= 1 or len(files) < 200:
        return [read_header(f) for f in tqdm(files, desc="headers", unit="file", mininterval=2)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(read_header, files, chunksize=64), total=len(files), desc="headers", unit="file", mininterval=2))


def _plane(normal: np.ndarray) -> tuple[str, float]:
    """Acquisition plane from the slice normal (LPS) and its angle to the nearest axis."""
    a = np.abs(normal) / np.linalg.norm(normal)
    axis = int(np.argmax(a))
    angle = float(np.degrees(np.arccos(np.clip(a[axis], -1, 1))))
    return ("sagittal", "coronal", "axial")[axis], angle


def sop_class_name(uid: str | None) -> str:
    if not uid:
        return "unknown"
    if uid in SECONDARY_CAPTURE_CLASSES:
        return "secondary_capture"
    try:
        name = pydicom.uid.UID(uid).name
    except Exception:
        return "unknown"
    name = name.lower().replace(" image storage", "").replace(" storage", "")
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "unknown"


def summarise_series(headers: list[FileHeader], gap_tol: float) -> dict[str, Any]:
    """Geometry and tag summary of the files of one series."""
    t0 = headers[0].tags
    sop_uids = [h.tags.get("SOPInstanceUID") for h in headers]
    dups = len(sop_uids) - len(set(sop_uids))
    uniq = {h.tags.get("SOPInstanceUID"): h for h in headers}
    hs = list(uniq.values())
    row: dict[str, Any] = {
        "n_files": len(headers), "duplicates": dups,
        "modality": t0.get("Modality", ""), "sop_class": sop_class_name(t0.get("SOPClassUID")),
        "series_description": t0.get("SeriesDescription", ""),
        "image_type": t0.get("ImageType", ""),
        "series_number": t0.get("SeriesNumber", -1),
        "rows": t0.get("Rows"), "cols": t0.get("Columns"),
        "is_image": bool(t0.get("Rows")) and bool(t0.get("Columns")),
        "n_frames": max(int(h.tags.get("NumberOfFrames", 1)) for h in hs),
        "slice_thickness": t0.get("SliceThickness"),
        "manufacturer": t0.get("Manufacturer", ""),
        "field_strength": t0.get("MagneticFieldStrength"),
        "gantry_tilt_deg": abs(float(t0.get("GantryDetectorTilt", 0.0))),
    }
    ps = t0.get("PixelSpacing")
    row["pixel_spacing_row"], row["pixel_spacing_col"] = (ps[0], ps[1]) if ps and len(ps) == 2 else (None, None)
    iops = [h.tags.get("ImageOrientationPatient") for h in hs]
    dims = {(h.tags.get("Rows"), h.tags.get("Columns")) for h in hs}
    consistent = len(dims) == 1
    row.update(n_slices=len(hs), n_volumes=1, slice_spacing=None, plane="unknown", obliquity_deg=None,
               slice_gaps_uneven=False, missing_slices=0)
    if iops[0] is not None and all(i is not None and len(i) == 6 for i in iops):
        iop = np.array(iops[0], dtype=float)
        if any(np.abs(np.array(i) - iop).max() > 1e-3 for i in iops):
            consistent = False
        rdir, cdir = iop[:3], iop[3:]
        normal = np.cross(rdir, cdir)
        if np.linalg.norm(normal) > 0.5:
            row["plane"], row["obliquity_deg"] = _plane(normal)
            ipps = [h.tags.get("ImagePositionPatient") for h in hs]
            if all(p is not None and len(p) == 3 for p in ipps) and row["n_frames"] == 1:
                d = np.array(ipps, dtype=float) @ normal
                pos = np.unique(np.round(d, 3))
                row["n_slices"] = int(len(pos))
                row["n_volumes"] = int(round(len(hs) / max(len(pos), 1)))
                if len(hs) % max(len(pos), 1):
                    consistent = False
                if len(pos) > 2:
                    gaps = np.diff(pos)
                    med = float(np.median(gaps))
                    row["slice_spacing"] = med
                    if med > 0:
                        uneven = bool(np.any(np.abs(gaps - med) > gap_tol * med))
                        row["slice_gaps_uneven"] = uneven
                        row["missing_slices"] = max(0, int(round((pos[-1] - pos[0]) / med)) + 1 - len(pos)) if uneven else 0
                elif len(pos) == 2:
                    row["slice_spacing"] = float(pos[1] - pos[0])
            elif row["n_frames"] > 1:
                row["n_slices"] = row["n_frames"]
    row["geometry_consistent"] = consistent
    agent = any(str(h.tags.get("ContrastBolusAgent", "")).strip() for h in hs)
    row["contrast"] = bool(agent or CONTRAST_DESC.search(str(row["series_description"])))
    return row


def build_index(
    dicom_dir: str | Path,
    pseudo: Pseudonymiser,
    postop_regex: str,
    gap_tol: float = 0.2,
    workers: int = 1,
    files: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scan ``dicom_dir``; return the pseudonymous series table and the private maps."""
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"dicom_dir {dicom_dir} does not exist or is not a folder")
    paths = list(files) if files is not None else list_files(dicom_dir)
    headers = read_headers(paths, workers)
    postop = re.compile(postop_regex, re.I)

    by_series: dict[str, list[FileHeader]] = defaultdict(list)
    bad: list[FileHeader] = []
    folder_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for h in headers:
        if h.status == "ok":
            by_series[h.tags["SeriesInstanceUID"]].append(h)
            if "PatientID" in h.tags:
                folder_patient[os.path.dirname(h.path)][h.tags["PatientID"]] += 1
        else:
            bad.append(h)

    # study order per patient, from date and time (dates themselves never leave this function)
    studies: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for hs in by_series.values():
        t = hs[0].tags
        studies[t.get("PatientID", "")][t.get("StudyInstanceUID", "")] = (t.get("StudyDate", ""), t.get("StudyTime", ""))

    def study_rank(pid: str, study_uid: str) -> tuple[int, int | None]:
        items = sorted(studies[pid].items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))
        order = [k for k, _ in items].index(study_uid)
        first = _date(items[0][1][0])
        this = _date(studies[pid][study_uid][0])
        return order, (this - first).days if first and this else None

    rows: list[dict[str, Any]] = []
    series_files: dict[str, list[str]] = {}
    id_map: dict[str, str] = {}
    for uid, hs in sorted(by_series.items(), key=lambda kv: (kv[1][0].tags.get("PatientID", ""), kv[0])):
        t = hs[0].tags
        pid = t.get("PatientID", "")
        if not pid:
            pid = f"unknown-patient:{os.path.dirname(hs[0].path)}"
        subject = pseudo.subject(pid)
        id_map[subject] = pid
        order, days = study_rank(t.get("PatientID", ""), t.get("StudyInstanceUID", ""))
        row = {"subject": subject, "study": pseudo.study(t.get("StudyInstanceUID", "")), "series": pseudo.series(uid),
               "status": "ok"}
        row.update(summarise_series(hs, gap_tol))
        text = " ".join(str(t.get(k, "")) for k in ("StudyDescription", "SeriesDescription", "ProtocolName"))
        row["postop"] = bool(postop.search(text))
        row["study_order"] = order
        row["days_from_first"] = days
        rows.append(row)
        series_files[row["series"]] = _spatial_order(hs)

    file_map: dict[str, str] = {}
    for h in bad:
        if h.status == "dicomdir":
            continue
        owners = folder_patient.get(os.path.dirname(h.path))
        subject = pseudo.subject(owners.most_common(1)[0][0]) if owners else "unknown"
        fid = pseudo.file(h.path)
        file_map[fid] = h.path
        rows.append({"subject": subject, "study": "", "series": fid, "status": h.status, "n_files": 1,
                     "is_image": False, "contrast": False, "postop": False, "geometry_consistent": False,
                     "slice_gaps_uneven": False, "missing_slices": 0, "duplicates": 0, "modality": "",
                     "series_description": "", "image_type": "", "sop_class": "unknown", "plane": "unknown"})
        log.warning("%s: %s file (source path in %s/file_map.tsv)", fid, h.status, "private_dir")
    df = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    df = df.sort_values(["subject", "study_order", "series_number", "series"], na_position="last", kind="stable")
    private = {"series_files": series_files, "id_map": id_map, "file_map": file_map,
               "n_files": len(paths), "status_counts": dict(Counter(h.status for h in headers))}
    return df.reset_index(drop=True), private


def _date(s: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(s[:8], "%Y%m%d").date()
    except (ValueError, TypeError):
        return None


def _spatial_order(hs: list[FileHeader]) -> list[str]:
    """Files sorted along the slice normal (then instance number)."""
    iop = hs[0].tags.get("ImageOrientationPatient")
    if iop and len(iop) == 6 and all(h.tags.get("ImagePositionPatient") for h in hs):
        n = np.cross(np.array(iop[:3]), np.array(iop[3:]))
        key = [(float(np.dot(h.tags["ImagePositionPatient"], n)), h.tags.get("InstanceNumber", 0), h.path) for h in hs]
    else:
        key = [(0.0, h.tags.get("InstanceNumber", 0), h.path) for h in hs]
    return [k[2] for k in sorted(key)]


def find_masks(masks_dir: str | Path | None, pattern: str, id_map: dict[str, str]) -> dict[str, str]:
    """Subject -> mask file, by substituting each PatientID into ``pattern``."""
    if not masks_dir:
        return {}
    found: dict[str, str] = {}
    for subject, pid in id_map.items():
        matches = sorted(glob.glob(os.path.join(glob.escape(str(masks_dir)), pattern.replace("{patient_id}", glob.escape(pid)))))
        if len(matches) > 1:
            log.warning("%s: %d mask files match; using the first in sorted order", subject, len(matches))
        if matches:
            found[subject] = matches[0]
    return found


def run(cfg: dict[str, Any], series_tsv: str | Path, subjects_tsv: str | Path, private_dir: str | Path | None = None,
        workers: int | None = None) -> pd.DataFrame:
    from .pseudonym import from_config

    pseudo = from_config(cfg)
    priv = ensure_private_dir(private_dir or cfg["private_dir"])
    df, private = build_index(cfg["dicom_dir"], pseudo, cfg["index"]["postop_regex"], cfg["index"]["slice_gap_tolerance"],
                              workers or cfg["index"]["threads"])
    masks = find_masks(cfg["masks"]["dir"], cfg["masks"]["pattern"], private["id_map"])
    subjects = (
        df[df["status"] == "ok"].groupby("subject")
        .agg(n_studies=("study", "nunique"), n_series=("series", "count")).reset_index()
    )
    subjects["has_mask"] = subjects["subject"].isin(masks.keys())
    write_tsv(series_tsv, df)
    write_tsv(subjects_tsv, subjects)
    write_json(priv / "series_files.json", private["series_files"], mode=PRIVATE_MODE)
    write_json(priv / "masks.json", masks, mode=PRIVATE_MODE)
    id_rows = "".join(f"{k}\t{v}\n" for k, v in sorted(private["id_map"].items()))
    from .util import write_text

    write_text(priv / "id_map.tsv", "subject\tpatient_id\n" + id_rows, mode=PRIVATE_MODE)
    write_text(priv / "file_map.tsv", "file\tpath\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(private["file_map"].items())),
               mode=PRIVATE_MODE)
    log.info("indexed %d files: %s; %d series of %d subjects; %d masks", private["n_files"], private["status_counts"],
             int((df["status"] == "ok").sum()), df.loc[df["status"] == "ok", "subject"].nunique(), len(masks))
    return df
