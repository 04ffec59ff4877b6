"""Training of one cross-validation fold.

Two loaders. Whole-volume (``train.patch.size`` null, volumes small enough to fit the network whole):
the preprocessed volumes are held in memory and TorchIO augments them in the training process.
Patch (``train.patch.size`` set): label-aware patches read from the memory-mapped preprocessed
volumes by worker processes (:mod:`cohortseg.patches`); the window of validation, inference and
export is then the patch. Mixed precision (``train.precision``: bf16 by default on CUDA),
channels-last and ``torch.compile`` are options of both.

Deterministic on CPU by default: the seed of a fold is ``seed + fold``; in whole-volume mode TorchIO
draws its augmentation parameters from torch's generator and the loader shuffles with its own seeded
generator (no worker processes); in patch mode every sample draws from its own generator seeded with
(seed, epoch, sample), whatever the number of workers. Two runs give the same weights bit for bit.

Surviving a cluster: after every epoch an atomic checkpoint (model, optimiser, scheduler, epoch,
history, best state and every RNG state) is written next to, not among, the rule's outputs,
keyed by a fingerprint of config, code and split. A rerun resumes from it; SIGUSR1/SIGTERM (sent
by SLURM before the time limit) stops at the next batch boundary with the last checkpoint on
disk, and the job's retry resumes. A checkpoint whose fingerprint differs is ignored.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchio as tio
from torchio.transforms.augmentation import RandomTransform

from . import __version__
from .model import build_loss, build_model, discretise, probabilities, save_model, target
from .patches import EpochSampler, PatchDataset, patch_loader
from .util import atomic_path, log, save_torch, seed_everything, write_json, write_tsv
from .window import PADDING, sliding_window, torchio_padding_mode


class Preempted(SystemExit):
    """Raised at a batch boundary after SIGUSR1/SIGTERM; exit code 75 (EX_TEMPFAIL) asks for a retry."""

    def __init__(self, signum: int) -> None:
        super().__init__(75)
        self.signum = signum


class RandomContrast(RandomTransform, tio.IntensityTransform):
    """Scale intensities around their mean by a random factor in [1 - r, 1 + r]."""

    def __init__(self, r: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.r = float(r)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        factor = float(self.sample_uniform(1 - self.r, 1 + self.r))
        for image in self.get_images(subject):
            data = image.data.float()
            mean = data.mean()
            image.set_data((data - mean) * factor + mean)
        return subject


class RandomWindow(RandomTransform, tio.SpatialTransform):
    """A window of ``size`` voxels at a uniformly drawn position (torch's generator, so seeded and
    checkpointed) of a preprocessed volume larger than the window. Preprocessing pads to at least the
    window and never crops, so training sees every part of a larger volume, as sliding-window inference
    does; a volume exactly the window's size passes through without a draw."""

    def __init__(self, size: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = [int(s) for s in size]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        shape = [int(n) for n in subject.spatial_shape]
        if shape == self.size:
            return subject
        if any(n < w for n, w in zip(shape, self.size)):
            raise ValueError(f"{subject.get('name', 'a subject')}: preprocessed volume {shape} is smaller than the "
                             f"window {self.size}: preprocess it again")
        starts = [int(torch.randint(0, n - w + 1, (1,))) for n, w in zip(shape, self.size)]
        bounds = [v for a, n, w in zip(starts, shape, self.size) for v in (a, n - w - a)]
        return tio.Crop(tuple(bounds))(subject)


def augmentation(cfg: dict[str, Any]) -> tio.Compose:
    a = cfg["train"]["augment"]
    p = float(cfg["train"]["augment_probability"])
    ts: list[tio.Transform] = []
    if a["rotation"] or a["scaling"]:
        # out-of-field voxels filled like every other border the network sees (cohortseg.window)
        ts.append(tio.RandomAffine(scales=a["scaling"], degrees=a["rotation"], p=p,
                                   default_pad_value=torchio_padding_mode(PADDING)))
    if a["elastic"]:
        ts.append(tio.RandomElasticDeformation(num_control_points=7, max_displacement=3.0, p=p))
    if a["flip"]:
        ts.append(tio.RandomFlip(axes=("LR",), flip_probability=0.5))
    if a["gamma"]:
        ts.append(tio.RandomGamma(log_gamma=a["gamma"], p=p))
    if a["contrast"]:
        ts.append(RandomContrast(a["contrast"], p=p))
    if a["noise"]:
        ts.append(tio.RandomNoise(std=(0, a["noise"]), p=p))
    return tio.Compose(ts)


def load_cases(preproc_dir: str | Path, subjects: list[str]) -> list[tio.Subject]:
    out = []
    for s in subjects:
        d = Path(preproc_dir) / s
        subj = tio.Subject(image=tio.ScalarImage(d / "image.nii"), label=tio.LabelMap(d / "label.nii"), name=s)
        subj.load()
        out.append(subj)
    return out


def logits_and_probabilities(model: torch.nn.Module, n_labels: int) -> Any:
    """A window -> its logits and class probabilities side by side in the channel axis: one sliding
    pass blends both, the logits for the validation loss, the probabilities for the segmentation
    (blended as inference blends them, see cohortseg.window)."""

    def both(x: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return torch.cat([logits, probabilities(logits.float(), n_labels)], dim=1)

    return both


def dice_per_label(pred: torch.Tensor, ref: torch.Tensor, n_labels: int) -> list[float]:
    """Dice of integer maps per label; 1.0 when both are empty."""
    out = []
    for v in range(1, n_labels + 1):
        p, r = pred == v, ref == v
        denom = int(p.sum() + r.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def fingerprint(cfg: dict[str, Any], fold: int, split: dict[str, Any], code: str) -> str:
    blob = json.dumps({"preprocess": cfg["preprocess"], "train": cfg["train"], "labels": cfg["labels"], "seed": cfg["seed"],
                       "deterministic": cfg["deterministic"], "fold": fold, "split": split["folds"][fold], "code": code},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _precision(name: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None for float32, GradScaler or None) for ``train.precision``.

    auto = bfloat16 on a CUDA device that supports it (A100, H100: same exponent range as float32, no
    loss scaling), float32 elsewhere. float16 needs CUDA and a GradScaler (its state is checkpointed)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp32":
        return None, None
    if name == "bf16":
        return torch.bfloat16, None
    if device.type != "cuda":
        raise ValueError("train.precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return torch.float16, torch.amp.GradScaler("cuda")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def plot_curves(history: pd.DataFrame, labels: list[str], path: str | Path, fold: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(history["epoch"], history["train_loss"], label="train")
    ax1.plot(history["epoch"], history["val_loss"], label="validation")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("loss"); ax1.legend(); ax1.set_title(f"fold {fold}: loss")
    for name in labels:
        ax2.plot(history["epoch"], history[f"val_dice_{name}"], label=name)
    best = history["val_dice"].idxmax()
    ax2.axvline(history.loc[best, "epoch"], color="grey", ls=":", label="best")
    ax2.set_ylim(0, 1); ax2.set_xlabel("epoch"); ax2.set_ylabel("validation Dice"); ax2.legend()
    ax2.set_title(f"fold {fold}: validation Dice")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)


def train_fold(
    cfg: dict[str, Any], fold: int, splits: dict[str, Any], preproc_dir: str | Path, model_out: str | Path,
    history_out: str | Path, curves_out: str | Path, info_out: str | Path, checkpoint: str | Path, code: str = "",
    threads: int = 1,
) -> dict[str, Any]:
    from tqdm import tqdm

    from .util import set_threads

    t_start = time.time()
    tc = cfg["train"]
    labels = cfg["labels"]
    n_labels = len(labels)
    set_threads(threads)
    seed = int(cfg["seed"]) + fold
    seed_everything(seed, cfg["deterministic"])
    device = _resolve_device(tc["device"])
    fold_split = splits["folds"][fold]
    if not fold_split["train"] or not fold_split["val"]:
        raise ValueError(f"fold {fold} has an empty training or validation set: {fold_split}")
    pc = tc["patch"]
    patch_mode = pc["size"] is not None
    volume_size = [int(s) for s in cfg["preprocess"]["size"]]
    # the network's window: the patch in patch mode, the whole preprocessed volume otherwise
    size = [int(s) for s in pc["size"]] if patch_mode else volume_size
    val_cases = load_cases(preproc_dir, fold_split["val"])

    model = build_model(tc, n_labels, size).to(device)
    if tc["channels_last"]:
        model = model.to(memory_format=torch.channels_last_3d)
    dtype, scaler = _precision(tc["precision"], device)

    def autocast() -> torch.autocast:  # the training step's and validation's precision (a no-op for fp32)
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    step_model: Any = torch.compile(model) if tc["compile"] else model
    loss_fn = build_loss(float(tc["loss_alpha"]), n_labels)
    opt = torch.optim.Adam(model.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    epochs = int(tc["epochs"])
    if tc["lr_schedule"] == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif tc["lr_schedule"] == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, tc["patience"] // 3))
    else:
        sched = None
    loader_gen = torch.Generator().manual_seed(seed)
    sampler: EpochSampler | None = None
    if patch_mode:
        pre = Path(preproc_dir)
        pdata = PatchDataset([(s, pre / s / "image.nii", pre / s / "label.nii") for s in fold_split["train"]], size,
                             n_labels, seed, int(pc["samples_per_volume"]), float(pc["foreground_fraction"]),
                             augmentation(cfg))
        sampler = EpochSampler(pdata.per_epoch, seed)
        loader: Any = patch_loader(pdata, sampler, int(tc["batch_size"]), int(tc["workers"]), int(tc["prefetch"]),
                                   pin_memory=device.type == "cuda")
    else:
        train_cases = load_cases(preproc_dir, fold_split["train"])
        dataset = tio.SubjectsDataset(train_cases, transform=tio.Compose([RandomWindow(size), augmentation(cfg)]))
        loader = tio.SubjectsLoader(dataset, batch_size=int(tc["batch_size"]), shuffle=True, num_workers=0,
                                    generator=loader_gen, drop_last=len(train_cases) > int(tc["batch_size"]))

    fp = fingerprint(cfg, fold, splits, code)
    ckpt_path = Path(checkpoint)
    start_epoch, history, best_dice, best_epoch, best_state, wait = 0, [], -1.0, -1, None, 0
    resumed_from = None
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler") is not None:
                scaler.load_state_dict(ck["scaler"])
            start_epoch, history = int(ck["epoch"]) + 1, list(ck["history"])
            best_dice, best_epoch, wait = float(ck["best_dice"]), int(ck["best_epoch"]), int(ck["wait"])
            best_state = ck["best_state"]
            _set_rng_state(ck["rng"], loader_gen)
            resumed_from = int(ck["epoch"])
            log.info("fold %d: resuming after epoch %d from %s", fold, resumed_from, ckpt_path)
        else:
            log.warning("fold %d: ignoring checkpoint %s made with another config/code/split", fold, ckpt_path)

    stop_signal: list[int] = []

    def _on_signal(signum: int, frame: Any) -> None:
        stop_signal.append(signum)

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        bar = tqdm(range(start_epoch, epochs), desc=f"fold {fold}", unit="epoch", initial=start_epoch, total=epochs,
                   mininterval=1)
        for epoch in bar:
            if best_epoch >= 0 and wait >= int(tc["patience"]) and epoch >= int(tc["min_epochs"]):
                log.info("fold %d: early stop at epoch %d (best %.4f at epoch %d)", fold, epoch, best_dice, best_epoch)
                break
            t0 = time.time()
            model.train()
            losses = []
            if sampler is not None:
                sampler.epoch = epoch
            for batch in loader:
                if stop_signal:
                    raise Preempted(stop_signal[0])
                x, y = (batch["image"], batch["label"]) if patch_mode else (batch["image"][tio.DATA], batch["label"][tio.DATA])
                x = x.float().to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if tc["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                opt.zero_grad(set_to_none=True)
                with autocast():
                    logits = step_model(x)
                loss = loss_fn(logits.float(), target(y, n_labels))
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                losses.append(float(loss.detach()))
            model.eval()
            vl, vd = [], []
            with torch.no_grad():
                for case in val_cases:
                    x = case["image"][tio.DATA][None].float().to(device)
                    y = case["label"][tio.DATA][None].to(device)
                    with autocast():
                        both = sliding_window(logits_and_probabilities(model, n_labels), x, size, PADDING,
                                              overlap=0.25, mode="gaussian").float()
                    logits, probs = both.split(both.shape[1] // 2, dim=1)
                    vl.append(float(loss_fn(logits, target(y, n_labels))))
                    pred = discretise(probs, n_labels)
                    vd.append(dice_per_label(pred.cpu(), y.cpu(), n_labels))
            per_label = np.mean(np.array(vd), axis=0)
            mean_dice = float(per_label.mean())
            lr = opt.param_groups[0]["lr"]
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(mean_dice)
            elif sched is not None:
                sched.step()
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": float(np.mean(vl)),
                   "val_dice": mean_dice, "lr": lr, "seconds": time.time() - t0}
            row.update({f"val_dice_{n}": float(d) for n, d in zip(labels, per_label)})
            history.append(row)
            if mean_dice > best_dice:
                best_dice, best_epoch, wait = mean_dice, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                wait += 1
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{mean_dice:.3f}", best=f"{best_dice:.3f}")
            log.info("fold %d epoch %d: loss %.4f val_loss %.4f val_dice %.4f (best %.4f @ %d) %.1fs", fold, epoch,
                     row["train_loss"], row["val_loss"], mean_dice, best_dice, best_epoch, row["seconds"])
            ck = {"fingerprint": fp, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                  "scheduler": sched.state_dict() if sched is not None else None,
                  "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
                  "best_dice": best_dice, "best_epoch": best_epoch, "wait": wait, "best_state": best_state,
                  "rng": _rng_state(loader_gen)}
            save_torch(ck, ckpt_path)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    assert best_state is not None
    model.load_state_dict(best_state)
    hist = pd.DataFrame(history)
    wall = time.time() - t_start
    meta = {
        "cohortseg": __version__, "fold": fold, "labels": labels, "size": size, "volume_size": volume_size, "train": tc,
        "preprocess": cfg["preprocess"], "seed": seed, "best_epoch": best_epoch, "best_val_dice": best_dice,
        "fingerprint": fp, "input_padding": PADDING,
    }
    save_model(model_out, model, meta)
    write_tsv(history_out, hist)
    plot_curves(hist, labels, curves_out, fold)
    info = {
        **meta,
        "epochs_run": len(hist), "resumed_from_epoch": resumed_from,
        "train_subjects": fold_split["train"], "val_subjects": fold_split["val"],
        "train_seconds_total": float(hist["seconds"].sum()), "wall_seconds_this_run": wall,
        "device": str(device), "threads": threads, "deterministic": cfg["deterministic"],
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "float32",
        "loader": {"mode": "patch" if patch_mode else "volume", "workers": int(tc["workers"]) if patch_mode else 0},
        "versions": versions(), "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine()},
        "config": cfg,
    }
    write_json(info_out, info)
    ckpt_path.unlink(missing_ok=True)
    log.info("fold %d: best validation Dice %.4f at epoch %d; %d epochs in %.1fs", fold, best_dice, best_epoch, len(hist), wall)
    return info


def versions() -> dict[str, str]:
    """Package versions (as in the provenance manifest) plus the CUDA and cuDNN torch was built with."""
    from .provenance import versions as package_versions

    out = package_versions()
    out["cuda"] = str(torch.version.cuda)
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return out
