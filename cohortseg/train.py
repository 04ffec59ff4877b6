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

The training loop is a sequence of named steps, in the spirit of nnU-Net's trainer
(:class:`FoldTrainer`): ``set_up`` (threads, seed, device, network, precision, optimiser, schedule),
``build_loaders``, ``restore`` (checkpoint), then per epoch ``train_epoch``, ``validate``, ``end_epoch``
(schedule, best epoch, log) and ``save_checkpoint``, and ``finish`` (the fold's outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import random
import signal
import time
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass, field
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
from .settings import AUTO, PreprocessSettings, StageConfig, TrainSettings, planned_preprocess, planned_train
from .util import (atomic_path, log, package_versions, resolve_device, save_torch, seed_everything, set_threads,
                   write_json, write_tsv)
from .window import PADDING, sliding_window, torchio_padding_mode


@dataclass(frozen=True)
class Config(StageConfig):
    train: TrainSettings
    preprocess: PreprocessSettings
    labels: tuple[str, ...]
    seed: int
    deterministic: bool

    def with_plans(self, dataset_plan: dict[str, Any], model_plan: dict[str, Any]) -> Config:
        """The config with the plan's values for its `auto` keys (cohortseg.plans: results/plans/)."""
        return dataclasses.replace(self, preprocess=planned_preprocess(dataset_plan),
                                   train=planned_train(self.train, model_plan))

    def check_resolved(self) -> None:
        if not self.preprocess.resolved or AUTO in (self.train.batch_size, self.train.patch.size):
            raise ValueError("the training config still holds `auto` values: train through the workflow (which "
                             "plans them: results/plans/) or set preprocess.spacing/size/normalisation, "
                             "train.batch_size and train.patch.size")


@dataclass(frozen=True)
class FoldPaths:
    """A fold's input (the preprocessed subjects' folder) and what it writes; the checkpoint lives beside,
    not among, the rule's outputs (a retry must find it)."""

    preproc: str
    model: str
    history: str
    curves: str
    info: str
    checkpoint: str

    @classmethod
    def default(cls, preproc: str | Path, models: str | Path, checkpoints: str | Path, fold: int) -> FoldPaths:
        d = Path(models) / f"fold{fold}"
        return cls(str(preproc), str(d / "model.pt"), str(d / "history.tsv"), str(d / "curves.png"),
                   str(d / "train.json"), str(Path(checkpoints) / f"fold{fold}.pt"))


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


def augmentation(tc: TrainSettings) -> tio.Compose:
    a, p = tc.augment, tc.augment_probability
    ts: list[tio.Transform] = []
    if a.rotation or a.scaling:
        # out-of-field voxels filled like every other border the network sees (cohortseg.window)
        ts.append(tio.RandomAffine(scales=a.scaling, degrees=a.rotation, p=p,
                                   default_pad_value=torchio_padding_mode(PADDING)))
    if a.elastic:
        ts.append(tio.RandomElasticDeformation(num_control_points=7, max_displacement=3.0, p=p))
    if a.flip:
        ts.append(tio.RandomFlip(axes=("LR",), flip_probability=0.5))
    if a.gamma:
        ts.append(tio.RandomGamma(log_gamma=a.gamma, p=p))
    if a.contrast:
        ts.append(RandomContrast(a.contrast, p=p))
    if a.noise:
        ts.append(tio.RandomNoise(std=(0, a.noise), p=p))
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


def fingerprint(config: Config, fold: int, split: dict[str, Any], code: str) -> str:
    """What a checkpoint must have been made with to be resumed: config, fold, its split, code."""
    blob = json.dumps({**config.to_dict(), "fold": fold, "split": split["folds"][fold], "code": code}, sort_keys=True)
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


def plot_curves(history: pd.DataFrame, labels: list[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(history["epoch"], history["train_loss"], label="train")
    ax1.plot(history["epoch"], history["val_loss"], label="validation")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("loss"); ax1.legend(); ax1.set_title(f"{title}: loss")
    for name in labels:
        ax2.plot(history["epoch"], history[f"val_dice_{name}"], label=name)
    best = history["val_dice"].idxmax()
    ax2.axvline(history.loc[best, "epoch"], color="grey", ls=":", label="best")
    ax2.set_ylim(0, 1); ax2.set_xlabel("epoch"); ax2.set_ylabel("validation Dice"); ax2.legend()
    ax2.set_title(f"{title}: validation Dice")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)


def train_fold(config: Config, fold: int, splits: dict[str, Any], paths: FoldPaths, code: str = "",
               threads: int = 1, name: str | None = None) -> dict[str, Any]:
    """Train one fold of model ``name`` (default: its family; see :class:`FoldTrainer`); returns what
    ``train.json`` records."""
    return FoldTrainer(config, fold, splits, paths, code, threads, name).run()


@dataclass
class Progress:
    """What a checkpoint carries besides the weights: where training is and its best epoch so far."""

    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    wait: int = 0
    resumed_from: int | None = None


class FoldTrainer:
    """One cross-validation fold, as named steps: :meth:`run` calls them in order."""

    def __init__(self, config: Config, fold: int, splits: dict[str, Any], paths: FoldPaths, code: str = "",
                 threads: int = 1, name: str | None = None) -> None:
        config.check_resolved()
        self.config, self.tc, self.fold, self.paths = config, config.train, fold, paths
        self.name = name or config.train.model
        self.splits, self.split, self.code, self.threads = splits, splits["folds"][fold], code, threads
        self.labels, self.n_labels = list(config.labels), len(config.labels)
        self.seed = config.seed + fold
        self.volume_size = [int(s) for s in config.preprocess.size]
        # the network's window: the patch in patch mode, the preprocessed size otherwise
        self.window = [int(s) for s in self.tc.patch.size] if self.tc.patch_mode else self.volume_size
        self.progress = Progress()
        self.planned_epochs = self.tc.epochs
        self.stop_signal: list[int] = []

    def run(self) -> dict[str, Any]:
        t_start = time.time()
        self.set_up()
        self.build_loaders()
        self.restore()
        with self.stopped_by_signals():
            for epoch in self.epochs():
                if self.should_stop_early(epoch):
                    break
                losses = self.train_epoch(epoch)
                val_loss, per_label = self.validate()
                self.end_epoch(epoch, losses, val_loss, per_label)
                self.save_checkpoint(epoch)
        return self.finish(time.time() - t_start)

    # -- set-up --------------------------------------------------------------------------------------
    def set_up(self) -> None:
        """Threads, seed, device, validation data, network, precision, loss, optimiser, schedule."""
        set_threads(self.compute_threads())
        seed_everything(self.seed, self.config.deterministic)
        self.device = resolve_device(self.tc.device)
        if not self.split["train"] or not self.split["val"]:
            raise ValueError(f"fold {self.fold} has an empty training or validation set: {self.split}")
        self.val_cases = load_cases(self.paths.preproc, self.split["val"])
        self.model = build_model(self.tc, self.n_labels, self.window).to(self.device)
        if self.tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.dtype, self.scaler = _precision(self.tc.precision, self.device)
        self.step_model: Any = torch.compile(self.model) if self.tc.compile else self.model
        self.loss_fn = build_loss(self.tc.loss_alpha, self.n_labels)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        self.sched = _schedule(self.tc, self.opt)

    def compute_threads(self) -> int:
        """train.compute_threads in deterministic mode (the same weights whatever the job's threads), the
        job's threads otherwise."""
        if not self.config.deterministic:
            return self.threads
        if self.tc.compute_threads > self.threads:
            log.warning("fold %d: train.compute_threads %d exceeds the job's %d threads (same weights, slower)",
                        self.fold, self.tc.compute_threads, self.threads)
        return self.tc.compute_threads

    def autocast(self) -> torch.autocast:
        """The training step's and validation's precision (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def build_loaders(self) -> None:
        """Patch loader (label-aware patches, worker processes) or whole-volume loader (in memory)."""
        tc = self.tc
        self.loader_gen = torch.Generator().manual_seed(self.seed)
        self.sampler: EpochSampler | None = None
        pre = Path(self.paths.preproc)
        if tc.patch_mode:
            pdata = PatchDataset([(s, pre / s / "image.nii", pre / s / "label.nii") for s in self.split["train"]],
                                 self.window, self.n_labels, self.seed, tc.patch.samples_per_volume,
                                 tc.patch.foreground_fraction, augmentation(tc))
            self.sampler = EpochSampler(pdata.per_epoch, self.seed)
            self.loader: Any = patch_loader(pdata, self.sampler, tc.batch_size, tc.workers, tc.prefetch,
                                            pin_memory=self.device.type == "cuda")
            return
        cases = load_cases(pre, self.split["train"])
        dataset = tio.SubjectsDataset(cases, transform=tio.Compose([RandomWindow(self.window), augmentation(tc)]))
        self.loader = tio.SubjectsLoader(dataset, batch_size=tc.batch_size, shuffle=True, num_workers=0,
                                         generator=self.loader_gen, drop_last=len(cases) > tc.batch_size)

    def restore(self) -> None:
        """Resume from the fold's checkpoint when it was made with the same config, code and split."""
        self.fingerprint = fingerprint(self.config, self.fold, self.splits, self.code)
        path = Path(self.paths.checkpoint)
        if not path.exists():
            return
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("fingerprint") != self.fingerprint:
            log.warning("fold %d: ignoring checkpoint %s made with another config/code/split", self.fold, path)
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched is not None and ck.get("scheduler") is not None:
            self.sched.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler") is not None:
            self.scaler.load_state_dict(ck["scaler"])
        self.progress = Progress(int(ck["epoch"]) + 1, list(ck["history"]), float(ck["best_dice"]), int(ck["best_epoch"]),
                                 ck["best_state"], int(ck["wait"]), int(ck["epoch"]))
        _set_rng_state(ck["rng"], self.loader_gen)
        log.info("fold %d: resuming after epoch %d from %s", self.fold, ck["epoch"], path)

    @contextlib.contextmanager
    def stopped_by_signals(self) -> Iterator[None]:
        """SIGUSR1/SIGTERM (SLURM before the time limit) stop training at the next batch boundary."""
        def on_signal(signum: int, frame: Any) -> None:
            self.stop_signal.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGUSR1, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- one epoch -----------------------------------------------------------------------------------
    def epochs(self) -> Iterator[int]:
        """The epochs to run; with ``train.max_minutes`` their number is fitted after the first one."""
        from tqdm import tqdm

        self.planned_epochs = self.tc.epochs
        epoch = self.progress.start_epoch
        self.bar = tqdm(total=self.planned_epochs, desc=f"fold {self.fold}", unit="epoch", initial=epoch, mininterval=1)
        while epoch < self.planned_epochs:
            t0 = time.time()
            yield epoch
            self.bar.update(1)
            epoch += 1
            if self.tc.max_minutes is not None and epoch == self.progress.start_epoch + 1:
                self.fit_to_budget(epoch, time.time() - t0)
        self.bar.close()

    def fit_to_budget(self, done: int, seconds_per_epoch: float) -> None:
        """As many epochs as fit ``train.max_minutes`` at the first epoch's pace; the cosine schedule ends
        with them."""
        assert self.tc.max_minutes is not None
        fit = int(self.tc.max_minutes * 60 // max(seconds_per_epoch, 1e-6))
        self.planned_epochs = max(done, min(self.tc.epochs, fit))
        self.bar.total = self.planned_epochs
        if isinstance(self.sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.sched.T_max = self.planned_epochs
        log.info("fold %d: %.1f s an epoch -> %d epochs in train.max_minutes %.1f", self.fold, seconds_per_epoch,
                 self.planned_epochs, self.tc.max_minutes)

    def should_stop_early(self, epoch: int) -> bool:
        pr, tc = self.progress, self.tc
        if pr.best_epoch >= 0 and pr.wait >= tc.patience and epoch >= tc.min_epochs:
            log.info("fold %d: early stop at epoch %d (best %.4f at epoch %d)", self.fold, epoch, pr.best_dice,
                     pr.best_epoch)
            return True
        return False

    def train_epoch(self, epoch: int) -> list[float]:
        """One pass over the training loader; the losses of its batches."""
        self.epoch_start = time.time()
        self.model.train()
        losses = []
        if self.sampler is not None:
            self.sampler.epoch = epoch
        for batch in self.loader:
            if self.stop_signal:
                raise Preempted(self.stop_signal[0])
            losses.append(self.train_step(batch))
        return losses

    def train_step(self, batch: dict[str, Any]) -> float:
        x, y = (batch["image"], batch["label"]) if self.tc.patch_mode else (batch["image"][tio.DATA],
                                                                             batch["label"][tio.DATA])
        x = x.float().to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.step_model(x)
        loss = self.loss_fn(logits.float(), target(y, self.n_labels))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return float(loss.detach())

    def validate(self) -> tuple[float, np.ndarray]:
        """Validation loss and per-label Dice over the fold's validation subjects (whole volumes, windows
        slid and padded as inference does)."""
        self.model.eval()
        vl, vd = [], []
        with torch.no_grad():
            for case in self.val_cases:
                x = case["image"][tio.DATA][None].float().to(self.device)
                y = case["label"][tio.DATA][None].to(self.device)
                with self.autocast():
                    both = sliding_window(logits_and_probabilities(self.model, self.n_labels), x, self.window, PADDING,
                                          overlap=0.25, mode="gaussian").float()
                logits, probs = both.split(both.shape[1] // 2, dim=1)
                vl.append(float(self.loss_fn(logits, target(y, self.n_labels))))
                pred = discretise(probs, self.n_labels)
                vd.append(dice_per_label(pred.cpu(), y.cpu(), self.n_labels))
        return float(np.mean(vl)), np.mean(np.array(vd), axis=0)

    def end_epoch(self, epoch: int, losses: list[float], val_loss: float, per_label: np.ndarray) -> None:
        """Step the schedule, record the epoch, keep the best weights, log."""
        pr = self.progress
        mean_dice = float(per_label.mean())
        lr = self.opt.param_groups[0]["lr"]
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(mean_dice)
        elif self.sched is not None:
            self.sched.step()
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss, "val_dice": mean_dice,
               "lr": lr, "seconds": time.time() - self.epoch_start}
        row.update({f"val_dice_{n}": float(d) for n, d in zip(self.labels, per_label)})
        pr.history.append(row)
        if mean_dice > pr.best_dice:
            pr.best_dice, pr.best_epoch, pr.wait = mean_dice, epoch, 0
            pr.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            pr.wait += 1
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{mean_dice:.3f}", best=f"{pr.best_dice:.3f}")
        log.info("fold %d epoch %d: loss %.4f val_loss %.4f val_dice %.4f (best %.4f @ %d) %.1fs", self.fold, epoch,
                 row["train_loss"], row["val_loss"], mean_dice, pr.best_dice, pr.best_epoch, row["seconds"])

    def save_checkpoint(self, epoch: int) -> None:
        """Everything a retry needs to continue bit for bit, written atomically after every epoch."""
        pr = self.progress
        save_torch({"fingerprint": self.fingerprint, "epoch": epoch, "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict() if self.sched is not None else None,
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None, "history": pr.history,
                    "best_dice": pr.best_dice, "best_epoch": pr.best_epoch, "wait": pr.wait,
                    "best_state": pr.best_state, "rng": _rng_state(self.loader_gen)}, self.paths.checkpoint)

    # -- outputs -------------------------------------------------------------------------------------
    def finish(self, wall: float) -> dict[str, Any]:
        """The best epoch's model, the history and its curves, train.json; the checkpoint removed."""
        pr = self.progress
        assert pr.best_state is not None
        self.model.load_state_dict(pr.best_state)
        hist = pd.DataFrame(pr.history)
        meta = {
            "cohortseg": __version__, "model_name": self.name, "fold": self.fold, "labels": self.labels,
            "size": self.window,
            "volume_size": self.volume_size, "train": self.tc.to_dict(), "preprocess": self.config.preprocess.to_dict(),
            "seed": self.seed, "best_epoch": pr.best_epoch, "best_val_dice": pr.best_dice,
            "fingerprint": self.fingerprint, "input_padding": PADDING,
        }
        save_model(self.paths.model, self.model, meta)
        write_tsv(self.paths.history, hist)
        plot_curves(hist, self.labels, self.paths.curves, f"{self.name} fold {self.fold}")
        info = {**meta, "epochs_run": len(hist), "epochs_planned": self.planned_epochs,
                "resumed_from_epoch": pr.resumed_from,
                "train_subjects": self.split["train"], "val_subjects": self.split["val"],
                "train_seconds_total": float(hist["seconds"].sum()), "wall_seconds_this_run": wall,
                "device": str(self.device), "threads": self.threads, "compute_threads": self.compute_threads(),
                "n_parameters": sum(p.numel() for p in self.model.parameters()),
                "peak_memory_mb": peak_memory_mb(self.device),
                "deterministic": self.config.deterministic,
                "precision": str(self.dtype).replace("torch.", "") if self.dtype is not None else "float32",
                "loader": {"mode": "patch" if self.tc.patch_mode else "volume", "workers": self.tc.loader_workers},
                "versions": versions(), "config": self.config.to_dict(),
                "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine()}}
        write_json(self.paths.info, info)
        Path(self.paths.checkpoint).unlink(missing_ok=True)
        log.info("fold %d: best validation Dice %.4f at epoch %d; %d epochs in %.1fs", self.fold, pr.best_dice,
                 pr.best_epoch, len(hist), wall)
        return info


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the training: the GPU's allocated peak on CUDA, the process's peak resident set on CPU
    (which includes the interpreter and libraries, some 400 MB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _schedule(tc: TrainSettings, opt: torch.optim.Optimizer) -> Any:
    """cosine: annealing to 0 over ``train.epochs``; plateau: halve when validation Dice stalls; none."""
    if tc.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs)
    if tc.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, tc.patience // 3))
    return None


def versions() -> dict[str, str]:
    """Package versions (as in the provenance manifest) plus the CUDA and cuDNN torch was built with."""
    out = package_versions()
    out["cuda"] = str(torch.version.cuda)
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return out
