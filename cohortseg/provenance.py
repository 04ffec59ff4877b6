"""Provenance manifest of a run: ``results/provenance.json``.

Records what is needed to say how every output was made and to check it later: package
versions, the git commit of the workflow and whether the tree was dirty, the config and its
hash, checksums of the inputs (per selected series, taken by ``convert`` as it reads the files,
so the export is not read twice; and of each mask), the hardware, and the SHA-256 of every file
under ``results/``. Inputs are named by pseudonymous ids only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import StudyConfig
from .util import package_versions, sha256_file, write_json


@dataclass(frozen=True)
class Config(StudyConfig):
    """Provenance records the whole configuration."""

SKIP_OUTPUTS = {"provenance.json", "report.html"}


def versions() -> dict[str, str]:
    return package_versions()


def git_state(root: str | Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": commit, "dirty": bool(dirty), "changed_files": dirty.splitlines()[:50]}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": None, "note": "not a git checkout"}


def torch_build() -> dict[str, Any]:
    """The CUDA and cuDNN versions the installed torch was built for, read from its version module's
    source without importing torch (a second of start-up for a light job); cuDNN as torch reports it is in
    each fold's train.json."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return {"cuda": None}
    text = (Path(spec.origin).parent / "version.py").read_text()
    m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*(?:'([^']*)'|None)", text, re.M)
    return {"cuda": m.group(1) if m and m.group(1) else None}


def gpus() -> list[str]:
    """The machine's NVIDIA GPUs (nvidia-smi), without importing torch; none where there is no driver."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError):
        pass
    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.platform(), "cpu": cpu,
                            "cpu_count": os.cpu_count(), "memory_mb": mem, **torch_build(), "gpus": gpus()}
    return info


def output_checksums(results: str | Path) -> dict[str, str]:
    root = Path(results)
    out = {}
    for p in sorted(root.rglob("*")):
        parts = p.relative_to(root).parts
        if p.is_file() and p.name not in SKIP_OUTPUTS and "checkpoints" not in parts and parts[0] != "repro" \
                and not p.name.startswith("."):
            out[str(p)] = sha256_file(p)
    return out


def build(config: Config, sidecars: list[str], masks_json: str | Path, results: str | Path, out: str | Path,
          workflow_root: str | Path = ".") -> dict[str, Any]:
    inputs = {}
    for sc in sorted(sidecars):
        meta = json.loads(Path(sc).read_text())
        inputs[meta["subject"]] = {"series": meta["series"], "n_files": meta["n_files"],
                                   "source_sha256": meta.get("source_sha256")}
    masks = json.loads(Path(masks_json).read_text())
    for subject, path in sorted(masks.items()):
        if subject in inputs:
            inputs[subject]["mask_sha256"] = sha256_file(path)
    cfg = config.to_dict()
    cfg_json = json.dumps(cfg, sort_keys=True, default=str)
    manifest = {
        "cohortseg": __import__("cohortseg").__version__,
        "versions": versions(),
        "git": git_state(workflow_root),
        "config": cfg,
        "config_sha256": hashlib.sha256(cfg_json.encode()).hexdigest(),
        "hardware": hardware(),
        "inputs": inputs,
        "outputs": output_checksums(results),
    }
    write_json(out, manifest)
    return manifest
