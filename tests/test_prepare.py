"""The per-subject steps in shards (`cohortseg prepare`): a shard prepares its subjects, skips the ones
whose inputs, code and config are unchanged, redoes exactly the changed one, and a bad subject is
reported by pseudonym (no input path) without stopping the others of its shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO

CFG = str(REPO / "tests" / "config" / "tiny.yaml")
# 3 subjects per job: the tiny cohort's 6 subjects in 2 shards of a bit each
SET = json.dumps({"prepare": {"subjects_per_job": 3}})


def cli(wd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cohortseg.cli", *args, "-c", CFG, "--set", SET], cwd=wd,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


@pytest.fixture()
def cohort(tmp_path: Path, tiny_cohort: Path) -> tuple[Path, dict[str, list[str]]]:
    """Index and selection of a private copy of the tiny cohort (its files are edited by the tests)."""
    from cohortseg.prepare import shards

    (tmp_path / "data").mkdir()
    shutil.copytree(tiny_cohort, tmp_path / "data" / "tiny")
    # a fixed study key: the same pseudonyms, hence the same shards, every time
    (tmp_path / "private").mkdir(mode=0o700)
    (tmp_path / "private" / "key").write_text("00" * 31 + "01\n")
    os.chmod(tmp_path / "private" / "key", 0o600)
    cli(tmp_path, "index")
    cli(tmp_path, "select")
    inc = pd.read_csv(tmp_path / "results" / "cohort" / "included.tsv", sep="\t")
    return tmp_path, shards(list(inc["subject"]), "sub-", 3)


def _largest(groups: dict[str, list[str]]) -> tuple[str, list[str]]:
    return max(groups.items(), key=lambda kv: len(kv[1]))


def test_shard_skips_unchanged_subjects_and_redoes_a_changed_one(cohort: tuple[Path, dict[str, list[str]]]) -> None:
    wd, groups = cohort
    shard, subjects = _largest(groups)
    assert len(subjects) >= 2, groups
    out = cli(wd, "prepare", "--shard", shard).stdout
    assert f"{len(subjects)} prepared" in out
    manifest = json.loads((wd / "results" / "prepared" / f"{shard}.json").read_text())
    assert sorted(manifest["subjects"]) == subjects
    for files in manifest["subjects"].values():
        assert all((wd / p).exists() for p in files.values())
        assert {"image", "label", "survey"} <= set(files)
    before = {s: (wd / "results" / "nifti" / s / "survey.json").stat().st_mtime_ns for s in subjects}

    assert "0 prepared" in cli(wd, "prepare", "--shard", shard).stdout

    # a new mask export for one subject: only that subject is redone
    masks = json.loads((wd / "private" / "masks.json").read_text())
    changed = subjects[0]
    os.utime(wd / masks[changed], ns=(1, 1))
    assert "1 prepared" in cli(wd, "prepare", "--shard", shard).stdout
    after = {s: (wd / "results" / "nifti" / s / "survey.json").stat().st_mtime_ns for s in subjects}
    assert [s for s in subjects if after[s] != before[s]] == [changed]

    # a named subject is always redone, without touching the shard's manifest
    cli(wd, "prepare", subjects[1])
    assert (wd / "results" / "nifti" / subjects[1] / "survey.json").stat().st_mtime_ns != before[subjects[1]]


def test_bad_subject_is_reported_and_the_others_are_prepared(cohort: tuple[Path, dict[str, list[str]]]) -> None:
    wd, groups = cohort
    shard, subjects = _largest(groups)
    masks = json.loads((wd / "private" / "masks.json").read_text())
    bad = subjects[-1]
    (wd / masks[bad]).write_bytes(b"not a NIfTI file")
    proc = cli(wd, "prepare", "--shard", shard, check=False)
    assert proc.returncode == 2
    assert f"shard {shard}: 1 of {len(subjects)} subjects failed" in proc.stderr and bad in proc.stderr, proc.stderr
    assert "ZQXPHI" not in proc.stdout + proc.stderr and str(wd / "data") not in proc.stderr, proc.stderr
    assert not (wd / "results" / "prepared" / f"{shard}.json").exists()
    for s in subjects[:-1]:
        assert (wd / "results" / "nifti" / s / "survey.json").exists(), s
    assert not (wd / "results" / "nifti" / bad / "survey.json").exists()
    # fixed: the rerun redoes only the bad subject and writes the manifest
    shutil.copy(wd / masks[subjects[0]], wd / masks[bad])
    out = cli(wd, "prepare", "--shard", shard).stdout
    assert f"{len(subjects)} subjects, 1 prepared" in out
    assert (wd / "results" / "prepared" / f"{shard}.json").exists()


def test_shards_follow_the_pseudonym_and_the_cohort_size() -> None:
    """A shard is the first b bits of the pseudonym, b = ceil(log2(n / subjects_per_job)); a subject keeps
    its shard while b stays, and moves to a half of it (its name extended by a bit) when the cohort grows
    past subjects_per_job * 2^b."""
    import hashlib

    from cohortseg.prepare import shard_bits, shard_of, shards

    assert shard_of("sub-3fa0c1d2e9", "sub-", 3) == "001" and shard_of("sub-3fa0c1d2e9", "sub-", 6) == "001111"
    assert shard_of("sub-3fa0c1d2e9", "sub-", 0) == "all"
    assert [shard_bits(n, 64) for n in (1, 64, 65, 128, 129, 208, 10_000)] == [0, 0, 1, 1, 2, 2, 8]
    groups = shards(["sub-3fa0", "sub-3f11", "sub-a000"], "sub-", 2)  # 3 subjects, 2 per job: 1 bit
    assert groups == {"0": ["sub-3f11", "sub-3fa0"], "1": ["sub-a000"]}
    cohort = [f"sub-{hashlib.sha256(str(i).encode()).hexdigest()[:10]}" for i in range(300)]
    before = {s: k for k, ss in shards(cohort[:200], "sub-", 64).items() for s in ss}  # 4 shards
    grown = {s: k for k, ss in shards(cohort[:250], "sub-", 64).items() for s in ss}  # still 4 shards
    assert all(grown[s] == before[s] for s in before), "a subject keeps its job when others are added"
    split = {s: k for k, ss in shards(cohort, "sub-", 64).items() for s in ss}  # 300 > 256: 8 shards
    assert all(split[s].startswith(before[s]) and len(split[s]) == 3 for s in before)
    with pytest.raises(ValueError):
        shard_bits(10, 0)
