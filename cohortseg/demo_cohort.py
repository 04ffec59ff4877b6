"""A synthetic, deterministic DICOM cohort that looks like a PACS export.

Every subject has a small "head" phantom defined in continuous world coordinates (DICOM LPS,
mm) with a textured, contrast-enhancing lesion. Each series samples that phantom on its own
grid (spacing, orientation, field of view), so series of one subject agree in world space the
way real acquisitions do, and the ground-truth mask is the lesion sampled on the target
series' grid, saved as NIfTI in that series' world space (what 3D Slicer exports).

Distractors mirror what a PACS export holds: T1 without contrast, FLAIR, a 3-slice localizer,
a DERIVED reformat, a post-operative study, a thick-slice series with too few slices, a series
with a missing slice, an unreadable file, a non-DICOM file and a subject with no usable series.
All patient fields carry fake identifiers, also in folder and file names.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage, generate_uid

from .util import import_nibabel, log, save_nifti

nib = import_nibabel()


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
FIRST_NAMES = ["ANNA", "BEN", "CLARA", "DAVID", "EMMA", "FELIX", "GRETA", "HUGO", "IRIS", "JONAS", "KAI", "LENA"]
LAST_NAMES = ["MUELLER", "SCHMIDT", "NOVAK", "ROSSI", "GARCIA", "SMITH", "JANSEN", "DUBOIS", "KOWALSKI", "NIELSEN"]


@dataclass
class Phantom:
    """A head-like phantom in LPS world coordinates (mm)."""

    centre: np.ndarray
    head_axes: np.ndarray
    lesion_centre: np.ndarray
    lesion_axes: np.ndarray
    lesion_rot: np.ndarray
    waves: np.ndarray  # (K, 4): wave vector (3) and phase
    lesion_waves: np.ndarray
    necrotic: bool

    @classmethod
    def random(cls, rng: np.random.Generator) -> Phantom:
        centre = rng.uniform(-3, 3, 3)
        head_axes = np.array([27.0, 31.0, 25.0]) * rng.uniform(0.95, 1.05, 3)
        # lesion inside the brain (inner 55 % of the head), semi-axes 5-9 mm
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        lesion_centre = centre + direction * head_axes * rng.uniform(0.1, 0.45)
        lesion_axes = rng.uniform(5.0, 9.0, 3)
        a, b, c = rng.uniform(0, np.pi, 3)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
        ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
        waves = np.concatenate([rng.normal(0, 0.25, (6, 3)), rng.uniform(0, 2 * np.pi, (6, 1))], axis=1)
        lesion_waves = np.concatenate([rng.normal(0, 0.8, (4, 3)), rng.uniform(0, 2 * np.pi, (4, 1))], axis=1)
        return cls(centre, head_axes, lesion_centre, lesion_axes, rz @ ry @ rx, waves, lesion_waves, bool(rng.random() < 0.4))

    def _texture(self, pts: np.ndarray, waves: np.ndarray) -> np.ndarray:
        t = np.zeros(len(pts))
        for w in waves:
            t += np.cos(pts @ w[:3] + w[3])
        return t / len(waves)

    def lesion_r(self, pts: np.ndarray) -> np.ndarray:
        local = (pts - self.lesion_centre) @ self.lesion_rot
        return np.sqrt(((local / self.lesion_axes) ** 2).sum(axis=1))

    def lesion_mask(self, pts: np.ndarray) -> np.ndarray:
        return self.lesion_r(pts) <= 1.0

    def sample(self, pts: np.ndarray, contrast: str) -> np.ndarray:
        """Signal at world points for a contrast: t1c, t1, flair."""
        r_head = np.sqrt((((pts - self.centre) / self.head_axes) ** 2).sum(axis=1))
        brain = r_head <= 0.86
        scalp = (r_head > 0.86) & (r_head <= 1.0)
        vent = np.sqrt((((pts - self.centre - np.array([0, 4.0, 2.0])) / np.array([4.0, 9.0, 5.0])) ** 2).sum(axis=1)) <= 1
        tex = self._texture(pts, self.waves)
        r_les = self.lesion_r(pts)
        lesion = r_les <= 1.0
        edema = (r_les > 1.0) & (r_les <= 1.5) & brain
        ltex = self._texture(pts, self.lesion_waves)
        sig = np.zeros(len(pts))
        if contrast == "t1c":
            sig[brain] = 380 + 40 * tex[brain]
            sig[vent & brain] = 150
            sig[scalp] = 620 + 60 * tex[scalp]
            les = 760 + 120 * ltex
            if self.necrotic:
                les = np.where(r_les < 0.45, 300 + 40 * ltex, les)
            sig[lesion] = les[lesion]
        elif contrast == "t1":
            sig[brain] = 380 + 40 * tex[brain]
            sig[vent & brain] = 150
            sig[scalp] = 620 + 60 * tex[scalp]
            sig[lesion] = 330 + 30 * ltex[lesion]
        elif contrast == "flair":
            sig[brain] = 300 + 30 * tex[brain]
            sig[vent & brain] = 60
            sig[scalp] = 250
            sig[edema] = 520
            sig[lesion] = 560 + 60 * ltex[lesion]
        else:
            raise ValueError(contrast)
        return sig


@dataclass
class SeriesSpec:
    description: str
    contrast: str
    n_slices: int
    spacing: tuple[float, float, float]  # row spacing, column spacing, slice spacing (mm)
    matrix: tuple[int, int]  # rows, columns
    plane: str = "axial"
    tilt_deg: float = 0.0
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    agent: str | None = None
    secondary_capture: bool = False
    drop_slice: int | None = None
    slope: float = 1.0
    intercept: float = 0.0
    target: bool = False
    extra: dict = field(default_factory=dict)


def _orientation(plane: str, tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS) for a plane, tilted about the first axis."""
    if plane == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    elif plane == "sagittal":
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    elif plane == "coronal":
        row, col = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    else:
        raise ValueError(plane)
    t = np.deg2rad(tilt_deg)
    axis = row
    # Rodrigues rotation of col about row
    k = axis / np.linalg.norm(axis)
    col = col * np.cos(t) + np.cross(k, col) * np.sin(t) + k * (k @ col) * (1 - np.cos(t))
    return row, col


def series_grid(spec: SeriesSpec, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row dir, col dir, normal, and the LPS position of voxel (0,0,0) for a series centred on ``centre``."""
    row, col = _orientation(spec.plane, spec.tilt_deg)
    normal = np.cross(row, col)
    dr, dc, ds = spec.spacing
    rows, cols = spec.matrix
    origin = centre - row * dc * (cols - 1) / 2 - col * dr * (rows - 1) / 2 - normal * ds * (spec.n_slices - 1) / 2
    return row, col, normal, origin


def nifti_affine(row: np.ndarray, col: np.ndarray, normal: np.ndarray, origin: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine of the array indexed (column, row, slice), as dcm2niix/dicom2nifti lay it out."""
    dr, dc, ds = spacing
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = normal * ds
    lps[:3, 3] = origin
    ras = np.eye(4)
    ras[:3, :3] = LPS_TO_RAS @ lps[:3, :3]
    ras[:3, 3] = LPS_TO_RAS @ lps[:3, 3]
    return ras


def _voxel_points(row, col, normal, origin, spec: SeriesSpec) -> np.ndarray:
    rows, cols = spec.matrix
    dr, dc, ds = spec.spacing
    i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(spec.n_slices), indexing="ij")
    pts = origin + i[..., None] * dc * row + j[..., None] * dr * col + k[..., None] * ds * normal
    return pts.reshape(-1, 3)


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def _write_series(
    out_dir: Path,
    spec: SeriesSpec,
    phantom: Phantom,
    patient: dict[str, str],
    study: dict[str, str],
    series_number: int,
    seed: int,
    rng: np.random.Generator,
    file_prefix: str = "IM",
    typed: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    row, col, normal, origin = series_grid(spec, phantom.centre)
    pts = _voxel_points(row, col, normal, origin, spec)
    rows, cols = spec.matrix
    vol = phantom.sample(pts, spec.contrast).reshape(cols, rows, spec.n_slices)
    vol = vol + rng.normal(0, 12, vol.shape)
    vol = np.clip(vol, 0, None)
    stored = np.round((vol - spec.intercept) / spec.slope).clip(0, 65535).astype(np.uint16)
    series_uid = _uid(seed, patient["PatientID"], study["StudyInstanceUID"], series_number)
    frame_uid = _uid(seed, patient["PatientID"], "frame")
    out_dir.mkdir(parents=True, exist_ok=True)
    sop_class = SecondaryCaptureImageStorage if spec.secondary_capture else MRImageStorage
    geometry = (row, col, normal, origin)
    for k in range(spec.n_slices):
        if spec.drop_slice is not None and k == spec.drop_slice:
            continue
        ds_ = _slice_dataset(spec, patient, study, (series_uid, frame_uid, sop_class), series_number, k, geometry, seed)
        _type_in(ds_, typed or {})
        ds_.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds_.save_as(out_dir / f"{file_prefix}{k + 1:05d}.dcm", enforce_file_format=True)
    mask = None
    if spec.target:
        mask = phantom.lesion_mask(pts).reshape(cols, rows, spec.n_slices)
    affine = nifti_affine(row, col, normal, origin, spec.spacing)
    return affine, mask


def _type_in(ds: Dataset, typed: dict[str, Any]) -> None:
    """What a technologist typed (privacy tests): text appended to the descriptions, free-text tags, a
    private tag. Keys: 'description' (appended), DICOM keywords, or (group, element, VR) tuples."""
    for key, value in typed.items():
        if key == "description":
            ds.SeriesDescription = f"{ds.SeriesDescription} {value}"
            ds.ProtocolName = f"{ds.ProtocolName} {value}"
        elif isinstance(key, tuple):
            if key[0] % 2 and not ds.get((key[0], 0x0010)):
                ds.add_new((key[0], 0x0010), "LO", "COHORTSEG TEST")  # private creator of the block
            ds.add_new((key[0], key[1]), key[2], value)
        else:
            setattr(ds, key, value)


def _slice_dataset(spec: SeriesSpec, patient: dict[str, str], study: dict[str, str], uids: tuple[str, str, str],
                   series_number: int, k: int, geometry: tuple[np.ndarray, ...], seed: int) -> Dataset:
    """The header of slice ``k`` of a series (pixel data set by the caller)."""
    series_uid, frame_uid, sop_class = uids
    row, col, normal, origin = geometry
    dr, dc, ds = spec.spacing
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_uid = _uid(seed, series_uid, k)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds_ = Dataset()
    ds_.file_meta = meta
    ds_.SOPClassUID = sop_class
    ds_.SOPInstanceUID = sop_uid
    for key, value in patient.items():
        setattr(ds_, key, value)
    for key, value in study.items():
        setattr(ds_, key, value)
    ds_.SeriesDate = study["StudyDate"]
    ds_.AcquisitionDate = study["StudyDate"]
    ds_.Modality = "MR"
    ds_.Manufacturer = "CohortSeg Synthetic"
    ds_.ManufacturerModelName = "Phantom 3T"
    ds_.MagneticFieldStrength = 3.0
    ds_.SeriesInstanceUID = series_uid
    ds_.FrameOfReferenceUID = frame_uid
    ds_.SeriesNumber = series_number
    ds_.InstanceNumber = k + 1
    ds_.SeriesDescription = spec.description
    ds_.ProtocolName = spec.description
    ds_.ImageType = list(spec.image_type)
    t1 = spec.contrast.startswith("t1")
    ds_.ScanningSequence = "GR" if t1 else "SE"
    ds_.RepetitionTime = 2300.0 if t1 else 9000.0
    ds_.EchoTime = 2.98 if t1 else 81.0
    ds_.FlipAngle = 9.0 if t1 else 150.0
    if spec.agent:
        ds_.ContrastBolusAgent = spec.agent
    ds_.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    pos = origin + k * ds * normal
    ds_.ImagePositionPatient = [f"{v:.4f}" for v in pos]
    ds_.SliceLocation = f"{pos @ normal:.4f}"
    ds_.PixelSpacing = [f"{dr:g}", f"{dc:g}"]
    ds_.SliceThickness = f"{ds:g}"
    ds_.SpacingBetweenSlices = f"{ds:g}"
    ds_.Rows, ds_.Columns = spec.matrix
    ds_.SamplesPerPixel = 1
    ds_.PhotometricInterpretation = "MONOCHROME2"
    ds_.BitsAllocated = 16
    ds_.BitsStored = 16
    ds_.HighBit = 15
    ds_.PixelRepresentation = 0
    ds_.RescaleSlope = f"{spec.slope:g}"
    ds_.RescaleIntercept = f"{spec.intercept:g}"
    ds_.RescaleType = "US"
    return ds_


def subject_plan(index: int, n_subjects: int) -> dict[str, object]:
    """Which variations a subject gets; deterministic from its index."""
    no_usable = index == n_subjects - 1
    return {
        "no_usable": no_usable,
        "plane": "sagittal" if index == 2 else "axial",
        "tilt": 12.0 if index % 4 == 1 else 0.0,
        "missing_slice": index == 4,
        "postop_study": index % 4 == 3,
        "localizer": True,
        "flair": index % 2 == 0 or no_usable,
        "derived": index % 3 == 0,
        "thick": index % 3 == 1,
        "rescaled": index % 3 == 2,
        "unreadable_file": index == 1,
    }


def generate(out: str | Path, n_subjects: int = 16, seed: int = 7, phi_marker: str = "", size: str = "demo") -> dict[str, object]:
    """Write the cohort under ``out``: ``dicom/`` (PACS-like tree) and ``masks/`` (NIfTI)."""
    if n_subjects < 3:
        raise ValueError("the demo cohort needs at least 3 subjects")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    dicom_root = out / "dicom"
    (out / "masks").mkdir(parents=True)
    master = np.random.default_rng(seed)
    grid = ((64, 64), 44) if size == "demo" else ((48, 48), 36)
    n_series = sum(_write_subject(s, n_subjects, master, seed, phi_marker, out, grid) for s in range(n_subjects))
    summary: dict[str, object] = {"subjects": n_subjects, "seed": seed, "series": n_series,
                                  "files": sum(1 for p in dicom_root.rglob("*") if p.is_file())}
    (out / "cohort.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("demo cohort: %d subjects, %d series, %d files under %s", n_subjects, summary["series"], summary["files"], out)
    return summary


def _marker(mk: str) -> Any:
    def m(field: str) -> str:
        """A marker unique to one identifying field (empty without phi_marker), so a leak names its source."""
        return f"{mk}{field}" if mk else ""

    return m


def _patient(s: int, rng: np.random.Generator, m: Any, marked: bool) -> tuple[dict[str, str], str, str]:
    """The patient tags of subject ``s`` and its (last, first) name."""
    first, last = FIRST_NAMES[s % len(FIRST_NAMES)], LAST_NAMES[(3 * s) % len(LAST_NAMES)]
    pid = f"PID{m('ID')}{100000 + int(rng.integers(0, 899999))}"
    return {
        "PatientName": f"{last}{m('NAME')}^{first}",
        "PatientID": pid,
        # with a marker: 1931-MM-DD, a date no other field of the cohort or its outputs has
        "PatientBirthDate": f"1931{1 + s % 9:02d}{10 + s:02d}" if marked else f"19{40 + s % 50:02d}0{1 + s % 9}1{s % 9}",
        "PatientSex": "F" if s % 2 else "M",
        "InstitutionName": f"St Demo{m('INST')} General Hospital",
        "ReferringPhysicianName": f"REFERRER{m('REF')}^DOC",
    }, last, first


def _series_specs(plan: dict[str, object], st_i: int, matrix: tuple[int, int], n_target: int) -> list[SeriesSpec]:
    """The series of study ``st_i`` of a subject with ``plan`` (the target first)."""
    specs: list[SeriesSpec] = []
    t1c_spacing = (0.9, 0.9, 1.5)
    slope, intercept = (2.0, -100.0) if plan["rescaled"] else (1.0, 0.0)
    if st_i == 0 and not plan["no_usable"]:
        specs.append(SeriesSpec("AX T1 MPRAGE +C" if plan["plane"] == "axial" else "SAG T1 MPRAGE +C", "t1c", n_target,
                                t1c_spacing, matrix, plane=str(plan["plane"]), tilt_deg=float(plan["tilt"]),  # type: ignore[arg-type]
                                agent="Gadobutrol 1 mmol/ml", target=True, slope=slope, intercept=intercept,
                                drop_slice=n_target // 2 if plan["missing_slice"] else None))
        specs.append(SeriesSpec("AX T1 MPRAGE", "t1", n_target, t1c_spacing, matrix, tilt_deg=float(plan["tilt"])))  # type: ignore[arg-type]
        if plan["thick"]:
            specs.append(SeriesSpec("AX T1 +C 5mm", "t1c", 12, (0.9, 0.9, 5.0), matrix, agent="Gadobutrol 1 mmol/ml"))
        if plan["derived"]:
            specs.append(SeriesSpec("COR T1 +C MPR", "t1c", 20, (0.9, 0.9, 2.5), matrix, plane="coronal",
                                    image_type=("DERIVED", "SECONDARY", "MPR"), agent="Gadobutrol 1 mmol/ml"))
    if st_i == 1:
        specs.append(SeriesSpec("AX T1 MPRAGE +C", "t1c", n_target, t1c_spacing, matrix, agent="Gadobutrol 1 mmol/ml"))
    if plan["flair"] and st_i == 0:
        specs.append(SeriesSpec("AX T2 FLAIR", "flair", 18, (0.9, 0.9, 3.5), matrix))
    if plan["localizer"] and st_i == 0:
        specs.append(SeriesSpec("3-PLANE LOC", "t1", 3, (1.2, 1.2, 10.0), matrix, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    return specs


def _typed(spec: SeriesSpec, n: int, patient: dict[str, str], first: str, study: dict[str, str], m: Any) -> dict[str, Any]:
    """With a PHI marker: identifiers typed into free text, as technologists do. The target series gets the
    patient's name (any order), id and the study date spelled dd.mm.yyyy in its description; every series
    marker-carrying free-text tags that cohortseg never reads (comments, operator, station, a private tag)."""
    d = study["StudyDate"]
    last = patient["PatientName"].split("^")[0]
    typed: dict[str, Any] = {"ImageComments": f"comment {m('COMMENT')}", "OperatorsName": f"OPER{m('OPER')}",
                             "StationName": f"ST{m('STATION')}", (0x0029, 0x1010, "LO"): f"private {m('PRIVATE')}"}
    # within the 64 characters of a LO value, as a scanner's console allows
    if spec.target:
        typed["description"] = f"{first.lower()} {last} {d[6:]}.{d[4:6]}.{d[:4]}"
    elif n == 2:
        typed["description"] = f"{patient['PatientID']} {last.upper()} {d[:4]}-{d[4:6]}-{d[6:]}"
    return typed


def _write_subject(s: int, n_subjects: int, master: np.random.Generator, seed: int, mk: str, out: Path,
                   grid: tuple[tuple[int, int], int]) -> int:
    """One subject's studies, series and mask; the number of series written."""
    m, (matrix, n_target) = _marker(mk), grid
    plan = subject_plan(s, n_subjects)
    rng = np.random.default_rng(master.integers(2**63))
    phantom = Phantom.random(rng)
    patient, last, first = _patient(s, rng, m, bool(mk))
    pid = patient["PatientID"]
    base_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 900)))
    studies = [("MRI BRAIN PRE-OP", base_date)]
    if plan["postop_study"]:
        studies.append(("MRI BRAIN POSTOP", base_date + dt.timedelta(days=190)))
    subj_dir = out / "dicom" / f"{last}{m('DIR')}_{first}_{pid}"
    n_series = 0
    for st_i, (st_desc, st_date) in enumerate(studies):
        # SH: at most 16 characters, marker (9) included
        accession = f"{m('ACC') or 'ACC'}{int(rng.integers(10**6, 10**7))}"
        study = {"StudyDate": st_date.strftime("%Y%m%d"), "StudyTime": "101500",
                 "StudyDescription": f"{st_desc} {m('DESC')}".strip(), "AccessionNumber": accession,
                 "StudyInstanceUID": _uid(seed, pid, st_i), "StudyID": f"{st_i + 1}"}
        study_dir = subj_dir / f"{study['StudyDate']}_{accession}"
        for n, spec in enumerate(_series_specs(plan, st_i, matrix, n_target), start=1):
            number = 100 * (st_i + 1) + n
            sdir = study_dir / f"{number:03d}_{spec.description.replace(' ', '_').replace('+', 'plus')}"
            typed = _typed(spec, n, patient, first, study, m) if mk else None
            affine, mask = _write_series(sdir, spec, phantom, patient, study, number, seed, rng, f"{m('FILE')}IM", typed)
            n_series += 1
            if mask is not None:
                img = nib.Nifti1Image(mask.astype(np.uint8), affine)
                img.header.set_xyzt_units("mm")
                save_nifti(img, out / "masks" / f"{pid}_lesion.nii.gz")
        if plan["unreadable_file"] and st_i == 0:
            bad = next(study_dir.glob("*_AX_T1_MPRAGE"))
            (bad / "IM09999.dcm").write_bytes(b"\x00" * 64 + b"not a dicom file")
            (bad / "export_notes.txt").write_text("exported from PACS\n")
    return n_series
