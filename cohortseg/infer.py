"""Sliding-window inference of one fold or of the fold ensemble, written in the source space.

The converted image is brought to the training space (canonical orientation, training spacing,
same normalisation; no crop: windows cover any size), the models' probabilities are averaged,
and the averaged probability maps are resampled linearly through world space onto the converted
image's own grid before thresholding (argmax for several labels). The prediction therefore has
exactly the converted image's shape and affine and overlays on it in 3D Slicer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from .ensemble import models_from_manifest
from .model import discretise, load_model, probabilities
from .preprocess import check_image, inference_transform, load_subject
from .util import log, save_nifti, write_json


FLIPS = [dims for k in range(4) for dims in itertools.combinations((2, 3, 4), k)]


def average_probabilities(models: list[torch.nn.Module], x: torch.Tensor, window: Callable[[Any, torch.Tensor], Any],
                          n_labels: int, tta_flip: bool = False) -> torch.Tensor:
    """Mean class probabilities of ``models`` on ``x`` (B,1,D,H,W), each through ``window`` (sliding-window
    inference); with ``tta_flip`` also over the 8 mirrorings of the input, each mirrored back."""
    acc, n = None, 0
    with torch.no_grad():
        for m in models:
            for dims in FLIPS if tta_flip else [()]:
                xin = torch.flip(x, dims) if dims else x
                p = probabilities(window(m, xin), n_labels)
                p = (torch.flip(p, dims) if dims else p).cpu()
                acc = p if acc is None else acc + p
                n += 1
    assert acc is not None
    return acc / n


def predict(models: list[torch.nn.Module], meta: dict[str, Any], cfg: dict[str, Any], image_path: str | Path,
            device: torch.device) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    from monai.inferers import sliding_window_inference

    n_labels = len(meta["labels"])
    subj = load_subject(image_path)
    check_image(subj["image"], str(Path(image_path).parent.name))
    # the model's own preprocessing, so a model folder is self-contained
    model_cfg = {**cfg, "preprocess": meta["preprocess"]}
    pre = inference_transform(model_cfg)(subj)
    x = pre["image"][tio.DATA][None].float().to(device)
    ic = cfg["infer"]
    window = lambda m, v: sliding_window_inference(v, meta["size"], 1, m, overlap=ic["overlap"], mode=ic["mode"])  # noqa: E731
    probs = average_probabilities(models, x, window, n_labels, bool(ic["tta_flip"]))[0]
    prob_img = tio.ScalarImage(tensor=probs, affine=pre["image"].affine)
    back = tio.Resample(subj["image"], image_interpolation="linear")(prob_img)
    label = discretise(back.data[None], n_labels, ic["threshold"])[0, 0].numpy().astype(np.uint8)
    src = nib.load(str(image_path))
    if label.shape != src.shape[:3]:
        raise RuntimeError(f"prediction shape {label.shape} does not match the source {src.shape}")
    out = nib.Nifti1Image(label, src.affine)
    out.set_qform(src.affine, code=1)
    out.set_sform(src.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    info = {"voxels": {name: int((label == v).sum()) for v, name in enumerate(meta["labels"], start=1)},
            "max_probability": float(probs[-1].max() if n_labels == 1 else probs[1:].max())}
    return out, info


def run(cfg: dict[str, Any], model_name: str, cases: list[tuple[str, str, str, str]], model_paths: list[str] | None,
        manifest_path: str | Path | None, threads: int = 1) -> None:
    """Predict ``cases`` = [(case id, image, prediction out, timing json out)] with one fold or the ensemble.

    Models are loaded once per call, so a fold's whole validation set is one job (MONAI alone takes
    several seconds to import)."""
    import json

    from .train import _resolve_device
    from .util import seed_everything, set_threads

    set_threads(threads)
    seed_everything(int(cfg["seed"]), cfg["deterministic"])
    device = _resolve_device(cfg["train"]["device"])
    t_load = time.time()
    if manifest_path is not None:
        models, meta = models_from_manifest(json.loads(Path(manifest_path).read_text()), device)
    else:
        assert model_paths
        loaded = [load_model(p, device) for p in model_paths]
        models, meta = [m for m, _ in loaded], loaded[0][1]
    load_seconds = time.time() - t_load
    for case, image, out, info_out in cases:
        t0 = time.time()
        pred, info = predict(models, meta, cfg, image, device)
        save_nifti(pred, out)
        info.update(model=model_name, subject=case, n_models=len(models), seconds=time.time() - t0,
                    model_load_seconds=load_seconds, device=str(device), threads=threads)
        write_json(info_out, info)
        log.info("%s %s: %s in %.1fs", model_name, case, info["voxels"], info["seconds"])


def write_shard_manifest(shard: str, cases: list[tuple[str, str, str, str]], out: str | Path) -> None:
    """List a shard's predictions (and their SHA-256) as the proof that the whole shard is predicted."""
    from .provenance import sha256_file

    write_json(out, {"shard": shard, "predictions": {c: {"prediction": pred, "info": info, "sha256": sha256_file(pred)}
                                                     for c, _, pred, info in cases}})
