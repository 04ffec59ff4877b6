"""Reorient, resample, normalise, crop/pad (TorchIO), keeping every image's affine.

Order: canonical orientation -> resample to the target spacing (image linear, label nearest
neighbour) -> intensity normalisation -> centred padding up to ``preprocess.size`` where the volume is
smaller, by the input rule of :mod:`cohortseg.window` (the normalised image's minimum, ``ceil(n/2)``
voxels before). Nothing is cropped: a volume larger than the size is kept whole, training takes
window-sized crops of it at seeded random positions and inference slides windows over it, so no
labelled voxel is lost and the network is never shown only one fixed position of a larger image
(a model trained on centre crops scored 0.931 instead of 0.961 when slid over the whole image).
Inference applies the same chain minus the padding, pads a window by the same rule where the image
is smaller, and maps its output back through world space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio

from .settings import PreprocessSettings
from .util import atomic_path, log, write_json
from .window import PADDING, centred_padding, torchio_padding_mode


def intensity_transform(pp: PreprocessSettings) -> tio.Transform:
    if pp.normalisation == "percentile":
        return tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=tuple(pp.percentiles))
    return tio.ZNormalization(masking_method=_nonzero)


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return x != 0


def spatial_transforms(pp: PreprocessSettings) -> list[tio.Transform]:
    return [tio.ToCanonical(), tio.Resample(tuple(pp.spacing))]


def pad_to_size(shape: Any, size: Any) -> tio.Pad:
    """Centred padding of a volume of ``shape`` up to ``size`` (``preprocess.size``) where it is smaller
    (never a crop), by the models' input rule: the same placement and constant as a sliding window's."""
    pads = centred_padding(shape, [int(s) for s in size])
    return tio.Pad(tuple(v for pair in pads for v in pair), padding_mode=torchio_padding_mode(PADDING))


def inference_transform(pp: PreprocessSettings) -> tio.Compose:
    """Preprocessing at inference: no padding (sliding windows pad by the model's rule)."""
    return tio.Compose([*spatial_transforms(pp), intensity_transform(pp)])


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


def run(pp: PreprocessSettings, n_labels: int, subject: str, image: str | Path, label: str | Path, image_out: str | Path,
        label_out: str | Path, info_out: str | Path) -> dict[str, Any]:
    subj = load_subject(image, label)
    check_image(subj["image"], subject)
    before = {str(v): int((subj["label"].data == v).sum()) for v in range(1, n_labels + 1)}
    vox_before = float(np.prod(subj["label"].spacing))
    spatial = inference_transform(pp)(subj)
    resampled_shape = list(spatial["image"].shape[1:])
    out = pad_to_size(resampled_shape, pp.size)(spatial)
    after = {str(v): int((out["label"].data == v).sum()) for v in range(1, n_labels + 1)}
    info = {
        "subject": subject,
        "input_shape": list(subj["image"].shape[1:]),
        "input_spacing": [float(s) for s in subj["image"].spacing],
        "resampled_shape": resampled_shape,
        "padding": centred_padding(resampled_shape, list(pp.size)),
        "output_shape": list(out["image"].shape[1:]),
        "output_spacing": [float(s) for s in out["image"].spacing],
        "orientation": "".join(out["image"].orientation),
        "label_voxels_input": before,
        "label_volume_mm3_input": {k: v * vox_before for k, v in before.items()},
        "label_voxels_output": after,
        "intensity": {"min": float(out["image"].data.min()), "max": float(out["image"].data.max()),
                      "mean": float(out["image"].data.mean())},
    }
    save_image(out["image"], image_out, np.float32)
    save_image(out["label"], label_out, np.uint8)
    write_json(info_out, info)
    log.info("%s: %s @ %s -> %s @ %s", subject, info["input_shape"], [round(s, 3) for s in info["input_spacing"]],
             info["output_shape"], info["output_spacing"])
    return info
