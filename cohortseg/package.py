"""The model package: what the study selected, as one versioned folder that inference on new data and the
watch mode read, and nothing else.

``results/model/<study>-v<version>/``:

- ``models/<model>/fold<k>.pt`` and ``models/<model>/ensemble.json`` for each model the study selected (its
  fold weights; a model file holds its labels, window, preprocessing and input rule), manifests with paths
  relative to the package;
- ``selection.json`` (the models, ensemble and post-processing chosen on cross-validation), ``plans.json``;
- ``config.yaml``: the sections that trained and select the models (no path, no PACS address: the package
  may leave the site);
- ``card.json`` and ``MODEL_CARD.md``: intended use and limits (config ``package``), the training data
  (counts; modality, manufacturers, field strengths, spacing and size ranges from the cohort table; no
  pseudonym, identifier or free text), cross-validation and test metrics, software versions;
- ``checksums.sha256`` (``sha256sum -c`` format) over every other file: ``package_files.open_package`` refuses a
  package whose files do not match, or that lacks one.

The package is built in a temporary folder beside its destination and renamed into place.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import (DicomSegSettings, InferSettings, PackageSettings, PlansSettings, PreprocessSettings,
                       SplitSettings, StageConfig, TrainSettings)
from .package_files import PackageError, write_checksums
from .util import read_rows, sha256_file, write_json, write_text

PACKAGE_SECTIONS = ("study", "labels", "seed", "deterministic", "preprocess", "plans", "split", "train", "models",
                    "infer", "dicomseg")


@dataclass(frozen=True)
class Config(StageConfig):
    study: str
    labels: tuple[str, ...]
    seed: int
    deterministic: bool
    preprocess: PreprocessSettings
    plans: PlansSettings
    split: SplitSettings
    train: TrainSettings
    models: dict  # type: ignore[type-arg]
    infer: InferSettings
    dicomseg: DicomSegSettings
    package: PackageSettings


def package_name(study: str, version: str) -> str:
    return f"{study}-v{version}"


def copy_models(selection: dict[str, Any], manifest_paths: list[str], dest: Path) -> dict[str, str]:
    """The selected models' fold files and manifests (paths relative to the package); model -> manifest."""
    by_model = {json.loads(Path(p).read_text())["model"]: p for p in manifest_paths}
    out = {}
    for model in selection["selected"]["models"]:
        if model not in by_model:
            raise PackageError(f"the selection names model {model!r}, whose ensemble manifest was not given")
        manifest = json.loads(Path(by_model[model]).read_text())
        folder = dest / "models" / model
        folder.mkdir(parents=True)
        folds = []
        for entry in manifest["folds"]:
            if sha256_file(entry["path"]) != entry["sha256"]:
                raise PackageError(f"model {model!r} fold {entry['fold']}: {entry['path']} changed since its "
                                   "ensemble manifest was written")
            name = f"fold{entry['fold']}.pt"
            shutil.copyfile(entry["path"], folder / name)
            folds.append({**entry, "path": name})
        write_json(folder / "ensemble.json", {**manifest, "folds": folds})
        out[model] = f"models/{model}/ensemble.json"
    return out


def _range(rows: list[dict[str, str]], column: str) -> list[float] | None:
    values = [float(r[column]) for r in rows if r.get(column) not in (None, "", "NA")]
    return [min(values), max(values)] if values else None


def _counts(rows: list[dict[str, str]], column: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        key = r.get(column) or "unknown"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def data_summary(included_tsv: str | Path, splits_json: str | Path) -> dict[str, Any]:
    """What the models were trained and tested on, without a pseudonym: counts and acquisition ranges of the
    cross-validation subjects (the training data) and the count of held-out test subjects."""
    splits = json.loads(Path(splits_json).read_text())
    cv = {s for f in splits["folds"] for s in f["train"] + f["val"]}
    rows = [r for r in read_rows(included_tsv) if r["subject"] in cv]
    return {
        "subjects_cross_validation": len(cv), "subjects_test": len(splits["test"]), "folds": splits["n_folds"],
        "modality": _counts(rows, "modality"), "manufacturer": _counts(rows, "manufacturer"),
        "field_strength_t": _counts(rows, "field_strength"), "plane": _counts(rows, "plane"),
        "contrast": _counts(rows, "contrast"),
        "pixel_spacing_mm": _range(rows, "pixel_spacing_row"), "slice_spacing_mm": _range(rows, "slice_spacing"),
        "slice_thickness_mm": _range(rows, "slice_thickness"), "slices": _range(rows, "n_slices"),
        "rows": _range(rows, "rows"), "columns": _range(rows, "cols"),
    }


def metrics_summary(selection: dict[str, Any], comparison_tsv: str | Path) -> dict[str, Any]:
    """Cross-validation figures of the selection, and the comparison's rows of the selected models and of the
    study's final inference (``study``: the held-out test subjects, scored once)."""
    keep = set(selection["selected"]["models"]) | {"study"}
    rows = [r for r in read_rows(comparison_tsv) if r["model"] in keep]
    return {"cv_mean_dice_selected": selection["selected"]["mean_dice"],
            "cv_dice_with_postprocessing": selection["cv_dice_with_postprocessing"],
            "comparison": rows}


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("cohortseg", "torch", "monai", "torchio", "numpy", "nibabel", "SimpleITK", "highdicom", "pydicom"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def card_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md: the card for a person."""
    d, m, sel = card["training_data"], card["metrics"], card["selection"]
    lines = [f"# {card['name']}", "", f"Version {card['version']}, built by cohortseg {card['software']['cohortseg']}.",
             "", "## Intended use", "", card["intended_use"], "", "## Limits", "", card["limits"], "",
             "## Model", "", f"Labels: {', '.join(card['labels'])}. Selected on cross-validation: "
             f"{' + '.join(sel['models'])} ({'ensemble of models' if sel['ensemble'] else 'one model'}, "
             f"{d['folds']} folds each), post-processing {json.dumps(card['postprocessing'])}.", "",
             "## Training data", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v)} |" for k, v in d.items()]
    lines += ["", "## Metrics", "", f"Cross-validation mean Dice of the selection: {m['cv_mean_dice_selected']:.4f}; "
              f"with its post-processing: {json.dumps(m['cv_dice_with_postprocessing'])}.", "",
              "| model | set | label | metric | n | mean | sd | median | 95% CI |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['set']} | {r['label']} | {r['metric']} | {r['n']} | {r['mean']} | {r['sd']} | "
              f"{r['median']} | [{r['ci_low']}, {r['ci_high']}] |" for r in m["comparison"]]
    lines += ["", "## Software", "", *[f"- {k}: {v}" for k, v in card["software"].items()], ""]
    return "\n".join(lines)


def build(config: Config, selection_path: str | Path, manifest_paths: list[str], plans_path: str | Path,
          comparison_tsv: str | Path, included_tsv: str | Path, splits_json: str | Path, out: str | Path) -> Path:
    """Write the package folder ``out`` (atomically: built beside it, then renamed)."""
    import yaml

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    selection = json.loads(Path(selection_path).read_text())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifests = copy_models(selection, manifest_paths, tmp)
        shutil.copyfile(selection_path, tmp / "selection.json")
        shutil.copyfile(plans_path, tmp / "plans.json")
        cfg = {k: v for k, v in config.to_dict().items() if k in PACKAGE_SECTIONS}
        write_text(tmp / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
        card = {"name": config.study, "version": config.package.version, "labels": list(config.labels),
                "intended_use": config.package.intended_use, "limits": config.package.limits,
                "selection": selection["selected"], "postprocessing": selection["postprocessing"],
                "manifests": manifests, "training_data": data_summary(included_tsv, splits_json),
                "metrics": metrics_summary(selection, comparison_tsv), "software": software_versions()}
        write_json(tmp / "card.json", card)
        write_text(tmp / "MODEL_CARD.md", card_markdown(card))
        write_checksums(tmp)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run(config: Config, selection: str, manifests: list[str], plans: str, comparison: str, included: str,
        splits: str, out: str) -> Path:
    return build(config, selection, manifests, plans, comparison, included, splits, out)
