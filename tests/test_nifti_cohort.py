"""NIfTI cohorts as input (`source: nifti`): every bad pair is left out with its reason in the cohort
audit while the others go on; case names and source header text never reach results/; a prepared
image keeps its voxels and affine; the MSD hippocampus folders index as 208 usable two-label cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from .conftest import need_shared

MARKER = "ZQXPHI"


def _save(data: np.ndarray, affine: np.ndarray, path: Path, descrip: str = "") -> None:
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = descrip.encode()[:79]
    nib.save(img, str(path))


def make_cohort(root: Path) -> dict[str, str]:
    """Eight cases in MSD layout: three good ones and one of each bad kind; -> case name: expected status."""
    rng = np.random.default_rng(0)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir()
    aff = np.diag([1.0, 1.2, 1.5, 1.0])
    aff[:3, 3] = [-10.0, 5.0, 20.0]
    expected = {}

    def case(name: str, status: str, image: np.ndarray | None = None, label: np.ndarray | None = None,
             label_affine: np.ndarray | None = None, channel: bool = False) -> None:
        image = rng.normal(100, 20, (20, 24, 16)).astype(np.float32) if image is None else image
        if label is None:
            label = np.zeros(image.shape[:3], np.uint8)
            label[6:12, 8:14, 5:10] = 1
            label[12:15, 8:14, 5:10] = 2
        stem = f"{name}_0000" if channel else name
        _save(image, aff, img_dir / f"{stem}.nii.gz", descrip=f"{MARKER}DESC {name}")
        _save(label, aff if label_affine is None else label_affine, lab_dir / f"{name}.nii.gz")
        expected[name] = status

    case(f"{MARKER}case01", "ok")
    case(f"{MARKER}case02", "ok", channel=True)  # nnU-Net's channel suffix
    case(f"{MARKER}case03", "ok")
    nan = rng.normal(100, 20, (20, 24, 16)).astype(np.float32)
    nan[3, 3, 3] = np.nan
    case(f"{MARKER}nan", "nan_image", image=nan)
    shifted = aff.copy()
    shifted[0, 3] += 2.0
    case(f"{MARKER}shifted", "geometry_mismatch", label_affine=shifted)
    case(f"{MARKER}shape", "geometry_mismatch", label=np.ones((20, 24, 15), np.uint8))
    extra = np.zeros((20, 24, 16), np.uint8)
    extra[5:9, 5:9, 5:9] = 3
    case(f"{MARKER}label3", "undeclared_label", label=extra)
    case(f"{MARKER}empty", "empty_label", label=np.zeros((20, 24, 16), np.uint8))
    (img_dir / f"._{MARKER}case01.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (img_dir / f"{MARKER}broken.nii.gz").write_bytes(b"not gzip")
    expected[f"{MARKER}broken"] = "unreadable"
    return expected


def cli(wd: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cohortseg.cli", *args, "-c", str(cfg)], cwd=wd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_bad_pairs_are_left_out_with_their_reason(tmp_path: Path) -> None:
    expected = make_cohort(tmp_path / "data")
    cfg = tmp_path / "nifti.yaml"
    cfg.write_text("source: nifti\nnifti: {images: data/imagesTr, labels: data/labelsTr}\nlabels: [anterior, posterior]\n"
                   "preprocess: {size: [24, 24, 24], spacing: [1.5, 1.5, 1.5], normalisation: zscore}\ntrain: {levels: 3}\n"
                   "prepare: {subjects_per_job: 3}\n")
    logs = cli(tmp_path, cfg, "index").stderr + cli(tmp_path, cfg, "select").stderr
    ids = dict(line.split("\t") for line in (tmp_path / "private" / "id_map.tsv").read_text().splitlines()[1:])
    case_of = {s: c for s, c in ids.items()}
    inc = pd.read_csv(tmp_path / "results" / "cohort" / "included.tsv", sep="\t")
    exc = pd.read_csv(tmp_path / "results" / "cohort" / "excluded.tsv", sep="\t")
    got = {case_of[s]: "ok" for s in inc["subject"]}
    got.update({case_of[s]: r for s, r in zip(exc["subject"], exc["reason"]) if s in case_of})
    assert got == expected, got
    # the stray macOS copy has no case name: counted under "unknown"
    stray = exc[exc["subject"] == "unknown"]
    assert list(stray["reason"]) == ["unreadable"], stray
    assert inc["has_mask"].all() and len(inc) == 3
    summary = (tmp_path / "results" / "cohort" / "summary.txt").read_text()
    assert "with an empty label" in summary and "whose label's shape, spacing or affine differs" in summary
    # prepare every shard of the included cases: same voxels and affine as the source, fresh header
    from cohortseg.prepare import shards as layout

    shards = sorted(layout(list(inc["subject"]), "sub-", 3))
    for sh in shards:
        cli(tmp_path, cfg, "prepare", "--shard", sh)
    for s in inc["subject"]:
        src_path = next((tmp_path / "data" / "imagesTr").glob(f"{case_of[s]}*.nii.gz"))
        src, out = nib.load(str(src_path)), nib.load(str(tmp_path / "results" / "nifti" / s / "image.nii.gz"))
        np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(src.dataobj))
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        lab = nib.load(str(tmp_path / "results" / "nifti" / s / "label.nii.gz"))
        np.testing.assert_array_equal(np.asanyarray(lab.dataobj),
                                      np.asanyarray(nib.load(str(tmp_path / "data" / "labelsTr" / f"{case_of[s]}.nii.gz")).dataobj))
        assert json.loads((tmp_path / "results" / "nifti" / s / "survey.json").read_text())["shape"]
    # no case name (the marker) and no source description anywhere under results/ or in the logs
    for f in (tmp_path / "results").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if f.suffix == ".gz":
                import gzip

                data = gzip.decompress(data)
            assert MARKER.encode() not in data, f
    assert MARKER not in logs


def test_table_input_and_config_errors(tmp_path: Path) -> None:
    from cohortseg.config import ConfigError, load
    from cohortseg.nifti_cohort import find_cases
    from cohortseg.settings import NiftiSettings

    with pytest.raises(ConfigError, match="nifti.images"):
        load(None, {"source": "nifti"})
    make_cohort(tmp_path / "data")
    (tmp_path / "cases.tsv").write_text("case\timage\tlabel\nA\tdata/imagesTr/ZQXPHIcase01.nii.gz\t"
                                        "data/labelsTr/ZQXPHIcase01.nii.gz\nB\tdata/imagesTr/ZQXPHIcase03.nii.gz\t\n")
    cases, stray = find_cases(NiftiSettings(None, None, str(tmp_path / "cases.tsv"), 0.001))
    assert [c["case"] for c in cases] == ["A", "B"] and cases[1]["label"] is None and not stray
    assert Path(cases[0]["image"]).exists() and Path(cases[0]["label"]).exists()
    (tmp_path / "bad.tsv").write_text("name\tpath\nA\tx\n")
    with pytest.raises(ValueError, match="missing column"):
        find_cases(NiftiSettings(None, None, str(tmp_path / "bad.tsv"), 0.001))


def test_msd_hippocampus_indexes_every_case(tmp_path: Path) -> None:
    from cohortseg.config import load
    from cohortseg.index import Config
    from cohortseg.nifti_cohort import build_index, select
    from cohortseg.pseudonym import from_settings

    hip = need_shared("hippocampus")
    cfg = load(Path(__file__).resolve().parents[1] / "config" / "hippocampus.yaml",
               {"nifti": {"images": str(hip / "imagesTr"), "labels": str(hip / "labelsTr")},
                "private_dir": str(tmp_path / "private")})
    config = Config.from_config(cfg)
    df, private = build_index(config.nifti, len(config.labels), from_settings(config.private_dir, config.pseudonym), 2)
    inc, exc = select(df)
    assert len(inc) == 208 and exc.empty and inc["has_mask"].all(), exc
    ref = pd.read_csv(hip / "cases.csv")
    # every case has both labels, with the voxel counts of the data set's own table
    counts = {private["id_map"][s]: v for s, v in zip(inc["subject"], inc["label_voxels"])}
    for r in ref.itertuples():
        assert counts[r.case] == f"1:{r.vox_label1};2:{r.vox_label2}", r.case
    assert sorted(private["id_map"].values()) == sorted(ref["case"])
