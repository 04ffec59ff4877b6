"""cohortseg's preprocessing (SimpleITK + NumPy, no torch: light jobs start in a second) equals the TorchIO
transforms it replaces, step for step: ToCanonical -> Resample(spacing) -> ZNormalization over non-zero
voxels or RescaleIntensity(percentiles) -> Pad('minimum'); labels by nearest neighbour, exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohortseg.volume import Volume, inference_volume, pad_to_size, read_volume, resample_to_spacing, to_canonical
from cohortseg.settings import CtSettings, PreprocessSettings

from .conftest import need_shared


def _torchio(image: Path, label: Path | None, pp: PreprocessSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import torch
    import torchio as tio

    norm = (tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=tuple(pp.percentiles))
            if pp.normalisation == "percentile" else tio.ZNormalization(masking_method=lambda x: x != 0))
    subj = tio.Subject(image=tio.ScalarImage(image), **({"label": tio.LabelMap(label)} if label else {}))
    out = tio.Compose([tio.ToCanonical(), tio.Resample(tuple(pp.spacing)), norm])(subj)
    lab = out["label"].data[0].numpy() if label else None
    return out["image"].data[0].to(torch.float32).numpy(), out["image"].affine, lab


def _compare(image: Path, label: Path | None, pp: PreprocessSettings) -> float:
    ref_img, ref_aff, ref_lab = _torchio(image, label, pp)
    _, ours = inference_volume(image, pp)
    assert ours.data.shape == ref_img.shape
    np.testing.assert_allclose(ours.affine, ref_aff, atol=1e-6)
    diff = float(np.abs(ours.data - ref_img).max())
    assert diff <= 1e-5 * max(1.0, float(np.abs(ref_img).max())), (image, diff)
    if label is not None:
        lab = resample_to_spacing(to_canonical(read_volume(label)), pp.spacing, "nearest")
        assert np.array_equal(lab.data, ref_lab), image
        np.testing.assert_allclose(lab.affine, ref_aff, atol=1e-6)
    return diff


def _pp(normalisation: str, spacing: tuple[float, float, float]) -> PreprocessSettings:
    return PreprocessSettings("RAS", spacing, (32, 32, 32), normalisation, (0.5, 99.5), CtSettings("auto", "auto", "auto"))


def test_equals_torchio_on_hippocampus_cases() -> None:
    hip = need_shared("hippocampus")
    cases = sorted((hip / "imagesTr").glob("*.nii.gz"))[:4]
    diffs = [_compare(c, hip / "labelsTr" / c.name, _pp("zscore", (1.0, 1.0, 1.0))) for c in cases]
    diffs += [_compare(c, hip / "labelsTr" / c.name, _pp("percentile", (0.8, 1.3, 1.7))) for c in cases[:2]]
    print("hippocampus: largest difference to TorchIO", max(diffs))


def test_equals_torchio_on_converted_synthetic_series(tiny_cohort: Path, tmp_path: Path) -> None:
    """Axial, oblique (tilted) and sagittal series converted from DICOM, with their masks."""
    from cohortseg.convert import convert_series, import_mask
    from cohortseg.index import build_index
    from cohortseg.pseudonym import Pseudonymiser

    pseudo = Pseudonymiser(b"p" * 32)
    df, private = build_index(tiny_cohort / "dicom", pseudo, "post[ _-]?op", 0.2)
    masks = {pseudo.subject(p.name.split("_lesion")[0]): p for p in (tiny_cohort / "masks").glob("*.nii.gz")}
    targets = df[df["series_description"].str.contains(r"MPRAGE \+C") & (df["n_slices"] > 30) & ~df["postop"]
                 & (df["missing_slices"] == 0)]
    planes = set()
    for k, (_, row) in enumerate(targets.iterrows()):
        img, _ = convert_series(private["series_files"][row["series"]], "dcm2niix")
        nib.save(img, str(tmp_path / f"{k}.nii.gz"))
        lab, _ = import_mask(str(masks[row["subject"]]), img, 1)
        nib.save(lab, str(tmp_path / f"{k}_label.nii.gz"))
        for norm in ("percentile", "zscore"):
            _compare(tmp_path / f"{k}.nii.gz", tmp_path / f"{k}_label.nii.gz", _pp(norm, (2.0, 2.0, 2.0)))
        planes.add((row["plane"], row["obliquity_deg"] > 1))
    assert len(planes) >= 3, planes


def test_equals_torchio_on_an_integer_lps_volume(tmp_path: Path) -> None:
    """int16 stored values in an LPS-oriented, anisotropic, oblique grid (pixel type kept through the
    resampler, as TorchIO does)."""
    rng = np.random.default_rng(4)
    data = (rng.normal(200, 60, (30, 26, 18)).clip(0, None)).astype(np.int16)
    theta = np.radians(12)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.9, -1.1, 2.5])
    affine[:3, 3] = [40, -12, 7]
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "int.nii.gz"))
    for norm in ("zscore", "percentile"):
        _compare(tmp_path / "int.nii.gz", None, _pp(norm, (1.5, 1.5, 1.5)))


@pytest.mark.parametrize("shape", [(10, 12, 9), (40, 32, 33)])
def test_padding_equals_torchio_pad(shape: tuple[int, int, int]) -> None:
    import torchio as tio

    from cohortseg.window import centred_padding

    rng = np.random.default_rng(1)
    vol = Volume(rng.normal(0, 1, shape).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    ours = pad_to_size(vol, (32, 32, 32))
    pads = centred_padding(shape, [32, 32, 32])
    ref = tio.Pad(tuple(v for p in pads for v in p), padding_mode="minimum")(tio.ScalarImage(tensor=vol.data[None],
                                                                                              affine=vol.affine))
    assert np.array_equal(ours.data, ref.data[0].numpy())
    np.testing.assert_allclose(ours.affine, ref.affine)
