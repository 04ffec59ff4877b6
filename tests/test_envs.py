"""Environments: the lock files for linux-64 and linux-aarch64 (make locks), and the aarch64 lock
installable from wheels alone (Grace-Hopper nodes have no compilers for CUDA/C++ extensions)."""

from __future__ import annotations

import json
import re
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import yaml

from .conftest import REPO, skip_or_fail

LOCKS = {"linux-64": REPO / "envs" / "locks" / "linux-64.txt", "linux-aarch64": REPO / "envs" / "locks" / "linux-aarch64.txt"}
# source-only on PyPI, pure Python (no compiled code): installs on any platform
PURE_PYTHON_SDISTS = {"connection-pool"}
AARCH64_WHEEL = re.compile(r"(manylinux(2014|_2_(1[7-9]|2[0-8]))_aarch64|-none-any)\.whl$")


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version.split(";")[0].strip()
    return pins


def test_locks_pin_every_package_and_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = dict(d.split("==") for d in project["dependencies"])
    for name, path in LOCKS.items():
        pins = _pins(path)
        assert len(pins) > 80, name
        for pkg, version in direct.items():
            assert pins.get(pkg.lower()) == version, f"{name}: {pkg} {pins.get(pkg.lower())} != pyproject {version}"
    # the per-step conda environments pin the same versions
    for env in ("dicom.yaml", "torch.yaml"):
        deps = yaml.safe_load((REPO / "envs" / env).read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict))
        for line in pip:
            if "==" in line:
                pkg, version = line.split("==")
                assert _pins(LOCKS["linux-64"]).get(pkg.lower()) == version, f"envs/{env}: {line}"


def _files(name: str, version: str) -> list[str]:
    from packaging.version import InvalidVersion, Version

    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as r:
        releases = json.load(r)["releases"]
    # PyPI keys releases by their own spelling (13.0.3 for a pinned 13.0.3.0)
    def same(k: str) -> bool:
        try:
            return Version(k) == Version(version)
        except InvalidVersion:  # old releases with non-PEP 440 versions
            return False

    return [u["filename"] for k, files in releases.items() if same(k) for u in files]


def test_aarch64_lock_is_wheels_only():
    try:
        urllib.request.urlopen("https://pypi.org/simple/", timeout=10).close()
    except OSError as exc:
        skip_or_fail(f"PyPI not reachable: {exc}")
    pins = _pins(LOCKS["linux-aarch64"])
    with ThreadPoolExecutor(8) as pool:
        files = dict(zip(pins, pool.map(lambda kv: _files(*kv), pins.items())))
    missing = [f"{n}=={pins[n]}" for n, fs in files.items()
               if not any(AARCH64_WHEEL.search(f) for f in fs) and n not in PURE_PYTHON_SDISTS]
    assert not missing, f"no linux-aarch64 (manylinux <= 2_28) or pure-Python wheel: {missing}"
    for n in PURE_PYTHON_SDISTS & set(pins):
        assert all(f.endswith((".tar.gz", ".zip")) or "none-any" in f for f in files[n])
