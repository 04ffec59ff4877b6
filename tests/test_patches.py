"""Patch-based training data (cohortseg.patches) and patch-mode training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cohortseg import config as config_mod
from cohortseg.patches import EpochSampler, PatchDataset, open_volume, patch_affine, patch_loader
from cohortseg.settings import InferSettings, TrainSettings
from cohortseg.train import Config, FoldPaths, augmentation, train_fold

AFFINE = np.array([[0.0, 0.0, -1.5, 40.0], [-1.2, 0.0, 0.0, 12.0], [0.0, 1.1, 0.0, -7.0], [0, 0, 0, 1]])


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> tuple[Path, list[str]]:
    """Six 32^3 preprocessed-like subjects: noise image, a small two-label 'lesion' off-centre."""
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(3)
    names = []
    for i in range(6):
        name = f"sub{i:02d}"
        lab = np.zeros((32, 32, 32), np.uint8)
        c = 6 + 3 * i
        lab[c:c + 4, 5:9, 20:24] = 1
        lab[c:c + 4, 9:11, 20:24] = 2
        img = rng.normal(0, 1, (32, 32, 32)).astype(np.float32) + 2.0 * (lab > 0)
        _write(root / name / "image.nii", img)
        _write(root / name / "label.nii", lab)
        names.append(name)
    return root, names


def _dataset(root: Path, names: list[str], **kw) -> PatchDataset:
    cases = [(n, root / n / "image.nii", root / n / "label.nii") for n in names]
    return PatchDataset(cases, [16, 16, 16], 2, seed=11, **kw)


def test_volumes_are_memory_mapped(volumes):
    root, names = volumes
    arr, affine = open_volume(root / names[0] / "image.nii")
    assert isinstance(arr, np.memmap) and np.allclose(affine, AFFINE)


def test_patch_is_the_volume_region_at_its_affine(volumes):
    root, names = volumes
    ds = _dataset(root, names, foreground_fraction=0.5)
    img = nib.load(str(root / names[0] / "image.nii")).get_fdata(dtype=np.float32)
    lab = np.asarray(nib.load(str(root / names[0] / "label.nii")).dataobj)
    for k in range(0, ds.per_epoch * 4, len(names)):  # every sample of subject 0 over 4 epochs
        s = ds[k]
        a, b, c = s["start"].tolist()
        assert s["subject"] == names[0]
        assert np.array_equal(s["image"][0].numpy(), img[a:a + 16, b:b + 16, c:c + 16])
        assert np.array_equal(s["label"][0].numpy(), lab[a:a + 16, b:b + 16, c:c + 16])
    start = np.array([3, 5, 7])
    pa = patch_affine(AFFINE, start)
    assert np.allclose(pa @ np.array([0, 0, 0, 1.0]), AFFINE @ np.array([*start, 1.0]))
    assert np.allclose(pa[:3, :3], AFFINE[:3, :3])


def test_foreground_fraction_is_honoured(volumes):
    root, names = volumes
    ds = _dataset(root, names, foreground_fraction=1.0)
    assert all(ds[k]["foreground"] and int(ds[k]["label"].max()) > 0 for k in range(40))
    ds0 = _dataset(root, names, foreground_fraction=0.0)
    assert not any(ds0[k]["foreground"] for k in range(40))
    ds3 = _dataset(root, names, foreground_fraction=0.33, samples_per_volume=50)
    share = np.mean([ds3[k]["foreground"] for k in range(ds3.per_epoch)])
    assert 0.25 < share < 0.42, share


def test_batches_do_not_depend_on_workers(volumes):
    """Per-sample seeds: the same batches (augmented) with 0 and 2 worker processes, and epochs differ."""
    root, names = volumes
    cfg = config_mod.load(None)

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        ds = _dataset(root, names, samples_per_volume=2, transform=augmentation(TrainSettings.from_dict(cfg["train"])))
        sampler = EpochSampler(ds.per_epoch, 11)
        loader = patch_loader(ds, sampler, batch_size=4, workers=workers, prefetch=2, pin_memory=False)
        out = []
        for e in range(2):
            sampler.epoch = e
            out.append([torch.cat([b["image"].flatten(), b["label"].float().flatten()]) for b in loader])
        return out

    a, b = epochs(0), epochs(2)
    assert len(a[0]) == 3  # 12 samples, batches of 4
    for ea, eb in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(ea, eb))
    assert not torch.equal(a[0][0], a[1][0])


def test_train_job_counts_loader_workers():
    # whole-volume mode: no loader workers; auto: the plan may choose a patch, so they are counted
    assert config_mod.loader_workers(config_mod.load(None, {"train": {"workers": 3, "patch": {"size": None}}})) == 0
    assert config_mod.loader_workers(config_mod.load(None, {"train": {"workers": 3}})) == 3
    cfg = config_mod.load(None, {"train": {"workers": 3, "patch": {"size": [32, 32, 32]}}})
    assert config_mod.loader_workers(cfg) == 3


def test_patch_larger_than_volume_is_a_config_error():
    with pytest.raises(config_mod.ConfigError, match="exceeds the preprocessed volume"):
        config_mod.load(None, {"preprocess": {"size": [32, 32, 32]}, "train": {"patch": {"size": [48, 32, 32]}}})
    with pytest.raises(config_mod.ConfigError, match="train.patch.size divisible by 8"):
        config_mod.load(None, {"preprocess": {"size": [64, 64, 64]}, "train": {"levels": 4, "patch": {"size": [36, 32, 32]}}})


def test_patch_training_is_deterministic_and_window_is_the_patch(volumes, tmp_path):
    root, names = volumes
    cfg = config_mod.load(None, {
        "preprocess": {"size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0], "normalisation": "zscore"}, "labels": ["a", "b"],
        "train": {"levels": 3, "base_filters": 8, "res_units": 1, "epochs": 2, "batch_size": 4, "device": "cpu",
                  "patch": {"size": [16, 16, 16], "samples_per_volume": 2}, "workers": 1}})
    splits = {"folds": [{"train": names[:4], "val": names[4:]}]}

    def run(tag: str, workers: int) -> tuple[dict, dict]:
        cfg["train"]["workers"] = workers
        d = tmp_path / tag
        paths = FoldPaths(str(root), str(d / "model.pt"), str(d / "history.tsv"), str(d / "curves.png"),
                          str(d / "train.json"), str(d / "ckpt.pt"))
        info = train_fold(Config.from_config(cfg), 0, splits, paths)
        return info, torch.load(d / "model.pt", weights_only=True)

    info_a, a = run("a", 1)
    _, b = run("b", 0)
    assert info_a["size"] == [16, 16, 16] and info_a["volume_size"] == [32, 32, 32]
    assert info_a["loader"] == {"mode": "patch", "workers": 1} and info_a["precision"] == "float32"
    assert json.loads((tmp_path / "a" / "train.json").read_text())["epochs_run"] == 2
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    # the window of inference is the patch: a whole 32^3 volume is predicted back in its own space
    from cohortseg.infer import network_predictor, predict
    from cohortseg.model import load_model

    model, meta = load_model(tmp_path / "a" / "model.pt")
    out, _, _ = predict([([network_predictor(model, 2)], meta)], InferSettings.from_dict(cfg["infer"]),
                        root / names[5] / "image.nii")
    assert out.shape == (32, 32, 32) and np.allclose(out.affine, AFFINE)


def test_compiled_channels_last_patch_training_runs(volumes, tmp_path):
    """torch.compile (inductor, needs a C++ compiler) and channels-last in the training step; the model
    file holds the plain network's weights (no compile wrapper prefixes), loadable for inference."""
    root, names = volumes
    cfg = config_mod.load(None, {
        "preprocess": {"size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0], "normalisation": "zscore"}, "labels": ["a", "b"],
        "train": {"levels": 3, "base_filters": 8, "res_units": 1, "epochs": 1, "batch_size": 4, "device": "cpu",
                  "patch": {"size": [16, 16, 16]}, "compile": True, "channels_last": True}})
    d = tmp_path / "c"
    paths = FoldPaths(str(root), str(d / "model.pt"), str(d / "h.tsv"), str(d / "c.png"), str(d / "train.json"),
                      str(d / "ck.pt"))
    train_fold(Config.from_config(cfg), 0, {"folds": [{"train": names[:4], "val": names[4:]}]}, paths)
    from cohortseg.model import load_model

    model, meta = load_model(d / "model.pt")
    assert not any("_orig_mod" in k for k in model.state_dict())
    assert meta["train"]["compile"] is True


def test_max_minutes_fits_the_epochs_to_the_budget(volumes, tmp_path):
    """train.max_minutes: after the first epoch the run is cut to what fits (here 1 of 5 epochs) and
    train.json records the fitted count."""
    root, names = volumes
    cfg = config_mod.load(None, {
        "preprocess": {"size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0], "normalisation": "zscore"}, "labels": ["a", "b"],
        "train": {"levels": 3, "base_filters": 4, "res_units": 1, "epochs": 5, "min_epochs": 5, "batch_size": 2,
                  "device": "cpu", "patch": {"size": None}, "max_minutes": 1e-6}})
    d = tmp_path / "m"
    paths = FoldPaths(str(root), str(d / "model.pt"), str(d / "h.tsv"), str(d / "c.png"), str(d / "train.json"),
                      str(d / "ck.pt"))
    info = train_fold(Config.from_config(cfg), 0, {"folds": [{"train": names[:4], "val": names[4:]}]}, paths)
    assert info["epochs_run"] == 1 and info["epochs_planned"] == 1
