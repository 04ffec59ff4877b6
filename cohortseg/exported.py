"""Exported window programs (TorchScript ``.ts``, ONNX ``.onnx``) as predictors: a window of a
preprocessed image in, class probabilities out. Used by the export's parity check and by inference
from an export (``cohortseg infer --exported``), which reads the ``export.json`` written beside the
programs for the labels, preprocessing, window and input padding."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def torchscript_predictor(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    program = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: program(x.cpu())


def onnx_predictor(path: str | Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime CPU session as a predictor (``threads`` defaults to torch's intra-op count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.cpu().contiguous().numpy()})[0])


def load_program(path: str | Path) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]:
    """([predictor], meta) of an exported program; meta from the ``export.json`` beside it."""
    path = Path(path)
    info_path = path.parent / "export.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{path}: no export.json beside it (labels, preprocessing, window, input padding)")
    info = json.loads(info_path.read_text())
    if path.suffix == ".ts":
        predictor = torchscript_predictor(path)
    elif path.suffix == ".onnx":
        predictor = onnx_predictor(path)
    else:
        raise ValueError(f"{path}: an exported program is a .ts (TorchScript) or .onnx file")
    stem = path.stem
    entry = info.get("models", {}).get(stem)
    if entry is None:
        raise ValueError(f"{path}: {info_path} lists no program {stem!r}")
    meta = {"labels": info["labels"], "size": info["window"], "preprocess": info["preprocess"],
            "source": str(path), "n_models": int(entry.get("n_models", 1))}
    if "input_padding" in info:
        meta["input_padding"] = info["input_padding"]
    if info.get("postprocessing"):  # the study selected this model alone: its post-processing goes with it
        meta["postprocessing"] = info["postprocessing"]
    return [predictor], meta
