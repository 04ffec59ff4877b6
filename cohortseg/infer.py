"""Sliding-window inference of one fold or of the fold ensemble, written in the source space.

The converted image is brought to the training space (canonical orientation, training spacing,
same normalisation; no crop: windows cover any size, and an image smaller than the window is padded
by the input rule the model file records, see :mod:`cohortseg.window`), the models' probabilities
are averaged,
and the averaged probability maps are resampled linearly through world space onto the converted
image's own grid before thresholding (argmax for several labels). The prediction therefore has
exactly the converted image's shape and affine and overlays on it in 3D Slicer.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import discretise, load_ensemble, load_model, probabilities
from .preprocess import Volume, check_image, inference_volume, limit_threads, resample_like
from .settings import InferSettings, PreprocessSettings, StageConfig
from .util import import_nibabel, log, resolve_device, save_nifti, seed_everything, set_threads, write_json

from .window import model_padding, sliding_window

nib = import_nibabel()


@dataclass(frozen=True)
class Config(StageConfig):
    infer: InferSettings
    seed: int
    deterministic: bool


FLIPS = [dims for k in range(4) for dims in itertools.combinations((2, 3, 4), k)]

# a network on one window (1, 1, *window) -> class probabilities (1, C, *window)
Predictor = Callable[[torch.Tensor], torch.Tensor]


def network_predictor(model: torch.nn.Module, n_labels: int) -> Predictor:
    """A fold network (logits) as a predictor of class probabilities."""
    return lambda x: probabilities(model(x), n_labels)


def average_probabilities(predictors: list[Predictor], x: torch.Tensor, window: Sequence[int], padding: str,
                          overlap: float = 0.5, mode: str = "gaussian", tta_flip: bool = False) -> torch.Tensor:
    """Mean class probabilities of ``predictors`` slid over ``x`` (1,1,D,H,W) in ``window``-sized windows,
    padded by the models' ``padding`` rule; with ``tta_flip`` also over the 8 mirrorings of the input, each
    mirrored back (mirroring leaves the padding constant unchanged)."""
    acc, n = None, 0
    for predictor in predictors:
        for dims in FLIPS if tta_flip else [()]:
            xin = torch.flip(x, dims) if dims else x
            p = sliding_window(predictor, xin, window, padding, overlap=overlap, mode=mode)
            p = (torch.flip(p, dims) if dims else p).cpu()
            acc = p if acc is None else acc + p
            n += 1
    assert acc is not None
    return acc / n


def predict(predictors: list[Predictor], meta: dict[str, Any], settings: InferSettings, image_path: str | Path,
            device: torch.device | str = "cpu") -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """The source-space segmentation of ``image_path`` by ``predictors``, which share ``meta`` (labels,
    window ``size``, ``preprocess`` and ``input_padding`` of the model file or export)."""
    n_labels = len(meta["labels"])
    padding = model_padding(meta, str(meta.get("source", "model")))
    # the model's own preprocessing, so a model folder is self-contained
    source, pre = inference_volume(image_path, PreprocessSettings.from_dict(meta["preprocess"]))
    check_image(source.data, str(Path(image_path).parent.name))
    x = torch.from_numpy(pre.data)[None, None].float().to(device)
    probs = average_probabilities(predictors, x, meta["size"], padding, settings.overlap, settings.mode,
                                  settings.tta_flip)[0]
    label = to_source_space(probs, pre.affine, source, n_labels, settings.threshold)
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


def to_source_space(probs: torch.Tensor, affine: np.ndarray, source: Volume, n_labels: int,
                    threshold: float) -> np.ndarray:
    """Probability maps (C, ...) on the grid ``affine`` resampled linearly through world space onto the
    source image's grid, then discretised (threshold for one label, argmax otherwise)."""
    back = resample_like(probs.numpy().astype(np.float32), affine, source, "linear")
    return discretise(torch.from_numpy(back)[None], n_labels, threshold)[0, 0].numpy().astype(np.uint8)


def load_predictors(model_paths: list[str] | None, manifest_path: str | Path | None, exported: str | Path | None,
                    device: torch.device) -> tuple[list[Predictor], dict[str, Any]]:
    """Predictors and their shared metadata from fold model files, an ensemble manifest or an exported
    TorchScript/ONNX program (with the ``export.json`` beside it)."""
    if exported is not None:
        from .exported import load_program

        return load_program(exported)
    if manifest_path is not None:
        models, meta = load_ensemble(json.loads(Path(manifest_path).read_text()), device)
        meta = {**meta, "source": str(manifest_path)}
    else:
        if not model_paths:
            raise ValueError("give fold model files, an ensemble manifest or an exported program")
        loaded = [load_model(p, device) for p in model_paths]
        models, meta = [m for m, _ in loaded], {**loaded[0][1], "source": str(model_paths[0])}
    n_labels = len(meta["labels"])
    return [network_predictor(m, n_labels) for m in models], meta


def run(config: Config, model_name: str, cases: list[tuple[str, str, str, str]], model_paths: list[str] | None,
        manifest_path: str | Path | None, threads: int = 1, exported: str | Path | None = None) -> None:
    """Predict ``cases`` = [(case id, image, prediction out, timing json out)] with one fold, the ensemble
    or an exported program.

    Models are loaded once per call, so a fold's whole validation set is one job (MONAI alone takes
    several seconds to import)."""
    set_threads(threads)
    limit_threads(threads)
    seed_everything(config.seed, config.deterministic)
    device = torch.device("cpu") if exported is not None else resolve_device(config.infer.device)
    t_load = time.time()
    predictors, meta = load_predictors(model_paths, manifest_path, exported, device)
    load_seconds = time.time() - t_load
    for case, image, out, info_out in cases:
        t0 = time.time()
        pred, info = predict(predictors, meta, config.infer, image, device)
        save_nifti(pred, out)
        info.update(model=model_name, subject=case, n_models=int(meta.get("n_models", len(predictors))), seconds=time.time() - t0,
                    model_load_seconds=load_seconds, device=str(device), threads=threads)
        write_json(info_out, info)
        log.info("%s %s: %s in %.1fs", model_name, case, info["voxels"], info["seconds"])


def write_shard_manifest(shard: str, cases: list[tuple[str, str, str, str]], out: str | Path) -> None:
    """List a shard's predictions (and their SHA-256) as the proof that the whole shard is predicted."""
    from .util import sha256_file

    write_json(out, {"shard": shard, "predictions": {c: {"prediction": pred, "info": info, "sha256": sha256_file(pred)}
                                                     for c, _, pred, info in cases}})
