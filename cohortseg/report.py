"""Report assets: overlay PNGs of predictions on the source images and a selection chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .settings import StageConfig
from .util import atomic_path, read_rows


@dataclass(frozen=True)
class Config(StageConfig):
    """The figures read no config section (which subjects get an overlay is the workflow's choice)."""


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure on the Agg canvas, without pyplot (whose backend machinery is half a second of a
    figure job's start-up) and without global figure state to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: str | Path) -> None:
    """PNG without a software/date tag, written atomically."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})


def overlay(image: str | Path, reference: str | Path | None, predictions: list[tuple[str, str]], out: str | Path,
            title: str) -> None:
    """Three orthogonal slices through the lesion, a row per prediction ((name, path): each model and the
    study's selection side by side): reference contour green, prediction red."""
    from .util import import_nibabel

    nib = import_nibabel()

    img = nib.as_closest_canonical(nib.load(str(image)))
    preds = [(name, np.asanyarray(nib.as_closest_canonical(nib.load(str(p))).dataobj) > 0) for name, p in predictions]
    ref = nib.as_closest_canonical(nib.load(str(reference))) if reference else None
    a = np.asanyarray(img.dataobj).astype(np.float32)
    r = np.asanyarray(ref.dataobj) > 0 if ref is not None else None
    focus = r if r is not None and r.any() else preds[0][1]
    centre = [int(round(c)) for c in (np.argwhere(focus).mean(axis=0) if focus.any() else np.array(a.shape) / 2)]
    lo, hi = np.percentile(a, [1, 99.5])
    zooms = img.header.get_zooms()[:3]
    fig = _figure(figsize=(11, 3.6 * len(preds) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(preds), 3))
    for row, (name, p) in zip(axes, preds):
        for ax, (view, axis) in zip(row, [("axial", 2), ("coronal", 1), ("sagittal", 0)]):
            _slice_panel(ax, a, r, p, axis, centre[axis], zooms, (lo, hi))
            ax.set_title(f"{name}: {view}")
    fig.suptitle(f"{title}  (green: reference, red: prediction)")
    fig.tight_layout()
    _save(fig, out)


def _slice_panel(ax: Any, a: np.ndarray, r: np.ndarray | None, p: np.ndarray, axis: int, index: int, zooms: Any,
                 window: tuple[float, float]) -> None:
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = index
    others = [z for i, z in enumerate(zooms) if i != axis]
    ax.imshow(np.rot90(a[tuple(sl)]), cmap="gray", vmin=window[0], vmax=window[1], aspect=others[1] / others[0])
    if r is not None and r[tuple(sl)].any():
        ax.contour(np.rot90(r[tuple(sl)]), levels=[0.5], colors="lime", linewidths=1.2)
    if p[tuple(sl)].any():
        ax.contour(np.rot90(p[tuple(sl)]), levels=[0.5], colors="red", linewidths=1.2)
    ax.axis("off")


def selection_chart(summary_tsv: str | Path, out: str | Path) -> None:
    ser = sorted((r for r in read_rows(summary_tsv) if r["level"] == "series"), key=lambda r: int(r["count"]))
    fig = _figure(figsize=(7, 0.35 * max(len(ser), 3) + 1))
    ax = fig.subplots()
    ax.barh([r["reason"] for r in ser], [int(r["count"]) for r in ser], color="#4c72b0")
    for y, r in enumerate(ser):
        ax.text(int(r["count"]), y, f" {r['count']} series / {r['subjects']} subjects", va="center", fontsize=8)
    ax.set_xlabel("rejected series")
    ax.set_title("Series rejected per reason")
    ax.margins(x=0.35)
    fig.tight_layout()
    _save(fig, out)


def dice_chart(cases_tsv: str | Path, out: str | Path) -> None:
    """Dice per case of every model: cross-validation (each fold's validation subjects) and test (the
    model's fold ensemble; the study's selection)."""
    rows = [r for r in read_rows(cases_tsv) if r["dice"] != ""]
    groups = list(dict.fromkeys((r["model"], r["set"]) for r in sorted(rows, key=lambda r: (r["set"], r["model"] == "study"))))
    fig = _figure(figsize=(1.3 * len(groups) + 3, 3.8))
    ax = fig.subplots()
    data = [np.array([float(r["dice"]) for r in rows if (r["model"], r["set"]) == g]) for g in groups]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(groups) + 1), [f"{m}\n{s}" for m, s in groups])
    for i, d in enumerate(data, start=1):
        ax.scatter(np.full(len(d), i) + np.linspace(-0.08, 0.08, len(d)) if len(d) else [], d, s=10, color="k", alpha=0.6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title("Dice per case (cv: folds' validation subjects; test: held-out subjects)")
    fig.tight_layout()
    _save(fig, out)
