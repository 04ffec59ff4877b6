"""The study's choices, made on cross-validation only: which model (or ensemble of the top models) and which
post-processing every later inference uses (``results/study/selection.json``), as nnU-Net's
``find_best_configuration``.

The evidence is the pooled cross-validation predictions: every labelled non-test subject predicted, in its
own source space, by the fold of each model that did not train on it (``<case>.probs.npz``, the class
probabilities the fold inference saves). Candidates: each model alone, and the ensembles of the top 2, 3,
... models (ranked alone; an ensemble averages its models' probabilities). The criterion: the mean over
subjects of the mean Dice over labels. An ensemble is selected only if it beats the best single model.

Post-processing (keep the largest connected component, :mod:`cohortseg.postprocess`) is then tried on the
selected candidate's predictions: of the foreground first, then of each label on top of that decision;
each is kept only where it raises the criterion (for a label: that label's mean Dice) and makes no label's
mean Dice worse. The split's test subjects are not read here: they influence nothing and are scored once,
at the end, by the metrics stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import postprocess
from .settings import InferSettings, StageConfig
from .util import import_nibabel, log, write_json, write_rows


@dataclass(frozen=True)
class Config(StageConfig):
    labels: tuple[str, ...]
    infer: InferSettings


# (subject, {model: probabilities .npz}, reference label) of every cross-validation subject
Case = tuple[str, dict[str, str], str]


def discretise(probs: np.ndarray, n_labels: int, threshold: float) -> np.ndarray:
    """Integer labels from class probabilities (as cohortseg.model.discretise, without torch)."""
    if n_labels == 1:
        return (probs[0] >= threshold).astype(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8)


def mean_probabilities(paths: list[str]) -> np.ndarray:
    acc = None
    for p in paths:
        with np.load(p) as z:
            a = z["probabilities"].astype(np.float32)
        acc = a if acc is None else acc + a
    assert acc is not None
    return acc / len(paths)


def read_label(path: str) -> np.ndarray:
    nib = import_nibabel()
    return np.asanyarray(nib.load(path).dataobj).astype(np.uint8)


def postprocessing_variants(seg: np.ndarray, n_labels: int) -> dict[str, np.ndarray]:
    """The selected candidate's segmentation without post-processing, with the foreground's largest
    component, and with each label's largest component on top of either."""
    fg = postprocess.keep_largest_foreground(seg)
    out = {"none": seg, "fg": fg}
    for v in range(1, n_labels + 1):
        out[f"none+{v}"] = postprocess.keep_largest_of_label(seg, v)
        out[f"fg+{v}"] = postprocess.keep_largest_of_label(fg, v)
    return out


class Evidence:
    """Per-label Dice of every candidate and post-processing variant on every cross-validation subject."""

    def __init__(self, cases: list[Case], labels: list[str], threshold: float) -> None:
        self.cases, self.labels, self.threshold, self.n = cases, labels, threshold, len(labels)

    def candidates(self, ranked: list[str]) -> list[tuple[str, list[str]]]:
        singles = [(m, [m]) for m in ranked]
        ensembles = [("+".join(ranked[:k]), ranked[:k]) for k in range(2, len(ranked) + 1)]
        return singles + ensembles

    def dice_of(self, models: list[str]) -> np.ndarray:
        """(subjects, labels) Dice of a candidate."""
        rows = []
        for subject, probs, ref in self.cases:
            seg = discretise(mean_probabilities([probs[m] for m in models]), self.n, self.threshold)
            rows.append(postprocess.dice_per_label(seg, read_label(ref), self.n))
        return np.array(rows)

    def variant_dice(self, models: list[str]) -> dict[str, np.ndarray]:
        """{variant: (subjects, labels) Dice} of the post-processing variants of a candidate."""
        out: dict[str, list[list[float]]] = {}
        for subject, probs, ref in self.cases:
            seg = discretise(mean_probabilities([probs[m] for m in models]), self.n, self.threshold)
            reference = read_label(ref)
            for name, variant in postprocessing_variants(seg, self.n).items():
                out.setdefault(name, []).append(postprocess.dice_per_label(variant, reference, self.n))
        return {k: np.array(v) for k, v in out.items()}


def decide_postprocessing(dice: dict[str, np.ndarray], labels: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Foreground LCC, then each label's LCC on top: kept where it helps and hurts no label."""
    trials = []
    none, fg = dice["none"].mean(axis=0), dice["fg"].mean(axis=0)
    keep_fg = bool(fg.mean() > none.mean() and (fg >= none).all())
    trials.append(_trial("foreground_lcc", labels, none, fg, keep_fg))
    base = "fg" if keep_fg else "none"
    before = dice[base].mean(axis=0)
    chosen = []
    for v, name in enumerate(labels, start=1):
        after = dice[f"{base}+{v}"].mean(axis=0)
        keep = bool(after[v - 1] > before[v - 1] and (after >= before).all())
        trials.append(_trial(f"label_lcc:{name}", labels, before, after, keep))
        if keep:
            chosen.append(name)
    return {"foreground_lcc": keep_fg, "label_lcc": chosen}, trials


def _trial(step: str, labels: list[str], before: np.ndarray, after: np.ndarray, kept: bool) -> dict[str, Any]:
    return {"step": step, "kept": kept, "mean_dice_before": float(before.mean()), "mean_dice_after": float(after.mean()),
            **{f"dice_before_{n}": float(b) for n, b in zip(labels, before)},
            **{f"dice_after_{n}": float(a) for n, a in zip(labels, after)}}


def final_dice(dice: dict[str, np.ndarray], spec: dict[str, Any], labels: list[str]) -> np.ndarray:
    """Per-label mean Dice of the selected candidate with the chosen post-processing (labels' LCC decided
    one by one on the same base: combined label by label)."""
    base = dice["fg" if spec["foreground_lcc"] else "none"]
    cols = [dice[f"{'fg' if spec['foreground_lcc'] else 'none'}+{v}"][:, v - 1] if name in spec["label_lcc"]
            else base[:, v - 1] for v, name in enumerate(labels, start=1)]
    return np.array(cols).T.mean(axis=0)


SELECTION_COLUMNS = ["candidate", "models", "n_models", "n_subjects", "mean_dice", "selected"]


def select(cases: list[Case], models: list[str], labels: list[str], threshold: float) -> dict[str, Any]:
    """The selection (see the module's docstring) as a JSON-able dict."""
    if not cases:
        raise ValueError("no cross-validation prediction to select on")
    ev = Evidence(cases, labels, threshold)
    single = {m: ev.dice_of([m]) for m in models}
    ranked = sorted(models, key=lambda m: (-float(single[m].mean()), models.index(m)))
    scored = []
    for name, members in ev.candidates(ranked):
        d = single[members[0]] if len(members) == 1 else ev.dice_of(members)
        scored.append({"candidate": name, "models": members, "mean_dice": float(d.mean()),
                       "dice": {n: float(x) for n, x in zip(labels, d.mean(axis=0))}})
    best_single = max((c for c in scored if len(c["models"]) == 1), key=lambda c: c["mean_dice"])
    best = max(scored, key=lambda c: (c["mean_dice"], -len(c["models"])))
    chosen = best if best["mean_dice"] > best_single["mean_dice"] else best_single
    variants = ev.variant_dice(chosen["models"])
    spec, trials = decide_postprocessing(variants, labels)
    final = final_dice(variants, spec, labels)
    return {"criterion": "mean over subjects of the mean Dice over labels, pooled cross-validation predictions "
                         "(each subject predicted by the fold that did not train on it), source space",
            "n_subjects": len(cases), "labels": labels, "ranked_models": ranked, "candidates": scored,
            "selected": {"candidate": chosen["candidate"], "models": chosen["models"],
                         "ensemble": len(chosen["models"]) > 1, "mean_dice": chosen["mean_dice"]},
            "postprocessing": spec, "postprocessing_trials": trials,
            "cv_dice_with_postprocessing": {n: float(x) for n, x in zip(labels, final)},
            "cv_mean_dice_with_postprocessing": float(final.mean())}


def run(config: Config, cases: list[Case], models: list[str], out_json: str | Path, out_tsv: str | Path) -> dict[str, Any]:
    labels = list(config.labels)
    sel = select(cases, models, labels, config.infer.threshold)
    write_json(out_json, sel)
    rows = [{"candidate": c["candidate"], "models": " ".join(c["models"]), "n_models": len(c["models"]),
             "n_subjects": sel["n_subjects"], "mean_dice": c["mean_dice"],
             "selected": c["candidate"] == sel["selected"]["candidate"], **{f"dice_{n}": c["dice"][n] for n in labels}}
            for c in sel["candidates"]]
    write_rows(out_tsv, rows, SELECTION_COLUMNS + [f"dice_{n}" for n in labels])
    log.info("selected %s (CV mean Dice %.4f), post-processing %s -> %.4f", sel["selected"]["candidate"],
             sel["selected"]["mean_dice"], sel["postprocessing"], sel["cv_mean_dice_with_postprocessing"])
    return sel
