"""Print a finished study's headline results: ``python -m cohortseg.show results``.

The model comparison (results/study/comparison.tsv, models.tsv: per model, pooled cross-validation and
held-out test subjects) and the selection made on cross-validation (results/study/selection.json), and every
declared model (results/plans/plans.json) the comparison leaves out: a model with a fold that did not finish
training is named with its missing folds (the workflow, run with ``keep-going`` as every profile does, trains
the other models but compares none until every fold is there). Exit status 1 when the comparison is missing or
leaves out a declared model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .compare import incomplete_lines, missing_folds, text_table
from .util import read_rows


def selection_lines(sel: dict) -> list[str]:
    s = sel["selected"]
    pp = sel["postprocessing"]
    steps = (["largest foreground component"] if pp["foreground_lcc"] else []) + [
        f"largest component of {label}" for label in pp["label_lcc"]]
    lines = [f"selected on cross-validation ({sel['n_subjects']} subjects, mean foreground Dice): "
             f"{s['candidate']}{' (ensemble of ' + ', '.join(s['models']) + ')' if s['ensemble'] else ''} "
             f"{s['mean_dice']:.4f}; post-processing: {', '.join(steps) or 'none'} -> "
             f"{sel['cv_mean_dice_with_postprocessing']:.4f}"]
    for c in sel["candidates"]:
        lines.append(f"  candidate {c['candidate']:<24} CV mean Dice {c['mean_dice']:.4f}")
    return lines


def declared_models(results: Path) -> tuple[list[str], int] | None:
    """The models the plans were made for and the number of folds, once plans and split exist."""
    plans, splits = results / "plans" / "plans.json", results / "splits.json"
    if not (plans.is_file() and splits.is_file()):
        return None
    return list(json.loads(plans.read_text())["models"]), len(json.loads(splits.read_text())["folds"])


def left_out_lines(results: Path, compared: set[str]) -> list[str]:
    """A line per declared model the comparison does not hold as it is now, saying why."""
    declared = declared_models(results)
    if declared is None:
        return []
    models, n_folds = declared
    return incomplete_lines(missing_folds(results / "models", models, n_folds), compared, n_folds)


def main(results: str) -> int:
    root = Path(results)
    study = root / "study"
    comparison, models = study / "comparison.tsv", study / "models.tsv"
    compared: set[str] = set()
    if comparison.is_file() and models.is_file():
        rows = read_rows(models)
        compared = {r["model"] for r in rows if not r.get("missing_folds")}
        print("model comparison (cv: each model's folds on their validation subjects, pooled; test: held-out test")
        print("subjects, each model's fold ensemble and the study's selection 'study'; distances in mm)")
        print(text_table(read_rows(comparison), rows))
    else:
        print(f"no model comparison yet: {comparison} does not exist")
    left_out = left_out_lines(root, compared)
    if left_out:
        print("\nincomplete or not compared:")
        print("\n".join(f"  {line}" for line in left_out))
    if (study / "selection.json").is_file():
        print()
        print("\n".join(selection_lines(json.loads((study / "selection.json").read_text()))))
    return 1 if left_out or not comparison.is_file() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "results"))
