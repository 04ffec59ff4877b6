"""DICOM header index: read every file's header once (never pixel data) into a series table.

``results/cohort/series.tsv`` holds one row per series under pseudonymous ids with the tags
and derived geometry that selection rules use. Identifiers (PatientID, names, dates, UIDs,
paths, institution, study descriptions) never reach it: they stay in ``private_dir``
(mode 600): the pseudonym map, the files of each series, the masks.

Missing identifiers (anonymised exports blank them): a file that reads as DICOM but has no
StudyInstanceUID or SeriesInstanceUID is not unreadable. Its study is keyed by (PatientID,
StudyDate, StudyTime, the folder above the file's folder) and its series by (that study key, the
file's folder, SeriesNumber, Modality), as dcm2niix groups files without UIDs by series number
and acquisition properties; the files of one such key are then split by geometry like any series
(matrix, orientation, pixel spacing, SOP class). An empty PatientID makes the study its own
subject, keyed ``no-patient-id:<study key>`` (a patient without an id cannot be linked across
studies). The series row's ``missing_uid`` names what was missing (``patient_id``, ``study_uid``,
``series_uid``, joined by ``+``), so a selection rule can reject such series if a study wants to.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydicom reads only what the fast scanner hands back (cohortseg.dicomscan): imported then
    import pydicom

import numpy as np
import pandas as pd

from .dicomscan import CHARSET_TAG, CSA_IMAGE_TAG, GEOMETRY, MOSAIC_TAG, Fallback, scan
from .dicomscan import TAGS as SCAN_TAGS
from .descriptors import SERIES_DESCRIPTORS, identifiers, public
from .pseudonym import PRIVATE_MODE, RAW_SUBDIR, Pseudonymiser, ensure_private_dir, from_settings
from .settings import IndexSettings, MaskSettings, NiftiSettings, PrivacySettings, PseudonymSettings, StageConfig
from .util import log, write_json, write_text, write_tsv


@dataclass(frozen=True)
class Config(StageConfig):
    source: str
    dicom_dir: str
    nifti: NiftiSettings
    masks: MaskSettings
    private_dir: str
    pseudonym: PseudonymSettings
    privacy: PrivacySettings
    index: IndexSettings
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Outputs:
    """What the index writes: the pseudonymous tables (results/) and the private maps (private_dir)."""

    series: str
    subjects: str
    series_files: str
    masks: str
    id_map: str
    file_map: str
    descriptors: str

    @classmethod
    def default(cls, results: str | Path, private_dir: str | Path) -> Outputs:
        r, p = Path(results), Path(private_dir)
        return cls(str(r / "cohort" / "series.tsv"), str(r / "cohort" / "subjects.tsv"), str(p / "series_files.json"),
                   str(p / "masks.json"), str(p / "id_map.tsv"), str(p / "file_map.tsv"), str(p / "descriptors.json"))

# the tags the index reads are the fast scanner's list (dicomscan.TAGS); pydicom reads them by keyword
_BY_KEYWORD = {kw: vr for tag, (kw, vr) in SCAN_TAGS.items() if tag not in (CHARSET_TAG, MOSAIC_TAG)}
HEADER_TAGS = [*_BY_KEYWORD, "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"]
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
}
CONTRAST_DESC = re.compile(r"\+\s*c\b|\bpost[ _-]?(gad|gd|contrast|kм)|\bgad|\bgd\b|contrast|\bce\b|\+gd|\bkm\b", re.I)
SERIES_COLUMNS = [
    "subject", "study", "series", "status", "series_number", "modality", "sop_class", "is_image",
    "series_description", "image_type", "contrast", "postop", "study_order", "days_from_first",
    "n_files", "n_slices", "n_volumes", "n_frames", "duplicates", "split_from_uid", "rows", "cols",
    "pixel_spacing_row", "pixel_spacing_col", "slice_spacing", "slice_thickness", "plane",
    "obliquity_deg", "gantry_tilt_deg", "slice_gaps_uneven", "missing_slices", "geometry_consistent",
    "transfer_syntax", "decodable", "mosaic", "manufacturer", "field_strength", "missing_uid",
]
# statuses of files that hold no series: each becomes a row of its own in the index and the audit
FILE_STATUSES = ("unreadable", "truncated", "not_dicom", "dicomdir", "empty_folder")


@dataclass
class FileHeader:
    path: str
    status: str  # ok | unreadable | truncated | not_dicom | dicomdir
    tags: dict[str, Any]


def _value(ds: pydicom.Dataset, name: str) -> Any:
    import pydicom

    v = ds.get(name)
    if v is None:
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        return [x for x in v]
    return v


def _floats(v: Any) -> list[float] | None:
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def _first(seq: Any, *names: str) -> Any:
    """seq[0].names[0]...[0].last (functional group lookups), or None."""
    import pydicom

    cur = seq
    for name in names:
        if cur is None:
            return None
        if isinstance(cur, pydicom.Sequence):
            if len(cur) == 0:
                return None
            cur = cur[0]
        cur = cur.get(name)
    return cur


def _frame_geometry(ds: pydicom.Dataset, tags: dict[str, Any]) -> None:
    import pydicom

    """Enhanced multi-frame: orientation, spacing and per-frame positions from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is None:
        return
    sh = shared[0] if shared else pydicom.Dataset()
    iop = _first(sh.get("PlaneOrientationSequence"), "ImageOrientationPatient")
    ps = _first(sh.get("PixelMeasuresSequence"), "PixelSpacing")
    th = _first(sh.get("PixelMeasuresSequence"), "SliceThickness")
    ipps = []
    for fr in per:
        ipp = _first(fr.get("PlanePositionSequence"), "ImagePositionPatient")
        iop = iop if iop is not None else _first(fr.get("PlaneOrientationSequence"), "ImageOrientationPatient")
        ps = ps if ps is not None else _first(fr.get("PixelMeasuresSequence"), "PixelSpacing")
        th = th if th is not None else _first(fr.get("PixelMeasuresSequence"), "SliceThickness")
        ipps.append(_floats(ipp) if ipp is not None else None)
    if iop is not None:
        tags["ImageOrientationPatient"] = _floats(iop)
    if ps is not None:
        tags["PixelSpacing"] = _floats(ps)
    if th is not None and "SliceThickness" not in tags:
        tags["SliceThickness"] = float(th)
    if all(p is not None and len(p) == 3 for p in ipps):
        tags["FramePositions"] = ipps


def _pixel_data_state(fh: Any, size: int, explicit_vr: bool, little: bool) -> str:
    """After a header read that stopped before the pixels: 'ok', 'truncated' or 'no_pixels'."""
    pos = fh.tell()
    head = fh.read(12)
    if len(head) < 8:
        return "no_pixels"
    order = "<" if little else ">"
    import struct

    group, elem = struct.unpack(order + "HH", head[:4])
    if (group, elem) not in ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)):
        return "no_pixels"
    if explicit_vr:
        length = struct.unpack(order + "L", head[8:12])[0]
        start = pos + 12
    else:
        length = struct.unpack(order + "L", head[4:8])[0]
        start = pos + 8
    if length == 0xFFFFFFFF:  # encapsulated: must end with a sequence delimiter
        fh.seek(-8, os.SEEK_END)
        tail = fh.read(8)
        return "ok" if tail[:4] in (b"\xfe\xff\xdd\xe0", b"\xff\xfe\xe0\xdd") else "truncated"
    return "ok" if start + length <= size else "truncated"


def read_header(path: str) -> FileHeader:
    """The header tags of one file, by the fast scanner where it can (see dicomscan), else pydicom."""
    try:
        status, tags = scan(path)
    except Fallback as exc:
        if str(exc) == "no Part-10 preamble" and not _starts_like_dataset(path):
            return FileHeader(path, _not_dicom_or_corrupt(path), {})
        return read_header_pydicom(path)
    except Exception:
        return read_header_pydicom(path)
    if status == "dicomdir" or os.path.basename(path).upper() == "DICOMDIR":
        return FileHeader(path, "dicomdir", {})
    return FileHeader(path, status, tags)


def _starts_like_dataset(path: str) -> bool:
    """A file without the Part-10 preamble may still be a raw DICOM stream starting at group 0002/0008."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def read_header_pydicom(path: str) -> FileHeader:
    """Read the header tags of one file; classify non-DICOM, DICOMDIR, corrupt and truncated files.

    Reads up to the pixel data and no further, then checks the pixel data element's length
    against the file size, so a file cut short in transfer is caught here, not at conversion."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=HEADER_TAGS + [MOSAIC_TAG, CSA_IMAGE_TAG])
            except InvalidDicomError:
                # some exports omit the 128-byte preamble: accept only if real tags come out
                fh.seek(0)
                try:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=HEADER_TAGS + [MOSAIC_TAG, CSA_IMAGE_TAG], force=True)
                except Exception:
                    return FileHeader(path, _not_dicom_or_corrupt(path), {})
                if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
                    return FileHeader(path, _not_dicom_or_corrupt(path), {})
            meta = getattr(ds, "file_meta", None)
            meta_class = getattr(meta, "MediaStorageSOPClassUID", None)
            if meta_class == DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
                return FileHeader(path, "dicomdir", {})
            ts = getattr(meta, "TransferSyntaxUID", None)
            implicit_vr, little_endian = ds.original_encoding  # as the file was encoded
            explicit = not implicit_vr if implicit_vr is not None else True
            little = bool(little_endian) if little_endian is not None else True
            pixels = _pixel_data_state(fh, size, explicit, little)
    except Exception:
        return FileHeader(path, "unreadable", {})
    if pixels == "truncated":
        return FileHeader(path, "truncated", {})
    try:
        tags = tags_of_dataset(ds, str(ts) if ts else "", pixels == "ok")
    except Exception:
        return FileHeader(path, "unreadable", {})
    return FileHeader(path, "ok", tags)


def tags_of_dataset(ds: Any, ts: str, has_pixels: bool) -> dict[str, Any]:
    """The index's tags from a pydicom dataset, typed as the fast scanner types them."""
    tags: dict[str, Any] = {"TransferSyntaxUID": ts, "HasPixelData": has_pixels}
    for name, vr in _BY_KEYWORD.items():
        v = _value(ds, name)
        if v is None or v == "":
            continue
        if name in GEOMETRY:
            v = [float(x) for x in v]
        elif vr == "DS":
            v = float(v)
        elif vr in ("IS", "US"):
            v = int(v)
        elif isinstance(v, list) or name == "ImageType":  # multi-valued text: as the file holds it
            v = "\\".join(str(x) for x in (v if isinstance(v, list) else [v]))
        else:
            v = str(v)
        tags[name] = v
    if "MOSAIC" in str(tags.get("ImageType", "")).upper():
        n = _mosaic_images(ds)
        if n > 1:
            tags["MosaicImages"] = n
    if int(tags.get("NumberOfFrames", 1)) > 1:
        _frame_geometry(ds, tags)
    return tags


def _mosaic_images(ds: pydicom.Dataset) -> int:
    """Slices in a Siemens mosaic: NumberOfImagesInMosaic, else the CSA image header (nibabel reads it)."""
    el = ds.get(MOSAIC_TAG)
    if el is not None:
        raw = el.value
        return int.from_bytes(raw[:2], "little") if isinstance(raw, bytes) else int(raw)
    el = ds.get(CSA_IMAGE_TAG)
    if el is not None:
        try:
            from nibabel.nicom import csareader

            return int(csareader.get_n_mosaic(csareader.read(el.value)) or 0)
        except Exception:
            return 0
    return 0


def _not_dicom_or_corrupt(path: str) -> str:
    """A file that looks like it was meant to be DICOM is corrupt; anything else is not DICOM.

    Meant to be DICOM: the 'DICM' magic, a DICOM extension, or no extension (PACS exports name
    files I10, IM0001...) unless its first kilobyte is plain text (a LICENSE, a README)."""
    name = os.path.basename(path).lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return "unreadable"
    if head[128:132] == b"DICM" or name.endswith((".dcm", ".ima", ".dicom")):
        return "unreadable"
    if "." not in name:
        text = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) >= 0.95 * max(len(head), 1)
        return "not_dicom" if text else "unreadable"
    return "not_dicom"


def list_files(root: str | Path, empty_dirs: list[str] | None = None) -> list[str]:
    """Every non-hidden file under root in a stable order; folders with nothing in them go to empty_dirs."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        visible = sorted(f for f in filenames if not f.startswith("."))
        if not visible and not dirnames and empty_dirs is not None:
            empty_dirs.append(dirpath)
        files.extend(os.path.join(dirpath, f) for f in visible)
    return files


def read_headers(files: list[str], workers: int = 1) -> list[FileHeader]:
    from tqdm import tqdm

    if workers <= 1 or len(files) < 200:
        return [read_header(f) for f in tqdm(files, desc="headers", unit="file", mininterval=2)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(read_header, files, chunksize=max(64, len(files) // (8 * workers))), total=len(files), desc="headers", unit="file", mininterval=2))


def _plane(normal: np.ndarray) -> tuple[str, float]:
    """Acquisition plane from the slice normal (LPS) and its angle to the nearest axis."""
    a = np.abs(normal) / np.linalg.norm(normal)
    axis = int(np.argmax(a))
    angle = float(np.degrees(np.arccos(np.clip(a[axis], -1, 1))))
    return ("sagittal", "coronal", "axial")[axis], angle


def sop_class_name(uid: str | None) -> str:
    import pydicom

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


def decodable(ts_uid: str) -> bool:
    """Whether an installed pydicom pixel decoder handles this transfer syntax."""
    if not ts_uid:
        return True  # no meta header: implicit little endian
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(ts_uid).is_available)
    except Exception:
        return False


def _ts_name(uid: str) -> str:
    import pydicom

    try:
        return str(pydicom.uid.UID(uid).keyword or uid) if uid else "ImplicitVRLittleEndian"
    except Exception:
        return uid


def _geometry_key(h: FileHeader) -> tuple[Any, ...]:
    """Files of one SeriesInstanceUID that cannot form one volume differ in this key."""
    t = h.tags
    iop = t.get("ImageOrientationPatient")
    ps = t.get("PixelSpacing")
    return (t.get("Rows"), t.get("Columns"), tuple(np.round(iop, 2)) if iop and len(iop) == 6 else None,
            tuple(np.round(ps, 3)) if ps and len(ps) == 2 else None, t.get("SOPClassUID"), t.get("SeriesNumber"))


def split_mixed(hs: list[FileHeader]) -> list[list[FileHeader]]:
    """Split the files of one SeriesInstanceUID by image size, orientation, pixel spacing, SOP
    class and series number (PACS exports do mix a localizer or a reformat into a series). The largest part comes first."""
    groups: dict[tuple[Any, ...], list[FileHeader]] = defaultdict(list)
    for h in hs:
        groups[_geometry_key(h)].append(h)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0].path))


def summarise_series(headers: list[FileHeader], gap_tol: float) -> dict[str, Any]:
    """Geometry and tag summary of the files of one series."""
    t0 = headers[0].tags
    sop_uids = [h.tags.get("SOPInstanceUID") for h in headers]
    hs = unique_instances(headers)
    row = tag_summary(t0, hs)
    row.update(n_files=len(headers), duplicates=len(sop_uids) - len(set(sop_uids)))
    row.update(stack_geometry(hs, row, gap_tol))
    agent = any(str(h.tags.get("ContrastBolusAgent", "")).strip() for h in hs)
    row["contrast"] = bool(agent or CONTRAST_DESC.search(str(row["series_description"])))
    return row


def tag_summary(t0: dict[str, Any], hs: list[FileHeader]) -> dict[str, Any]:
    """The series' columns read from its first file's tags (and its frame count)."""
    ts = t0.get("TransferSyntaxUID", "")
    ps = t0.get("PixelSpacing")
    return {
        "modality": t0.get("Modality", ""), "sop_class": sop_class_name(t0.get("SOPClassUID")),
        "series_description": t0.get("SeriesDescription", ""),
        "image_type": t0.get("ImageType", ""),
        "series_number": t0.get("SeriesNumber", -1),
        "rows": t0.get("Rows"), "cols": t0.get("Columns"),
        "is_image": bool(t0.get("Rows")) and bool(t0.get("Columns")) and bool(t0.get("HasPixelData", True)),
        "n_frames": max(int(h.tags.get("NumberOfFrames", 1)) for h in hs),
        "slice_thickness": t0.get("SliceThickness"),
        "manufacturer": t0.get("Manufacturer", ""),
        "field_strength": t0.get("MagneticFieldStrength"),
        "gantry_tilt_deg": abs(float(t0.get("GantryDetectorTilt", 0.0))),
        "transfer_syntax": _ts_name(ts), "decodable": decodable(ts),
        "mosaic": bool(t0.get("MosaicImages")),
        "missing_uid": t0.get("MissingUIDs", ""),
        "pixel_spacing_row": ps[0] if ps and len(ps) == 2 else None,
        "pixel_spacing_col": ps[1] if ps and len(ps) == 2 else None,
    }


def stack_geometry(hs: list[FileHeader], row: dict[str, Any], gap_tol: float) -> dict[str, Any]:
    """Slices, volumes, plane, obliquity, measured gantry tilt, spacing and gaps of the image stack."""
    t0 = hs[0].tags
    iops = [h.tags.get("ImageOrientationPatient") for h in hs]
    consistent = len({(h.tags.get("Rows"), h.tags.get("Columns")) for h in hs}) == 1
    out: dict[str, Any] = dict(n_slices=len(hs), n_volumes=1, slice_spacing=None, plane="unknown", obliquity_deg=None,
                               slice_gaps_uneven=False, missing_slices=0)
    # one position per 2D image: a file each, or the frames of an enhanced multi-frame file
    if row["n_frames"] > 1:
        ipps = [p for h in hs for p in (h.tags.get("FramePositions") or [None])]
    else:
        ipps = [h.tags.get("ImagePositionPatient") for h in hs]
    if iops[0] is None or not all(i is not None and len(i) == 6 for i in iops):
        return {**out, "geometry_consistent": consistent}
    iop = np.array(iops[0], dtype=float)
    if any(np.abs(np.array(i) - iop).max() > 1e-3 for i in iops):
        consistent = False
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) <= 0.5:
        return {**out, "geometry_consistent": consistent}
    normal = normal / np.linalg.norm(normal)
    out["plane"], out["obliquity_deg"] = _plane(normal)
    if row["mosaic"]:
        out.update(n_slices=int(t0["MosaicImages"]), n_volumes=len(hs))
    elif all(p is not None and len(p) == 3 for p in ipps):
        positions = np.array(ipps, dtype=float)
        stack = slice_positions(positions, normal, gap_tol)
        consistent = consistent and stack.pop("whole_volumes")
        out.update(stack)
    elif row["n_frames"] > 1:
        out["n_slices"] = row["n_frames"]
    return {**out, "geometry_consistent": consistent}


def slice_positions(positions: np.ndarray, normal: np.ndarray, gap_tol: float) -> dict[str, Any]:
    """From the image positions along the slice normal: slices, volumes, measured tilt, spacing, gaps."""
    d = positions @ normal
    pos, first_idx = np.unique(np.round(d, 3), return_index=True)
    out: dict[str, Any] = {"n_slices": int(len(pos)), "n_volumes": int(round(len(positions) / max(len(pos), 1))),
                           "whole_volumes": not len(positions) % max(len(pos), 1)}
    if len(pos) >= 2:
        # gantry tilt, measured: the angle between the stacking direction and the slice normal
        step = positions[first_idx[-1]] - positions[first_idx[0]]
        if np.linalg.norm(step) > 0:
            cosang = abs(float(step @ normal)) / float(np.linalg.norm(step))
            tilt = float(np.degrees(np.arccos(np.clip(cosang, -1, 1))))
            out["gantry_tilt_deg"] = round(tilt, 3) if tilt > 0.01 else 0.0
    if len(pos) > 2:
        gaps = np.diff(pos)
        med = float(np.median(gaps))
        out["slice_spacing"] = med
        if med > 0:
            uneven = bool(np.any(np.abs(gaps - med) > gap_tol * med))
            ratios = gaps / med
            # a missing slice leaves a gap that is a whole multiple of the spacing
            whole = bool(np.all(np.abs(ratios - np.round(ratios)) <= gap_tol))
            out["slice_gaps_uneven"] = uneven and not whole
            out["missing_slices"] = int(np.round(ratios).sum() - len(gaps)) if uneven and whole else 0
    elif len(pos) == 2:
        out["slice_spacing"] = float(pos[1] - pos[0])
    return out


def build_index(
    dicom_dir: str | Path,
    pseudo: Pseudonymiser,
    postop_regex: str,
    gap_tol: float = 0.2,
    workers: int = 1,
    files: Iterable[str] | None = None,
    descriptors: str = "clean",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scan ``dicom_dir``; return the pseudonymous series table (free-text descriptors as
    ``privacy.descriptors`` = ``descriptors`` says) and the private maps (with the raw descriptors)."""
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"dicom_dir {dicom_dir} does not exist or is not a folder")
    empty: list[str] = []
    paths = list(files) if files is not None else list_files(dicom_dir, empty)
    headers = read_headers(paths, workers)
    by_series, bad, folder_patient = group_headers(headers)
    rows, series_files, id_map = series_rows(by_series, pseudo, re.compile(postop_regex, re.I), gap_tol)
    raw_descriptors = public_descriptors(rows, descriptors)
    bad += [FileHeader(folder, "empty_folder", {}) for folder in empty]
    bad_rows, file_map = bad_file_rows(bad, folder_patient, pseudo)
    df = pd.DataFrame(rows + bad_rows, columns=SERIES_COLUMNS)
    df = df.sort_values(["subject", "study_order", "series_number", "series"], na_position="last", kind="stable")
    private = {"series_files": series_files, "id_map": id_map, "file_map": file_map, "descriptors": raw_descriptors,
               "n_files": len(paths), "status_counts": dict(Counter(h.status for h in headers)), "empty_folders": len(empty)}
    return df.reset_index(drop=True), private


def fill_missing_uids(h: FileHeader) -> None:
    """Fallback keys for a blank StudyInstanceUID, SeriesInstanceUID or PatientID (module docstring)."""
    t = h.tags
    missing = [name for name, tag in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID"),
                                      ("series_uid", "SeriesInstanceUID")) if not str(t.get(tag, "")).strip()]
    if not missing:
        return
    folder = os.path.dirname(h.path)
    if "study_uid" in missing:
        t["StudyInstanceUID"] = "fallback-study:" + repr((str(t.get("PatientID", "")), str(t.get("StudyDate", "")),
                                                           str(t.get("StudyTime", "")), os.path.dirname(folder)))
    if "series_uid" in missing:
        t["SeriesInstanceUID"] = "fallback-series:" + repr((t["StudyInstanceUID"], folder, t.get("SeriesNumber"),
                                                             t.get("Modality")))
    if "patient_id" in missing:
        t["PatientID"] = f"no-patient-id:{t['StudyInstanceUID']}"
    t["MissingUIDs"] = "+".join(missing)


def public_descriptors(rows: list[dict[str, Any]], mode: str) -> dict[str, dict[str, str]]:
    """Replace each row's free-text descriptors by what may reach results/ (cleaned of its own patient's
    identifiers, dropped or kept: cohortseg.descriptors); return the raw ones by series id."""
    raw: dict[str, dict[str, str]] = {}
    for row in rows:
        ids = identifiers(row.pop("_tags"))
        raw[row["series"]] = {f: "" if row.get(f) is None else str(row[f]) for f in SERIES_DESCRIPTORS}
        for f in SERIES_DESCRIPTORS:
            row[f] = public(row.get(f), ids, mode)
    return raw


def group_headers(headers: list[FileHeader]) -> tuple[dict[str, list[FileHeader]], list[FileHeader], dict[str, Counter[str]]]:
    """Readable files by SeriesInstanceUID (or its fallback key), the others, and the PatientIDs seen in each
    folder (a bad file is attributed to its folder's patient)."""
    by_series: dict[str, list[FileHeader]] = defaultdict(list)
    bad: list[FileHeader] = []
    folder_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for h in headers:
        if h.status == "ok":
            fill_missing_uids(h)
            by_series[h.tags["SeriesInstanceUID"]].append(h)
            if "PatientID" in h.tags:
                folder_patient[os.path.dirname(h.path)][h.tags["PatientID"]] += 1
        else:
            bad.append(h)
    return by_series, bad, folder_patient


def study_ranks(by_series: dict[str, list[FileHeader]]) -> Any:
    """(PatientID, StudyInstanceUID) -> (order of the study among the patient's, days since the first);
    the dates themselves never leave this function."""
    studies: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for hs in by_series.values():
        t = hs[0].tags
        studies[t.get("PatientID", "")][t.get("StudyInstanceUID", "")] = (t.get("StudyDate", ""), t.get("StudyTime", ""))

    def rank(pid: str, study_uid: str) -> tuple[int, int | None]:
        items = sorted(studies[pid].items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))
        order = [k for k, _ in items].index(study_uid)
        first = _date(items[0][1][0])
        this = _date(studies[pid][study_uid][0])
        return order, (this - first).days if first and this else None

    return rank


def series_rows(by_series: dict[str, list[FileHeader]], pseudo: Pseudonymiser, postop: re.Pattern[str],
                gap_tol: float) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, str]]:
    """One pseudonymous row per series (per part of a series that cannot form one volume), the files of
    each in spatial order, and the subject -> PatientID map."""
    rank = study_ranks(by_series)
    rows: list[dict[str, Any]] = []
    series_files: dict[str, list[str]] = {}
    id_map: dict[str, str] = {}
    parts: list[tuple[str, str, list[FileHeader]]] = []
    for uid, all_hs in sorted(by_series.items(), key=lambda kv: (kv[1][0].tags.get("PatientID", ""), kv[0])):
        for k, hs in enumerate(split_mixed(all_hs)):
            parts.append((uid, uid if k == 0 else f"{uid}#part{k}", hs))
    for uid, part_uid, hs in parts:
        t = hs[0].tags
        pid = t["PatientID"]
        subject = pseudo.subject(pid)
        id_map[subject] = pid
        order, days = rank(t.get("PatientID", ""), t.get("StudyInstanceUID", ""))
        row = {"subject": subject, "study": pseudo.study(t.get("StudyInstanceUID", "")), "series": pseudo.series(part_uid),
               "status": "ok"}
        row.update(summarise_series(hs, gap_tol))
        # files of one SeriesInstanceUID that cannot form one volume: each part is a series of its own
        row["split_from_uid"] = pseudo.series(uid) if part_uid != uid else ""
        text = " ".join(str(t.get(k, "")) for k in ("StudyDescription", "SeriesDescription", "ProtocolName"))
        row.update(postop=bool(postop.search(text)), study_order=order, days_from_first=days)
        row["_tags"] = t  # the identifiers its descriptors are cleaned of (public_descriptors); never a column
        rows.append(row)
        series_files[row["series"]] = _spatial_order(unique_instances(hs))
    return rows, series_files, id_map


def bad_file_rows(bad: list[FileHeader], folder_patient: dict[str, Counter[str]],
                  pseudo: Pseudonymiser) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A row per file (or empty folder) that holds no series, under its folder's patient; file id -> path."""
    rows, file_map = [], {}
    for h in bad:
        owners = folder_patient.get(os.path.dirname(h.path))
        subject = pseudo.subject(owners.most_common(1)[0][0]) if owners else "unknown"
        fid = pseudo.file(h.path)
        file_map[fid] = h.path
        rows.append({"subject": subject, "study": "", "series": fid, "status": h.status,
                     "n_files": 0 if h.status == "empty_folder" else 1,
                     "is_image": False, "contrast": False, "postop": False, "geometry_consistent": False,
                     "slice_gaps_uneven": False, "missing_slices": 0, "duplicates": 0, "modality": "",
                     "series_description": "", "image_type": "", "sop_class": "unknown", "plane": "unknown"})
        log.warning("%s: %s (source path in %s/file_map.tsv)", fid, h.status.replace("_", " "), "private_dir")
    return rows, file_map


def _date(s: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(s[:8], "%Y%m%d").date()
    except (ValueError, TypeError):
        return None


def unique_instances(hs: list[FileHeader]) -> list[FileHeader]:
    """One file per SOPInstanceUID (the first in path order): a duplicate export is not a second slice."""
    seen: dict[str, FileHeader] = {}
    for h in sorted(hs, key=lambda h: h.path):
        seen.setdefault(str(h.tags.get("SOPInstanceUID", h.path)), h)
    return list(seen.values())


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


MASK_CLASSES = ("segmentation", "rt_structure_set")  # sop_class_name of DICOM SEG and RTSTRUCT


def cohort_masks(df: pd.DataFrame, series_files: dict[str, list[str]]) -> dict[str, list[str]]:
    """Subject -> the files of the DICOM SEG and RTSTRUCT objects among its series (``masks.in_cohort``), in
    series-number order: the candidates ``prepare`` checks against the selected series."""
    objects = df[(df["status"] == "ok") & df["sop_class"].isin(MASK_CLASSES)]
    found: dict[str, list[str]] = {}
    for row in objects.sort_values(["subject", "series_number", "series"]).itertuples():
        found.setdefault(str(row.subject), []).extend(sorted(series_files[str(row.series)]))
    return found


def run(config: Config, out: Outputs, workers: int | None = None) -> pd.DataFrame:
    """Index the cohort; write the series and subject tables and the private maps."""
    ensure_private_dir(config.private_dir)
    pseudo = from_settings(config.private_dir, config.pseudonym)
    workers = workers or config.index.threads
    if config.source == "nifti":
        from .nifti_cohort import build_index as build_nifti_index

        df, private = build_nifti_index(config.nifti, len(config.labels), pseudo, workers)
        masks = private["masks"]
        private["n_files"] = len(df)
        private["status_counts"] = df["status"].value_counts().to_dict()
    else:
        idx = config.index
        # source pacs: the instances cohortseg.retrieve pulled into private_dir/raw, read as an export
        dicom_dir = Path(config.private_dir) / RAW_SUBDIR if config.source == "pacs" else config.dicom_dir
        df, private = build_index(dicom_dir, pseudo, idx.postop_regex, idx.slice_gap_tolerance, workers,
                                  descriptors=config.privacy.descriptors)
        masks = find_masks(config.masks.dir, config.masks.pattern, private["id_map"])
        if config.masks.in_cohort:
            masks = {**cohort_masks(df, private["series_files"]), **masks}  # type: ignore[dict-item]  # a file wins
    subjects = (
        df[df["status"] == "ok"].groupby("subject")
        .agg(n_studies=("study", "nunique"), n_series=("series", "count")).reset_index()
    )
    subjects["has_mask"] = subjects["subject"].isin(masks.keys())
    write_tsv(out.series, df)
    write_tsv(out.subjects, subjects)
    write_private_maps(out, private, masks)
    log.info("indexed %d files: %s; %d series of %d subjects; %d masks", private["n_files"], private["status_counts"],
             int((df["status"] == "ok").sum()), df.loc[df["status"] == "ok", "subject"].nunique(), len(masks))
    return df


def write_private_maps(out: Outputs, private: dict[str, Any], masks: dict[str, str | list[str]]) -> None:
    """The maps back to the patient (mode 600, in private_dir): files per series, masks, ids, paths."""
    write_json(out.series_files, private["series_files"], mode=PRIVATE_MODE)
    write_json(out.masks, masks, mode=PRIVATE_MODE)
    # the raw free-text descriptors, for selection rules and a reviewer (results/ has the cleaned ones)
    write_json(out.descriptors, private.get("descriptors", {}), mode=PRIVATE_MODE)
    id_rows = "".join(f"{k}\t{v}\n" for k, v in sorted(private["id_map"].items()))
    write_text(out.id_map, "subject\tpatient_id\n" + id_rows, mode=PRIVATE_MODE)
    write_text(out.file_map, "file\tpath\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(private["file_map"].items())),
               mode=PRIVATE_MODE)
