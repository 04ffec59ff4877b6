"""Shared fixtures. Data under ../shared is read in place; tests that need it skip without it,
except under CI (CI=true), where its absence is a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the shared corpus sits beside the checkout (../shared/data); COHORTSEG_SHARED_DATA points elsewhere
SHARED = Path(os.environ.get("COHORTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def need_shared(sub: str = "") -> Path:
    path = SHARED / sub
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared data {path} is missing under CI")
        pytest.skip(f"shared data {path} not present (see shared/README.md)")
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic DICOM cohort with a PHI marker in every identifying field."""
    from cohortseg.demo_cohort import generate

    out = tmp_path_factory.mktemp("cohort") / "tiny"
    generate(out, n_subjects=8, seed=3, phi_marker="ZQXPHI", size="tiny")
    return out


def copy_workflow(dst: Path) -> Path:
    """The workflow files and the package, copied so a test can edit code without touching the repo."""
    for name in ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "report", "cohortseg", "tests/config"):
        src = REPO / name
        target = dst / name
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dst
