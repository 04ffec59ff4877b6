"""Glue for the thin ``scripts/<stage>.py`` wrappers that Snakemake runs."""

from __future__ import annotations

import os
import sys
from typing import Any

from .config import check_semantics
from .util import set_threads, setup_logging


def setup(snakemake: Any) -> dict[str, Any]:
    """Send everything the job prints (tqdm, C libraries) to its log; return the validated config."""
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
    return cfg
