"""Glue for the thin ``scripts/<stage>.py`` wrappers that Snakemake runs."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from .config import check_semantics, model_config
from .util import set_threads, setup_logging

C = TypeVar("C")
P = TypeVar("P")


def setup(snakemake: Any, config_type: type[C], model: str | None = None) -> C:
    """Send everything the job prints (tqdm, C libraries) to its log; return the stage's typed config,
    built once from the validated config (``config_type`` is the stage module's ``Config``); with ``model``,
    as that model's stages see it (its merged ``train`` section: cohortseg.config.model_config)."""
    if snakemake.log:
        log_path = str(snakemake.log[0])
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fh = open(log_path, "w", buffering=1)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        sys.stdout = sys.stderr = fh
    setup_logging()
    log_job_timing()
    cfg = dict(snakemake.config)
    check_semantics(cfg)
    if model is not None:
        cfg = model_config(cfg, model)
    if "torch" in sys.modules:  # a light job never imports torch just to set its threads
        set_threads(snakemake.threads)
    return config_type.from_config(cfg)  # type: ignore[attr-defined, no-any-return]


def process_age() -> float:
    """Seconds since this process started. On Linux from /proc (the process's start and the system's uptime
    on the same kernel clock: psutil's create_time adds the wall-clock boot time, which was 0.44 s off in a
    container here); elsewhere psutil's."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


def log_job_timing() -> None:
    """Log how long the job took to start and how long it worked. Start-up: the interpreter, Snakemake's
    script preamble and the imports up to here (from the process's creation), plus every import the job
    does later, inside its functions (timed by a thin wrapper of ``__import__``, outermost imports only);
    work: the rest, up to exit. benchmarks/bench_startup.py reads the line beside Snakemake's benchmark
    file (the job's wall time)."""
    import builtins

    now = time.time()
    before = process_age()
    state: dict[str, Any] = {"depth": 0, "imports": 0.0, "slow": []}
    original = builtins.__import__

    def timed_import(*args: Any, **kwargs: Any) -> Any:
        if state["depth"]:
            return original(*args, **kwargs)
        state["depth"] += 1
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - t0
            state["imports"] += spent
            state["depth"] -= 1
            if spent > 0.05:
                state["slow"].append(f"{args[0] if args else kwargs.get('name')} {spent:.2f}s")

    builtins.__import__ = timed_import

    def report() -> None:
        builtins.__import__ = original
        total = time.time() - now
        logging.getLogger("cohortseg").info("job timing: startup_s=%.3f work_s=%.3f (imports at start %.3f s, later "
                                            "%.3f s: %s)", before + state["imports"], total - state["imports"], before,
                                            state["imports"], ", ".join(state["slow"]) or "none over 0.05 s")

    atexit.register(report)

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
