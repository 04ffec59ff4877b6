"""Selection on cross-validation (cohortseg.study), post-processing (cohortseg.postprocess) and the model
comparison's statistics (cohortseg.compare), on synthetic probabilities whose answers are known."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohortseg import compare, postprocess, study

SHAPE = (24, 24, 24)


def _reference(rng: np.random.Generator) -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    c = rng.integers(8, 16, 3)
    ref[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 4:c[2] + 4] = 1
    ref[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] + 4:c[2] + 7] = 2
    return ref


def _probs(ref: np.ndarray, rng: np.random.Generator, noise: float, blob: bool) -> np.ndarray:
    """Class probabilities (background + 2 labels) near the reference; ``blob``: a spurious island of label 1."""
    onehot = np.stack([(ref == v).astype(np.float32) for v in range(3)])
    p = onehot + rng.normal(0, noise, onehot.shape).astype(np.float32)
    if blob:
        p[1, 0:3, 0:3, 0:3] += 5.0
    p = np.exp(p * 4)
    return p / p.sum(axis=0, keepdims=True)


def _cases(tmp: Path, noise: dict[str, float], blob: dict[str, bool], n: int = 6) -> list[study.Case]:
    rng = np.random.default_rng(3)
    cases = []
    for i in range(n):
        ref = _reference(rng)
        ref_path = tmp / f"s{i}_label.nii.gz"
        nib.save(nib.Nifti1Image(ref, np.eye(4)), ref_path)
        probs = {}
        for model, sd in noise.items():
            path = tmp / f"s{i}_{model}.probs.npz"
            np.savez_compressed(path, probabilities=_probs(ref, rng, sd, blob[model]).astype(np.float16))
            probs[model] = str(path)
        cases.append((f"s{i}", probs, str(ref_path)))
    return cases


def test_the_better_model_is_selected_and_a_worse_ensemble_is_not(tmp_path: Path) -> None:
    cases = _cases(tmp_path, {"good": 0.05, "bad": 0.9}, {"good": False, "bad": False})
    sel = study.select(cases, ["bad", "good"], ["a", "b"], 0.5)
    assert sel["ranked_models"] == ["good", "bad"]
    assert sel["selected"]["models"] == ["good"] and sel["selected"]["ensemble"] is False
    ens = next(c for c in sel["candidates"] if c["candidate"] == "good+bad")
    assert ens["mean_dice"] <= sel["selected"]["mean_dice"]


def test_an_ensemble_that_beats_the_best_single_model_is_selected(tmp_path: Path) -> None:
    """Two equally noisy, independent models: averaging halves the noise."""
    cases = _cases(tmp_path, {"m1": 0.45, "m2": 0.45}, {"m1": False, "m2": False})
    sel = study.select(cases, ["m1", "m2"], ["a", "b"], 0.5)
    singles = [c["mean_dice"] for c in sel["candidates"] if len(c["models"]) == 1]
    assert sel["selected"]["ensemble"] is True and sel["selected"]["mean_dice"] > max(singles)


def test_largest_component_is_kept_only_where_it_helps(tmp_path: Path) -> None:
    cases = _cases(tmp_path, {"m": 0.05}, {"m": True})
    sel = study.select(cases, ["m"], ["a", "b"], 0.5)
    assert sel["postprocessing"]["foreground_lcc"] is True
    assert sel["cv_mean_dice_with_postprocessing"] > sel["selected"]["mean_dice"]
    clean = study.select(_cases(tmp_path / "..", {"m": 0.05}, {"m": False}), ["m"], ["a", "b"], 0.5)
    assert clean["postprocessing"] == {"foreground_lcc": False, "label_lcc": []}  # no gain: not kept


def test_a_step_that_hurts_one_label_is_refused() -> None:
    dice = {"none": np.array([[0.8, 0.6]]), "fg": np.array([[0.95, 0.55]]),
            "none+1": np.array([[0.8, 0.6]]), "none+2": np.array([[0.8, 0.7]]),
            "fg+1": np.array([[0.95, 0.55]]), "fg+2": np.array([[0.95, 0.55]])}
    spec, trials = study.decide_postprocessing(dice, ["a", "b"])
    assert spec == {"foreground_lcc": False, "label_lcc": ["b"]}  # fg raises the mean but lowers label b
    assert [t["kept"] for t in trials] == [False, False, True]


def test_postprocess_apply() -> None:
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[1:4, 1:4, 1:4] = 1
    seg[4:6, 1:4, 1:4] = 2  # touches label 1: one foreground component
    seg[8, 8, 8] = 1  # an island
    out = postprocess.apply(seg, {"foreground_lcc": True, "label_lcc": []}, ["a", "b"])
    assert out[8, 8, 8] == 0 and (out[seg != 0] != 0).sum() == (seg != 0).sum() - 1
    assert (postprocess.apply(seg, {"foreground_lcc": False, "label_lcc": []}, ["a", "b"]) == seg).all()


def test_holm_correction() -> None:
    assert compare.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert compare.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 capped at 1; monotone


def test_bootstrap_interval_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.05, 40)
    lo, hi = compare.bootstrap_ci(values, np.random.default_rng(1))
    assert lo < values.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * values.std() / np.sqrt(40), rel=0.3)


def test_pairs_on_the_same_cases() -> None:
    """Model b is worse than a on every case: a small Wilcoxon p and a positive median difference a - b."""
    rows = []
    for i in range(12):
        for model, dice in (("a", 0.8 + 0.01 * i), ("b", 0.7 + 0.01 * i)):
            rows.append({"model": model, "predictor": "ensemble", "set": "test", "subject": f"s{i}", "label": "x",
                         "dice": str(dice), "iou": "0.5", "hd95": "1", "avg_hd": "1", "vol_diff_pct": "0"})
    pairs = compare.pair_table(compare.groups(rows), ["x"], seed=0)
    dice = next(p for p in pairs if p["metric"] == "dice")
    assert dice["model_a"] == "a" and dice["n_pairs"] == 12
    assert dice["median_diff"] == pytest.approx(0.1) and dice["holm_p"] < 0.01


def _trained_fold(folder: Path, model: str, family: str, fold: int) -> None:
    """The files a finished training leaves in results/models/<model>/fold<k>/ (weights are opaque bytes here)."""
    import json

    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "train.json").write_text(json.dumps({
        "model_name": model, "train": {"model": family}, "n_parameters": 1000, "fold": fold, "best_val_dice": 0.8,
        "train_seconds_total": 10.0, "epochs_run": 3, "peak_memory_mb": 100.0}))
    (folder / "history.tsv").write_text("epoch\ttrain_loss\tval_dice\n1\t0.9\t0.5\n2\t0.7\t0.8\n3\t0.6\t0.75\n")


def test_comparison_names_a_model_with_a_missing_fold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A declared model whose fold 1 never finished training: `cohortseg compare` compares the complete model,
    writes the incomplete one as a models.tsv row with its missing fold, and says so; `cohortseg show` names
    it and exits 1; with both complete nothing is left out."""
    import json

    from cohortseg import show
    from cohortseg.cli import main

    r = tmp_path / "results"
    (r / "plans").mkdir(parents=True)
    (r / "plans" / "plans.json").write_text(json.dumps({"dataset": {}, "models": {"unet": {}, "segresnet": {}}}))
    (r / "splits.json").write_text(json.dumps({"folds": [{"val": ["a", "b"]}, {"val": ["c", "d"]}], "test": ["e"]}))
    for k in (0, 1):
        _trained_fold(r / "models" / "unet" / f"fold{k}", "unet", "unet", k)
    _trained_fold(r / "models" / "segresnet" / "fold0", "segresnet", "segresnet", 0)
    (r / "metrics").mkdir()
    rows = ["model\tset\tsubject\tlabel\tdice\tiou\thd95\tavg_hd\tvol_diff_pct"]
    rows += [f"unet\tcv\t{s}\tlesion\t0.{80 + i}\t0.7\t2.0\t0.5\t3.0" for i, s in enumerate("abcd")]
    rows += [f"segresnet\tcv\t{s}\tlesion\t0.5\t0.4\t5.0\t1.5\t9.0" for s in "ab"]  # fold 0 only: left out
    (r / "metrics" / "cases.tsv").write_text("\n".join(rows) + "\n")
    (r / "metrics" / "timing.tsv").write_text("step\tmodel\tseconds\npredict\tunet\t0.5\n")
    args = ["compare", "--config", str(Path(__file__).parent / "config" / "tiny.yaml"), "--metrics",
            str(r / "metrics"), "--models", str(r / "models"), "--out", str(r / "study")]
    main(args)
    err = capsys.readouterr().err
    assert "segresnet: INCOMPLETE, 1 of 2 folds did not finish training (fold1" in err, err
    comp = compare.read_rows(r / "study" / "comparison.tsv")
    assert {row["model"] for row in comp} == {"unet"}
    models = {row["model"]: row for row in compare.read_rows(r / "study" / "models.tsv")}
    assert models["segresnet"]["folds"] == "1" and models["segresnet"]["missing_folds"] == "1"
    assert models["unet"]["folds"] == "2" and models["unet"]["missing_folds"] == ""
    assert show.main(str(r)) == 1
    out = capsys.readouterr().out
    assert "segresnet: INCOMPLETE, folds 1 did not finish training; not compared" in out, out
    assert "incomplete or not compared:\n  segresnet: INCOMPLETE" in out and "in no comparison" in out, out
    # the missing fold arrives: compare again, nothing is left out
    _trained_fold(r / "models" / "segresnet" / "fold1", "segresnet", "segresnet", 1)
    assert show.main(str(r)) == 1  # trained, but the comparison on disk predates it
    assert "segresnet: all 2 folds trained, not yet compared" in capsys.readouterr().out
    main(args)
    assert "INCOMPLETE" not in capsys.readouterr().err
    assert {row["model"] for row in compare.read_rows(r / "study" / "models.tsv")} == {"unet", "segresnet"}
    assert show.main(str(r)) == 0
    # a fold lost after the comparison was made (retrained, failed): its rows on disk are called stale
    (r / "models" / "segresnet" / "fold0" / "train.json").unlink()
    assert show.main(str(r)) == 1
    assert "segresnet: INCOMPLETE" in (out := capsys.readouterr().out) and "stale" in out, out
