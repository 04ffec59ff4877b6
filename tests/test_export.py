"""Export (`cohortseg export`): TorchScript and ONNX of each fold and of the ensemble agree with PyTorch
within 1e-4 over a sliding-window pass on a test volume; the 3D Slicer package rebuilds the network from
its MONAI spec the way the SlicerMONAIAuto3DSeg extension does and gives the same output."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

import cohortseg
from cohortseg.config import load
from cohortseg.settings import TrainSettings

PACKAGE = str(Path(cohortseg.__file__).resolve().parent).encode()


def _records(archive: bytes) -> bytes:
    """Every record of a zip archive, uncompressed (TorchScript compresses some)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return b"".join(z.read(n) for n in z.namelist())


def _fold_models(tmp_path: Path, model: str, normalisation: str = "zscore") -> tuple[dict, Path]:
    from cohortseg.ensemble import build_ensemble
    from cohortseg.model import build_model, save_model

    cfg = load(None, {"study": "unit", "labels": ["anterior", "posterior"],
                      "train": {"model": model, "base_filters": 4, "levels": 3, "unetr_hidden_size": 48,
                                "unetr_heads": 4, "unetr_feature_size": 8},
                      "preprocess": {"size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0], "normalisation": normalisation}})
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        net = build_model(TrainSettings.from_dict(cfg["train"]), 2, [16, 16, 16])
        p = tmp_path / f"fold{k}" / "model.pt"
        p.parent.mkdir()
        meta = {"fold": k, "labels": cfg["labels"], "size": [16, 16, 16], "train": cfg["train"],
                "preprocess": cfg["preprocess"], "best_epoch": 3, "best_val_dice": 0.5 + k / 10,
                "input_padding": "image_minimum"}
        save_model(p, net, meta)
        (p.parent / "train.json").write_text(json.dumps(meta))
        paths.append(str(p))
    build_ensemble(paths, 2, tmp_path / "ensemble.json", model)
    selection = {"selected": {"models": [model]}, "postprocessing": {"foreground_lcc": True, "label_lcc": []},
                 "cv_mean_dice_with_postprocessing": 0.5}
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    return cfg, tmp_path / "ensemble.json"


@pytest.mark.parametrize("model", ["unet", "segresnet", "unetr"])
def test_exports_match_pytorch_and_slicer_package_loads(tmp_path: Path, model: str) -> None:
    from monai.bundle import ConfigParser

    from cohortseg.export import Config, run
    from cohortseg.model import load_model

    cfg, manifest = _fold_models(tmp_path, model)
    index = run(Config.from_config(cfg), [str(manifest)], tmp_path / "selection.json", tmp_path / "export")
    assert index["models"] == {model: {"folder": model, "programs": ["ensemble", "fold0", "fold1"]}}
    info = json.loads((tmp_path / "export" / model / "export.json").read_text())
    # the model was selected alone: the study's post-processing goes with its programs
    assert info["postprocessing"] == {"foreground_lcc": True, "label_lcc": []}
    assert set(info["models"]) == {"fold0", "fold1", "ensemble"}
    for stem, m in info["models"].items():
        assert m["torchscript_max_abs_diff"] <= 1e-4 and m["onnx_max_abs_diff"] <= 1e-4, (stem, m)
        assert (tmp_path / "export" / model / f"{stem}.onnx").stat().st_size > 1000
        # no local path in an export: the same model exported from another checkout gives the same bytes
        for f in (m["torchscript"], m["onnx"]):
            data = (tmp_path / "export" / model / f).read_bytes()
            data = _records(data) if f.endswith(".ts") else data
            assert PACKAGE not in data and b"site-packages" not in data, f
    print(model, {k: (v["torchscript_max_abs_diff"], v["onnx_max_abs_diff"]) for k, v in info["models"].items()})
    # the Slicer package: the better fold (fold1), loaded as the extension does
    z = zipfile.ZipFile(tmp_path / "export" / model / info["slicer"]["zip"])
    name = f"cohortseg-unit-{model}"
    assert sorted(z.namelist()) == [f"{name}/README.md", f"{name}/labels.csv", f"{name}/model.pt"]
    assert "normalised image's minimum" in z.read(f"{name}/README.md").decode()
    ck = torch.load(io.BytesIO(z.read(f"{name}/model.pt")), map_location="cpu", weights_only=True)
    net = ConfigParser(ck["config"]["network"]).get_parsed_content()
    net.load_state_dict(ck["state_dict"], strict=True)
    ours, _ = load_model(tmp_path / "fold1" / "model.pt")
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours(x))
    assert ck["config"]["roi_size"] == [16, 16, 16] and ck["config"]["normalize_mode"] == "meanstd"
    assert ck["config"]["input_padding"] == "image_minimum"
    rows = list(csv.DictReader(io.StringIO(z.read(f"{name}/labels.csv").decode())))
    assert [(r["LabelValue"], r["Name"]) for r in rows] == [("1", "anterior"), ("2", "posterior")]
    assert info["slicer"]["fold"] == 1


def test_slicer_package_refuses_percentile_models(tmp_path: Path) -> None:
    from cohortseg.export import slicer_package

    _fold_models(tmp_path, "unet", normalisation="percentile")
    with pytest.raises(ValueError, match="zscore"):
        slicer_package(tmp_path / "fold0" / "model.pt", tmp_path / "x.zip", "x", "1.0.0")
    assert not (tmp_path / "x.zip").exists()



MODULE = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))
"""
SAVE_TRACED = """
import io, sys, torch
from mod import Net
torch.manual_seed(0)
net = torch.jit.trace(Net().eval(), torch.zeros(1, 1, 8, 8, 8))
buf = io.BytesIO()
torch.jit.save(net, buf)
sys.stdout.buffer.write(buf.getvalue())
"""


def test_torchscript_archive_is_reproducible(tmp_path: Path) -> None:
    """One network traced from two checkouts (its source at two paths): the archives differ (debug
    records with the source paths, and ``.data/serialization_id``, a checksum over all records) until
    made reproducible; the result loads and computes the same."""
    import subprocess
    import sys

    from cohortseg.export import _reproducible_archive

    saves = []
    for where in ("checkout_a", "checkout_b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "mod.py").write_text(MODULE)
        env = {**os.environ, "PYTHONPATH": str(tmp_path / where)}
        saves.append(subprocess.run([sys.executable, "-c", SAVE_TRACED], env=env, capture_output=True, check=True,
                                    timeout=120).stdout)
    assert saves[0] != saves[1] and str(tmp_path).encode() in _records(saves[0])
    fixed = [_reproducible_archive(b) for b in saves]
    assert fixed[0] == fixed[1] and str(tmp_path).encode() not in _records(fixed[0])
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(torch.jit.load(io.BytesIO(fixed[0]))(x), torch.jit.load(io.BytesIO(saves[0]))(x))
