"""DICOM SEG out: valid (dciodvfy), referencing the series the model read, and equal voxel for voxel to the
NIfTI prediction on the source grid when read back with highdicom (axial, oblique, sagittal, real CT)."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cohortseg import dicomseg
from cohortseg.convert import convert_series, import_mask
from cohortseg.index import build_index
from cohortseg.pseudonym import Pseudonymiser
from tests.conftest import need_shared, skip_or_fail

LESION = {"lesion": {"category": ["49755003", "SCT", "Morphologically Altered Structure"],
                     "type": ["108369006", "SCT", "Neoplasm"]}}


@pytest.fixture(scope="module")
def targets(tiny_cohort):
    """(plane, oblique, source files, converted image, the mask on its grid as the 'prediction')."""
    pseudo = Pseudonymiser(b"k" * 32)
    df, private = build_index(tiny_cohort / "dicom", pseudo, "post[ _-]?op", 0.2, workers=1)
    masks = {pseudo.subject(p.name.split("_lesion")[0]): p for p in (tiny_cohort / "masks").glob("*.nii.gz")}
    rows = df[(df["series_description"].str.contains(r"MPRAGE \+C")) & (df["n_slices"] > 30) & (~df["postop"])
              & (df["missing_slices"] == 0)]
    out = {}
    for _, row in rows.iterrows():
        key = (row["plane"], bool(row["obliquity_deg"] > 1))
        if key in out:
            continue
        files = private["series_files"][row["series"]]
        img, _ = convert_series(files, "dcm2niix")
        lab, _ = import_mask(str(masks[row["subject"]]), img, 1)
        out[key] = (files, img, lab)
    assert set(out) >= {("axial", False), ("axial", True), ("sagittal", False)}
    return out


def dciodvfy_errors(path):
    if shutil.which("dciodvfy") is None:
        skip_or_fail("dciodvfy (Debian dicom3tools) is not installed: .ci/run installs it")
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def check_seg(pred_img, files, seg_path, n_labels):
    """Read the SEG back with highdicom, scatter it onto the prediction's grid, compare every voxel."""
    source = dicomseg.read_source(files)
    voxels = dicomseg.frame_voxels(dicomseg.frame_planes(source), int(source[0].Rows), int(source[0].Columns),
                                   pred_img.affine, pred_img.shape)
    back, uncovered = dicomseg.frames_to_volume(dicomseg.read_back(seg_path, source, n_labels), voxels, pred_img.shape)
    pred = np.asarray(pred_img.dataobj)
    return uncovered, int((back != pred).sum()), int(pred.size), source


@pytest.mark.parametrize("plane", [("axial", False), ("axial", True), ("sagittal", False)],
                         ids=["axial", "oblique", "sagittal"])
def test_seg_reads_back_to_the_prediction_and_validates(targets, tmp_path, plane):
    files, img, lab = targets[plane]
    pred = tmp_path / "pred.nii.gz"
    nib.save(lab, str(pred))
    rec = dicomseg.write_subject_seg(pred, files, tmp_path / "seg.dcm", ("lesion",), LESION, "unet-0123", "unet")
    assert rec["readback_equal"] and rec["voxels"]["lesion"] > 500
    uncovered, differ, n, source = check_seg(lab, files, tmp_path / "seg.dcm", 1)
    assert (uncovered, differ) == (0, 0) and n == rec["readback_voxels"]
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    # the patient and study of the series the model read, and every one of its instances referenced
    assert (seg.PatientID, seg.StudyInstanceUID) == (source[0].PatientID, source[0].StudyInstanceUID)
    refs = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == {d.SOPInstanceUID for d in source}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "lesion" and desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert desc.SegmentAlgorithmType == "AUTOMATIC" and desc.SegmentAlgorithmName == "cohortseg unet"


def test_two_labels_keep_their_values(targets, tmp_path):
    files, img, lab = targets[("axial", True)]
    data = np.asarray(lab.dataobj).astype(np.uint8)
    two = data.copy()
    two[: data.shape[0] // 2][data[: data.shape[0] // 2] > 0] = 2  # one half of the lesion becomes label 2
    pred_img = nib.Nifti1Image(two, lab.affine)
    nib.save(pred_img, str(tmp_path / "pred.nii.gz"))
    rec = dicomseg.write_subject_seg(tmp_path / "pred.nii.gz", files, tmp_path / "seg.dcm", ("a", "b"), {}, "m-1", "m")
    assert rec["voxels"]["a"] > 0 and rec["voxels"]["b"] > 0
    assert check_seg(pred_img, files, tmp_path / "seg.dcm", 2)[:2] == (0, 0)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert [s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning for s in seg.SegmentSequence] == ["Tissue"] * 2


def test_prediction_off_the_source_grid_is_refused(targets, tmp_path):
    files, img, lab = targets[("axial", False)]
    shifted = lab.affine.copy()
    shifted[:3, 3] += 0.4 * lab.affine[:3, 0]  # 0.4 voxel along the first axis
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), str(tmp_path / "pred.nii.gz"))
    with pytest.raises(dicomseg.SegError, match="not on the converted image's grid"):
        dicomseg.write_subject_seg(tmp_path / "pred.nii.gz", files, tmp_path / "seg.dcm", ("lesion",), {}, "m", "m")
    assert not (tmp_path / "seg.dcm").exists()


def test_values_outside_the_labels_are_refused(targets, tmp_path):
    files, img, lab = targets[("axial", False)]
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8) * 3, lab.affine), str(tmp_path / "pred.nii.gz"))
    with pytest.raises(dicomseg.SegError, match="outside 0..1"):
        dicomseg.write_subject_seg(tmp_path / "pred.nii.gz", files, tmp_path / "seg.dcm", ("lesion",), {}, "m", "m")


def test_stage_records_a_failed_subject_and_writes_the_others(targets, tmp_path):
    """One subject without a selected series: its reason in the record, the other's SEG written; the record
    holds no identifier of the source (no UID, no patient id)."""
    files, img, lab = targets[("sagittal", False)]
    nib.save(lab, str(tmp_path / "sub-a.nii.gz"))
    nib.save(lab, str(tmp_path / "sub-b.nii.gz"))
    manifest = {"shard": "all", "predictions": {s: {"prediction": str(tmp_path / f"{s}.nii.gz")} for s in ("sub-a", "sub-b")}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    (tmp_path / "included.tsv").write_text("subject\tseries\nsub-a\tser-1\n")
    (tmp_path / "files.json").write_text(json.dumps({"ser-1": files}))
    (tmp_path / "selection.json").write_text(json.dumps({"selected": {"candidate": "unet"}}))
    cfg = dicomseg.Config.from_config({"study": "s", "labels": ["lesion"], "dicomseg": {"enabled": True, "segments": {}}})
    rec = dicomseg.run(cfg, tmp_path / "m.json", tmp_path / "included.tsv", tmp_path / "files.json",
                       tmp_path / "selection.json", tmp_path / "private", tmp_path / "record.json")
    assert rec["subjects"]["sub-a"]["status"] == "ok" and rec["n_written"] == 1
    assert rec["subjects"]["sub-b"] == {"status": "failed", "reason": "no selected series for 'sub-b'"}
    assert (tmp_path / "private" / "sub-a.dcm").exists()
    text = (tmp_path / "record.json").read_text()
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert src.PatientID not in text and src.StudyInstanceUID not in text and src.SeriesInstanceUID not in text


def test_real_ct_series(tmp_path):
    """A real axial CT (Philips, 5 mm): the SEG of a thresholded body mask validates and reads back equal."""
    folder = need_shared("dicom/dcm_qa_ct/Philips_S21570_study_subset/In/S2010")
    files = sorted(str(p) for p in folder.iterdir() if p.name != "DIRFILE")
    img, _ = convert_series(files, "dcm2niix")
    body = (np.asarray(img.dataobj) > -300).astype(np.uint8)
    pred_img = nib.Nifti1Image(body, img.affine)
    nib.save(pred_img, str(tmp_path / "pred.nii.gz"))
    rec = dicomseg.write_subject_seg(tmp_path / "pred.nii.gz", files, tmp_path / "seg.dcm", ("body",), {}, "m-1", "m")
    assert rec["frames"] == len(files) and rec["voxels"]["body"] > 0.05 * body.size
    assert check_seg(pred_img, files, tmp_path / "seg.dcm", 1)[:2] == (0, 0)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
