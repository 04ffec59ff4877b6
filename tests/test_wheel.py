"""The package works installed from a wheel, outside the repository: the schema ships inside it (one
source file, config/config.schema.yaml, linked from the package), so `cohortseg index --config ...`
validates a config in a fresh environment that has no checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installed_outside_the_repository_validates_and_indexes(tmp_path: Path) -> None:
    # the wheel, built from the checkout (setuptools of the project's environment, no download)
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "results", "logs", "private", ".snakemake", "data", "__pycache__", "*.egg-info", "build",
        "repro"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(src)])
    wheel = next((tmp_path / "dist").glob("cohortseg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        schema = z.read("cohortseg/config.schema.yaml")
    assert schema == (REPO / "config" / "config.schema.yaml").read_bytes(), "the wheel must carry the schema itself"

    # a fresh environment outside the repository: the wheel, and the project's dependencies by path
    # (a .pth line adds their folder without its .pth files, so the checkout's editable install is not seen)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uv = Path(sys.executable).parent / "uv"
    installer = [str(uv), "pip", "install", "--python", str(venv / "bin" / "python")] if uv.exists() else \
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    _run([*installer, "--no-deps", "-q", str(wheel)])
    cohortseg = str(venv / "bin" / "cohortseg")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    py = str(venv / "bin" / "python")
    where = _run([py, "-c", "import cohortseg, cohortseg.config as c; print(cohortseg.__file__); print(c.SCHEMA)"],
                 cwd=work, env=env).stdout.split()
    assert all(str(site) in w for w in where) and str(REPO) not in " ".join(where), where
    _run([cohortseg, "demo-cohort", "cohort", "--subjects", "3", "--size", "tiny"], cwd=work, env=env)
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg.update(dicom_dir="cohort/dicom", masks={"dir": "cohort/masks", "pattern": "{patient_id}_lesion.nii.gz"})
    (work / "study.yaml").write_text(yaml.safe_dump(cfg))
    proc = _run([cohortseg, "index", "--config", "study.yaml"], cwd=work, env=env)
    series = (work / "results" / "cohort" / "series.tsv").read_text().splitlines()
    assert len(series) > 10 and (work / "private" / "id_map.tsv").exists(), proc.stderr[-2000:]
    # and a bad config is refused by the shipped schema
    (work / "bad.yaml").write_text("split: {folds: 1}\n")
    bad = subprocess.run([cohortseg, "index", "--config", "bad.yaml"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid configuration" in bad.stderr, bad.stderr[-2000:]
