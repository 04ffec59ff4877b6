"""Loading and validating the workflow configuration (same schema as the Snakefile)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# shipped with the package: a link to config/config.schema.yaml in a checkout, the file itself in a wheel
SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


RESERVED_MODEL_NAMES = {"study"}


class ConfigError(ValueError):
    """The configuration does not satisfy the schema or a cross-key constraint."""


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate ``cfg`` against the schema, fill defaults, check cross-key rules; return it."""
    from snakemake.utils import validate as sm_validate

    cfg = copy.deepcopy(cfg)
    try:
        sm_validate(cfg, str(SCHEMA), set_default=True)
    except Exception as exc:  # snakemake wraps jsonschema's error in WorkflowError
        raise ConfigError(f"invalid configuration{error_location(cfg)}: {exc}") from exc
    check_semantics(cfg)
    return cfg


def error_location(cfg: dict[str, Any]) -> str:
    """' at models.x.family' for the schema error jsonschema ranks first (Snakemake's message only says
    `instance['models']['x']...` at its end)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    err = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(cfg))
    return f" at {'.'.join(str(k) for k in err.absolute_path)}" if err is not None and err.absolute_path else ""


def check_semantics(cfg: dict[str, Any]) -> None:
    """Rules the schema cannot express."""
    priv = Path(cfg["private_dir"]).resolve()
    for shared in ("results", "logs"):
        out = Path(shared).resolve()
        if priv == out or out in priv.parents:
            raise ConfigError(f"private_dir {cfg['private_dir']!r} must lie outside {shared}/")
    if cfg["source"] == "nifti" and not (cfg["nifti"]["images"] or cfg["nifti"]["table"]):
        raise ConfigError("source: nifti needs nifti.images (a folder) or nifti.table (a TSV of paths)")
    for needs, what in ((cfg["source"] == "pacs", "source: pacs"), (cfg["pacs"]["push"], "pacs.push")):
        if needs:
            check_pacs_address(cfg["pacs"], what)
    ct = cfg["preprocess"]["ct"]
    for key in ("mean", "sd"):
        if isinstance(ct[key], str) and ct[key] != "auto":
            raise ConfigError(f"preprocess.ct.{key} must be a number or auto, got {ct[key]!r}")
    reserved = sorted(set(cfg["models"]) & RESERVED_MODEL_NAMES)
    if reserved:
        raise ConfigError(f"models: {reserved} are reserved names (the study's selection is `study`)")
    for name in model_names(cfg):
        check_model(cfg, name)


def check_pacs_address(pacs: dict[str, Any], what: str) -> None:
    """The PACS named for the protocol in use (``what`` needs it)."""
    if pacs["protocol"] == "dimse":
        if not (pacs["dimse"]["host"] and pacs["dimse"]["called_aet"]):
            raise ConfigError(f"{what} with pacs.protocol: dimse needs pacs.dimse.host and pacs.dimse.called_aet")
    elif not pacs["url"]:
        raise ConfigError(f"{what} needs pacs.url (the PACS's DICOMweb root)")


def check_model(cfg: dict[str, Any], name: str) -> None:
    """One model's merged training configuration: known keys, valid values, a window its network can take."""
    where = f"models.{name}" if cfg["models"] else "train"
    train = model_train(cfg, name)
    if cfg["models"]:
        _validate_train(train, where)
    size, key = cfg["preprocess"]["size"], "preprocess.size"
    patch = train["patch"]["size"]
    if isinstance(patch, list):
        if isinstance(size, list) and any(p > s for p, s in zip(patch, size)):
            raise ConfigError(f"{where}: patch.size {patch} exceeds the preprocessed volume (preprocess.size {size})")
        size, key = patch, f"{where}.patch.size"
    if train["model"] == "unetr" and train["unetr_hidden_size"] % train["unetr_heads"]:
        raise ConfigError(f"{where}: unetr_hidden_size must be divisible by unetr_heads")
    if not isinstance(size, list):
        return  # planned: cohortseg.plans makes it divisible
    div = divisor(train)
    if any(s % div for s in size):
        raise ConfigError(f"{where}: a {train['model']} with these settings needs {key} divisible by {div}, got {size}")


def divisor(train: dict[str, Any]) -> int:
    """What every window side of a model must be divisible by: 16 for UNETR (its 16^3 tokens), 2^(levels-1)
    for U-Net and SegResNet (their strided levels)."""
    return 16 if train["model"] == "unetr" else 2 ** (int(train["levels"]) - 1)


def _validate_train(train: dict[str, Any], where: str) -> None:
    """A model's merged train section against the schema's `train` (so an override is checked like the key
    it overrides, and an unknown key names the model)."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["train"]
    try:
        jsonschema.validate(train, schema)
    except jsonschema.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise ConfigError(f"{where}{'.' + path if path else ''}: {exc.message}") from None


def model_names(cfg: dict[str, Any]) -> list[str]:
    """The study's models in config order (one named after ``train.model`` when ``models`` is empty)."""
    return list(cfg["models"]) or [cfg["train"]["model"]]


def model_train(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Model ``name``'s training configuration: ``train`` with the model's own keys on top, its family as
    ``model``."""
    if not cfg["models"]:
        if name != cfg["train"]["model"]:
            raise ConfigError(f"unknown model {name!r}: the study has one model, {cfg['train']['model']!r}")
        return copy.deepcopy(cfg["train"])
    if name not in cfg["models"]:
        raise ConfigError(f"unknown model {name!r}: the study's models are {', '.join(cfg['models'])}")
    entry = cfg["models"][name]
    if "model" in entry:
        raise ConfigError(f"models.{name}: set the network with `family`, not `model`")
    merged = deep_merge(cfg["train"], {k: v for k, v in entry.items() if k != "family"})
    merged["model"] = entry["family"]
    return merged


def model_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The config as model ``name``'s stages see it: ``train`` = its merged section. A model's rerun params
    hash this, so editing one model reruns that model only."""
    return {**cfg, "train": model_train(cfg, name)}


def loader_workers(cfg: dict[str, Any]) -> int:
    """Loader worker processes a training job may run beside its ``resources.train_threads``: the patch
    loader's (a planned window may turn out to be a patch)."""
    return max((int(model_train(cfg, n)["workers"]) for n in model_names(cfg)
                if model_train(cfg, n)["patch"]["size"] is not None), default=0)


def check_unique_keys(paths: list[str | Path]) -> None:
    """Every config file read by Snakemake checked for keys defined twice (Snakemake's loader keeps the
    last silently)."""
    for path in paths:
        if Path(path).exists():
            read_yaml(path)


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
