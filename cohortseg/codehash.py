"""Hashes of the package code a stage runs, and the config sections it reads, for Snakemake params.

Snakemake reruns a rule when its ``script:`` changes but not when an imported package module does.
Each rule therefore carries ``params: code=...`` with :func:`stage_hash`: a hash of the stage's module
and of every ``cohortseg`` module it imports, transitively, so an edit inside the package reruns
exactly the stages that use the edited code (``--rerun-triggers params``).

What is hashed is the *parsed* code: the abstract syntax tree without docstrings and without line
numbers, so a comment, a docstring or a blank line changes nothing and reruns nothing (on a GPU cluster
that is hours of training not redone for a typo), while any change to what the code does reruns the
stages that import it. The tree's printed form belongs to the Python version, which the environment
locks pin.

The sections a stage reads are the field names of the ``Config`` class its module declares
(:class:`cohortseg.settings.StageConfig`); :func:`config_sections` reads them from the source, so the
Snakefile hashes a stage's config without importing the stage (and torch) while it plans.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

PKG = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    path = PKG / f"{module}.py"
    return ast.parse(path.read_text(), filename=str(path))


def _imports(module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1 and node.module is None:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("cohortseg."):
                found.add(node.module.split(".")[1])
            elif node.module == "cohortseg":
                found.update(a.name for a in node.names if (PKG / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cohortseg."):
                    found.add(a.name.split(".")[1])
    return {m for m in found if (PKG / f"{m}.py").exists()}


@lru_cache(maxsize=None)
def closure(module: str) -> tuple[str, ...]:
    """The module and every package module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(m) - seen)
    return tuple(sorted(seen))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def module_hash(module: str) -> str:
    """SHA-256 of a module's code: its syntax tree without docstrings, comments or positions."""
    path = PKG / f"{module}.py"
    tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def stage_hash(module: str) -> str:
    h = hashlib.sha256()
    for m in closure(module):
        h.update(m.encode() + b"\0" + module_hash(m).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def config_sections(module: str) -> tuple[str, ...]:
    """The config sections a stage reads: the annotated fields of ``class Config`` in its module (all
    sections for a ``Config(StudyConfig)``, a stage that records or replays the whole config)."""
    for node in _tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            if any(isinstance(b, ast.Name) and b.id == "StudyConfig" for b in node.bases):
                from .settings import SECTIONS

                return tuple(SECTIONS)
            return tuple(s.target.id for s in node.body
                         if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
    raise LookupError(f"cohortseg/{module}.py declares no `class Config(StageConfig)`")


def section_hash(cfg: Mapping[str, Any], *keys: str) -> str:
    """A short stable hash of the named sections of a validated config."""
    sub = {k: cfg.get(k) for k in keys}
    return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(stage: str, cfg: Mapping[str, Any], sections: tuple[str, ...] | None = None) -> str:
    """A rule's ``params: code``: the stage's code hash and the hash of the config sections it declares
    (or of ``sections``: prepare's subject stamps hash only those that shape a subject's files). The same
    value for ``snakemake`` and for ``cohortseg prepare``."""
    return f"{stage_hash(stage)}-{section_hash(cfg, *(sections or config_sections(stage)))}"
