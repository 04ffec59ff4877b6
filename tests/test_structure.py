"""The package's structure, checked: stages do not import each other, each declares the config sections it
reads (and the typed settings equal the schema), code hashes ignore comments and docstrings, rules hold no
lambdas, scripts name no paths, and functions stay short."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from cohortseg import codehash
from cohortseg.config import load
from cohortseg.settings import SECTIONS, Settings, StageConfig

REPO = Path(__file__).resolve().parents[1]
# a stage is what has a rule file: rules/<stage>.smk <-> scripts/<stage>.py <-> cohortseg/<stage>.py
STAGES = sorted(p.stem for p in (REPO / "rules").glob("*.smk") if p.stem != "common")


def test_stage_layers_match() -> None:
    assert {"index", "select", "prepare", "split", "train", "ensemble", "export", "infer", "metrics", "report",
            "provenance", "repro"} <= set(STAGES)
    for stage in STAGES:
        assert (REPO / "scripts" / f"{stage}.py").exists() and (REPO / "cohortseg" / f"{stage}.py").exists(), stage


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage: str) -> None:
    """What two stages share lives in a shared module: a stage's code closure holds no other stage, so an
    edit of one stage's module reruns that stage (and what consumes its outputs) only."""
    others = set(codehash.closure(stage)) & set(STAGES) - {stage}
    assert not others, f"cohortseg/{stage}.py imports (transitively) the stage module(s) {sorted(others)}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_the_sections_it_reads(stage: str) -> None:
    """Each stage module declares its config sections once (``class Config``); the Snakefile reads them from
    the source, and the typed config is built from exactly those sections."""
    module = importlib.import_module(f"cohortseg.{stage}")
    config_type = module.Config
    assert issubclass(config_type, StageConfig) and dataclasses.is_dataclass(config_type)
    declared = codehash.config_sections(stage)
    assert declared == config_type.sections()
    cfg = load(REPO / "config" / "demo.yaml")
    only_declared = {k: cfg[k] for k in declared}
    typed = config_type.from_config(only_declared)  # reads nothing else
    if declared:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(typed, declared[0], None)


def _schema_properties(node: dict) -> dict:
    return node.get("properties", {})


def _check_against_schema(tp: typing.Any, node: dict, where: str) -> None:
    if isinstance(tp, type) and issubclass(tp, Settings):
        fields = {f.name for f in dataclasses.fields(tp)}  # type: ignore[arg-type]
        props = _schema_properties(node)
        assert fields == set(props), f"{where}: dataclass {sorted(fields ^ set(props))} differ from the schema"
        hints = typing.get_type_hints(tp)
        for name in fields:
            _check_against_schema(hints[name], props[name], f"{where}.{name}")


def test_settings_equal_the_schema() -> None:
    """Every schema key has a typed field and every field a schema key, at every level."""
    schema = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())
    assert set(SECTIONS) == set(schema["properties"])
    for key, tp in SECTIONS.items():
        _check_against_schema(tp, schema["properties"][key], key)
    cfg = load(REPO / "config" / "demo.yaml")
    for key, tp in SECTIONS.items():
        if isinstance(tp, type) and issubclass(tp, Settings):
            assert tp.from_dict(cfg[key]).to_dict() == cfg[key], key


def test_code_hash_ignores_comments_and_docstrings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "cohortseg"
    shutil.copytree(REPO / "cohortseg", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PKG", pkg)

    def fresh(stage: str) -> str:
        for f in (codehash._tree, codehash.closure, codehash.module_hash, codehash.config_sections):
            f.cache_clear()
        return codehash.stage_hash(stage)

    before = fresh("train")
    src = (pkg / "train.py").read_text()
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "dice_per_label")
    lines = src.splitlines(keepends=True)
    # a comment, a blank line and a reworded docstring
    lines.insert(fn.lineno, "    # a comment added to the function\n\n")
    edited = "".join(lines).replace('"""Dice of integer maps per label; 1.0 when both are empty."""',
                                    '"""Dice per label of two integer maps (1.0 when both are empty)."""')
    assert edited != src
    (pkg / "train.py").write_text(edited)
    assert fresh("train") == before, "a comment or docstring edit must rerun nothing"
    changed = src.replace("out.append(1.0 if denom == 0", "out.append(0.0 if denom == 0")
    assert changed != src
    (pkg / "train.py").write_text(changed)
    assert fresh("train") != before, "a code edit must change the stage's hash"


def test_no_lambda_in_rules_and_no_path_in_scripts() -> None:
    """Rules use named functions of rules/common.smk; scripts get every path from their rule."""
    for smk in (REPO / "rules").glob("*.smk"):
        assert not re.search(r"\blambda\b", smk.read_text()), f"{smk.name} holds a lambda"
    for script in (REPO / "scripts").glob("*.py"):
        strings = [n.value for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]
        paths = [s for s in strings if "/" in s or s.startswith(("results", "private", "logs")) or s.endswith(
            (".nii", ".nii.gz", ".json", ".tsv", ".pt"))]
        assert not paths, f"{script.name} names paths {paths}: its rule must pass them"


def test_no_function_over_60_lines() -> None:
    """Short functions with names that say what they do (the declarative CLI parser excepted)."""
    long = []
    for f in sorted((REPO / "cohortseg").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > 60 and (f.name, node.name) != ("cli.py", "build_parser"):
                    long.append(f"{f.name}:{node.name} ({n} lines)")
    assert not long, long
