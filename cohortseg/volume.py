"""Volumes and their preprocessing steps, shared by the preprocess stage, inference and export: reorient,
resample, normalise, pad, keeping every image's affine, without torch.

Order: canonical orientation -> resample to the target spacing (image linear, label nearest
neighbour) -> intensity normalisation -> centred padding up to ``preprocess.size`` where the volume is
smaller, by the input rule of :mod:`cohortseg.window` (the normalised image's minimum, ``ceil(n/2)``
voxels before). Nothing is cropped: a volume larger than the size is kept whole, training takes
window-sized crops of it at seeded random positions and inference slides windows over it, so no
labelled voxel is lost and the network is never shown only one fixed position of a larger image
(a model trained on centre crops scored 0.931 instead of 0.961 when slid over the whole image).
Inference applies the same chain minus the padding, pads a window by the same rule where the image
is smaller, and maps its output back through world space.

Why not TorchIO's transforms (which this module reproduces step for step: its SimpleITK read, its
``ToCanonical``, ``Resample`` with the same reference grid, pixel type and fill, ``ZNormalization``,
``RescaleIntensity`` and ``Pad``; tests/test_prepare.py checks the outputs equal TorchIO's): importing
TorchIO (and with it torch) costs 3-5 s per job on two cores, more than the work of a whole prepare
job, and prepare and the metrics/report stages are light jobs that a cohort runs by the hundred. The
maths is SimpleITK's resampler and NumPy, as in TorchIO. Training keeps TorchIO for augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .settings import PreprocessSettings
from .util import atomic_path
from .window import PADDING, centred_padding

FLIPXY = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (NIfTI world <-> ITK world)


class Volume:
    """A 3D array with its RAS affine (nibabel's convention)."""

    def __init__(self, data: np.ndarray, affine: np.ndarray) -> None:
        self.data, self.affine = data, np.asarray(affine, dtype=np.float64)

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))]

    @property
    def orientation(self) -> str:
        from .util import import_nibabel

        nib = import_nibabel()

        return "".join(nib.orientations.aff2axcodes(self.affine))


def limit_threads(n: int) -> None:
    """SimpleITK's resampler uses every core by default: keep it within the job's threads."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(n)))


def read_volume(path: str | Path) -> Volume:
    """A NIfTI volume as SimpleITK reads it (TorchIO's reader: scaling applied, pixel type kept;
    uint16/uint32 widened as TorchIO does for torch)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(img).transpose()
    if data.dtype == np.uint16:
        data = data.astype(np.int32)
    elif data.dtype == np.uint32:
        data = data.astype(np.int64)
    return Volume(data, ras_affine(img))


def ras_affine(img: Any) -> np.ndarray:
    """The RAS affine of a SimpleITK image (its LPS origin, direction and spacing)."""
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (FLIPXY @ direction) * spacing
    affine[:3, 3] = FLIPXY @ np.array(img.GetOrigin(), dtype=np.float64)
    return affine


def to_sitk(vol: Volume) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.data.transpose()))
    rotation_zoom = vol.affine[:3, :3]
    spacing = np.sqrt((rotation_zoom ** 2).sum(axis=0))
    img.SetOrigin(tuple(FLIPXY @ vol.affine[:3, 3]))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple((FLIPXY @ (rotation_zoom / spacing)).flatten()))
    return img


def to_canonical(vol: Volume) -> Volume:
    """Voxel axes reordered and flipped to RAS+ (nibabel's orientation functions, as TorchIO's ToCanonical)."""
    from .util import import_nibabel

    nib = import_nibabel()
    from nibabel import orientations

    if "".join(nib.orientations.aff2axcodes(vol.affine)) == "RAS":
        return vol
    transform = orientations.ornt_transform(orientations.io_orientation(vol.affine),
                                            orientations.axcodes2ornt(("R", "A", "S")))
    data = np.ascontiguousarray(orientations.apply_orientation(vol.data, transform))
    return Volume(data, vol.affine @ orientations.inv_ornt_aff(transform, vol.data.shape))


def resample_to_spacing(vol: Volume, spacing: Any, interpolation: str) -> Volume:
    """Resampled onto TorchIO's grid for a target spacing: the same centre, ``floor(size * old / new)``
    voxels (never extrapolating), same direction; linear or nearest neighbour, outside filled with 0, the
    pixel type kept (SimpleITK's resampler, as TorchIO's Resample)."""
    import SimpleITK as sitk

    img = to_sitk(vol)
    old_spacing, new_spacing = np.array(img.GetSpacing(), float), np.array(spacing, float)
    old_size = np.array(img.GetSize())
    last = np.array(img.TransformIndexToPhysicalPoint((old_size - 1).tolist()), dtype=float)
    centre = (last + np.array(img.GetOrigin(), float)) / 2
    new_size = np.floor(old_size * old_spacing / new_spacing)
    new_size[old_size == 1] = 1
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    reference = sitk.Image(new_size.astype(int).tolist(), img.GetPixelID(), img.GetNumberOfComponentsPerPixel())
    reference.SetDirection(img.GetDirection())
    reference.SetSpacing(new_spacing.tolist())
    reference.SetOrigin((centre - direction @ ((new_size - 1) / 2 * new_spacing)).tolist())
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor)
    resampler.SetReferenceImage(reference)
    out = resampler.Execute(img)
    return Volume(sitk.GetArrayFromImage(out).transpose(), ras_affine(out))


def resample_like(data: np.ndarray, affine: np.ndarray, target: Volume, interpolation: str = "linear") -> np.ndarray:
    """``data`` (C, ...) on ``affine`` resampled through world space onto ``target``'s grid (channel by
    channel, outside filled with 0): how predictions return to the source space."""
    import SimpleITK as sitk

    ref = to_sitk(Volume(np.zeros(target.data.shape, np.float32), target.affine))
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor)
    resampler.SetReferenceImage(ref)
    return np.stack([sitk.GetArrayFromImage(resampler.Execute(to_sitk(Volume(c, affine)))).transpose() for c in data])


def normalise(data: np.ndarray, pp: PreprocessSettings) -> np.ndarray:
    """float32 intensities: z-score over the non-zero voxels applied to every voxel (TorchIO's
    ZNormalization with a non-zero mask), or clipped to the percentiles and scaled to [0, 1] (its
    RescaleIntensity), or (CT) clipped to a fixed window and scaled by the cohort's foreground mean and SD."""
    if not pp.resolved:
        raise ValueError("preprocessing settings still hold `auto` values: take them from the plan (results/plans/plans.json)")
    array = data.astype(np.float32)
    if pp.normalisation == "ct":  # nnU-Net's CTNormalization: one window and scale for every image
        assert isinstance(pp.ct.clip, tuple) and not isinstance(pp.ct.mean, str) and not isinstance(pp.ct.sd, str)
        np.clip(array, pp.ct.clip[0], pp.ct.clip[1], out=array)
        return ((array - np.float32(pp.ct.mean)) / np.float32(max(float(pp.ct.sd), 1e-8))).astype(np.float32)
    if pp.normalisation == "percentile":
        low, high = np.percentile(array, list(pp.percentiles))
        np.clip(array, low, high, out=array)
        in_min, in_max = array.min(), array.max()
        if in_max == in_min:
            return array
        array -= in_min
        array /= in_max - in_min
        return array
    values = array[data != 0]
    mean, std = values.mean(dtype=np.float64), values.std(ddof=1, dtype=np.float64)
    if std == 0:
        return array
    return ((array - np.float32(mean)) / np.float32(std)).astype(np.float32)


def inference_volume(path: str | Path, pp: PreprocessSettings) -> tuple[Volume, Volume]:
    """(source image, image brought to the training space: canonical, resampled, normalised; no padding)."""
    source = read_volume(path)
    spatial = resample_to_spacing(to_canonical(source), pp.spacing, "linear")
    return source, Volume(normalise(spatial.data, pp), spatial.affine)


def pad(vol: Volume, pads: list[tuple[int, int]], value: float) -> Volume:
    """Constant padding (before, after) per axis; the affine moved so every voxel keeps its world position."""
    if not any(a or b for a, b in pads):
        return vol
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ -np.array([a for a, _ in pads], float) + vol.affine[:3, 3]
    return Volume(np.pad(vol.data, pads, mode="constant", constant_values=value), affine)


def pad_to_size(vol: Volume, size: Any, is_label: bool = False) -> Volume:
    """Centred padding up to ``size`` where smaller (never a crop), by the models' input rule: the image's
    minimum (cohortseg.window), 0 for a label."""
    from .window import IMAGE_MINIMUM

    assert PADDING == IMAGE_MINIMUM, "preprocessing implements the image-minimum rule"
    value = 0.0 if is_label else float(vol.data.min())
    return pad(vol, centred_padding(vol.data.shape, [int(s) for s in size]), value)


def check_image(data: np.ndarray, name: str) -> None:
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: image contains NaN or infinite values")
    if float(data.max()) == float(data.min()):
        raise ValueError(f"{name}: image is constant ({float(data.min())})")


def save_volume(vol: Volume, path: str | Path, dtype: Any) -> None:
    from .util import import_nibabel

    nib = import_nibabel()

    from .util import scrub_nifti_header

    nii = nib.Nifti1Image(vol.data.astype(dtype), vol.affine)
    nii.set_qform(vol.affine, code=1)
    nii.set_sform(vol.affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    scrub_nifti_header(nii)
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))
