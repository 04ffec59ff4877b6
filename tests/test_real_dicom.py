"""Index -> select -> convert on the shared corpus of real scanner DICOM (../shared/data/dicom).

Geometry is compared with the references shipped beside the data (dcm2niix's for dcm_qa_*,
dicom2nifti's ground truths), after reorienting both to RAS: same shape, corner voxel centres
within 1e-3 mm, axes within 1e-4 rad, identical voxel values (or an exact linear rescale)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from cohortseg import qa
from cohortseg.config import load
from cohortseg.convert import convert_series
from cohortseg.index import build_index, read_header
from cohortseg.pseudonym import Pseudonymiser
from cohortseg.select import effective_rules, select, summarise

from .conftest import REPO, need_shared

TOL_MM, TOL_RAD = 1e-3, 1e-4


def _dicom_files(folder: Path) -> list[str]:
    return [str(f) for f in sorted(folder.iterdir()) if f.is_file() and read_header(str(f)).status == "ok"]


def _corpus_cfg() -> dict:
    return load(REPO / "config" / "shared_corpus.yaml")


@pytest.fixture(scope="module")
def corpus():
    root = need_shared("dicom")
    cfg = _corpus_cfg()
    pseudo = Pseudonymiser(b"c" * 32)
    df, private = build_index(root, pseudo, cfg["index"]["postop_regex"], cfg["index"]["slice_gap_tolerance"], workers=2)
    rules = effective_rules(cfg["select"])
    inc, exc = select(df, rules, cfg["select"]["tie_break"], None, None, cfg["select"]["tilt_tolerance_deg"])
    return root, df, private, inc, exc, rules


def test_every_file_and_series_is_accounted_for(corpus):
    """Nothing lost: each file is in exactly one series row (or a row of its own), each row ends
    included, rejected with a reason, or passed-but-not-chosen; every series that passed converts."""
    root, df, private, inc, exc, rules = corpus
    n_files = sum(1 for _, _, fs in os.walk(root) for f in fs if not f.startswith("."))
    dup = int(df["duplicates"].fillna(0).sum())
    assert int(df["n_files"].sum()) == n_files, "every file counted once"
    assert dup == 0 or set(df.loc[df["duplicates"] > 0, "status"]) == {"ok"}
    assert set(inc["series"]) | set(exc["series"]) == set(df["series"])
    assert not (set(inc["series"]) & set(exc["series"]))
    assert exc["reason"].notna().all()
    passed = pd.concat([inc, exc[exc["reason"] == "not_chosen"]])
    for _, row in passed.iterrows():
        corr = row["geometry_correction"] if isinstance(row["geometry_correction"], str) else ""
        img, meta = convert_series(private["series_files"][row["series"]], "auto", corr, allow_4d=True)
        assert np.isfinite(np.asanyarray(img.dataobj)).all()
    # no identifier of the corpus reaches the table
    text = df.to_csv(sep="\t")
    for pid in set(private["id_map"].values()):
        assert pid not in text
    table, summary = summarise(df, inc, exc, [r["reason"] for r in rules])
    assert "corrected on conversion: 1" in summary


REFERENCES = [
    ("dcm_qa_nih GE 4D EPI", "dcm_qa_nih/In/20180918GE/mr_0004", "dcm_qa_nih/Ref/DCM2NIIX_regression_test_4.nii"),
    *[(f"dcm_qa_nih Siemens EPI PE={pe}", f"dcm_qa_nih/In/20180918Si/mr_000{n}", f"dcm_qa_nih/Ref/EPI_PE={pe}_{n}.nii")
      for pe, n in (("AP", 3), ("PA", 4), ("RL", 5), ("LR", 6))],
    ("dcm_qa_xa30 enhanced multi-frame T1w", "dcm_qa_xa30/In/5_anat-T1w_acq-tfl", "dcm_qa_xa30/Ref/5_anat-T1w_acq-tfl.nii"),
    *[(f"dcm_qa_ts {i}", f"dcm_qa_ts/In/{i}.dcm", f"dcm_qa_ts/Ref/{i}.nii") for i in range(1, 10)],
    *[(f"dcm_qa_12bit {name}", f"dcm_qa_12bit/In/{name}.dcm", None)
      for name in ("12bitUnsigned", "12bitUnsigned_0x0F0F", "12bitSigned_0x0F0F")],
    *[(f"dicom2nifti {d}", f"dicom2nifti_testdata/{d}", f"dicom2nifti_testdata/{d}_ground_truth.nii.gz")
      for d in ("ge/anatomical/001", "generic/anatomical/002_non_isotropic", "generic/compressed_j2k/001",
                "generic/compressed_jpeg/001", "generic/compressed_jpegls/001", "generic/compressed_rle/001",
                "hitachi/anatomical/001", "hyperfine/anatomical/001", "philips/anatomical/001",
                "philips_enhanced/anatomical/001", "siemens/anatomical/001", "siemens_multiframe/anatomical/001")],
]


def _reference_for(src: str, ref: str | None, root: Path) -> Path:
    if ref is not None:
        return root / ref
    # dcm_qa_12bit's references are named by SeriesNumber
    return root / "dcm_qa_12bit" / "Ref" / f"{int(pydicom.dcmread(root / src, stop_before_pixels=True).SeriesNumber)}.nii"


@pytest.mark.parametrize("tool", ["auto", "dcm2niix"])
@pytest.mark.parametrize("name, src, ref", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_geometry_matches_reference(name, src, ref, tool):
    root = need_shared("dicom")
    path = root / src
    files = [str(path)] if path.is_file() else _dicom_files(path)
    img, meta = convert_series(files, tool, allow_4d=True)
    c = qa.compare(img, nib.load(str(_reference_for(src, ref, root))))
    assert c.same_shape, f"{name}: shape {c.shape} vs reference {c.ref_shape}"
    assert c.max_offset_mm <= TOL_MM, f"{name}: voxel centres differ by {c.max_offset_mm} mm"
    assert c.max_angle_rad <= TOL_RAD, f"{name}: axes differ by {c.max_angle_rad} rad"
    if c.voxels.startswith("rescaled"):
        # Philips enhanced: dcm2niix stores the floating-point value (private scale slope); the
        # dicom2nifti ground truth stores the stored value. Documented rescale, same image.
        assert "philips_enhanced" in src or "002_non_isotropic" in src, f"{name}: {c.voxels}"
    else:
        assert c.voxels == "identical", f"{name}: voxel values differ by up to {c.max_abs_diff}"


def _regen(root: Path, sub: str) -> list[dict]:
    return [json.loads(line) for line in (root / sub / "Ref_regenerated" / "regen_summary.jsonl").read_text().splitlines()]


def test_gantry_tilt_and_uneven_spacing_corrected_like_dcm2niix(corpus):
    """GE head CT, 18.5 deg tilt, gaps 1.08-6.99 mm: flagged, and converted onto dcm2niix's _Tilt_Eq grid."""
    root, df, private, inc, exc, _ = corpus
    ct = df[(df["modality"] == "CT") & (df["gantry_tilt_deg"] > 18)]
    assert len(ct) == 1
    row = ct.iloc[0]
    assert row["slice_gaps_uneven"] and row["missing_slices"] == 0 and abs(row["gantry_tilt_deg"] - 18.5) < 0.01
    chosen = inc.set_index("series").loc[row["series"]]
    assert chosen["geometry_correction"] == "gantry_tilt+uneven_spacing"
    img, meta = convert_series(private["series_files"][row["series"]], "auto", chosen["geometry_correction"])
    ref = next(r for r in _regen(root, "dcm_qa_ct/GE_tilt_varspacing") if "_Tilt_Eq" in r["file"])
    c = qa.compare_summary(img, ref)
    assert c["ok"], c
    np.testing.assert_allclose(img.header.get_zooms()[:3], ref["zooms"], atol=1e-4)
    assert meta["converter"] == "dcm2niix" and meta["geometry_correction"] == "gantry_tilt+uneven_spacing"
    # dicom2nifti alone refuses the tilted stack rather than writing a sheared volume
    from cohortseg.convert import ConversionError

    with pytest.raises(ConversionError, match="needs gantry_tilt"):
        convert_series(private["series_files"][row["series"]], "dicom2nifti", "gantry_tilt")
    with pytest.raises(ConversionError, match="GANTRY_TILT|SLICE_INCREMENT"):
        convert_series(private["series_files"][row["series"]], "dicom2nifti", "")


def test_tilt_and_uneven_spacing_rejected_when_configured(corpus):
    root, df, private, inc, exc, _ = corpus
    cfg = _corpus_cfg()
    sel = {**cfg["select"], "gantry_tilt": "reject", "uneven_spacing": "reject"}
    inc2, exc2 = select(df, effective_rules(sel), sel["tie_break"])
    reasons = dict(zip(exc2["series"], exc2["reason"]))
    tilted = df[(df["gantry_tilt_deg"] > 1) & (df["status"] == "ok")]
    assert {reasons[s] for s in tilted["series"]} == {"gantry_tilt", "missing_slices"}
    sel = {**cfg["select"], "uneven_spacing": "reject"}
    _, exc3 = select(df, effective_rules(sel), sel["tie_break"])
    ge = df[df["gantry_tilt_deg"] > 18].iloc[0]["series"]
    assert dict(zip(exc3["series"], exc3["reason"]))[ge] == "uneven_spacing"


def test_philips_ct_study_selection():
    """Localizer and secondary captures rejected with reasons; the axial 5 mm series selected."""
    root = need_shared("dicom/dcm_qa_ct/Philips_S21570_study_subset")
    cfg = load(None, {"select": {"override": {"wrong_modality": {"not": {"field": "modality", "equals": "CT"}},
                                              "not_t1": None, "no_contrast": None,
                                              "too_few_slices": {"field": "n_slices", "max": 19}}}})
    pseudo = Pseudonymiser(b"p" * 32)
    df, private = build_index(root, pseudo, cfg["index"]["postop_regex"], 0.2)
    inc, exc = select(df, effective_rules(cfg["select"]), cfg["select"]["tie_break"])
    assert len(inc) == 1
    chosen = inc.iloc[0]
    assert chosen["n_slices"] == 28 and chosen["plane"] == "axial" and "LOCALIZER" not in chosen["image_type"]
    reasons = exc.groupby("reason")["n_files"].sum().to_dict()
    assert reasons == {"localizer": 1, "derived": 6, "dicomdir": 3, "not_dicom": 4}  # not_dicom: Ref_* JSON
    img, _ = convert_series(private["series_files"][chosen["series"]], "auto")
    ref = _regen(Path(root).parent, "Philips_S21570_study_subset")[0]
    c = qa.compare_summary(img, ref)
    assert c["ok"], c


FAILING = {
    "gantrytilting": "gantry_tilt",  # with select.gantry_tilt: reject; corrected by default
    "notavolume": "not_a_volume",
    "slicecount": "too_few_slices",
    "sliceincrement": "missing_slices",
}


@pytest.mark.parametrize("case, reason", FAILING.items())
def test_dicom2nifti_failing_cases_rejected_with_reason(case, reason):
    root = need_shared(f"dicom/dicom2nifti_testdata/failing/{case}")
    cfg = load(None, {"select": {"gantry_tilt": "reject",
                                 "override": {"wrong_modality": {"not": {"field": "modality", "in": ["MR", "CT"]}},
                                              "not_t1": None, "no_contrast": None,
                                              "too_few_slices": {"field": "n_slices", "max": 2}, "wrong_plane": None}}})
    df, _ = build_index(root, Pseudonymiser(b"f" * 32), cfg["index"]["postop_regex"], 0.2)
    inc, exc = select(df, effective_rules(cfg["select"]), cfg["select"]["tie_break"])
    images = exc[exc["status"] == "ok"]
    assert inc.empty and images["reason"].tolist() == [reason]


def test_gantry_tilt_without_tag_is_measured_and_corrected():
    """dicom2nifti's tilted CT carries no GantryDetectorTilt: the tilt is measured from the positions."""
    root = need_shared("dicom/dicom2nifti_testdata/failing/gantrytilting")
    df, private = build_index(root, Pseudonymiser(b"f" * 32), "x^", 0.2)
    row = df[df["status"] == "ok"].iloc[0]
    assert abs(row["gantry_tilt_deg"] - 14.0) < 0.05
    img, meta = convert_series(private["series_files"][row["series"]], "auto", "gantry_tilt")
    cols = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    np.testing.assert_allclose(cols.T @ cols, np.eye(3), atol=1e-6)
    assert img.shape[1] > 512  # the sheared field of view is widened, not cropped


def test_multiframe_converted_and_sr_rejected(corpus):
    root, df, private, inc, exc, _ = corpus
    xa = df[(df["sop_class"] == "enhanced_mr") & (df["n_frames"] == 96)]
    assert len(xa) == 1 and xa.iloc[0]["n_slices"] == 96 and xa.iloc[0]["plane"] == "sagittal"
    sr = df[df["modality"] == "SR"]
    assert len(sr) == 1
    assert dict(zip(exc["series"], exc["reason"]))[sr.iloc[0]["series"]] == "not_image"
    img, _ = convert_series(private["series_files"][xa.iloc[0]["series"]], "auto")
    assert img.shape == (128, 128, 96) or sorted(img.shape) == [96, 128, 128]


def test_transfer_syntaxes_decode_to_the_same_voxels():
    root = need_shared("dicom/dcm_qa_ts/In")
    arrays, syntaxes = [], set()
    for i in range(1, 10):
        f = root / f"{i}.dcm"
        syntaxes.add(str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID))
        img, _ = convert_series([str(f)], "auto")
        arrays.append(np.asanyarray(qa.canonical(img).dataobj))
    assert len(syntaxes) == 7  # 9 files: JPEG lossless and JPEG-LS appear twice (two variants each)
    for a in arrays[1:]:
        np.testing.assert_array_equal(a, arrays[0])


# ---- bad input built from a real series -------------------------------------------------------

def test_bad_inputs_each_get_a_reason(tmp_path):
    src = need_shared("dicom/dcm_qa_ct/Philips_S21570_study_subset/In/S2010")
    root = tmp_path / "export"
    good = root / "PAT1" / "ct"
    good.mkdir(parents=True)
    files = sorted(p for p in src.iterdir() if p.name.startswith("I"))
    for f in files:
        shutil.copy(f, good / f.name)
    # truncated copy of one slice in another folder, a DICOMDIR, an empty folder, a text file
    bad = root / "PAT1" / "broken"
    bad.mkdir()
    raw = files[0].read_bytes()
    (bad / "cut.dcm").write_bytes(raw[: len(raw) // 2])
    (bad / "garbage.dcm").write_bytes(b"\x00" * 50)
    (bad / "notes.txt").write_text("scanner notes")
    shutil.copy(src / "DIRFILE", root / "DICOMDIR")
    (root / "PAT1" / "empty").mkdir()
    # the same instances exported twice
    dup = root / "PAT1" / "again"
    dup.mkdir()
    for f in files[:3]:
        shutil.copy(f, dup / f.name)
    # a mixed series: one file with the series' UID but another matrix size
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["mixed"])
    small = ds.pixel_array[::2, ::2].copy()
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    ds.save_as(good / "mixed.dcm")
    # missing slice: a second series without one middle slice
    miss = root / "PAT2" / "ct"
    miss.mkdir(parents=True)
    uid = pydicom.uid.generate_uid(entropy_srcs=["missing"])
    for k, f in enumerate(files):
        if k == 10:
            continue
        d = pydicom.dcmread(f)
        d.SeriesInstanceUID, d.PatientID = uid, "PAT2"
        d.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["missing", str(k)])
        d.save_as(miss / f.name)

    cfg = load(None, {"select": {"override": {"wrong_modality": {"not": {"field": "modality", "equals": "CT"}},
                                              "not_t1": None, "no_contrast": None,
                                              "too_few_slices": {"field": "n_slices", "max": 19}}}})
    df, private = build_index(root, Pseudonymiser(b"b" * 32), "x^", 0.2)
    inc, exc = select(df, effective_rules(cfg["select"]), cfg["select"]["tie_break"])
    by_status = df.groupby("status")["n_files"].sum().to_dict()
    assert by_status == {"ok": 28 + 1 + 3 + 27, "truncated": 1, "unreadable": 1, "not_dicom": 1, "dicomdir": 1,
                         "empty_folder": 0}
    reasons = exc.groupby("reason")["series"].count().to_dict()
    assert reasons == {"truncated": 1, "unreadable": 1, "not_dicom": 1, "dicomdir": 1, "empty_folder": 1,
                       "too_few_slices": 1, "missing_slices": 1}
    # the duplicate export is counted, not taken as extra slices; the odd-sized file is split off
    main = df[(df["status"] == "ok") & (df["n_slices"] == 28)].iloc[0]
    assert main["duplicates"] == 3 and main["n_files"] == 31
    mixed = df[(df["status"] == "ok") & (df["n_slices"] == 1)].iloc[0]
    assert mixed["split_from_uid"] == main["series"]
    assert inc["series"].tolist() == [main["series"]]
    img, _ = convert_series(private["series_files"][main["series"]], "auto")
    assert img.shape[2] == 28


def test_fast_header_scan_equals_pydicom(tiny_cohort):
    """The index's own scanner and the pydicom reader give the same tags and status on every file
    of the shared corpus and of the synthetic cohort (where the scanner declines, pydicom reads)."""
    from cohortseg.dicomscan import Fallback, scan
    from cohortseg.index import list_files, read_header_pydicom

    files = list_files(need_shared("dicom")) + list_files(tiny_cohort / "dicom")
    fast = 0
    for f in files:
        a, b = read_header(f), read_header_pydicom(f)
        assert (a.status, a.tags) == (b.status, b.tags), f
        try:
            scan(f)
            fast += 1
        except Fallback:
            pass
    assert fast > 0.8 * sum(1 for f in files if read_header(f).status == "ok")


def test_header_scan_reads_on_where_the_buffer_ends_between_elements(tmp_path: Path) -> None:
    """A header whose first read ends exactly between two elements, before the last tag the index wants:
    the scanner reads more instead of returning the tags found so far. A compressed file (its pixel check
    needs no Rows), a long private element in group 0019 filling the first buffer to the byte, the UIDs and
    the image tags after it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1, generate_uid

    from cohortseg import dicomscan

    def write(private_len: int) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGLosslessSV1
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), generate_uid()
        ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
        ds.add_new(0x00191001, "OB", b"\0" * private_len)  # a Siemens-like private block before group 0020
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
        ds.PixelData = encapsulate([b"\0" * 32])
        ds["PixelData"].VR = "OB"
        path = tmp_path / f"f{private_len}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    probe = write(1000)
    raw = probe.read_bytes()
    private_at = raw.index(b"\x19\x00\x01\x10OB")
    after = private_at + 12 + 1000  # where the next element starts
    path = write(1000 + dicomscan.BUFFER - after)  # the next element starts exactly at the buffer's end
    status, tags = dicomscan.scan(str(path))
    assert status == "ok" and (tags["Rows"], tags["Columns"]) == (4, 4) and "SeriesInstanceUID" in tags, tags
    from cohortseg.index import read_header_pydicom

    assert read_header(str(path)).tags == read_header_pydicom(str(path)).tags


def test_saved_conversion_keeps_stored_values_and_scale(tmp_path):
    """dcm2niix stores the Philips CT as int16 with scl_inter -1024: the saved file keeps that scale and
    the exact values (nibabel alone would refit a lossy scale when saving a scaled image)."""
    from cohortseg.util import save_nifti

    root = need_shared("dicom/dcm_qa_ct/Philips_S21570_study_subset/In/S2010")
    img, _ = convert_series(sorted(str(p) for p in root.iterdir() if p.name.startswith("I")), "auto")
    save_nifti(img, tmp_path / "ct.nii.gz")
    saved = nib.load(str(tmp_path / "ct.nii.gz"))
    assert (saved.dataobj.slope, saved.dataobj.inter) == (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.asanyarray(img.dataobj))


def test_blank_uids_and_patient_id_are_grouped_not_unreadable(tmp_path: Path) -> None:
    """An anonymised export that blanked StudyInstanceUID, SeriesInstanceUID and PatientID (a real Philips
    CT study: localizer, 28-slice axial series, secondary capture): every file pydicom reads is indexed, the
    series are found again by the documented fallback key, flagged missing_uid, and the axial series
    converts to the same volume as with its UIDs."""
    src = need_shared("dicom/dcm_qa_ct/Philips_S21570_study_subset/In")
    blank = tmp_path / "export" / "study"
    for series_dir in sorted(src.iterdir()):
        for f in sorted(series_dir.iterdir()):
            dst = blank / series_dir.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.name == "DIRFILE":
                shutil.copy2(f, dst)
                continue
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "", "", ""
            ds.save_as(dst)
    pseudo = Pseudonymiser(b"u" * 32)
    ref_df, _ = build_index(src.parent / "In", pseudo, "x^", 0.2)
    df, private = build_index(tmp_path / "export", pseudo, "x^", 0.2)
    ok = df[df["status"] == "ok"]
    assert "unreadable" not in set(df["status"]), df[["series", "status"]]
    assert set(df["status"]) == set(ref_df["status"]) and len(ok) == int((ref_df["status"] == "ok").sum())
    assert set(ok["missing_uid"]) == {"patient_id+study_uid+series_uid"}
    assert set(ref_df.loc[ref_df["status"] == "ok", "missing_uid"]) == {""}
    # one study, so one subject; the same series shapes as with the UIDs
    assert ok["subject"].nunique() == 1 and ok["study"].nunique() == 1
    key = ["n_files", "n_slices", "modality", "plane", "sop_class"]
    assert sorted(map(tuple, ok[key].to_numpy().tolist())) == sorted(
        map(tuple, ref_df.loc[ref_df["status"] == "ok", key].to_numpy().tolist()))
    assert list(private["id_map"].values())[0].startswith("no-patient-id:")
    axial = ok.sort_values("n_slices").iloc[-1]
    img, meta = convert_series(private["series_files"][axial["series"]], "dcm2niix")
    ref_series = ref_df[(ref_df["status"] == "ok")].sort_values("n_slices").iloc[-1]
    _, ref_private = build_index(src.parent / "In", pseudo, "x^", 0.2)
    ref_img, _ = convert_series(ref_private["series_files"][ref_series["series"]], "dcm2niix")
    assert img.shape == ref_img.shape and np.allclose(img.affine, ref_img.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(ref_img.dataobj))
