"""Hashes of the package code a stage runs, for Snakemake params.

Snakemake reruns a rule when its ``script:`` changes but not when an imported package module
does. Each rule therefore carries ``params: code=stage_hash("<stage>")``: the SHA-256 of the
stage's module and of every ``cohortseg`` module it imports, transitively, so an edit inside the
package reruns exactly the stages that use the edited code (``--rerun-triggers params``).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PKG = Path(__file__).resolve().parent


def _imports(module: str) -> set[str]:
    path = PKG / f"{module}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
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
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(m) - seen)
    return tuple(sorted(seen))


def stage_hash(module: str) -> str:
    h = hashlib.sha256()
    for m in closure(module):
        h.update(m.encode())
        h.update((PKG / f"{m}.py").read_bytes())
    return h.hexdigest()[:16]
