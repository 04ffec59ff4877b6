"""Dataset and model plans (cohortseg.plans): spacing, size, normalisation, window and batch from the
cross-validation cases' surveys; explicit config values win; a plan that cannot fit names its model."""

from __future__ import annotations

import numpy as np
import pytest

from cohortseg import config as config_mod
from cohortseg import plans
from cohortseg.settings import PlansSettings, PreprocessSettings, TrainSettings


def _cfg(overrides: dict | None = None) -> dict:
    return config_mod.load(None, {"labels": ["a", "b"], **(overrides or {})})


def _cases(spacings: list[list[float]], shape: list[int], modality: str = "MR", fg: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for sp in spacings:
        values = rng.normal(100.0, 20.0, 500).tolist() if fg else []
        out.append({"spacing": sp, "shape": shape, "modality": modality, "foreground_sample": values,
                    "label_voxels": {"1": 50 if fg else 0, "2": 30 if fg else 0}})
    return out


def test_spacing_is_the_median_for_isotropic_data() -> None:
    spacing, why = plans.plan_spacing("auto", 3.0, _cases([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2], [0.9, 0.9, 0.9]], [64] * 3))
    assert spacing == [1.0, 1.0, 1.0] and "median" in why


def test_anisotropic_axis_takes_a_low_percentile() -> None:
    """Thick slices (5 mm against 0.8 mm, ratio > 3): the coarse axis from its 10th percentile, as nnU-Net."""
    spacings = [[0.8, 0.8, s] for s in (3.0, 4.0, 5.0, 5.0, 5.0, 6.0)]
    spacing, why = plans.plan_spacing("auto", 3.0, _cases(spacings, [256, 256, 30]))
    assert spacing[:2] == [0.8, 0.8]
    assert spacing[2] == pytest.approx(np.percentile([3.0, 4.0, 5.0, 5.0, 5.0, 6.0], 10))
    assert "anisotropic" in why and "axis 2" in why


def test_explicit_values_win() -> None:
    assert plans.plan_spacing([2.0, 2.0, 2.0], 3.0, _cases([[1.0] * 3], [10] * 3)) == ([2.0, 2.0, 2.0], "config")
    assert plans.plan_size([40, 40, 40], np.array([10, 10, 10])) == ([40, 40, 40], "config")


def test_size_is_the_median_resampled_shape_rounded_up() -> None:
    size, _ = plans.plan_size("auto", np.array([35.0, 49.0, 5.0]))
    assert size == [48, 64, 16]


def test_ct_normalisation_clips_to_the_foreground_percentiles() -> None:
    pp = PreprocessSettings.from_dict(_cfg()["preprocess"])
    summary = {"foreground": {"p00_5": -100.0, "p99_5": 300.0, "mean": 80.0, "sd": 40.0}}
    norm, why = plans.plan_normalisation(pp, "ct", summary)
    assert norm["normalisation"] == "ct" and norm["ct"] == {"clip": [-100.0, 300.0], "mean": 80.0, "sd": 40.0}
    mr, why_mr = plans.plan_normalisation(pp, "mr", summary)
    assert mr["normalisation"] == "zscore" and "MR" in why_mr
    with pytest.raises(plans.PlanError, match="foreground"):
        plans.plan_normalisation(pp, "ct", {})


def test_ct_normalisation_values() -> None:
    """The CT rule applied by preprocessing: clip, then z-score with the fingerprint's statistics."""
    from cohortseg.volume import normalise

    cfg = _cfg({"preprocess": {"normalisation": "ct", "ct": {"clip": [-100, 300], "mean": 80.0, "sd": 40.0},
                               "spacing": [1, 1, 1], "size": [16, 16, 16]}})
    pp = PreprocessSettings.from_dict(cfg["preprocess"])
    out = normalise(np.array([-1000.0, 80.0, 120.0, 3000.0], np.float32), pp)
    np.testing.assert_allclose(out, [(-100 - 80) / 40, 0.0, 1.0, (300 - 80) / 40], rtol=1e-6)


def test_modality_from_dicom() -> None:
    assert plans.plan_modality("auto", {"n_cases": 3, "modalities": {"CT": 3}})[0] == "ct"
    assert plans.plan_modality("auto", {"n_cases": 3, "modalities": {"MR": 2, "CT": 1}})[0] == "mr"
    assert plans.plan_modality("ct", {"n_cases": 3, "modalities": {"MR": 3}}) == ("ct", "config")


def _dataset(size: list[int], median: list[int], n: int = 100) -> dict:
    return {"preprocess": {"size": size}, "median_shape": median, "cv_voxels": n * int(np.prod(size))}


def test_cpu_plan_shrinks_the_window_to_the_voxel_cap() -> None:
    cfg = _cfg({"plans": {"target": "cpu", "cpu_voxels": 2 * 64 * 64 * 32}})
    ts = TrainSettings.from_dict(cfg["train"])
    ps = PlansSettings.from_dict(cfg["plans"])
    plan = plans.plan_model("unet", ts, _dataset([64, 64, 64], [64, 64, 64]), ps, "cpu", 2)
    assert plan["batch_size"] * int(np.prod(plan["window"])) <= ps.cpu_voxels and plan["fits"]
    assert plan["patch"] == plan["window"] and plan["window"] != [64, 64, 64]
    assert all(w % plan["divisor"] == 0 for w in plan["window"])


def test_the_whole_volume_when_it_fits() -> None:
    cfg = _cfg({"plans": {"target": "cpu"}})
    plan = plans.plan_model("unet", TrainSettings.from_dict(cfg["train"]), _dataset([32, 32, 32], [30, 30, 30]),
                            PlansSettings.from_dict(cfg["plans"]), "cpu", 2)
    assert plan["window"] == [32, 32, 32] and plan["patch"] is None


CPU_PLAN = """
import json, sys
from cohortseg import config, plans
from cohortseg.settings import PlansSettings, TrainSettings
cfg = config.load(None, {"labels": ["a", "b"], "plans": {"target": "cpu", "cpu_memory_estimate": sys.argv[1] == "1"}})
ds = {"preprocess": {"size": [32, 32, 32]}, "median_shape": [30, 30, 30], "cv_voxels": 100 * 32**3}
m = plans.plan_model("unet", TrainSettings.from_dict(cfg["train"]), ds, PlansSettings.from_dict(cfg["plans"]), "cpu", 2)
plans.run_summary({"choices": []}, {"unet": m}, sys.argv[2] + "/plans.json", sys.argv[2] + "/plans.tsv")
print(json.dumps({"plan": m, "torch": "torch" in sys.modules, "monai": "monai" in sys.modules,
                  "table": plans.table({"dataset": {"n_cases": 1, "modality": "mr", "median_shape": [30] * 3,
                                                    "preprocess": {"spacing": [1] * 3, "size": [32] * 3,
                                                                   "normalisation": "zscore"}},
                                        "models": {"unet": m}})}))
"""


@pytest.mark.parametrize("estimate", [False, True])
def test_a_cpu_plan_builds_no_network_unless_asked(estimate: bool, tmp_path) -> None:
    """A CPU plan's budget is voxels per batch: its job imports neither PyTorch nor MONAI (their import is
    most of a plan job's start-up) and says it made no memory estimate; plans.cpu_memory_estimate: true
    estimates as a GPU plan does."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CPU_PLAN, "1" if estimate else "0", str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, check=True, env={"PYTHONPATH": str(repo), "PATH": ""})
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["plan"]["window"] == [32, 32, 32] and out["plan"]["fits"]
    row = (tmp_path / "plans.tsv").read_text().splitlines()[-1].split("\t")
    if estimate:
        assert out["torch"] and out["plan"]["estimated_step_gb"] > 0 and "GB a step" in out["table"]
        assert row[:2] == ["unet.estimated_step_gb", str(out["plan"]["estimated_step_gb"])]
    else:
        assert not out["torch"] and not out["monai"], "a CPU plan imported PyTorch or MONAI"
        assert out["plan"]["estimated_step_gb"] is None and "GB a step" not in out["table"]
        assert row[:2] == ["unet.estimated_step_gb", "-"] and "not estimated on a CPU plan" in row[3], row


def test_batch_grows_to_the_five_percent_cap() -> None:
    cfg = _cfg({"plans": {"target": "cpu", "cpu_voxels": 10**9}})
    ds = _dataset([32, 32, 32], [32, 32, 32], n=200)  # 5 % of 200 volumes = 10
    plan = plans.plan_model("unet", TrainSettings.from_dict(cfg["train"]), ds, PlansSettings.from_dict(cfg["plans"]),
                            "cpu", 2)
    assert plan["batch_size"] == 10


def test_gpu_estimate_grows_with_the_window_and_the_family() -> None:
    cfg = _cfg()
    unet = TrainSettings.from_dict({**cfg["train"], "model": "unet"})
    small, big = plans.step_bytes(unet, 2, [32, 32, 32], 2), plans.step_bytes(unet, 2, [64, 64, 64], 2)
    params = plans.BYTES_PER_PARAMETER * sum(
        p.numel() for p in __import__("cohortseg.model", fromlist=["x"]).build_model(unet, 2, [32, 32, 32]).parameters())
    # activations and input scale with the voxels (x8), parameters' memory does not
    assert (big - params) / (small - params) == pytest.approx(8, rel=0.01)


def test_a_window_too_small_for_the_depth_names_the_model() -> None:
    cfg = _cfg({"train": {"levels": 5}})
    with pytest.raises(plans.PlanError, match="model 'deep'.*1 voxel"):
        plans.plan_model("deep", TrainSettings.from_dict(cfg["train"]), _dataset([16, 16, 16], [16, 16, 16]),
                         PlansSettings.from_dict(cfg["plans"]), "cpu", 2)


def test_a_plan_that_cannot_fit_names_the_model() -> None:
    cfg = _cfg({"plans": {"target": "gpu", "memory_gb": 0.001}})
    ts = TrainSettings.from_dict(cfg["train"])
    with pytest.raises(plans.PlanError, match="model 'big'"):
        plans.plan_model("big", ts, _dataset([64, 64, 64], [64, 64, 64]), PlansSettings.from_dict(cfg["plans"]), "gpu", 2)


def test_explicit_window_and_batch_win_but_are_checked() -> None:
    cfg = _cfg({"plans": {"target": "cpu", "cpu_voxels": 4096}, "train": {"batch_size": 3,
                                                                           "patch": {"size": [32, 32, 32]}}})
    plan = plans.plan_model("unet", TrainSettings.from_dict(cfg["train"]), _dataset([64, 64, 64], [64, 64, 64]),
                            PlansSettings.from_dict(cfg["plans"]), "cpu", 2)
    assert plan["window"] == [32, 32, 32] and plan["batch_size"] == 3 and plan["fits"] is False
    assert {c["source"] for c in plan["choices"]} == {"config"}


def test_models_section() -> None:
    cfg = _cfg({"models": {"small": {"family": "unet", "base_filters": 8}, "seg": {"family": "segresnet"}}})
    assert config_mod.model_names(cfg) == ["small", "seg"]
    assert config_mod.model_train(cfg, "small")["base_filters"] == 8
    assert config_mod.model_train(cfg, "seg")["model"] == "segresnet"
    assert config_mod.model_names(_cfg()) == [_cfg()["train"]["model"]]  # the single train.model config


@pytest.mark.parametrize("models, match", [
    ({"x": {"family": "resnet"}}, "models.x"),
    ({"study": {"family": "unet"}}, "reserved"),
    ({"x": {"family": "unet", "levels": 0}}, "models.x"),
    ({"Bad Name": {"family": "unet"}}, "Bad Name"),
])
def test_bad_models_are_refused_naming_the_model(models: dict, match: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=match):
        _cfg({"models": models})


def test_a_model_defined_twice_is_refused(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("labels: [a]\nmodels:\n  unet: {family: unet}\n  unet: {family: segresnet}\n")
    with pytest.raises(config_mod.ConfigError, match="unet"):
        config_mod.load(p)


def test_survey_is_in_ras_axis_order_and_plans_a_dataset() -> None:
    """A sagittal-like acquisition (voxel axes permuted) surveyed in RAS order; the dataset plan of CT cases
    clips to the pooled foreground percentiles."""
    from cohortseg import survey

    rng = np.random.default_rng(1)
    image = rng.normal(50, 10, (20, 30, 40)).astype(np.float32)
    label = np.zeros_like(image, np.uint8)
    label[5:10, 5:15, 5:25] = 1
    affine = np.array([[0, 0, 3.0, 0], [2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # voxel axes -> A, S, R
    case = survey.case_survey(image, label, affine, 2, "CT", seed=3)
    assert case["spacing"] == [3.0, 2.0, 1.0] and case["shape"] == [40, 20, 30]
    assert case["labels"]["1"]["extent_mm"] == [60.0, 10.0, 10.0] and case["labels"]["2"]["voxels"] == 0
    cfg = _cfg()
    pp, ps = PreprocessSettings.from_dict(cfg["preprocess"]), PlansSettings.from_dict(cfg["plans"])
    plan = plans.plan_dataset(pp, ps, [case, case])
    assert plan["modality"] == "ct" and plan["preprocess"]["normalisation"] == "ct"
    assert plan["preprocess"]["spacing"] == [3.0, 2.0, 1.0] and plan["preprocess"]["size"] == [48, 32, 32]
    lo, hi = plan["preprocess"]["ct"]["clip"]
    assert lo < 50 < hi and {c["source"] for c in plan["choices"]} == {"plan"}
