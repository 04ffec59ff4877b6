"""Reorient, resample, normalise, crop/pad (TorchIO), keeping every image's affine.

Order: canonical orientation -> resample to the target spacing (image linear, label nearest
neighbour) -> intensity normalisation -> centre crop/pad to the target size. Inference applies
the same chain minus the crop/pad and maps its output back through world space, so the
crop/pad never has to be inverted by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio

from .util import atomic_path, log, write_json


def intensity_transform(cfg: dict[str, Any]) -> tio.Transform:
    pp = cfg["preprocess"]
    if pp["normalisation"] == "percentile":
        return tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=tuple(pp["percentiles"]))
    return tio.ZNormalization(masking_method=_nonzero)


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return x != 0


def spatial_transforms(cfg: dict[str, Any]) -> list[tio.Transform]:
    pp = cfg["preprocess"]
    return [tio.ToCanonical(), tio.Resample(tuple(float(s) for s in pp["spacing"]))]


def train_transform(cfg: dict[str, Any]) -> tio.Compose:
    """The full preprocessing of a training subject."""
    size = tuple(int(s) for s in cfg["preprocess"]["size"])
    return tio.Compose([*spatial_transforms(cfg), intensity_transform(cfg), tio.CropOrPad(size, padding_mode="minimum")])


def inference_transform(cfg: dict[str, Any]) -> tio.Compose:
    """Preprocessing at inference: no crop/pad (sliding windows cover any size)."""
    return tio.Compose([*spatial_transforms(cfg), intensity_transform(cfg)])


def load_subject(image: str | Path, label: str | Path | None = None) -> tio.Subject:
    kw: dict[str, Any] = {"image": tio.ScalarImage(str(image))}
    if label is not None:
        kw["label"] = tio.LabelMap(str(label))
    return tio.Subject(**kw)


def check_image(img: tio.ScalarImage, name: str) -> None:
    data = img.data
    if not torch.isfinite(data).all():
        raise ValueError(f"{name}: image contains NaN or infinite values")
    if float(data.max()) == float(data.min()):
        raise ValueError(f"{name}: image is constant ({float(data.min())})")


def save_image(img: tio.Image, path: str | Path, dtype: Any) -> None:
    import nibabel as nib

    from .util import scrub_nifti_header

    arr = img.data[0].numpy().astype(dtype)
    nii = nib.Nifti1Image(arr, img.affine)
    nii.set_qform(img.affine, code=1)
    nii.set_sform(img.affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    scrub_nifti_header(nii)
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))


def run(cfg: dict[str, Any], subject: str, image: str | Path, label: str | Path, image_out: str | Path,
        label_out: str | Path, info_out: str | Path) -> dict[str, Any]:
    subj = load_subject(image, label)
    check_image(subj["image"], subject)
    n_labels = len(cfg["labels"])
    before = {str(v): int((subj["label"].data == v).sum()) for v in range(1, n_labels + 1)}
    # label voxel counts in physical volume, to tell whether crop/pad cut a lesion
    vox_before = float(np.prod(subj["label"].spacing))
    spatial = tio.Compose([*spatial_transforms(cfg), intensity_transform(cfg)])(subj)
    after_resample = {str(v): int((spatial["label"].data == v).sum()) for v in range(1, n_labels + 1)}
    size = tuple(int(s) for s in cfg["preprocess"]["size"])
    out = tio.CropOrPad(size, padding_mode="minimum")(spatial)
    after = {str(v): int((out["label"].data == v).sum()) for v in range(1, n_labels + 1)}
    cut = {k: after_resample[k] - after[k] for k in after}
    info = {
        "subject": subject,
        "input_shape": list(subj["image"].shape[1:]),
        "input_spacing": [float(s) for s in subj["image"].spacing],
        "resampled_shape": list(spatial["image"].shape[1:]),
        "output_shape": list(out["image"].shape[1:]),
        "output_spacing": [float(s) for s in out["image"].spacing],
        "orientation": "".join(out["image"].orientation),
        "label_voxels_input": before,
        "label_volume_mm3_input": {k: v * vox_before for k, v in before.items()},
        "label_voxels_output": after,
        "label_voxels_cut_by_crop": cut,
        "intensity": {"min": float(out["image"].data.min()), "max": float(out["image"].data.max()),
                      "mean": float(out["image"].data.mean())},
    }
    if any(v > 0 for v in cut.values()):
        log.warning("%s: crop to %s cut labelled voxels %s; consider a larger preprocess.size", subject, size, cut)
    save_image(out["image"], image_out, np.float32)
    save_image(out["label"], label_out, np.uint8)
    write_json(info_out, info)
    log.info("%s: %s @ %s -> %s @ %s", subject, info["input_shape"], [round(s, 3) for s in info["input_spacing"]],
             info["output_shape"], info["output_spacing"])
    return info
