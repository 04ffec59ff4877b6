"""Print a finished study's headline results: ``python -m cohortseg.show results``.

The model comparison (results/study/comparison.tsv, models.tsv: per model, pooled cross-validation and
held-out test subjects) and the selection made on cross-validation (results/study/selection.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .compare import text_table
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


def main(results: str) -> None:
    study = Path(results) / "study"
    print("model comparison (cv: each model's folds on their validation subjects, pooled; test: held-out test")
    print("subjects, each model's fold ensemble and the study's selection 'study'; distances in mm)")
    print(text_table(read_rows(study / "comparison.tsv"), read_rows(study / "models.tsv")))
    print()
    print("\n".join(selection_lines(json.loads((study / "selection.json").read_text()))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
