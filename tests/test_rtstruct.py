"""Masks stored as RTSTRUCT: a polygon of a known shape rasterises within one voxel on axial, oblique and sagittal
series (holes by the even-odd rule); rt-utils' phantom reads, its two RTSTRUCTs with broken references get their
reason; another image's RTSTRUCT, an undeclared, empty or overlapping ROI and an off-grid contour are refused;
RTSTRUCTs stored in the cohort itself (masks.in_cohort) are found and the one of the selected series used."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cohortseg import dicomseg
from cohortseg.convert import ConversionError, convert_series, import_mask
from cohortseg.rtstruct import RTSTRUCT_CLASS, RTStructError, label_values, rtstruct_to_label
from tests.conftest import REPO, need_shared
from tests.test_dicomseg import targets  # noqa: F401 - the fixture
from tests.test_prepare import cli as prepare_cli
from tests.test_prepare import cohort  # noqa: F401 - the fixture


def write_rtstruct(path: Path, source: list, rois: dict[str, list[np.ndarray]], *, series_uid: str | None = None,
                   frame_uid: str | None = None, instance_uids: list[str] | None = None) -> Path:
    """A minimal RT Structure Set: ``rois`` name -> closed contours (n, 3) in LPS mm, referencing ``source``'s
    series, frame of reference and instances unless the UIDs are given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTSTRUCT_CLASS, ds.file_meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    frame_uid = frame_uid or str(source[0].FrameOfReferenceUID)
    instance_uids = instance_uids or [str(d.SOPInstanceUID) for d in source]
    series = Dataset()
    series.SeriesInstanceUID = series_uid or str(source[0].SeriesInstanceUID)
    series.ContourImageSequence = Sequence([Dataset() for _ in instance_uids])
    for item, uid in zip(series.ContourImageSequence, instance_uids):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = str(source[0].SOPClassUID), uid
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([series])
    ref = Dataset()
    ref.FrameOfReferenceUID, ref.RTReferencedStudySequence = frame_uid, Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ContourSequence = number, Sequence()
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(pts)
            c.ContourData = [float(f"{v:.4f}") for v in np.asarray(pts).ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def circle(pos, iop, spacing, centre_rc, radius_px, n=180) -> np.ndarray:
    """A circle of ``radius_px`` pixels around pixel (row, col) ``centre_rc`` of one frame, in LPS mm."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = centre_rc[0] + radius_px * np.sin(t)
    c = centre_rc[1] + radius_px * np.cos(t)
    return pos + c[:, None] * spacing[1] * iop[0] + r[:, None] * spacing[0] * iop[1]


def frames_and_circles(files, radii):
    """Contours (per radius: one circle per frame) and the exact frames: inside the outer circle and, with two
    radii, outside the inner one; plus each pixel's distance to the nearest circle."""
    source = dicomseg.read_source(files)
    planes = dicomseg.frame_planes(source)
    rows, cols = int(source[0].Rows), int(source[0].Columns)
    centre = ((rows - 1) / 2 + 0.3, (cols - 1) / 2 - 0.2)  # off the pixel lattice
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    dist = np.hypot(rr - centre[0], cc - centre[1])
    inside = dist < radii[0]
    if len(radii) > 1:
        inside &= dist > radii[1]
    near = np.min([np.abs(dist - r) for r in radii], axis=0)
    contours = [circle(pos, iop, sp, centre, r) for pos, iop, sp in planes for r in radii]
    voxels = dicomseg.frame_voxels(planes, rows, cols, *_grid(files))
    return source, contours, voxels, np.broadcast_to(inside, (len(planes), rows, cols)), \
        np.broadcast_to(near, (len(planes), rows, cols))


def _grid(files):
    img, _ = convert_series(files, "dcm2niix")
    return img.affine, img.shape


@pytest.mark.parametrize("plane", [("axial", False), ("axial", True), ("sagittal", False)])
@pytest.mark.parametrize("radii", [(9.0,), (9.0, 4.0)], ids=["disc", "ring"])
def test_known_polygon_rasterises_within_one_voxel(targets, plane, radii, tmp_path):  # noqa: F811
    files, img, _ = targets[plane]
    source, contours, voxels, inside, near = frames_and_circles(files, radii)
    path = write_rtstruct(tmp_path / "rt.dcm", source, {"lesion": contours})
    got = rtstruct_to_label(path, img.affine, img.shape, ("lesion",), files)
    got_frames = got[voxels[..., 0], voxels[..., 1], voxels[..., 2]] > 0
    wrong = got_frames != inside
    print(f"{plane} {radii}: {int(got.sum())} voxels, {int(inside.sum())} exact, {int(wrong.sum())} differ, "
          f"all within {float(near[wrong].max()) if wrong.any() else 0.0:.2f} voxel of the contour")
    assert got.sum() > 0 and (near[wrong] <= 1.0).all()
    assert not (got_frames & ~inside & (near > 1)).any()  # nothing outside the disc or inside the ring's hole


def test_rt_utils_phantom_reads_as_a_square_ring():
    root = need_shared("seg/rt-utils/mock_data")
    files = [str(root / "ct_1.dcm"), str(root / "ct_2.dcm")]
    img, _ = convert_series(files, "dcm2niix")
    got = rtstruct_to_label(root / "rt.dcm", img.affine, img.shape, ("lesion",), files)
    # ROI-1: a 24 mm square with a 15 mm square inside it (a hole), on the first slice (z = 60 mm) only
    idx = np.argwhere(got)
    assert set(idx[:, 2]) == {0}
    extent_mm = (idx[:, :2].max(0) - idx[:, :2].min(0) + 1) * img.header.get_zooms()[:2]
    print(f"rt.dcm: {int(got.sum())} voxels, extent {extent_mm} mm")
    assert np.allclose(extent_mm, 24.0, atol=2 * 0.49)
    centre = np.rint(idx[:, :2].mean(0)).astype(int)
    assert got[centre[0], centre[1], 0] == 0  # the hole
    ring_area = (24.0 ** 2 - 15.0 ** 2) / np.prod(img.header.get_zooms()[:2])
    assert abs(got.sum() - ring_area) / ring_area < 0.1


@pytest.mark.parametrize("name, reason", [
    ("non_existent_reference_rt.dcm", "outside the image"),
    ("invalid_reference_rt.dcm", "names an instance that is not in the selected series"),
])
def test_rt_utils_broken_references_get_their_reason(name, reason):
    root = need_shared("seg/rt-utils/mock_data")
    files = [str(root / "ct_1.dcm"), str(root / "ct_2.dcm")]
    img, _ = convert_series(files, "dcm2niix")
    with pytest.raises(ConversionError, match=f"RTSTRUCT mask: ROI 'ROI-1': .*{reason}"):
        import_mask(str(root / name), img, 4, ("a", "b", "c", "d"), files)


def test_rtstruct_of_another_image_is_refused(targets, tmp_path):  # noqa: F811
    files, img, _ = targets[("axial", False)]
    source, contours, *_ = frames_and_circles(files, (9.0,))
    path = write_rtstruct(tmp_path / "rt.dcm", source, {"lesion": contours}, series_uid=generate_uid(),
                          frame_uid=generate_uid())
    with pytest.raises(RTStructError, match="none of them the selected series, and no frame of reference"):
        rtstruct_to_label(path, img.affine, img.shape, ("lesion",), files)
    # another series of the same frame of reference is accepted (its instances are not checked)
    same_frame = write_rtstruct(tmp_path / "rt2.dcm", source, {"lesion": contours}, series_uid=generate_uid(),
                                instance_uids=[generate_uid()])
    assert rtstruct_to_label(same_frame, img.affine, img.shape, ("lesion",), files).sum() > 0


def test_undeclared_empty_overlapping_and_off_grid_rois_are_refused(targets, tmp_path):  # noqa: F811
    files, img, _ = targets[("axial", False)]
    source, contours, *_ = frames_and_circles(files, (9.0,))
    cases = [
        ({"oedema": contours}, ("lesion",), "ROI 1 'oedema' is not declared in the config's labels"),
        ({"lesion": []}, ("lesion",), "ROI 1 'lesion' is empty"),
        ({"a": contours, "b": contours}, ("a", "b"), "ROI 'b' overlaps another ROI in"),
    ]
    for rois, labels, reason in cases:
        with pytest.raises(RTStructError, match=reason):
            rtstruct_to_label(write_rtstruct(tmp_path / "rt.dcm", source, rois), img.affine, img.shape, labels, files)
    spacing = float(np.linalg.norm(img.affine[:3, 2]))
    normal = np.cross(*np.reshape(np.asarray(source[0].ImageOrientationPatient, float), (2, 3)))
    between = [c + 0.5 * spacing * normal for c in contours]  # half-way between two slices
    with pytest.raises(RTStructError, match="off the nearest slice centre"):
        rtstruct_to_label(write_rtstruct(tmp_path / "rt.dcm", source, {"lesion": between}), img.affine, img.shape,
                          ("lesion",), files)


def test_generic_roi_names_map_by_position():
    assert label_values({1: "ROI-1", 2: "roi 2"}, ("a", "b")) == {1: 1, 2: 2}
    assert label_values({3: "B", 7: "a"}, ("a", "b")) == {3: 2, 7: 1}
    with pytest.raises(RTStructError, match="ROI 3 'ROI-3' is not declared"):
        label_values({1: "ROI-1", 2: "ROI-2", 3: "ROI-3"}, ("a", "b"))


def test_prepare_reads_an_rtstruct_mask_and_reports_one_of_another_image(cohort):  # noqa: F811
    """Through `cohortseg prepare`: a subject whose mask file is an RTSTRUCT of its series gets the rasterised
    label; one whose RTSTRUCT was drawn on another image fails with the reason, by pseudonym, the others go on."""
    wd, groups = cohort
    shard, subjects = max(groups.items(), key=lambda kv: len(kv[1]))
    good, bad = subjects[0], subjects[-1]
    masks = json.loads((wd / "private" / "masks.json").read_text())
    series_files = json.loads((wd / "private" / "series_files.json").read_text())
    included = pd.read_csv(wd / "results" / "cohort" / "included.tsv", sep="\t").set_index("subject")
    for subject, other in ((good, False), (bad, True)):
        files = [str(wd / f) for f in series_files[included.loc[subject, "series"]]]
        source, contours, *_ = frames_and_circles(files, (6.0,))
        uids = {"series_uid": generate_uid(), "frame_uid": generate_uid()} if other else {}
        write_rtstruct(wd / masks[subject], source, {"lesion": contours}, **uids)
    proc = prepare_cli(wd, "prepare", "--shard", shard, check=False)
    assert proc.returncode == 2
    assert f"{bad}: failed: ConversionError: {bad} mask: RTSTRUCT mask: references 1 series, none of them the " \
           "selected series" in proc.stderr, proc.stderr
    label = nib.load(str(wd / "results" / "nifti" / good / "label.nii.gz"))
    image = nib.load(str(wd / "results" / "nifti" / good / "image.nii.gz"))
    assert np.allclose(label.affine, image.affine) and set(np.unique(np.asanyarray(label.dataobj))) == {0, 1}


def stored_beside(path: Path, source_first, series_number: int) -> None:
    """The RTSTRUCT made an object of the source's patient and study, in a series of its own (as a PACS holds it)."""
    ds = pydicom.dcmread(str(path))
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyID"):
        if key in source_first:
            setattr(ds, key, source_first.get(key))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), series_number, 1
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_masks_in_the_cohort_are_found_and_the_fitting_one_is_used(cohort):  # noqa: F811
    """masks.in_cohort, no mask files: RTSTRUCTs stored in the export beside the images belong to their patient's
    subject; `prepare` uses the first that references the selected series (here the second of two: the first
    was drawn on another image), and a subject whose only object fits nothing fails with each object's reason."""
    wd, groups = cohort
    shard, subjects = max(groups.items(), key=lambda kv: len(kv[1]))
    good, bad = subjects[0], subjects[-1]
    series_files = json.loads((wd / "private" / "series_files.json").read_text())
    included = pd.read_csv(wd / "results" / "cohort" / "included.tsv", sep="\t").set_index("subject")
    (wd / "data" / "tiny" / "dicom" / "objects").mkdir()
    for subject, kinds in ((good, ("other", "own")), (bad, ("other",))):
        files = [str(wd / f) for f in series_files[included.loc[subject, "series"]]]
        source, contours, voxels, inside, _ = frames_and_circles(files, (6.0,))
        for n, kind in enumerate(kinds, start=1):
            uids = {"series_uid": generate_uid(), "frame_uid": generate_uid()} if kind == "other" else {}
            path = write_rtstruct(wd / "data" / "tiny" / "dicom" / "objects" / f"{subject}_{n}.dcm", source,
                                  {"lesion": contours}, **uids)
            stored_beside(path, source[0], 900 + n)
        if subject == good:
            expected = (voxels, inside)
    settings = json.dumps({"prepare": {"subjects_per_job": 3}, "masks": {"dir": None, "in_cohort": True}})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cohortseg.cli", *args, "-c", str(REPO / "tests" / "config" /
                               "tiny.yaml"), "--set", settings], cwd=wd, capture_output=True, text=True)

    for stage in ("index", "select"):
        assert run(stage).returncode == 0
    masks = json.loads((wd / "private" / "masks.json").read_text())
    assert sorted(masks) == sorted([good, bad]) and [len(masks[good]), len(masks[bad])] == [2, 1], masks
    subjects_tsv = pd.read_csv(wd / "results" / "cohort" / "subjects.tsv", sep="\t").set_index("subject")
    assert set(subjects_tsv.index[subjects_tsv["has_mask"]]) == {good, bad}
    proc = run("prepare", "--shard", shard)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"{bad}: none of the 1 mask objects in the cohort fits the selected series (object 1: RTSTRUCT mask: "
            "references 1 series, none of them the selected series") in proc.stderr, proc.stderr
    assert f"{good}: mask from the cohort's mask object 2 of 2" in proc.stderr
    label = np.asanyarray(nib.load(str(wd / "results" / "nifti" / good / "label.nii.gz")).dataobj)
    voxels, inside = expected
    got = label[voxels[..., 0], voxels[..., 1], voxels[..., 2]] > 0
    print(f"{good}: {int(got.sum())} voxels from its second RTSTRUCT, {int(inside.sum())} exact, "
          f"{int((got != inside).sum())} differ")
    assert got.sum() > 0 and (got == inside).mean() > 0.99
    others = [s for s in subjects if s not in (good, bad)]
    assert all((wd / "results" / "nifti" / s / "image.nii.gz").exists() and
               not (wd / "results" / "nifti" / s / "label.nii.gz").exists() for s in others)
