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
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import discretise, load_ensemble, load_model, probabilities
from .volume import Volume, check_image, inference_volume, limit_threads, resample_like
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


# a model's fold networks as predictors, with the metadata they share (labels, window, preprocessing)
Group = tuple[list[Predictor], dict[str, Any]]


def predict(groups: list[Group], settings: InferSettings, image_path: str | Path, device: torch.device | str = "cpu",
            postprocessing: dict[str, Any] | None = None) -> tuple[nib.Nifti1Image, dict[str, Any], np.ndarray]:
    """The source-space segmentation of ``image_path`` by ``groups`` (one model's folds, or several models:
    each model's fold-mean probabilities, then the mean over models), post-processed by ``postprocessing``
    (cohortseg.postprocess); also the source-space probabilities."""
    from . import postprocess

    labels = check_same_labels(groups)
    source, probs = source_probabilities(groups, settings, image_path, device)
    seg = discretise(torch.from_numpy(probs)[None], len(labels), settings.threshold)[0, 0].numpy().astype(np.uint8)
    seg = postprocess.apply(seg, postprocessing or postprocess.NONE, labels)
    src = nib.load(str(image_path))
    if seg.shape != src.shape[:3]:
        raise RuntimeError(f"prediction shape {seg.shape} does not match the source {src.shape}")
    out = nib.Nifti1Image(seg, src.affine)
    out.set_qform(src.affine, code=1)
    out.set_sform(src.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    info = {"voxels": {name: int((seg == v).sum()) for v, name in enumerate(labels, start=1)},
            "max_probability": float(probs[-1].max() if len(labels) == 1 else probs[1:].max())}
    return out, info, probs


def check_same_labels(groups: list[Group]) -> list[str]:
    labels = [list(meta["labels"]) for _, meta in groups]
    if any(lab != labels[0] for lab in labels):
        raise ValueError(f"the models segment different labels: {labels}")
    return labels[0]


def source_probabilities(groups: list[Group], settings: InferSettings, image_path: str | Path,
                         device: torch.device | str) -> tuple[Volume, np.ndarray]:
    """Each group's mean class probabilities, slid over the image brought to its model's space (padded by its
    recorded input rule) and resampled linearly through world space onto the source grid; their mean."""
    cache: dict[str, tuple[Volume, Volume]] = {}
    acc = None
    for predictors, meta in groups:
        padding = model_padding(meta, str(meta.get("source", "model")))
        key = json.dumps(meta["preprocess"], sort_keys=True)
        if key not in cache:  # the model's own preprocessing, so a model folder is self-contained
            cache[key] = inference_volume(image_path, PreprocessSettings.from_dict(meta["preprocess"]))
            check_image(cache[key][0].data, str(Path(image_path).parent.name))
        source, pre = cache[key]
        x = torch.from_numpy(pre.data)[None, None].float().to(device)
        p = average_probabilities(predictors, x, meta["size"], padding, settings.overlap, settings.mode,
                                  settings.tta_flip)[0]
        back = resample_like(p.numpy().astype(np.float32), pre.affine, source, "linear")
        acc = back if acc is None else acc + back
    assert acc is not None
    return source, (acc / len(groups)).astype(np.float32)


def load_predictors(model_paths: list[str] | None, manifest_paths: list[str] | None, exported: str | Path | None,
                    device: torch.device) -> list[Group]:
    """Predictor groups from fold model files (one group), ensemble manifests (a group per model) or an
    exported TorchScript/ONNX program (with the ``export.json`` beside it)."""
    if exported is not None:
        from .exported import load_program

        return [load_program(exported)]
    if manifest_paths:
        return manifest_groups([(json.loads(Path(p).read_text()), str(p)) for p in manifest_paths], device)
    if not model_paths:
        raise ValueError("give fold model files, ensemble manifests or an exported program")
    loaded = [load_model(p, device) for p in model_paths]
    meta = {**loaded[0][1], "source": str(model_paths[0])}
    return [([network_predictor(m, len(meta["labels"])) for m, _ in loaded], meta)]


def manifest_groups(manifests: list[tuple[dict[str, Any], str]], device: torch.device) -> list[Group]:
    """A predictor group per (ensemble manifest, where it came from): its folds, checked by SHA-256."""
    groups = []
    for manifest, source in manifests:
        models, meta = load_ensemble(manifest, device)
        groups.append(([network_predictor(m, len(meta["labels"])) for m in models], {**meta, "source": source}))
    return groups


def package_groups(folder: str | Path, device: torch.device) -> tuple[list[Group], dict[str, Any]]:
    """The selection of a model package (cohortseg.package; its checksums verified first) and its
    post-processing."""
    from .package_files import open_package

    manifests, postprocessing, _ = open_package(folder)
    return manifest_groups([(m, f"{folder}:{m['model']}") for m in manifests], device), postprocessing


def selected_manifests(selection_path: str | Path, manifest_paths: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The ensemble manifests of the models the study selected, and its post-processing."""
    selection = json.loads(Path(selection_path).read_text())
    chosen = selection["selected"]["models"]
    by_model = {json.loads(Path(p).read_text())["model"]: p for p in manifest_paths}
    missing = [m for m in chosen if m not in by_model]
    if missing:
        raise ValueError(f"{selection_path} selects {missing}, whose ensemble manifests were not given")
    return [by_model[m] for m in chosen], selection["postprocessing"]


def run(config: Config, model_name: str, cases: list[tuple[str, str, str, str]], model_paths: list[str] | None,
        manifest_paths: list[str] | None, threads: int = 1, exported: str | Path | None = None,
        selection: str | Path | None = None, save_probabilities: bool = False, package: str | Path | None = None) -> None:
    """Predict ``cases`` = [(case id, image, prediction out, timing json out)] with one fold, fold ensembles,
    the study's selection (its models and post-processing), a model package (the same, verified against its
    checksums) or an exported program. ``save_probabilities``:
    also ``<case>.probs.npz`` (float16 source-space class probabilities; cross-validation predictions, for
    the study's ensemble selection).

    Models are loaded once per call, so a fold's whole validation set is one job (MONAI alone takes
    several seconds to import)."""
    set_threads(threads)
    limit_threads(threads)
    seed_everything(config.seed, config.deterministic)
    device = torch.device("cpu") if exported is not None else resolve_device(config.infer.device)
    postprocessing = None
    if selection is not None:
        manifest_paths, postprocessing = selected_manifests(selection, manifest_paths or [])
    t_load = time.time()
    if package is not None:
        groups, postprocessing = package_groups(package, device)
    else:
        groups = load_predictors(model_paths, manifest_paths, exported, device)
    load_seconds = time.time() - t_load
    if exported is not None:
        postprocessing = groups[0][1].get("postprocessing")
    n_models = sum(int(meta.get("n_models", len(predictors))) for predictors, meta in groups)
    for case, image, out, info_out in cases:
        t0 = time.time()
        pred, info, probs = predict(groups, config.infer, image, device, postprocessing)
        save_nifti(pred, out)
        if save_probabilities:
            save_npz(probabilities_path(out), probs.astype(np.float16))
        info.update(model=model_name, subject=case, n_models=n_models, seconds=time.time() - t0,
                    model_load_seconds=load_seconds, device=str(device), threads=threads,
                    postprocessing=postprocessing)
        write_json(info_out, info)
        log.info("%s %s: %s in %.1fs", model_name, case, info["voxels"], info["seconds"])


def probabilities_path(prediction: str | Path) -> str:
    """<case>.probs.npz beside <case>.nii.gz."""
    return re.sub(r"\.nii(\.gz)?$", "", str(prediction)) + ".probs.npz"


def save_npz(path: str | Path, probs: np.ndarray) -> None:
    from .util import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, probabilities=probs)


def write_shard_manifest(shard: str, cases: list[tuple[str, str, str, str]], out: str | Path) -> None:
    """List a shard's predictions (and their SHA-256) as the proof that the whole shard is predicted."""
    from .util import sha256_file

    write_json(out, {"shard": shard, "predictions": {c: {"prediction": pred, "info": info, "sha256": sha256_file(pred)}
                                                     for c, _, pred, info in cases}})
