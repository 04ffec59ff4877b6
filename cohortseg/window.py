"""How an image is fed to a network: one input-padding rule and one sliding-window pass, shared by
preprocessing (crop/pad to the training size), validation during training, inference (folds,
ensemble, test-time flips) and the parity check of exported programs.

Why it is defined once: a network learns what the border of its input looks like. Training volumes
are padded (preprocessing's crop/pad, and the out-of-field fill of TorchIO's affine augmentation)
with the *normalised image's minimum*; MONAI's ``sliding_window_inference`` pads an image smaller
than the window with 0 unless told otherwise. After z-score normalisation 0 is the mean intensity,
not the background, and a model trained on minimum-padded volumes then mis-segments whole images
(held-out hippocampus Dice 0.11 instead of 0.87). Every model file records the rule it was trained
with (``meta["input_padding"]``); inference pads by that record and refuses a model without one.

Where the padding goes matters as much as its value: TorchIO's ``CropOrPad`` (training) puts
``ceil(n/2)`` of ``n`` padding voxels before the image, MONAI's sliding window ``floor(n/2)``, so on an
odd difference the network would see its input shifted by one voxel (Dice 0.64 against the
preprocessed path in tests/test_parity.py). :func:`pad_to_window` pads with the training convention,
so a sliding window never pads by itself.

Windows are blended as class *probabilities* (Gaussian weights), everywhere: validation, inference
of a fold, the fold ensemble (mean of the folds' probabilities) and the exported programs (a window in,
probabilities out). Blending is linear, so the ensemble and its exported program agree, and a
segmentation does not depend on which of them computed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is made: the light stages use the rule without it
    import torch

# the rule every model trained by this version records; the only one known so far
IMAGE_MINIMUM = "image_minimum"
PADDING = IMAGE_MINIMUM
KNOWN = {IMAGE_MINIMUM: "constant = the minimum of the whole normalised image (before any crop)"}


class PaddingUnknown(ValueError):
    """A model file without a (known) input-padding record."""


def model_padding(meta: dict[str, Any], source: str) -> str:
    """The input-padding rule recorded in a model's metadata; an error naming ``source`` without one."""
    rule = meta.get("input_padding")
    if rule is None:
        raise PaddingUnknown(
            f"{source}: the model file records no input padding (it was made before cohortseg recorded how its "
            f"inputs are padded): retrain it, or re-export it from a retrained model; predicting with a guessed "
            f"padding gives wrong segmentations")
    if rule not in KNOWN:
        raise PaddingUnknown(f"{source}: unknown input padding {rule!r} (this cohortseg knows {sorted(KNOWN)})")
    return str(rule)


def torchio_padding_mode(rule: str = PADDING) -> str:
    """TorchIO's ``padding_mode`` (CropOrPad) and ``default_pad_value`` (RandomAffine) for ``rule``."""
    if rule == IMAGE_MINIMUM:
        return "minimum"  # TorchIO pads with image.data.min(), one constant for the whole image
    raise PaddingUnknown(f"unknown input padding {rule!r}")


def pad_value(image: torch.Tensor, rule: str) -> float:
    """The constant that pads ``image`` (one normalised image, any shape) under ``rule``."""
    if rule == IMAGE_MINIMUM:
        return float(image.min())
    raise PaddingUnknown(f"unknown input padding {rule!r}")


def centred_padding(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per axis that brings ``shape`` up to ``window`` where it is smaller, with
    TorchIO's CropOrPad convention (``ceil(n/2)`` before, ``floor(n/2)`` after), as in preprocessing."""
    out = []
    for n, w in zip(shape, window):
        diff = max(int(w) - int(n), 0)
        out.append(((diff + 1) // 2, diff // 2))
    return out


def pad_to_window(image: torch.Tensor, window: Sequence[int], padding: str) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``image`` (B, C, *spatial) padded to at least ``window`` as training padded it, and the slices that
    take the original region back out of a padded result."""
    import torch

    pads = centred_padding(image.shape[2:], window)
    if not any(a or b for a, b in pads):
        return image, (slice(None),) * image.dim()
    flat = [v for a, b in reversed(pads) for v in (a, b)]  # F.pad lists the last axis first
    padded = torch.nn.functional.pad(image, flat, mode="constant", value=pad_value(image, padding))
    region = tuple(slice(a, a + n) for (a, _), n in zip(pads, image.shape[2:]))
    return padded, (slice(None), slice(None), *region)


def sliding_window(network: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: Sequence[int],
                   padding: str, overlap: float = 0.5, mode: str = "gaussian") -> torch.Tensor:
    """``network`` slid over one normalised image (1, C, D, H, W) in windows of ``window`` voxels; an image
    smaller than the window in some axis is first padded as training padded it (:func:`pad_to_window`),
    and the output cropped back to the image."""
    import torch
    from monai.inferers import sliding_window_inference

    if image.shape[0] != 1:
        raise ValueError(f"sliding_window takes one image at a time (its padding is per image), got {image.shape[0]}")
    padded, region = pad_to_window(image, window, padding)
    with torch.no_grad():
        out = sliding_window_inference(padded, list(window), 1, network, overlap=overlap, mode=mode)
    assert isinstance(out, torch.Tensor)
    return out[region]
