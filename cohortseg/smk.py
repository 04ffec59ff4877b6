"""Glue for the thin ``scripts/<stage>.py`` wrappers that Snakemake runs."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, TypeVar

from .config import check_semantics
from .util import set_threads, setup_logging

C = TypeVar("C")
P = TypeVar("P")


def setup(snakemake: Any, config_type: type[C]) -> C:
    """Send everything the job prints (tqdm, C libraries) to its log; return the stage's typed config,
    built once from the validated config (``config_type`` is the stage module's ``Config``)."""
    if snakemake.log:
        log_path = str(snakemake.log[0])
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fh = open(log_path, "w", buffering=1)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        sys.stdout = sys.stderr = fh
    setup_logging()
    cfg = dict(snakemake.config)
    check_semantics(cfg)
    set_threads(snakemake.threads)
    return config_type.from_config(cfg)  # type: ignore[attr-defined, no-any-return]


def paths(paths_type: type[P], *named: Any) -> P:
    """A stage's paths dataclass from the rule's named inputs/outputs/params (the first that has a field's
    name wins), so a script passes every path its rule declares and names none itself."""
    values = {}
    for f in dataclasses.fields(paths_type):  # type: ignore[arg-type]
        for source in named:
            if hasattr(source, f.name):
                values[f.name] = str(getattr(source, f.name))
                break
        else:
            raise KeyError(f"the rule declares no input, output or param {f.name!r} for {paths_type.__name__}")
    return paths_type(**values)
