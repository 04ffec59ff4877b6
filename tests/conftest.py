"""Shared fixtures. Data under ../shared is read in place; tests that need it skip without it,
except under CI (CI=true/1/yes), where its absence is a failure, as is any other skip that would hide one
(:func:`skip_or_fail`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the shared corpus sits beside the checkout (../shared/data); COHORTSEG_SHARED_DATA points elsewhere
SHARED = Path(os.environ.get("COHORTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def under_ci() -> bool:
    """CI=true, 1 or yes (any case): what GitHub, GitLab, Jenkins and our .ci/run set."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(why: str) -> None:
    """Skip here; under CI a missing prerequisite is a failure, never a silent skip."""
    if under_ci():
        pytest.fail(f"under CI: {why}")
    pytest.skip(why)


def need_shared(sub: str = "") -> Path:
    path = SHARED / sub
    if not path.exists():
        skip_or_fail(f"shared data {path} not present (see shared/README.md)")
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


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory: pytest.TempPathFactory):
    """A real PACS (Orthanc + DICOMweb, tests/orthanc.py) on free loopback ports, stopped afterwards; under CI a
    PACS that cannot start fails the tests, elsewhere they skip with the reason."""
    from tests import orthanc

    why = orthanc.available()
    if why:
        skip_or_fail(why)
    server = orthanc.start(tmp_path_factory.mktemp("orthanc"))
    print(f"Orthanc up in {server.started_s:.2f} s on {server.url}")
    yield server
    server.stop()
