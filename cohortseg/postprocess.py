"""Post-processing of a segmentation, as decided on cross-validation (cohortseg.study): keep the largest
connected component of the foreground (all labels together) and/or of chosen labels. Shared by the study
stage, which decides it on pooled cross-validation predictions, and by inference, which applies it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

NONE: dict[str, Any] = {"foreground_lcc": False, "label_lcc": []}
STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as nnU-Net's remove_all_but_largest_component


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself when it has at most one)."""
    components, n = ndimage.label(mask, structure=STRUCTURE)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def keep_largest_foreground(seg: np.ndarray) -> np.ndarray:
    """Every label voxel outside the foreground's largest component set to background."""
    out = seg.copy()
    out[(seg > 0) & ~largest_component(seg > 0)] = 0
    return out


def keep_largest_of_label(seg: np.ndarray, value: int) -> np.ndarray:
    """Voxels of ``value`` outside that label's largest component set to background."""
    out = seg.copy()
    mask = seg == value
    out[mask & ~largest_component(mask)] = 0
    return out


def apply(seg: np.ndarray, spec: Mapping[str, Any], labels: Sequence[str]) -> np.ndarray:
    """``seg`` post-processed by ``spec`` ({foreground_lcc: bool, label_lcc: [label names]})."""
    if spec.get("foreground_lcc"):
        seg = keep_largest_foreground(seg)
    for name in spec.get("label_lcc", []):
        seg = keep_largest_of_label(seg, list(labels).index(name) + 1)
    return seg


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & ref).sum()) / denom


def dice_per_label(seg: np.ndarray, ref: np.ndarray, n_labels: int) -> list[float]:
    return [dice(seg == v, ref == v) for v in range(1, n_labels + 1)]
