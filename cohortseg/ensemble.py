"""Fold ensemble: a manifest of exactly the declared folds, checked again at every use.

A missing fold, a fold file holding another fold, folds that disagree in labels, patch size or
architecture, or a model file changed after the manifest was written are errors: an ensemble is
never silently built from fewer or different folds. Each fold's metadata is read from the
``train.json`` its training job wrote beside ``model.pt`` (the same record the model file holds), so
this light job does not import torch; the model file's SHA-256 binds the two, and inference checks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import SplitSettings, StageConfig
from .util import sha256_file as sha256
from .util import write_json


@dataclass(frozen=True)
class Config(StageConfig):
    split: SplitSettings


def build_ensemble(fold_models: list[str], n_folds: int, out: str | Path, model: str = "") -> dict[str, Any]:
    """Manifest of exactly the declared folds of ``model``; a missing or inconsistent fold is an error naming
    the model."""
    if len(fold_models) != n_folds:
        raise ValueError(f"model {model!r}: its ensemble needs all {n_folds} declared folds, got {len(fold_models)}")
    entries, ref_meta = [], None
    for k, path in enumerate(fold_models):
        info = Path(path).parent / "train.json"
        if not Path(path).exists() or not info.exists():
            raise FileNotFoundError(f"model {model!r}: fold {k} ({path}) is missing: an ensemble is never built from "
                                    "fewer folds")
        meta = json.loads(info.read_text())
        if meta["fold"] != k:
            raise ValueError(f"{path} holds fold {meta['fold']}, expected fold {k}")
        key = (tuple(meta["labels"]), tuple(meta["size"]), meta["train"]["model"])
        if ref_meta is None:
            ref_meta = key
        elif key != ref_meta:
            raise ValueError(f"fold {k} model differs in labels/size/architecture from fold 0: {key} vs {ref_meta}")
        entries.append({"fold": k, "path": str(path), "sha256": sha256(path), "best_val_dice": meta["best_val_dice"]})
    manifest = {"model": model, "n_folds": n_folds, "folds": entries}
    write_json(out, manifest)
    return manifest


def run(config: Config, fold_models: list[str], out: str | Path, model: str = "") -> dict[str, Any]:
    """The stage: the manifest of model ``model``'s ``split.folds`` declared fold models."""
    return build_ensemble(fold_models, config.split.folds, out, model)
