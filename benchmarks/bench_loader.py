"""Patch loader throughput against the training step it has to feed, measured in the same run.

Synthetic preprocessed cohort (``--subjects`` volumes of ``--volume``^3 voxels, float32 image, uint8
label with two labels, written as the preprocess stage writes them: uncompressed NIfTI), the default
augmentation of ``config.schema.yaml`` (affine, elastic, flip, gamma, contrast, noise at p = 0.3).

- ``loader``: cohortseg's patch loader (cohortseg.patches: label-aware patches read from the
  memory-mapped volumes, augmentation per patch in ``--workers`` persistent worker processes), samples/s
  over ``--samples`` samples, timed from the iterator's creation (worker start-up included);
- baseline loader: TorchIO's own patch pipeline on the same files (``SubjectsDataset`` with the same
  augmentation + ``Queue`` + ``LabelSampler`` with the same label probabilities, same workers), which
  loads and augments the whole volume before cutting patches, timed the same way (its queue fills
  included; ``--samples`` covers several fills);
- ``step``: the training step of the configured network on batches of that patch size (forward,
  DiceCE loss, backward, Adam), samples/s over ``--steps`` steps after a warm-up, on CUDA when present
  (bf16 autocast, as ``train.precision: auto`` does) else CPU with every core.

On a CPU-only machine the loader and the step compete for the same cores in a real run; here each is
measured alone. Headline (last line): ``loader_to_step_ratio`` = loader samples/s / step samples/s;
target >= 2 (the loader never starves the step).
Usage: .venv/bin/python benchmarks/bench_loader.py [--volume 128 --patch 64 --batch 2 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cohortseg import config as config_mod  # noqa: E402
from cohortseg.model import build_loss, build_model, target  # noqa: E402
from cohortseg.patches import EpochSampler, PatchDataset, patch_loader  # noqa: E402
from cohortseg.settings import TrainSettings  # noqa: E402
from cohortseg.train import augmentation  # noqa: E402


def make_cohort(root: Path, n: int, size: int, seed: int) -> list[tuple[str, Path, Path]]:
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices((size, size, size)).astype(np.float32)
    cases = []
    for i in range(n):
        centre = rng.uniform(0.3, 0.7, 3) * size
        r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        lab = np.zeros((size, size, size), np.uint8)
        lab[r < size * 0.08] = 1
        lab[(r >= size * 0.08) & (r < size * 0.12)] = 2
        img = (rng.normal(0, 1, lab.shape) + 1.5 * lab).astype(np.float32)
        d = root / f"s{i:03d}"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(img, affine), str(d / "image.nii"))
        nib.save(nib.Nifti1Image(lab, affine), str(d / "label.nii"))
        cases.append((d.name, d / "image.nii", d / "label.nii"))
    return cases


def rate(loader, samples: int) -> float:
    """samples/s from the iterator's creation (worker start-up and queue fills included) over ``samples``."""
    n, t0 = 0, time.perf_counter()
    for b in loader:
        n += (b["image"] if isinstance(b["image"], torch.Tensor) else b["image"]["data"]).shape[0]
        if n >= samples:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--volume", type=int, default=128)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--model", default="unet", choices=["unet", "unetr", "segresnet"])
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--no-baseline", action="store_true", help="skip TorchIO's Queue")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*folding may occur.*")
    patch = [a.patch] * 3
    cfg = config_mod.load(None, {"preprocess": {"size": [a.volume] * 3}, "labels": ["core", "rim"],
                                 "train": {"model": a.model, "levels": a.levels, "base_filters": a.base_filters,
                                           "batch_size": a.batch, "workers": a.workers,
                                           "patch": {"size": patch, "samples_per_volume": 4}}})
    tc = TrainSettings.from_dict(cfg["train"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    print(f"cpu_cores={os.cpu_count()} workers={a.workers} volume={a.volume}^3 patch={a.patch}^3 batch={a.batch} "
          f"model={a.model}")

    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cohort(Path(tmp), a.subjects, a.volume, 0)
        ds = PatchDataset(cases, patch, 2, seed=0, samples_per_volume=4, foreground_fraction=0.33,
                          transform=augmentation(tc))
        sampler = EpochSampler(10**6, 0)
        loader = patch_loader(ds, sampler, a.batch, a.workers, tc.prefetch, pin_memory=device.type == "cuda")
        loader_sps = rate(loader, a.samples)
        print(f"loader_samples_per_s={loader_sps:.3f}")
        print(f"loader_samples_per_s_per_worker={loader_sps / max(1, a.workers):.3f}")

        if not a.no_baseline:
            import torchio as tio

            subjects = [tio.Subject(image=tio.ScalarImage(img), label=tio.LabelMap(lab)) for _, img, lab in cases]
            sampler_tio = tio.LabelSampler(patch, label_name="label", label_probabilities={0: 0.67, 1: 0.165, 2: 0.165})
            queue = tio.Queue(tio.SubjectsDataset(subjects, transform=augmentation(tc)), max_length=16,
                              samples_per_volume=4, sampler=sampler_tio, num_workers=a.workers, shuffle_subjects=True,
                              shuffle_patches=True)
            tio_loader = tio.SubjectsLoader(queue, batch_size=a.batch, num_workers=0)
            base_sps = rate(tio_loader, a.samples)
            print(f"torchio_queue_samples_per_s={base_sps:.3f}")
            print(f"loader_vs_torchio_queue={loader_sps / base_sps:.2f}")

        if device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        model = build_model(tc, 2, patch).to(device)
        loss_fn = build_loss(tc.loss_alpha, 2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        x = torch.randn(a.batch, 1, *patch, device=device)
        y = torch.randint(0, 3, (a.batch, 1, *patch), device=device, dtype=torch.uint8)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), target(y, 2))
            loss.backward()
            opt.step()

        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_sps = a.steps * a.batch / (time.perf_counter() - t0)
        print(f"step_samples_per_s={step_sps:.3f} precision={'bf16' if bf16 else 'fp32'}")
    print(f"loader_to_step_ratio={loader_sps / step_sps:.2f}")


if __name__ == "__main__":
    main()
