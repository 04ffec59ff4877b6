"""Patch-based training data: label-aware patches read from memory-mapped preprocessed volumes.

For volumes that do not fit the network whole (a 256^3 UNETR does not fit a useful batch on 40 GB),
training draws fixed-size patches. The design follows nnU-Net's loader, with two changes:

* **No second cache.** The preprocessed volumes are uncompressed NIfTI (float32 image, uint8 label,
  no intensity scaling), so nibabel memory-maps them: a patch read touches only its own pages, and the
  page cache keeps a cohort hot across workers and epochs without a copy per worker. A volume whose
  file is compressed or scaled is read whole once per worker instead (correct, slower).
* **Randomness per sample, not per worker.** The k-th sample of epoch e draws its subject, its
  location and its augmentation from a generator seeded with ``(seed, e, k)``. The batches are thus
  bitwise the same whatever the number of worker processes, persistent or not, and a training run
  resumed after a checkpoint needs no loader state: epoch e+1 is a function of the seed alone.

Sampling: with probability ``foreground_fraction`` a patch is centred on a voxel of a label drawn
uniformly among the labels present in the volume (nnU-Net's 1/3 foreground oversampling; coordinates
of each label are pre-computed, at most ``MAX_LOCATIONS`` per label, drawn with the seed); otherwise
uniformly in the volume. Patches are clamped to lie inside the volume (the preprocessed volumes are
padded to at least ``preprocess.size`` and the config requires the patch to fit).

Augmentation (TorchIO, the same transforms as whole-volume training) runs in the worker on the patch,
under the patch's own affine (so "LR" flips stay left-right), with torch's RNG forked and seeded per
sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MAX_LOCATIONS = 10_000


def open_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a NIfTI file; the array is a read-only memory map where the file allows it."""
    from .util import import_nibabel

    nib = import_nibabel()

    img = nib.load(str(path), mmap="r")
    arr = np.asanyarray(img.dataobj)
    return arr, np.asarray(img.affine, dtype=np.float64)


def foreground_locations(label: np.ndarray, n_labels: int, seed: int) -> dict[int, np.ndarray]:
    """Voxel indices (int32, N x 3) of each label value 1..n_labels, at most MAX_LOCATIONS each."""
    rng = np.random.default_rng([seed, 0x10CA])
    out: dict[int, np.ndarray] = {}
    for v in range(1, n_labels + 1):
        idx = np.argwhere(np.asarray(label) == v).astype(np.int32)
        if len(idx) > MAX_LOCATIONS:
            idx = idx[np.sort(rng.choice(len(idx), MAX_LOCATIONS, replace=False))]
        out[v] = idx
    return out


def patch_start(shape: Sequence[int], patch: Sequence[int], locations: dict[int, np.ndarray], fg_fraction: float,
                rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Corner of a patch (no larger than the volume: PatchDataset checks) in a volume of ``shape``; True
    when it was centred on a foreground voxel."""
    shape_a, patch_a = np.asarray(shape), np.asarray(patch)
    present = [v for v, idx in sorted(locations.items()) if len(idx)]
    # draw both numbers every time so the stream does not depend on which branch is taken
    u, pick = rng.random(), rng.random(2)
    if present and u < fg_fraction:
        idx = locations[present[int(pick[0] * len(present))]]
        centre = idx[int(pick[1] * len(idx))]
        start = np.clip(centre - patch_a // 2, 0, shape_a - patch_a)
        return start.astype(np.int64), True
    return np.array([rng.integers(0, s - p + 1) for s, p in zip(shape_a, patch_a)], dtype=np.int64), False


class EpochSampler(Sampler[int]):
    """Global sample numbers of one epoch, ``epoch * n + k`` for k in a seeded permutation of range(n).

    The sampler lives in the main process, so setting ``epoch`` works with persistent workers."""

    def __init__(self, per_epoch: int, seed: int) -> None:
        self.per_epoch, self.seed, self.epoch = int(per_epoch), int(seed), 0

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 0x5A]).permutation(self.per_epoch)
        base = self.epoch * self.per_epoch
        return iter((base + int(k) for k in order))


class PatchDataset(Dataset[dict[str, Any]]):
    """Sample number -> ``{"image": (1, *patch) float32, "label": (1, *patch) uint8, "subject", "foreground",
    "start"}`` (start: the patch's corner voxel in the volume)."""

    def __init__(self, cases: Sequence[tuple[str, str | Path, str | Path]], patch: Sequence[int], n_labels: int,
                 seed: int, samples_per_volume: int = 1, foreground_fraction: float = 0.33,
                 transform: Any = None) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = [(name, str(img), str(lab)) for name, img, lab in cases]
        self.patch = [int(p) for p in patch]
        self.n_labels, self.seed = int(n_labels), int(seed)
        self.samples_per_volume = int(samples_per_volume)
        self.fg_fraction = float(foreground_fraction)
        self.transform = transform
        self.locations, self.shapes = [], []
        for i, (name, img, lab) in enumerate(self.cases):
            arr, _ = open_volume(lab)
            img_arr, _ = open_volume(img)
            if arr.shape != img_arr.shape:
                raise ValueError(f"{name}: image {img_arr.shape} and label {arr.shape} differ in shape")
            if any(p > s for p, s in zip(self.patch, arr.shape)):
                raise ValueError(f"{name}: patch {self.patch} larger than its volume {list(arr.shape)}")
            self.shapes.append(tuple(int(s) for s in arr.shape))
            self.locations.append(foreground_locations(arr, self.n_labels, self.seed + i))
        self._open: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pid = os.getpid()

    @property
    def per_epoch(self) -> int:
        return len(self.cases) * self.samples_per_volume

    def __getstate__(self) -> dict[str, Any]:  # memory maps are re-opened in each worker, never pickled
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def _volume(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._pid != os.getpid():  # forked worker: own file handles
            self._open, self._pid = {}, os.getpid()
        if i not in self._open:
            _, img, lab = self.cases[i]
            image, affine = open_volume(img)
            label, _ = open_volume(lab)
            self._open[i] = (image, label, affine)
        return self._open[i]

    def __len__(self) -> int:  # sample numbers are unbounded (epoch * per_epoch + k); one epoch's worth
        return self.per_epoch

    def __getitem__(self, number: int) -> dict[str, Any]:
        epoch, k = divmod(int(number), self.per_epoch)
        i = k % len(self.cases)
        rng = np.random.default_rng([self.seed, epoch, k])
        image, label, affine = self._volume(i)
        start, fg = patch_start(self.shapes[i], self.patch, self.locations[i], self.fg_fraction, rng)
        sl = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch))
        x = torch.from_numpy(np.array(image[sl], dtype=np.float32))[None]
        y = torch.from_numpy(np.array(label[sl], dtype=np.uint8))[None]
        if self.transform is not None:
            x, y = self._augment(x, y, patch_affine(affine, start), int(rng.integers(2**63 - 1)))
        return {"image": x, "label": y, "subject": self.cases[i][0], "foreground": fg, "start": torch.from_numpy(start)}

    def _augment(self, x: torch.Tensor, y: torch.Tensor, affine: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torchio as tio

        subj = tio.Subject(image=tio.ScalarImage(tensor=x, affine=affine), label=tio.LabelMap(tensor=y, affine=affine))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.transform(subj)
        return out["image"].data.float(), out["label"].data.to(torch.uint8)


def patch_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of a sub-volume whose voxel (0, 0, 0) is voxel ``start`` of the volume."""
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers' job is I/O and augmentation; the step owns the cores


def patch_loader(dataset: PatchDataset, sampler: EpochSampler, batch_size: int, workers: int, prefetch: int,
                 pin_memory: bool) -> DataLoader[dict[str, Any]]:
    """A DataLoader over ``dataset`` in ``sampler``'s order: persistent workers, pinned memory on CUDA."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=max(1, int(prefetch)), worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, num_workers=int(workers),
                      pin_memory=pin_memory, drop_last=len(sampler) > int(batch_size), **kwargs)
