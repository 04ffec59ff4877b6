"""Preprocessing of the cross-validation subjects by the dataset plan, in shards.

Each labelled training/validation subject's converted image and label are brought to the plan's space
(cohortseg.volume: canonical orientation, target spacing, normalisation, centred padding to the plan's
size) into ``results/preproc/<subject>/`` with an ``info.json`` of what was done. Test subjects are never
preprocessed for training: inference preprocesses an image itself, by the model's recorded settings.

A subject is redone only when its stamp (the stage's code, the resolved preprocessing settings, the size
and mtime of its converted image and label) changed, so a shard job after an unrelated change only checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .settings import PreprocessSettings, StageConfig
from .util import log, write_json, write_text
from .volume import (centred_padding, check_image, inference_volume, limit_threads, pad_to_size, read_volume,
                     resample_to_spacing, save_volume, to_canonical)

STAMP = ".preprocess-stamp"


@dataclass(frozen=True)
class Config(StageConfig):
    labels: tuple[str, ...]


def label_voxels(data: np.ndarray, n_labels: int) -> dict[str, int]:
    return {str(v): int((data == v).sum()) for v in range(1, n_labels + 1)}


def preprocess_subject(pp: PreprocessSettings, n_labels: int, subject: str, image: str | Path, label: str | Path,
                       folder: str | Path) -> dict[str, Any]:
    """One subject's preprocessed image.nii, label.nii and info.json in ``folder``."""
    source, spatial = inference_volume(image, pp)
    check_image(source.data, subject)
    src_label = read_volume(label)
    lab = resample_to_spacing(to_canonical(src_label), pp.spacing, "nearest")
    out_image, out_label = pad_to_size(spatial, pp.size), pad_to_size(lab, pp.size, is_label=True)
    before = label_voxels(src_label.data, n_labels)
    info = {
        "subject": subject,
        "input_shape": list(source.data.shape), "input_spacing": source.spacing,
        "resampled_shape": list(spatial.data.shape),
        "padding": centred_padding(spatial.data.shape, list(pp.size)),
        "output_shape": list(out_image.data.shape), "output_spacing": out_image.spacing,
        "orientation": out_image.orientation,
        "label_voxels_input": before,
        "label_volume_mm3_input": {k: v * float(np.prod(src_label.spacing)) for k, v in before.items()},
        "label_voxels_output": label_voxels(out_label.data, n_labels),
        "intensity": {"min": float(out_image.data.min()), "max": float(out_image.data.max()),
                      "mean": float(out_image.data.mean())},
    }
    folder = Path(folder)
    save_volume(out_image, folder / "image.nii", np.float32)
    save_volume(out_label, folder / "label.nii", np.uint8)
    write_json(folder / "info.json", info)
    log.info("%s: %s @ %s -> %s @ %s", subject, info["input_shape"], [round(s, 3) for s in info["input_spacing"]],
             info["output_shape"], info["output_spacing"])
    return info


def subject_key(code: str, pp: PreprocessSettings, image: str, label: str) -> str:
    """What a subject's preprocessed files were made from: code, settings, the inputs' size and mtime."""
    h = hashlib.sha256(json.dumps([code, pp.to_dict()], sort_keys=True).encode())
    for f in (image, label):
        st = os.stat(f)
        h.update(json.dumps([st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


OUTPUTS = ("image.nii", "label.nii", "info.json")


def preprocess_if_stale(pp: PreprocessSettings, n_labels: int, code: str, subject: str, nifti: str,
                        preproc: str) -> tuple[str, dict[str, Any]]:
    """(subject, {status, skipped, seconds, files}); a failure is reported, not raised."""
    t0 = time.time()
    image, label = str(Path(nifti) / subject / "image.nii.gz"), str(Path(nifti) / subject / "label.nii.gz")
    folder = Path(preproc) / subject
    files = {name: str(folder / name) for name in OUTPUTS}
    try:
        key = subject_key(code, pp, image, label)
        stamp = folder / STAMP
        if stamp.exists() and stamp.read_text() == key and all(os.path.exists(f) for f in files.values()):
            return subject, {"status": "ok", "skipped": True, "seconds": 0.0, "files": files}
        stamp.unlink(missing_ok=True)
        preprocess_subject(pp, n_labels, subject, image, label, folder)
        write_text(stamp, key)
    except Exception as exc:  # one subject's failure is reported; the shard's others go on
        log.error("%s: preprocessing failed: %s: %s", subject, type(exc).__name__, exc)
        return subject, {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return subject, {"status": "ok", "skipped": False, "seconds": round(time.time() - t0, 3), "files": files}


def _worker(args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    limit_threads(1)
    return preprocess_if_stale(*args)


def run(config: Config, dataset_plan: str | Path, subjects: list[str], nifti: str, preproc: str,
        manifest_out: str | Path, shard: str, code: str, threads: int = 1) -> dict[str, Any]:
    """Preprocess ``subjects`` (a shard) by the dataset plan; the manifest lists them once all succeeded."""
    pp = PreprocessSettings.from_dict(json.loads(Path(dataset_plan).read_text())["preprocess"])
    jobs = [(pp, len(config.labels), code, s, nifti, preproc) for s in sorted(subjects)]
    limit_threads(threads)
    if threads > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(min(threads, len(jobs)), mp_context=mp.get_context("fork")) as pool:
            results = dict(pool.map(_worker, jobs))
    else:
        results = dict(preprocess_if_stale(*j) for j in jobs)
    failed = {s: r["reason"] for s, r in results.items() if r["status"] != "ok"}
    if failed:
        lines = "\n".join(f"  {s}: {why}" for s, why in sorted(failed.items()))
        raise RuntimeError(f"preprocess shard {shard}: {len(failed)} of {len(results)} subjects failed:\n{lines}")
    manifest = {"shard": shard, "n_subjects": len(results), "code": code, "preprocess": pp.to_dict(),
                "subjects": {s: r["files"] for s, r in sorted(results.items())}}
    write_json(manifest_out, manifest)
    done = sum(not r["skipped"] for r in results.values())
    log.info("preprocess shard %s: %d subjects, %d preprocessed, %d up to date", shard, len(results), done,
             len(results) - done)
    return manifest
