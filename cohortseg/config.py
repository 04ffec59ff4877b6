"""Loading and validating the workflow configuration (same schema as the Snakefile)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# shipped with the package: a link to config/config.schema.yaml in a checkout, the file itself in a wheel
SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not satisfy the schema or a cross-key constraint."""


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate ``cfg`` against the schema, fill defaults, check cross-key rules; return it."""
    from snakemake.utils import validate as sm_validate

    cfg = copy.deepcopy(cfg)
    try:
        sm_validate(cfg, str(SCHEMA), set_default=True)
    except Exception as exc:  # snakemake wraps jsonschema's error in WorkflowError
        raise ConfigError(f"invalid configuration: {exc}") from exc
    check_semantics(cfg)
    return cfg


def check_semantics(cfg: dict[str, Any]) -> None:
    """Rules the schema cannot express."""
    priv = Path(cfg["private_dir"]).resolve()
    for shared in ("results", "logs"):
        out = Path(shared).resolve()
        if priv == out or out in priv.parents:
            raise ConfigError(f"private_dir {cfg['private_dir']!r} must lie outside {shared}/")
    if cfg["source"] == "nifti" and not (cfg["nifti"]["images"] or cfg["nifti"]["table"]):
        raise ConfigError("source: nifti needs nifti.images (a folder) or nifti.table (a TSV of paths)")
    train = cfg["train"]
    size, key = cfg["preprocess"]["size"], "preprocess.size"
    patch = train["patch"]["size"]
    if patch is not None:
        if any(p > s for p, s in zip(patch, size)):
            raise ConfigError(f"train.patch.size {patch} exceeds the preprocessed volume (preprocess.size {size})")
        size, key = patch, "train.patch.size"
    if train["model"] == "unetr":
        if any(s % 16 for s in size):
            raise ConfigError(f"UNETR needs {key} divisible by 16, got {size}")
        if train["unetr_hidden_size"] % train["unetr_heads"]:
            raise ConfigError("train.unetr_hidden_size must be divisible by train.unetr_heads")
    if train["model"] in ("unet", "segresnet"):
        div = 2 ** (train["levels"] - 1)
        if any(s % div for s in size):
            raise ConfigError(f"a {train['levels']}-level {train['model']} needs {key} divisible by {div}, "
                              f"got {size}")


def loader_workers(cfg: dict[str, Any]) -> int:
    """Loader worker processes a training job runs beside its ``resources.train_threads`` (patch mode only)."""
    train = cfg["train"]
    return int(train["workers"]) if train["patch"]["size"] is not None else 0


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key defined twice in one mapping (YAML would keep the last silently:
    a second model of the same name would replace the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: {key!r} is defined twice "
                                  f"(first on line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file, every key of every mapping defined once."""
    with open(path) as fh:
        return yaml.load(fh, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader subclass


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (or an empty one), merge ``overrides``, validate."""
    cfg: dict[str, Any] = {}
    if path is not None:
        cfg = read_yaml(path)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
