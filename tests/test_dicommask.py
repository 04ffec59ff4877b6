"""Masks stored as DICOM SEG: third-party objects (dcmqi, ../shared/data/seg) read onto the converted image's grid
equal their reference label maps voxel for voxel; overlapping segments, undeclared labels and a SEG of another
grid get their reason; our own SEG reads back through the same path."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohortseg.convert import ConversionError, convert_series, import_mask
from cohortseg.dicommask import MaskError, is_dicom, label_values, seg_to_label
from tests.conftest import need_shared
from tests.test_dicomseg import targets  # noqa: F401 - the fixture


def series(folder: Path):
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    img, _ = convert_series(files, "dcm2niix")
    return img


def reference(nrrd: Path, img, tmp_path: Path) -> np.ndarray:
    """The reference NRRD on the image grid, placed independently of our reader: each labelled voxel's
    physical point from SimpleITK (LPS) to RAS, through the image's inverse affine, rounded (it must lie on a
    voxel centre, within 0.05 voxel)."""
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(nrrd))
    arr = sitk.GetArrayFromImage(ref)  # (z, y, x)
    out = np.zeros(img.shape[:3], dtype=np.uint8)
    inv = np.linalg.inv(img.affine)
    for z, y, x in np.argwhere(arr > 0):
        lps = np.asarray(ref.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
        ijk = inv[:3, :3] @ (lps * [-1, -1, 1]) + inv[:3, 3]
        assert np.abs(ijk - np.rint(ijk)).max() < 0.05, (nrrd, ijk)
        out[tuple(np.rint(ijk).astype(int))] = 1
    return out


@pytest.mark.parametrize("case, seg, ref, label", [
    ("ct-3slice", "liver.dcm", "liver_seg.nrrd", "liver"),
    ("23x38x3/image", "23x38x3/seg/label.seg", "23x38x3/nrrd/label.nrrd", "Liver"),
    ("24x38x3/image", "24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd", "LIVER"),
])
def test_dcmqi_binary_seg_equals_its_reference(case, seg, ref, label, tmp_path):
    root = need_shared("seg/dcmqi")
    img = series(root / case)
    got = seg_to_label(root / seg, img.affine, img.shape, (label,))
    want = reference(root / ref, img, tmp_path)
    print(f"{seg}: {int(got.sum())} voxels, {int((got != want).sum())} differ from {ref}")
    assert got.sum() > 0 and np.array_equal(got, want)


def test_labelmap_seg_equals_its_reference(tmp_path):
    root = need_shared("seg/dcmqi")
    img = series(root / "24x38x3" / "image")
    got = seg_to_label(root / "sparse-labelmap-noppv.dcm", img.affine, img.shape, ("liver",))
    want = reference(root / "sparse_labelmap_noppv_seg.nrrd", img, tmp_path)
    assert got.sum() > 0 and np.array_equal(got, want)


def test_overlapping_segments_are_refused():
    root = need_shared("seg/dcmqi")
    img = series(root / "ct-3slice")
    names = ("green", "orange", "purple", "light_blue", "dark_blue")
    with pytest.raises(MaskError, match="overlap in .* voxels"):
        seg_to_label(root / "partial_overlaps.dcm", img.affine, img.shape, names)


def test_undeclared_label_and_other_grid_are_refused():
    root = need_shared("seg/dcmqi")
    img = series(root / "ct-3slice")
    with pytest.raises(MaskError, match=r"segment 1 'Liver' \(code T-62000 SRT\) is not declared in the config's labels \['lesion'\]"):
        seg_to_label(root / "liver.dcm", img.affine, img.shape, ("lesion",))
    other = series(root / "23x38x3" / "image")
    with pytest.raises(MaskError, match="does not lie on the selected series' grid"):
        seg_to_label(root / "liver.dcm", other.affine, other.shape, ("liver",))


def test_import_mask_reads_a_dicom_seg_and_names_the_reason():
    root = need_shared("seg/dcmqi")
    img = series(root / "ct-3slice")
    assert is_dicom(root / "liver.dcm") and not is_dicom(root / "liver_seg.nrrd")
    lab, info = import_mask(str(root / "liver.dcm"), img, 1, ("liver",))
    assert info["label_voxels"]["1"] > 0 and not info["mask_resampled"]
    with pytest.raises(ConversionError, match="DICOM SEG mask: segments .* overlap"):
        import_mask(str(root / "partial_overlaps.dcm"), img, 5, ("green", "orange", "purple", "light_blue", "dark_blue"))


def test_generic_segment_names_map_by_number():
    assert label_values({1: "Segment_1", 2: "segment 2"}, ("a", "b")) == {1: 1, 2: 2}
    assert label_values({1: "B", 2: "a"}, ("a", "b")) == {1: 2, 2: 1}
    with pytest.raises(MaskError, match="segment 3 'Segment_3' is not declared"):
        label_values({3: "Segment_3"}, ("a", "b"))


def test_our_seg_reads_back_as_a_mask(targets, tmp_path):  # noqa: F811
    """A SEG written by cohortseg (oblique series) read as a radiologist's mask: the same voxels."""
    from cohortseg import dicomseg

    files, img, lab = targets[("axial", True)]
    nib.save(lab, str(tmp_path / "p.nii.gz"))
    dicomseg.write_subject_seg(tmp_path / "p.nii.gz", files, tmp_path / "s.dcm", ("lesion",), {}, "m", "m")
    got, info = import_mask(str(tmp_path / "s.dcm"), img, 1, ("lesion",), files)
    assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(lab.dataobj)) and not info["mask_resampled"]


def test_seg_of_another_image_or_another_version_of_the_series_is_refused():
    root = need_shared("seg/dcmqi")
    own = sorted(str(p) for p in (root / "ct-3slice").iterdir())
    img = series(root / "ct-3slice")
    assert seg_to_label(root / "liver.dcm", img.affine, img.shape, ("liver",), own).sum() > 0
    other = sorted(str(p) for p in (root / "23x38x3" / "image").iterdir())
    with pytest.raises(MaskError, match="references 1 series, none of them the selected series, and not its frame"):
        seg_to_label(root / "liver.dcm", img.affine, img.shape, ("liver",), other)
    with pytest.raises(ConversionError, match="DICOM SEG mask: the SEG names 1 instance.* does not hold"):
        import_mask(str(root / "liver.dcm"), img, 1, ("liver",), own[:2])


def test_segments_map_by_their_code_when_their_label_is_not_a_configured_name(targets, tmp_path):  # noqa: F811
    """A SEG whose segment is labelled 'lesion' and coded SCT 108369006 (Neoplasm), read for a config that calls the
    label 'tumour': refused with the code in the reason, mapped once masks.segment_codes lists the code."""
    from cohortseg import dicomseg

    files, img, lab = targets[("axial", False)]
    nib.save(lab, str(tmp_path / "p.nii.gz"))
    codes = {"lesion": {"category": ["49755003", "SCT", "Morphologically Altered Structure"],
                        "type": ["108369006", "SCT", "Neoplasm"]}}
    dicomseg.write_subject_seg(tmp_path / "p.nii.gz", files, tmp_path / "s.dcm", ("lesion",), codes, "m", "m")
    with pytest.raises(ConversionError, match=r"segment 1 'lesion' \(code 108369006 SCT\) is not declared in the "
                                              r"config's labels \['tumour'\]"):
        import_mask(str(tmp_path / "s.dcm"), img, 1, ("tumour",), files)
    got, _ = import_mask(str(tmp_path / "s.dcm"), img, 1, ("tumour",), files, {"tumour": [["108369006", "sct"]]})
    assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(lab.dataobj))
