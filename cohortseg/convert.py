"""DICOM series -> NIfTI under a pseudonymous id, plus an identifier-free JSON sidecar.

The converter (dicom2nifti by default, dcm2niix on request) only ever sees symbolic links
named ``00001.dcm``… in a private temporary folder, so no source path (which in PACS exports
carries names and ids) can reach its output or messages. Free-text NIfTI header fields are
blanked; the sidecar holds a whitelist of acquisition parameters, never identifiers or dates.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydicom is imported where a DICOM header is read (a NIfTI cohort never pays its import)
    import pydicom

import numpy as np

from .descriptors import IDENTIFYING_TAGS, SIDECAR_DESCRIPTORS, identifiers, public
from .util import import_nibabel, log, save_nifti, write_json

nib = import_nibabel()


SIDECAR_TAGS = [
    "Modality", "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength", "RepetitionTime",
    "EchoTime", "InversionTime", "FlipAngle", "SliceThickness", "SpacingBetweenSlices", "PixelSpacing",
    "ImageType", "SeriesDescription", "ScanningSequence", "SequenceVariant", "ContrastBolusAgent",
    "BodyPartExamined", "KVP", "ConvolutionKernel", "MRAcquisitionType", "Rows", "Columns",
]


class ConversionError(RuntimeError):
    pass


def _plain(v: Any) -> Any:
    import pydicom

    if isinstance(v, pydicom.multival.MultiValue):
        return [_plain(x) for x in v]
    if isinstance(v, (pydicom.valuerep.DSfloat, pydicom.valuerep.IS, float, int)):
        return float(v) if not isinstance(v, int) or isinstance(v, bool) else int(v)
    return str(v)


def sidecar(ds: pydicom.Dataset, descriptors: str = "clean") -> dict[str, Any]:
    """The acquisition tags of the converted series; its free text as ``privacy.descriptors`` says (cleaned
    of this patient's identifiers by default: cohortseg.descriptors)."""
    out = {t: _plain(ds.get(t)) for t in SIDECAR_TAGS if ds.get(t) not in (None, "")}
    ids = identifiers({t: ds.get(t) for t in IDENTIFYING_TAGS})
    for t in SIDECAR_DESCRIPTORS:
        if t in out:
            value = out[t]
            out[t] = [public(v, ids, descriptors) for v in value] if isinstance(value, list) else \
                public(value, ids, descriptors)
            if not out[t] or out[t] == [""] * len(out[t]):
                del out[t]
    return out


def _link_anonymously(files: list[str], tmp: Path) -> list[Path]:
    src = tmp / "in"
    src.mkdir()
    links = []
    for i, f in enumerate(files, start=1):
        link = src / f"{i:05d}.dcm"
        link.symlink_to(Path(f).resolve())
        links.append(link)
    return links


def _dicom2nifti(links: list[Path], out: Path) -> Path:
    import dicom2nifti.convert_dicom as cd

    import pydicom

    datasets = [pydicom.dcmread(str(p)) for p in links]
    target = out / "image.nii"  # uncompressed: it is read back once and compressed only on the final save
    cd.dicom_array_to_nifti(datasets, str(target), reorient_nifti=False)
    return target


def dcm2niix_exe() -> str | None:
    """dcm2niix on PATH, else the one the PyPI package put beside this interpreter."""
    import sys

    found = shutil.which("dcm2niix")
    if found:
        return found
    sibling = Path(sys.executable).parent / "dcm2niix"
    return str(sibling) if sibling.exists() else None


def _dcm2niix(links: list[Path], out: Path) -> Path:
    exe = dcm2niix_exe()
    if exe is None:
        raise ConversionError("dcm2niix is not installed (pip install dcm2niix)")
    cmd = [exe, "-z", "n", "-b", "n", "-ba", "y", "-f", "image", "-o", str(out), str(links[0].parent)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConversionError(f"dcm2niix failed with exit code {proc.returncode}")
    best = dcm2niix_output(sorted(out.glob("image*.nii")))
    if best is None:
        raise ConversionError("dcm2niix produced no NIfTI file")
    return best


def dcm2niix_output(produced: list[Path]) -> Path | None:
    """The file to keep of those dcm2niix wrote for one series. Beside the raw stack it writes a
    tilt-corrected (_Tilt) and/or equidistant (_Eq) copy where the raw one is sheared or unevenly
    spaced (names like image_Tilt_Eq_1.nii): those are preferred."""
    stem = [re.sub(r"\.nii(\.gz)?$", "", p.name) for p in produced]
    for pattern in (r"_Tilt_Eq(_\d+)?$", r"_Tilt(_\d+)?$", r"_Eq(_\d+)?$"):
        cand = [p for p, st in zip(produced, stem) if re.search(pattern, st)]
        if cand:
            return cand[0]
    return produced[0] if produced else None


def _convert_with(tool: str, links: list[Path], tmp: Path) -> Path:
    out = tmp / f"out-{tool}"
    out.mkdir()
    try:
        return _dicom2nifti(links, out) if tool == "dicom2nifti" else _dcm2niix(links, out)
    except ConversionError:
        raise
    except Exception as exc:  # converters raise their own types; re-word without paths
        raise ConversionError(f"{tool} could not convert the series: {type(exc).__name__}: {_strip_paths(str(exc), tmp)}") from None


def convert_series(files: list[str], tool: str, correction: str = "", allow_4d: bool = False,
                   descriptors: str = "clean") -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """Convert the files of one series; return the NIfTI image (in memory) and the sidecar.

    ``correction`` ('gantry_tilt', 'uneven_spacing' or both joined by '+', from selection) asks
    for resampling onto a regular grid, which dcm2niix does (its _Tilt/_Eq outputs). Tool ``auto``
    converts with dcm2niix and, where dcm2niix fails on a series that needs no correction, with
    dicom2nifti. A 4D result is an error unless ``allow_4d``."""
    if not files:
        raise ConversionError("series has no files")
    conv = _run_converter(files, tool, correction)
    data = _checked_volume(conv["data"], conv["affine"], allow_4d)
    out_img = nib.Nifti1Image(data, conv["affine"])
    if (conv["slope"], conv["inter"]) != (1.0, 0.0):
        out_img.header.set_slope_inter(conv["slope"], conv["inter"])
    out_img.set_qform(conv["affine"], code=1)
    out_img.set_sform(conv["affine"], code=1)
    out_img.header.set_xyzt_units("mm", "sec")
    meta = sidecar(conv["first"], descriptors)
    meta.update(
        converter=conv["used"],
        converter_version=_tool_version(conv["used"]),
        geometry_correction=correction,
        shape=list(data.shape),
        zooms=[float(z) for z in out_img.header.get_zooms()[:3]],
        orientation="".join(nib.aff2axcodes(out_img.affine)),
        n_files=len(files),
    )
    if conv["fallback"]:
        meta["converter_fallback_from"] = "dcm2niix"
    if correction and not re.search(r"_(Tilt|Eq)", conv["name"]):
        log.warning("series flagged for %s correction, but dcm2niix found nothing to correct", correction)
    # through bytes once, so the in-memory image reads (dataobj) like the saved file: scaled
    return nib.Nifti1Image.from_bytes(out_img.to_bytes()), meta


def _run_converter(files: list[str], tool: str, correction: str) -> dict[str, Any]:
    """The converter on anonymously named links to ``files``: stored values, scale, affine, first header."""
    import pydicom

    fallback = None
    with tempfile.TemporaryDirectory(prefix="cohortseg-convert-") as t:
        tmp = Path(t)
        links = _link_anonymously(files, tmp)
        used = ("dcm2niix" if dcm2niix_exe() else "dicom2nifti") if tool == "auto" else tool
        if correction and used != "dcm2niix":
            raise ConversionError(f"series needs {correction} correction, which only dcm2niix does (convert.tool: auto or dcm2niix)")
        try:
            nii_path = _convert_with(used, links, tmp)
        except ConversionError as exc:
            if tool != "auto" or used == "dicom2nifti" or correction:
                raise
            fallback = str(exc)
            log.warning("%s; converting with dicom2nifti instead", exc)
            used = "dicom2nifti"
            nii_path = _convert_with(used, links, tmp)
        img = nib.load(str(nii_path), mmap=False)
        # the stored values and the converter's scaling (Philips precise values, dcm2niix's
        # slope/intercept): kept as they are, not materialised as floats
        return {"data": np.asanyarray(img.dataobj.get_unscaled()), "slope": img.dataobj.slope,
                "inter": img.dataobj.inter, "affine": img.affine, "used": used, "fallback": fallback,
                "name": nii_path.name, "first": pydicom.dcmread(str(links[0]), stop_before_pixels=True)}


def _checked_volume(data: np.ndarray, affine: np.ndarray, allow_4d: bool) -> np.ndarray:
    """A 3D (or allowed 4D) array on an unsheared grid; float64 stored values as float32."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 and not (allow_4d and data.ndim == 4):
        raise ConversionError(f"expected a 3D volume, got shape {data.shape}")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    shear = float(np.degrees(np.arcsin(min(1.0, np.abs(cols.T @ cols - np.eye(3)).max()))))
    if shear > 0.01:
        raise ConversionError(f"the converted grid is sheared by {shear:.2f} degrees (gantry tilt left uncorrected)")
    return data


def _strip_paths(msg: str, tmp: Path) -> str:
    return msg.replace(str(tmp), "<tmp>")


@functools.lru_cache(maxsize=None)
def _tool_version(tool: str) -> str:
    if tool == "dicom2nifti":
        import importlib.metadata as md

        return md.version("dicom2nifti")
    exe = dcm2niix_exe()
    if not exe:
        return "unknown"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[-1] if text else "unknown"


def import_mask(mask_path: str, image: nib.Nifti1Image, n_labels: int, label_names: tuple[str, ...] = (),
                series_files: list[str] | None = None,
                label_codes: dict[str, Any] | None = None) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """Put a Slicer-exported mask on the converted image's grid (nearest neighbour where needed); a mask
    file that is a DICOM SEG is placed by its own frame geometry (cohortseg.dicommask), an RTSTRUCT is
    rasterised through the image's affine (cohortseg.rtstruct, its references checked against
    ``series_files``, the selected series), segments/ROIs mapped to ``label_names`` (the config's labels;
    SEG segments also by ``label_codes``, masks.segment_codes)."""
    from nibabel.processing import resample_from_to

    from .dicommask import is_dicom

    if is_dicom(mask_path):
        mask = nib.Nifti1Image(dicom_mask(mask_path, image, label_names or tuple(str(i) for i in range(1, n_labels + 1)),
                                          series_files, label_codes), image.affine)
    else:
        mask = nib.load(mask_path)
    mdata = np.asanyarray(mask.dataobj)
    if mdata.ndim == 4 and mdata.shape[3] == 1:
        mdata = mdata[..., 0]
        mask = nib.Nifti1Image(mdata, mask.affine)
    if mdata.ndim != 3:
        raise ConversionError(f"mask is not 3D (shape {mdata.shape})")
    if not np.all(np.isfinite(mdata)):
        raise ConversionError("mask contains NaN or infinite values")
    values = np.unique(mdata)
    if np.any(values != np.round(values)) or values.min() < 0 or values.max() > n_labels:
        raise ConversionError(f"mask values {values[:10].tolist()} are not integer labels in 0..{n_labels} (config 'labels')")
    same_grid = mask.shape[:3] == image.shape[:3] and np.allclose(mask.affine, image.affine, atol=1e-3)
    info: dict[str, Any] = {"mask_resampled": not same_grid}
    if same_grid:
        data = mdata.astype(np.uint8)
    else:
        # a mask on another grid: map through world space, nearest neighbour keeps label values
        res = resample_from_to(nib.Nifti1Image(mdata.astype(np.float32), mask.affine), image, order=0, mode="constant", cval=0)
        data = np.asanyarray(res.dataobj).round().astype(np.uint8)
        log.warning("mask is on a different grid than the selected series; resampled nearest-neighbour onto it")
    if data.max() == 0:
        info["mask_empty"] = True
    lab = nib.Nifti1Image(data, image.affine)
    lab.set_qform(image.affine, code=1)
    lab.set_sform(image.affine, code=1)
    lab.header.set_xyzt_units("mm", "sec")
    info["label_voxels"] = {str(v): int((data == v).sum()) for v in range(1, n_labels + 1)}
    return lab, info


def included_row(included_tsv: str | Path, subject: str) -> dict[str, Any]:
    from .util import read_rows

    rows = [r for r in read_rows(included_tsv) if r["subject"] == subject]
    if not rows:
        raise ConversionError(f"{subject} is not in {included_tsv}")
    return rows[0]


def run(source: str, tool: str, subject: str, included_tsv: str | Path, series_files_json: str | Path,
        image_out: str | Path, sidecar_out: str | Path, descriptors: str = "clean") -> None:
    row = included_row(included_tsv, subject)
    files = json.loads(Path(series_files_json).read_text())[row["series"]]
    convert_subject(source, tool, subject, row, files, image_out, sidecar_out, descriptors)


def convert_subject(source: str, tool: str, subject: str, row: dict[str, Any], files: list[str],
                    image_out: str | Path, sidecar_out: str | Path, descriptors: str = "clean") -> dict[str, Any]:
    """Convert the series of ``row`` (its ``files``) to the subject's NIfTI and identifier-free sidecar
    (``source``: dicom | nifti; ``tool``: the configured converter; ``descriptors``: privacy.descriptors)."""
    try:
        if source == "nifti":
            from .nifti_cohort import import_image

            try:
                img, meta = import_image(files[0])
            except (ValueError, OSError) as exc:
                raise ConversionError(str(exc)) from None
        else:
            corr = row.get("geometry_correction")
            corr = corr if isinstance(corr, str) else ""
            img, meta = convert_series(files, tool, corr, descriptors=descriptors)
    except ConversionError as exc:
        raise ConversionError(f"{subject} series {row['series']}: {exc}") from None
    from .util import sha256_files

    meta.update(subject=subject, series=row["series"], study=row["study"], source_sha256=sha256_files(files))
    save_nifti(img, image_out)
    write_json(sidecar_out, meta)
    log.info("%s: %s -> %s, shape %s, zooms %s, %s", subject, row["series"], image_out, meta["shape"],
             [round(z, 3) for z in meta["zooms"]], meta["orientation"])
    return meta


def run_mask(n_labels: int, subject: str, image_nii: str | Path, masks_json: str | Path, label_out: str | Path) -> None:
    masks = json.loads(Path(masks_json).read_text())
    if subject not in masks:
        raise ConversionError(f"{subject} has no mask under masks.dir")
    mask_subject(n_labels, subject, image_nii, masks[subject], label_out)


def dicom_mask(mask_path: str, image: nib.Nifti1Image, labels: tuple[str, ...],
               series_files: list[str] | None, label_codes: dict[str, Any] | None = None) -> np.ndarray:
    """A mask stored as DICOM (SEG or RTSTRUCT) as a label array of the image's grid."""
    import pydicom

    from .dicommask import MaskError, seg_to_label
    from .rtstruct import RTSTRUCT_CLASS, RTStructError, rtstruct_to_label

    try:
        sop = str(pydicom.dcmread(mask_path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).get("SOPClassUID", ""))
    except Exception as exc:  # noqa: BLE001 - any parse failure is this file's reason
        raise ConversionError(f"DICOM mask not readable ({type(exc).__name__}: {exc})") from None
    if sop == RTSTRUCT_CLASS:
        try:
            return rtstruct_to_label(mask_path, image.affine, image.shape, labels, series_files)
        except RTStructError as exc:
            raise ConversionError(f"RTSTRUCT mask: {exc}") from None
    try:
        return seg_to_label(mask_path, image.affine, image.shape, labels, series_files, label_codes)
    except MaskError as exc:
        raise ConversionError(f"DICOM SEG mask: {exc}") from None


def mask_subject(n_labels: int, subject: str, image_nii: str | Path, mask_path: str, label_out: str | Path,
                 label_names: tuple[str, ...] = (), series_files: list[str] | None = None,
                 label_codes: dict[str, Any] | None = None) -> None:
    """The radiologist's mask (NIfTI/NRRD, or DICOM SEG) on the converted image's grid (nearest neighbour
    where it differs)."""
    image = nib.load(str(image_nii))
    try:
        lab, info = import_mask(mask_path, image, n_labels, label_names, series_files, label_codes)
    except ConversionError as exc:
        raise ConversionError(f"{subject} mask: {exc}") from None
    save_nifti(lab, label_out)
    log.info("%s: mask imported %s", subject, info)
