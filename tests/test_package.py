"""The model package (`cohortseg package`): the selected models' weights, selection, plans, config, card and
checksums in one folder; `cohortseg infer --package` predicts exactly as the study's selection does, and a
package with a changed, missing or extra file is refused; no pseudonym or path leaves with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cohortseg.package_files import PackageError, open_package, verify
from tests.test_export import _fold_models

SUBJECTS = [f"sub-{i:010x}" for i in range(8)]


def _study(tmp_path: Path) -> dict:
    """A finished study's files: one model's fold ensemble, its selection, plans, comparison, cohort, split."""
    cfg, manifest = _fold_models(tmp_path, "unet")
    cfg = {**cfg, "dicom_dir": "/site/pacs-export", "private_dir": "/site/private"}
    selection = {"selected": {"candidate": "unet", "models": ["unet"], "ensemble": False, "mean_dice": 0.81},
                 "postprocessing": {"foreground_lcc": True, "label_lcc": []},
                 "cv_dice_with_postprocessing": {"anterior": 0.8, "posterior": 0.83},
                 "cv_mean_dice_with_postprocessing": 0.815}
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    (tmp_path / "plans.json").write_text(json.dumps({"dataset": {"n_cases": 6}}))
    cols = ["model", "set", "label", "metric", "n", "mean", "sd", "median", "ci_low", "ci_high"]
    rows = [["unet", "cv", "anterior", "dice", "6", "0.8", "0.05", "0.81", "0.76", "0.84"],
            ["study", "test", "anterior", "dice", "2", "0.79", "0.02", "0.79", "0.77", "0.81"],
            ["other", "cv", "anterior", "dice", "6", "0.5", "0.05", "0.5", "0.46", "0.54"]]
    (tmp_path / "comparison.tsv").write_text("\n".join("\t".join(r) for r in [cols, *rows]) + "\n")
    inc = ["subject\tmodality\tmanufacturer\tfield_strength\tplane\tcontrast\tpixel_spacing_row\tslice_spacing\t"
           "slice_thickness\tn_slices\trows\tcols"]
    inc += [f"{s}\tMR\tACME\t{1.5 if i % 2 else 3}\taxial\tTrue\t0.9\t{1 + i / 10}\t1\t{40 + i}\t64\t64"
            for i, s in enumerate(SUBJECTS)]
    (tmp_path / "included.tsv").write_text("\n".join(inc) + "\n")
    splits = {"n_folds": 2, "folds": [{"train": SUBJECTS[:3], "val": SUBJECTS[3:6]},
                                      {"train": SUBJECTS[3:6], "val": SUBJECTS[:3]}],
              "test": SUBJECTS[6:], "unlabelled": []}
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    return {"cfg": cfg, "manifest": manifest}


def _build(tmp_path: Path, study: dict) -> Path:
    from cohortseg.config import load
    from cohortseg.package import Config, package_name, run

    cfg = load(None, {k: v for k, v in study["cfg"].items()})
    out = tmp_path / "model" / package_name(cfg["study"], cfg["package"]["version"])
    return run(Config.from_config(cfg), str(tmp_path / "selection.json"), [str(study["manifest"])],
               str(tmp_path / "plans.json"), str(tmp_path / "comparison.tsv"), str(tmp_path / "included.tsv"),
               str(tmp_path / "splits.json"), str(out))


def _image(path: Path) -> str:
    rng = np.random.default_rng(4)
    affine = np.array([[-1.0, 0, 0, 10], [0, 1.1, 0, -5], [0, 0, 1.3, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(rng.normal(size=(18, 20, 14)).astype(np.float32), affine), str(path))
    return str(path)


def test_package_holds_the_selection_its_card_and_no_identifier(tmp_path):
    folder = _build(tmp_path, _study(tmp_path))
    assert folder.name == "unit-v1.0.0"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["MODEL_CARD.md", "card.json", "checksums.sha256", "config.yaml", "models/unet/ensemble.json",
                     "models/unet/fold0.pt", "models/unet/fold1.pt", "plans.json", "selection.json"]
    verify(folder)
    card = json.loads((folder / "card.json").read_text())
    data = card["training_data"]
    assert (data["subjects_cross_validation"], data["subjects_test"], data["folds"]) == (6, 2, 2)
    assert data["field_strength_t"] == {"1.5": 3, "3": 3} and data["slices"] == [40.0, 45.0]
    assert [r["model"] for r in card["metrics"]["comparison"]] == ["unet", "study"]
    assert card["intended_use"].startswith("Research use only") and card["software"]["torch"]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert "dicom_dir" not in config and "private_dir" not in config and config["labels"] == ["anterior", "posterior"]
    text = b"".join((folder / f).read_bytes() for f in files if not f.endswith(".pt"))
    assert not any(s.encode() in text for s in SUBJECTS) and b"/site/" not in text
    assert "## Training data" in (folder / "MODEL_CARD.md").read_text()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_infer_with_the_package_equals_the_study_selection(tmp_path):
    from cohortseg.config import load
    from cohortseg.infer import Config, run

    study = _study(tmp_path)
    folder = _build(tmp_path, study)
    image = _image(tmp_path / "img.nii.gz")
    config = Config.from_config(load(None, study["cfg"]))
    run(config, "study", [("c", image, str(tmp_path / "a.nii.gz"), str(tmp_path / "a.json"))], None,
        [str(study["manifest"])], selection=tmp_path / "selection.json")
    run(config, "study", [("c", image, str(tmp_path / "b.nii.gz"), str(tmp_path / "b.json"))], None, None,
        package=folder)
    a, b = nib.load(str(tmp_path / "a.nii.gz")), nib.load(str(tmp_path / "b.nii.gz"))
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    assert json.loads((tmp_path / "b.json").read_text())["postprocessing"] == {"foreground_lcc": True, "label_lcc": []}


def test_changed_missing_or_extra_files_are_refused(tmp_path):
    folder = _build(tmp_path, _study(tmp_path))
    weights = folder / "models" / "unet" / "fold0.pt"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(PackageError, match="refused: models/unet/fold0.pt: checksum differs"):
        open_package(folder)
    (tmp_path / "saved.pt").write_bytes(weights.read_bytes())
    weights.unlink()
    (folder / "models" / "unet" / "fold9.pt").write_bytes(b"x")
    with pytest.raises(PackageError, match="fold0.pt: missing; models/unet/fold9.pt: not listed"):
        open_package(folder)
    shutil.rmtree(folder / "models")
    (folder / "checksums.sha256").unlink()
    with pytest.raises(PackageError, match="is not a cohortseg model package"):
        verify(folder)


def test_a_failed_build_leaves_nothing(tmp_path):
    study = _study(tmp_path)
    sel = json.loads((tmp_path / "selection.json").read_text())
    sel["selected"]["models"] = ["unet", "missing"]
    (tmp_path / "selection.json").write_text(json.dumps(sel))
    with pytest.raises(PackageError, match="names model 'missing', whose ensemble manifest was not given"):
        _build(tmp_path, study)
    assert not list((tmp_path / "model").iterdir())
