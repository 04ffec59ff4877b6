"""Export of the trained models for use outside cohortseg: TorchScript and ONNX of each fold and of the
fold ensemble, with a parity check, and a 3D Slicer package (SlicerMONAIAuto3DSeg layout).

Every export is of the *window network*: the input is one window of ``size`` voxels (B, 1, *size) of
an image already preprocessed as the model's ``meta["preprocess"]`` says, the output its class
probabilities (sigmoid for one label, softmax otherwise; the ensemble's mean over folds). Sliding-window
inference, resampling and the inverse mapping to the source space stay with the caller, as in
``cohortseg infer`` (which runs an export itself with ``--exported``). An image smaller than the window
must be padded as in training: ``export.json`` records the rule (``input_padding``: ``image_minimum``,
the normalised image's minimum, see :mod:`cohortseg.window`).

Parity: the exported TorchScript and ONNX (onnxruntime, CPU) programs and the PyTorch model run the
same sliding-window inference over a test volume; the largest absolute difference of the probabilities
is recorded in ``export.json`` and must not exceed ``tolerance`` (1e-4), else the export fails.

The Slicer package (``<name>-v<version>.zip``) holds ``<name>/model.pt`` in the checkpoint format the
SlicerMONAIAuto3DSeg extension's SegResNet-type inference script loads (``config`` with the network as a
MONAI ``_target_`` spec, ``state_dict``, preprocessing keys) and ``<name>/labels.csv`` with the label
values and names, and ``<name>/README.md`` saying what input the network expects. That script
normalises with MONAI's ``NormalizeIntensity(nonzero=True)``; only a model trained with
``preprocess.normalisation: zscore`` has that normalisation, so the package is refused for
percentile-normalised models. The extension's script differs from training in two places the package
cannot change (its README says so): it pads windows with 0 where training padded with the normalised
image's minimum, and it leaves zero-valued voxels at 0 where training z-scored them too; its output is
therefore exact only for images at least as large as the window that have no zero-valued voxels. Models are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .exported import onnx_predictor, torchscript_predictor
from .model import build_model, load_model, n_outputs, probabilities, recorded_settings
from .settings import ExportSettings, StageConfig, TrainSettings
from .util import atomic_path, log, set_threads, write_json
from .window import KNOWN, model_padding, sliding_window


@dataclass(frozen=True)
class Config(StageConfig):
    export: ExportSettings
    study: str
    seed: int



class Probabilities(nn.Module):
    """The mean class probabilities of one or more fold networks on a window."""

    def __init__(self, models: list[nn.Module], n_labels: int) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.n_labels = n_labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = probabilities(self.models[0](x), self.n_labels)
        for m in self.models[1:]:
            acc = acc + probabilities(m(x), self.n_labels)
        return acc / len(self.models)


def network_spec(train: TrainSettings, n_labels: int, size: list[int]) -> dict[str, Any]:
    """The network as a MONAI config (``_target_`` + arguments), equal to :func:`cohortseg.model.build_model`."""
    net = build_model(train, n_labels, size)
    out = n_outputs(n_labels)
    f, levels = train.base_filters, train.levels
    if train.model == "unet":
        spec = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out,
                "channels": [f * 2**i for i in range(levels)], "strides": [2] * (levels - 1),
                "num_res_units": train.res_units, "norm": "INSTANCE"}
    elif train.model == "segresnet":
        spec = {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out,
                "init_filters": f, "blocks_down": [min(2**i, 4) for i in range(levels)], "blocks_up": [1] * (levels - 1),
                "norm": ["INSTANCE", {"affine": True}]}
    else:
        hidden = train.unetr_hidden_size
        spec = {"_target_": "monai.networks.nets.UNETR", "in_channels": 1, "out_channels": out, "img_size": list(size),
                "feature_size": train.unetr_feature_size, "hidden_size": hidden, "mlp_dim": 4 * hidden,
                "num_heads": train.unetr_heads, "proj_type": "conv", "norm_name": "instance"}
    # the spec must build the very network cohortseg trains (same parameter names and shapes)
    from monai.bundle import ConfigParser

    rebuilt = ConfigParser(spec).get_parsed_content()
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if ours != theirs:
        raise RuntimeError(f"network spec of {train.model} does not rebuild cohortseg's network")
    return spec


def parity(reference: nn.Module, torchscript: Path, onnx_path: Path, volume: torch.Tensor,
           size: list[int], padding: str) -> dict[str, float]:
    """Largest absolute difference of the probabilities over ``volume`` (TorchScript, ONNX vs PyTorch), each
    slid over it exactly as inference slides a model (same windows, blending and input padding)."""

    def slide(fn: Any) -> torch.Tensor:
        return sliding_window(fn, volume, size, padding, overlap=0.5, mode="gaussian")

    ref = slide(reference)
    return {"torchscript_max_abs_diff": float((slide(torchscript_predictor(torchscript)) - ref).abs().max()),
            "onnx_max_abs_diff": float((slide(onnx_predictor(onnx_path)) - ref).abs().max())}


def export_network(module: nn.Module, size: list[int], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.ts`` (TorchScript, traced) and ``<stem>.onnx`` of a window network."""
    module = module.eval()
    example = torch.zeros(1, 1, *size)
    out_dir.mkdir(parents=True, exist_ok=True)
    ts_path, onnx_path = out_dir / f"{stem}.ts", out_dir / f"{stem}.onnx"
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    # saved through a buffer: a file name would become the archive's top folder (the temp name differs per run)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    with atomic_path(ts_path) as tmp:
        tmp.write_bytes(_reproducible_archive(buf.getvalue()))
    with atomic_path(onnx_path) as tmp:
        prog = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                 output_names=["probabilities"], optimize=True, verbose=False)
        assert prog is not None
        prog.save(str(tmp))
        _strip_stack_traces(tmp)
    return ts_path, onnx_path


def _reproducible_archive(archive: bytes) -> bytes:
    """A TorchScript archive made reproducible: without its ``*.debug_pkl`` records (the tracing call
    stacks, with the absolute paths of the package and the environment: the same model exported from two
    checkouts would differ, and an export would reveal local paths; ``torch.jit.load`` does not need
    them) and with ``.data/serialization_id`` (partly random per save) derived from the other records."""
    import hashlib

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        records = [(i.filename, src.read(i)) for i in src.infolist() if not i.filename.endswith(".debug_pkl")]
        digest = hashlib.sha256()
        for name, data in records:
            if not name.endswith(".data/serialization_id"):
                digest.update(name.encode() + b"\0" + data)
        sid = str(int(digest.hexdigest(), 16))[:40].encode()
        for name, data in records:
            data = sid if name.endswith(".data/serialization_id") else data
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node Python stack traces (absolute source paths) from an ONNX file."""
    import onnx

    model = onnx.load(str(path))

    def graphs(g: Any) -> Any:
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.g.node:
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, str(path))


def test_volume(size: list[int], volume: str | Path | None, seed: int) -> torch.Tensor:
    """A preprocessed test image (B=1, C=1) or, without one, a seeded normal volume 1.5x the window."""
    if volume is not None:
        from .util import import_nibabel

        nib = import_nibabel()

        data = np.asanyarray(nib.load(str(volume)).dataobj).astype(np.float32)
        return torch.from_numpy(data)[None, None]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, *[int(s * 1.5) for s in size], generator=g)


def labels_csv(labels: list[str]) -> str:
    """labels.csv as SlicerMONAIAuto3DSeg reads it (generic DICOM 'Tissue' codes: set terminology in Slicer)."""
    seqs = ["SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence",
            "SegmentedPropertyTypeModifierCodeSequence", "AnatomicRegionSequence", "AnatomicRegionModifierSequence"]
    fields = ["CodingSchemeDesignator", "CodeValue", "CodeMeaning"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["LabelValue", "Name"] + [f"{s}.{f}" for s in seqs for f in fields])
    tissue = ["SCT", "85756007", "Tissue"]
    for v, name in enumerate(labels, start=1):
        w.writerow([v, name] + tissue + tissue + [""] * 9)
    return buf.getvalue()


def slicer_package(model_path: str | Path, out_zip: str | Path, name: str, version: str) -> dict[str, Any]:
    """A SlicerMONAIAuto3DSeg model package of one fold: ``<name>/model.pt`` + ``<name>/labels.csv``."""
    blob = torch.load(model_path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    pp = meta["preprocess"]
    if pp["normalisation"] != "zscore":
        raise ValueError(f"{model_path}: a Slicer package needs preprocess.normalisation zscore (MONAI's "
                         f"NormalizeIntensity(nonzero=True) in the extension), this model uses {pp['normalisation']!r}")
    n_labels = len(meta["labels"])
    padding = model_padding(meta, str(model_path))
    config = {
        "network": network_spec(recorded_settings(meta["train"]), n_labels, meta["size"]),
        "input_padding": padding,
        "roi_size": list(meta["size"]), "resample_resolution": [float(s) for s in pp["spacing"]],
        "orientation_ras": True, "crop_foreground": False, "normalize_mode": "meanstd", "intensity_bounds": [0, 1],
        "sigmoid": n_labels == 1, "bundle_root": name, "labels": list(meta["labels"]),
    }
    checkpoint = {"config": config, "state_dict": blob["state_dict"], "epoch": int(meta.get("best_epoch", 0)),
                  "best_metric": float(meta.get("best_val_dice", 0.0))}
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    model_pt = _reproducible_archive(buf.getvalue())
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        # fixed member dates: the same model gives the same zip
        members = ((f"{name}/model.pt", model_pt), (f"{name}/labels.csv", labels_csv(list(meta["labels"]))),
                   (f"{name}/README.md", slicer_readme(name, meta, padding)))
        for member, data in members:
            z.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return {"zip": Path(out_zip).name, "name": name, "version": version, "fold": meta["fold"]}


def slicer_readme(name: str, meta: dict[str, Any], padding: str) -> str:
    """What input the packaged network expects, and where the SlicerMONAIAuto3DSeg script differs."""
    pp = meta["preprocess"]
    return f"""# {name}: a cohortseg model for the SlicerMONAIAuto3DSeg extension

Labels: {", ".join(f"{v} = {n}" for v, n in enumerate(meta["labels"], start=1))}.
Window (roi_size): {list(meta["size"])} voxels at {list(pp["spacing"])} mm, RAS orientation.

## Input the network expects (how it was trained)
1. Reoriented to RAS and resampled to {list(pp["spacing"])} mm (linear).
2. Z-scored with the mean and SD of the non-zero voxels, applied to *every* voxel (zeros included).
3. Where the image is smaller than the window, padded with a constant: {KNOWN[padding]}
   (`input_padding: {padding}` in model.pt's config).

## Where the extension's script differs
- It pads windows with 0 (MONAI's default), not with the normalised image's minimum.
- `NormalizeIntensity(nonzero=True)` leaves zero-valued voxels at 0 instead of z-scoring them.
Its segmentation therefore equals cohortseg's only for an image at least as large as the window in
every axis and without zero-valued voxels. For any other image use `cohortseg infer` with this model
(or its TorchScript/ONNX export and `cohortseg infer --exported`), which applies the rule above.
"""


def export_model(config: Config, manifest_path: str | Path, out: Path, volume: str | Path | None,
                 selection: dict[str, Any]) -> dict[str, Any]:
    """Export every fold of one model's ensemble manifest and the ensemble into ``out``, with the parity of
    each and the Slicer package; ``out/export.json`` records them and the study's selection."""
    tolerance = config.export.tolerance
    torch.manual_seed(config.seed)
    manifest = json.loads(Path(manifest_path).read_text())
    loaded = [load_model(e["path"], "cpu") for e in manifest["folds"]]
    meta = loaded[0][1]
    size, n_labels = list(meta["size"]), len(meta["labels"])
    padding = model_padding(meta, str(manifest["folds"][0]["path"]))
    vol = test_volume(size, volume, config.seed)
    alone = selection["selected"]["models"] == [manifest["model"]]
    info: dict[str, Any] = {"model": manifest["model"], "window": size, "labels": meta["labels"],
                            "preprocess": meta["preprocess"], "input_padding": padding,
                            "test_volume": "preprocessed test image" if volume is not None else "seeded normal volume",
                            "tolerance": tolerance, "models": {},
                            # the study's choice (cohortseg.study): its post-processing belongs to this model's
                            # ensemble only when the study selected this model alone
                            "study_selection": {"models": selection["selected"]["models"],
                                                "postprocessing": selection["postprocessing"]},
                            "postprocessing": selection["postprocessing"] if alone else None}
    units = [(f"fold{e['fold']}", Probabilities([m], n_labels)) for e, (m, _) in zip(manifest["folds"], loaded)]
    units.append(("ensemble", Probabilities([m for m, _ in loaded], n_labels)))
    for stem, module in units:
        t0 = time.time()
        ts_path, onnx_path = export_network(module, size, out, stem)
        diffs = parity(module, ts_path, onnx_path, vol, size, padding)
        # no timings in export.json: the same models give the same bytes (checked by the SLURM test)
        info["models"][stem] = {"torchscript": ts_path.name, "onnx": onnx_path.name, "n_models": len(module.models),
                                **diffs}
        log.info("export %s %s in %.1f s: TorchScript max abs diff %.3g, ONNX %.3g", manifest["model"], stem,
                 time.time() - t0, diffs["torchscript_max_abs_diff"], diffs["onnx_max_abs_diff"])
        worst = max(diffs.values())
        if worst > tolerance:
            raise RuntimeError(f"export {manifest['model']} {stem}: exported program differs from PyTorch by "
                               f"{worst:.3g} > {tolerance}")
    if meta["preprocess"]["normalisation"] == "zscore":
        best = max(manifest["folds"], key=lambda e: e["best_val_dice"])
        name = f"cohortseg-{config.study}-{manifest['model']}"
        info["slicer"] = slicer_package(best["path"], out / f"{name}-v1.0.0.zip", name, "1.0.0")
    else:
        info["slicer"] = {"skipped": f"{meta['preprocess']['normalisation']}-normalised model: the Slicer extension "
                                     "normalises by z-score"}
    write_json(out / "export.json", info)
    return info


def run(config: Config, manifest_paths: list[str], selection_path: str | Path, out_dir: str | Path,
        volume: str | Path | None = None, threads: int = 1) -> dict[str, Any]:
    """Export the models the study selected (results/study/selection.json), each into ``out_dir/<model>/``;
    ``out_dir/export.json`` lists them with the selection."""
    set_threads(threads)
    selection = json.loads(Path(selection_path).read_text())
    by_model = {json.loads(Path(p).read_text())["model"]: p for p in manifest_paths}
    out = Path(out_dir)
    exported = {m: export_model(config, by_model[m], out / m, volume, selection) for m in selection["selected"]["models"]}
    index = {"selection": {"models": selection["selected"]["models"], "postprocessing": selection["postprocessing"],
                           "cv_mean_dice": selection["cv_mean_dice_with_postprocessing"]},
             "models": {m: {"folder": m, "programs": sorted(info["models"])} for m, info in exported.items()}}
    write_json(out / "export.json", index)
    return index
