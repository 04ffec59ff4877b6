"""Train/inference parity: what the network sees at inference is what it saw in training.

A tiny model is trained (the real training code) on synthetic subjects whose source images are smaller
than, equal to and larger than the network's window once resampled; then, for training subjects of each
size, the inference path's source-space prediction (``cohortseg infer``) must equal the model's
prediction on the subject's preprocessed volume (exactly what training fed it) mapped back to the
source space. Parameterised over both normalisations: with z-score normalisation an inference that pads
its windows differently from training (0 instead of the normalised minimum) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

WINDOW = [32, 32, 32]
# source grids: (shape, spacing in mm); the window is 32 voxels of 2 mm = 64 mm per axis
SIZES = {
    "smaller": ((24, 20, 14), (1.6, 2.0, 2.5)),  # ~38 x 40 x 35 mm: padded to the window
    "equal": ((32, 32, 32), (2.0, 2.0, 2.0)),  # exactly one window
    "larger": ((50, 44, 30), (1.6, 2.0, 2.5)),  # ~80 x 88 x 75 mm: cropped in training, slid at inference
}
PER_SIZE = 3  # subjects per size class: two train, one validates


def _orientation(spacing: tuple[float, float, float]) -> np.ndarray:
    """An LPS-like affine (axes flipped and permuted relative to RAS), so reorientation is exercised."""
    a = np.zeros((4, 4))
    a[0, 1], a[1, 0], a[2, 2], a[3, 3] = -spacing[1], -spacing[0], spacing[2], 1.0
    a[:3, 3] = [30.0, 20.0, -15.0]
    return a


def _subject(out: Path, shape: tuple[int, ...], spacing: tuple[float, ...], rng: np.random.Generator) -> None:
    """Smooth tissue-like background (no zero voxels, as in MR crops) and a bright ellipsoid, label 1,
    near the centre; intensities in scanner-like units (z-score and percentile give different ranges)."""
    from scipy.ndimage import gaussian_filter

    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij"))
    centre = rng.uniform(-3, 3, 3)
    radii = rng.uniform(9, 12, 3)
    lesion = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    texture = gaussian_filter(rng.normal(0, 1, shape), 1.5) * 30
    image = (300 + texture + 300 * lesion + rng.normal(0, 10, shape)).astype(np.float32)
    affine = _orientation(spacing)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(out / "image.nii.gz"))
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), str(out / "label.nii.gz"))


def _config(normalisation: str) -> dict:
    none = {"rotation": 0, "scaling": 0, "elastic": False, "flip": False, "gamma": 0, "noise": 0, "contrast": 0}
    return {"study": "parity", "labels": ["lesion"], "seed": 5,
            "preprocess": {"spacing": [2.0, 2.0, 2.0], "size": WINDOW, "normalisation": normalisation},
            "train": {"levels": 3, "base_filters": 8, "res_units": 1, "epochs": 60, "min_epochs": 60, "patience": 100,
                      "batch_size": 2, "lr": 0.01, "device": "cpu", "augment": none, "patch": {"size": None}},
            "infer": {"overlap": 0.5, "mode": "gaussian"}}


@pytest.fixture(scope="module", params=["percentile", "zscore"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Subjects of the three sizes, preprocessed, and a fold model trained on two of each size."""
    from cohortseg.config import load
    from cohortseg.preprocess import preprocess_subject
    from cohortseg.settings import PreprocessSettings
    from cohortseg.train import Config, FoldPaths, train_fold

    normalisation = request.param
    root = tmp_path_factory.mktemp(f"parity_{normalisation}")
    raw = _config(normalisation)
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load(root / "config.yaml")
    rng = np.random.default_rng(11)
    subjects: dict[str, list[str]] = {}
    for size, (shape, spacing) in SIZES.items():
        for i in range(PER_SIZE):
            name = f"sub-{size}{i}"
            _subject(root / "nifti" / name, shape, spacing, rng)
            src, dst = root / "nifti" / name, root / "preproc" / name
            info = preprocess_subject(PreprocessSettings.from_dict(cfg["preprocess"]), 1, name, src / "image.nii.gz",
                                      src / "label.nii.gz", dst)
            assert all(n >= w for n, w in zip(info["output_shape"], WINDOW))
            subjects.setdefault(size, []).append(name)
    # the size classes really are smaller than, equal to and larger than the window after resampling
    resampled = {s: json.loads((root / "preproc" / names[0] / "info.json").read_text())["resampled_shape"]
                 for s, names in subjects.items()}
    assert all(n < w for n, w in zip(resampled["smaller"], WINDOW)), resampled
    assert resampled["equal"] == WINDOW, resampled
    assert all(n > w for n, w in zip(resampled["larger"], WINDOW)), resampled
    train = [n for names in subjects.values() for n in names[:2]]
    val = [names[2] for names in subjects.values()]
    splits = {"folds": [{"train": train, "val": val}], "test": []}
    m = root / "model"
    torch.manual_seed(0)
    paths = FoldPaths(str(root / "preproc"), str(m / "model.pt"), str(m / "history.tsv"), str(m / "curves.png"),
                      str(m / "train.json"), str(root / "ckpt.pt"))
    train_fold(Config.from_config(cfg), 0, splits, paths, "test", 2)
    return {"root": root, "cfg": cfg, "subjects": subjects, "normalisation": normalisation}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = int(a.sum() + b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _prediction_on_preprocessed(root: Path, subject: str) -> np.ndarray:
    """The reference: the network on exactly the volume training drew its windows from (the preprocessed
    subject: at least one window per axis, so MONAI's sliding window never pads it), probabilities
    mapped back through world space onto the source grid, then thresholded. Written here independently
    of cohortseg.infer and cohortseg.window."""
    import torchio as tio
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    blob = torch.load(root / "model" / "model.pt", map_location="cpu", weights_only=True)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
               norm="INSTANCE")
    net.load_state_dict(blob["state_dict"])
    net.eval()
    pre = nib.load(str(root / "preproc" / subject / "image.nii"))
    x = torch.from_numpy(np.asarray(pre.dataobj, dtype=np.float32))[None, None]
    assert all(n >= w for n, w in zip(x.shape[2:], WINDOW))
    with torch.no_grad():
        # windows blended as probabilities (cohortseg's convention, as in training's validation)
        prob = sliding_window_inference(x, WINDOW, 1, lambda v: torch.sigmoid(net(v)), overlap=0.5, mode="gaussian")[0]
    source = tio.ScalarImage(root / "nifti" / subject / "image.nii.gz")
    back = tio.Resample(source, image_interpolation="linear")(tio.ScalarImage(tensor=prob, affine=pre.affine))
    return (back.data[0].numpy() >= 0.5).astype(np.uint8)


@pytest.mark.parametrize("size", list(SIZES))
def test_inference_sees_what_training_saw(trained: dict, size: str) -> None:
    from cohortseg.cli import main

    root = trained["root"]
    subject = trained["subjects"][size][0]  # a training subject
    out = root / "infer" / f"{subject}.nii.gz"
    rc = main(["infer", "-c", str(root / "config.yaml"), "--model", str(root / "model" / "model.pt"),
               str(root / "nifti" / subject / "image.nii.gz"), str(out)])
    assert rc == 0
    source = nib.load(str(root / "nifti" / subject / "image.nii.gz"))
    predicted = nib.load(str(out))
    assert predicted.shape == source.shape
    np.testing.assert_allclose(predicted.affine, source.affine, atol=1e-6)
    reference = _prediction_on_preprocessed(root, subject)
    truth = np.asarray(nib.load(str(root / "nifti" / subject / "label.nii.gz")).dataobj)
    learned = _dice(reference, truth)
    parity = _dice(np.asarray(predicted.dataobj), reference)
    print(f"{trained['normalisation']} {size}: Dice(inference, preprocessed path) {parity:.4f}, "
          f"Dice(preprocessed path, reference mask) {learned:.4f}")
    assert learned >= 0.8, f"the tiny model did not learn the lesion (Dice {learned:.3f}): the check would be empty"
    assert parity >= 0.99, f"{size} image: inference differs from what training saw (Dice {parity:.4f})"


@pytest.mark.parametrize("shape", [(5, 8, 3), (8, 9, 6), (7, 12, 2), (1, 1, 1), (9, 10, 7)])
def test_window_padding_is_preprocessings_padding(shape: tuple[int, int, int]) -> None:
    """What the sliding window pads equals what preprocessing's TorchIO CropOrPad pads: same constant,
    same placement (ceil(n/2) voxels before the image), voxel for voxel; cropping gives the image back."""
    import torchio as tio

    from cohortseg.volume import Volume, pad_to_size
    from cohortseg.window import PADDING, pad_to_window

    window = [8, 9, 6]
    x = torch.from_numpy(np.random.default_rng(sum(shape)).normal(0, 1, (1, 1, *shape)).astype(np.float32))
    image = tio.ScalarImage(tensor=x[0], affine=np.eye(4))
    # TorchIO's own centred crop/pad (training's convention before preprocessing stopped cropping)
    torchio_way = tio.CropOrPad([max(n, w) for n, w in zip(shape, window)], padding_mode="minimum")(image).data
    preprocessing = torch.from_numpy(pad_to_size(Volume(x[0, 0].numpy(), np.eye(4)), window).data)[None]
    padded, region = pad_to_window(x, window, PADDING)
    assert torch.equal(padded[0], torchio_way) and torch.equal(padded[0], preprocessing)
    assert torch.equal(padded[region], x)


def test_model_without_padding_record_is_refused(trained: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A model file made before the padding was recorded (same weights, no ``input_padding``) is refused
    with a message to retrain or re-export, by inference, the ensemble and the export; nothing is written."""
    from cohortseg.cli import main
    from cohortseg.model import load_ensemble, load_model
    from cohortseg.window import PaddingUnknown

    root = trained["root"]
    blob = torch.load(root / "model" / "model.pt", map_location="cpu", weights_only=True)
    del blob["meta"]["input_padding"]
    old = tmp_path / "old_model.pt"
    torch.save(blob, old)
    with pytest.raises(PaddingUnknown, match="retrain it, or re-export"):
        load_model(old)
    from cohortseg.provenance import sha256_file

    manifest = {"n_folds": 1, "folds": [{"fold": 0, "path": str(old), "sha256": sha256_file(old)}]}
    with pytest.raises(PaddingUnknown, match=str(old)):
        load_ensemble(manifest, torch.device("cpu"))
    subject = trained["subjects"]["smaller"][0]
    out = tmp_path / "pred.nii.gz"
    rc = main(["infer", "-c", str(root / "config.yaml"), "--model", str(old), str(root / "nifti" / subject / "image.nii.gz"),
               str(out)])
    assert rc == 2 and "records no input padding" in capsys.readouterr().err
    assert not out.exists()


def test_export_without_padding_record_is_refused(trained: dict, tmp_path: Path) -> None:
    """An exported program whose export.json records no input padding (an export made before the fix) is
    refused by ``cohortseg infer --exported``."""
    from cohortseg.exported import load_program
    from cohortseg.infer import predict
    from cohortseg.settings import InferSettings
    from cohortseg.window import PaddingUnknown

    from cohortseg.export import export_network, Probabilities
    from cohortseg.model import load_model

    root = trained["root"]
    model, meta = load_model(root / "model" / "model.pt")
    export_network(Probabilities([model], 1), WINDOW, tmp_path, "fold0")
    (tmp_path / "export.json").write_text(json.dumps({"window": WINDOW, "labels": ["lesion"],
                                                      "preprocess": meta["preprocess"], "models": {"fold0": {}}}))
    predictors, exported_meta = load_program(tmp_path / "fold0.ts")
    subject = trained["subjects"]["smaller"][0]
    with pytest.raises(PaddingUnknown, match="records no input padding"):
        predict([(predictors, exported_meta)], InferSettings.from_dict(trained["cfg"]["infer"]),
                root / "nifti" / subject / "image.nii.gz")
