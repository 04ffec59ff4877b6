"""Networks, losses, the probability convention and model files, shared by training, the ensemble,
inference and export (a stage never imports another stage's module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .settings import TrainSettings
from .util import sha256_file


def n_outputs(n_labels: int) -> int:
    """One sigmoid channel for a single label; background + one channel per label otherwise."""
    return 1 if n_labels == 1 else n_labels + 1


def build_model(train: TrainSettings, n_labels: int, size: list[int]) -> nn.Module:
    out = n_outputs(n_labels)
    if train.model == "unet":
        from monai.networks.nets import UNet

        f, levels = train.base_filters, train.levels
        return UNet(
            spatial_dims=3, in_channels=1, out_channels=out,
            channels=tuple(f * 2**i for i in range(levels)), strides=(2,) * (levels - 1),
            num_res_units=train.res_units, norm="INSTANCE",
        )
    if train.model == "unetr":
        from monai.networks.nets import UNETR

        hidden = train.unetr_hidden_size
        return UNETR(
            in_channels=1, out_channels=out, img_size=tuple(size), feature_size=train.unetr_feature_size,
            hidden_size=hidden, mlp_dim=4 * hidden, num_heads=train.unetr_heads, proj_type="conv",
            norm_name="instance",
        )
    if train.model == "segresnet":
        from monai.networks.nets import SegResNet

        levels = train.levels
        return SegResNet(
            spatial_dims=3, in_channels=1, out_channels=out, init_filters=train.base_filters,
            blocks_down=tuple(min(2 ** i, 4) for i in range(levels)), blocks_up=(1,) * (levels - 1),
            norm=("INSTANCE", {"affine": True}),
        )
    raise ValueError(f"unknown model {train.model!r}")


def build_loss(alpha: float, n_labels: int) -> nn.Module:
    """alpha * Dice + (1 - alpha) * BCE (one label) or CE (several labels)."""
    from monai.losses import DiceCELoss

    if n_labels == 1:
        return DiceCELoss(sigmoid=True, lambda_dice=alpha, lambda_ce=1 - alpha)
    return DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=alpha, lambda_ce=1 - alpha)


def target(label: torch.Tensor, n_labels: int) -> torch.Tensor:
    """The loss target from an integer label map (B,1,...)."""
    return (label > 0).float() if n_labels == 1 else label.long()


def probabilities(logits: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Per-class foreground probabilities, shape (B, n_labels, ...) for one label, (B, n_labels+1, ...) otherwise."""
    return torch.sigmoid(logits) if n_labels == 1 else torch.softmax(logits, dim=1)


def discretise(probs: torch.Tensor, n_labels: int, threshold: float = 0.5) -> torch.Tensor:
    """Integer label map (B,1,...) from probabilities."""
    if n_labels == 1:
        return (probs >= threshold).to(torch.uint8)
    return probs.argmax(dim=1, keepdim=True).to(torch.uint8)


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """A model file that loads with ``torch.load(weights_only=True)``: tensors and plain values only."""
    from .util import save_torch

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_torch({"state_dict": state, "meta": meta}, path)


def recorded_settings(train: dict[str, Any]) -> TrainSettings:
    """A model file's training settings as TrainSettings: a file written before a later training key existed
    lacks it (None here); the network is rebuilt from its architecture keys only, which every file has."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(TrainSettings)]
    return TrainSettings.from_dict({k: train.get(k) for k in names})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A fold network and its metadata; a file without a known input-padding record is refused."""
    from .window import model_padding

    blob = torch.load(path, map_location=device, weights_only=True)
    meta = blob["meta"]
    model_padding(meta, str(path))
    model = build_model(recorded_settings(meta["train"]), len(meta["labels"]), meta["size"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, meta


def load_ensemble(manifest: dict[str, Any], device: str | torch.device = "cpu") -> tuple[list[nn.Module], dict[str, Any]]:
    """The fold networks of an ensemble manifest (``cohortseg.ensemble``), each checked against its SHA-256:
    a missing or changed fold is an error, never a smaller or different ensemble."""
    models, meta = [], {}
    if len(manifest["folds"]) != manifest["n_folds"]:
        raise ValueError("ensemble manifest does not list every declared fold")
    for e in manifest["folds"]:
        if sha256_file(e["path"]) != e["sha256"]:
            raise ValueError(f"fold {e['fold']} model {e['path']} changed since the ensemble was built")
        m, meta = load_model(e["path"], device)
        models.append(m)
    return models, meta
