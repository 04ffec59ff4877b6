import math

import numpy as np
import pytest
import torch

from cohortseg.metrics import case_metrics, summarise


def cubes(shift):
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = True
    b[2 + shift:12 + shift, 2:12, 2:12] = True
    return a, b


def test_shifted_cubes_by_hand():
    pred, ref = cubes(2)
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["status"] == "ok"
    assert m["dice"] == pytest.approx(0.8)  # 800 / 1000 each
    assert m["iou"] == pytest.approx(800 / 1200)
    assert m["hd"] == pytest.approx(2.0)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["vol_ref_mm3"] == 1000 and m["vol_diff_mm3"] == 0 and m["vol_diff_pct"] == 0


def test_anisotropic_spacing_is_in_mm():
    pred, ref = cubes(2)
    m = case_metrics(pred, ref, (2.0, 1.0, 0.5))
    assert m["hd"] == pytest.approx(4.0)  # 2 voxels of 2 mm
    assert m["vol_ref_mm3"] == pytest.approx(1000 * 2.0 * 1.0 * 0.5)
    assert m["dice"] == pytest.approx(0.8)


def test_single_voxels_average_hausdorff():
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros_like(a)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    m = case_metrics(a, b, (1.0, 1.0, 1.0))
    assert m["hd"] == pytest.approx(5.0) and m["avg_hd"] == pytest.approx(5.0) and m["dice"] == 0.0
    m = case_metrics(a, b, (2.0, 1.0, 1.0))
    assert m["hd"] == pytest.approx(math.hypot(6, 4))


def test_average_hausdorff_is_mean_of_directed_means():
    # ref: one voxel; pred: that voxel and one 4 mm away -> directed means 2 (pred->ref) and 0 (ref->pred)
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    b[2, 2, 2] = True
    a[2, 2, 2] = True
    a[6, 2, 2] = True
    m = case_metrics(a, b, (1.0, 1.0, 1.0))
    assert m["avg_hd"] == pytest.approx((2.0 + 0.0) / 2)
    assert m["hd"] == pytest.approx(4.0)


def test_empty_masks_get_the_penalty_distance_not_nan():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    both = case_metrics(z, z, (1, 1, 1), empty_distance=99.0)
    assert both["status"] == "both_empty" and both["dice"] == 1.0 and math.isnan(both["hd95"])
    ep = case_metrics(z, one, (1, 1, 1), empty_distance=99.0)
    assert ep["status"] == "empty_prediction" and ep["dice"] == 0.0 and ep["vol_diff_pct"] == -100
    assert ep["hd95"] == ep["hd"] == ep["avg_hd"] == 99.0
    er = case_metrics(one, z, (1, 1, 1), empty_distance=99.0)
    assert er["status"] == "empty_reference" and er["dice"] == 0.0 and math.isnan(er["vol_diff_pct"])
    assert er["hd95"] == 99.0


def test_penalty_is_the_image_diagonal_in_mm(tmp_path):
    import nibabel as nib

    from cohortseg.metrics import evaluate_case
    from cohortseg.settings import MetricsSettings

    shape, spacing = (20, 10, 8), (0.5, 2.0, 3.0)
    affine = np.diag([*spacing, 1.0])
    ref = np.zeros(shape, np.uint8)
    ref[5:9, 3:6, 2:5] = 1
    nib.save(nib.Nifti1Image(ref, affine), str(tmp_path / "ref.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), str(tmp_path / "pred.nii.gz"))
    (row,) = evaluate_case(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", ["lesion"], MetricsSettings("max_directed", "diagonal"))
    assert row["status"] == "empty_prediction"
    assert row["hd95"] == pytest.approx(math.sqrt(10.0**2 + 20.0**2 + 24.0**2))
    (row,) = evaluate_case(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", ["lesion"], MetricsSettings("union", 37.5))
    assert row["avg_hd"] == 37.5


def _surface_points(mask, spacing):
    """Independent of cohortseg.metrics: surface voxels by 6-neighbourhood counting, in mm."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask, bool)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * np.asarray(spacing)


def test_distances_agree_with_an_independent_kd_tree_implementation():
    """avg HD, HD and both HD95 conventions against brute force over the surface points (k-d tree), and
    HD95 'union' against medpy's definition (95th percentile of both directed sets pooled)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(1)
    for _ in range(4):
        a = ndimage.gaussian_filter(rng.random((26, 24, 18)), 2.5) > 0.5
        b = ndimage.gaussian_filter(rng.random((26, 24, 18)), 2.5) > 0.52
        spacing = (0.8, 1.1, 2.0)
        pa, pb = _surface_points(a, spacing), _surface_points(b, spacing)
        d_ab, d_ba = cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]
        ours = case_metrics(a, b, spacing)
        assert ours["avg_hd"] == pytest.approx((d_ab.mean() + d_ba.mean()) / 2, rel=1e-9)
        assert ours["hd"] == pytest.approx(max(d_ab.max(), d_ba.max()), rel=1e-9)
        assert ours["hd95"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), rel=1e-9)
        union = case_metrics(a, b, spacing, hd95="union")
        assert union["hd95"] == pytest.approx(np.percentile(np.concatenate([d_ab, d_ba]), 95), rel=1e-9)
    # where the two conventions differ: a plate, and the plate with a small block far from it (6.5 % of its
    # surface, so beyond one directed 95th percentile, but 3.4 % of the pooled set, so not beyond the union's)
    plate = np.zeros((40, 30, 30), bool)
    plate[5:25, 5:25, 10:12] = True
    with_block = plate.copy()
    with_block[30:34, 12:16, 20:24] = True
    m_max = case_metrics(plate, with_block, (1, 1, 1))
    m_union = case_metrics(plate, with_block, (1, 1, 1), hd95="union")
    assert m_max["hd95"] > 5.0 and m_union["hd95"] < 1.0, (m_max["hd95"], m_union["hd95"])


def test_hd95_agrees_with_monai_on_random_blobs():
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((30, 28, 20)), 3) > 0.5
        b = ndimage.gaussian_filter(rng.random((30, 28, 20)), 3) > 0.5
        spacing = (0.9, 0.9, 1.5)
        ours = case_metrics(a, b, spacing)
        t = lambda x: torch.from_numpy(x[None, None].astype(np.float32))  # noqa: E731
        theirs = compute_hausdorff_distance(t(a), t(b), percentile=95, spacing=spacing)
        theirs_max = compute_hausdorff_distance(t(a), t(b), spacing=spacing)
        assert ours["hd95"] == pytest.approx(float(theirs), rel=1e-4)
        assert ours["hd"] == pytest.approx(float(theirs_max), rel=1e-4)


def test_summary_has_folds_pooled_and_ensemble():
    import pandas as pd

    rows = []
    for model, dices in {"fold0": [0.8, 0.6], "fold1": [0.7], "ensemble": [0.9, 0.7]}.items():
        for i, d in enumerate(dices):
            rows.append({"model": "unet", "predictor": model, "set": "test" if model == "ensemble" else "cv",
                         "subject": f"s{i}", "label": "lesion", "status": "ok", "dice": d, "iou": d,
                         "hd95": 1, "hd": 1, "avg_hd": 1, "vol_ref_mm3": 1, "vol_pred_mm3": 1, "vol_diff_mm3": 0,
                         "vol_diff_pct": 0})
    rows.append({"model": "unet", "predictor": "ensemble", "set": "test", "subject": "s9", "label": "lesion", "status": "empty_prediction", "dice": 0.0,
                 "iou": 0.0, "hd95": 50.0, "hd": 50.0, "avg_hd": 50.0, "vol_ref_mm3": 1, "vol_pred_mm3": 0,
                 "vol_diff_mm3": -1, "vol_diff_pct": -100})
    s = pd.DataFrame(summarise(rows))
    hd = s[s["metric"] == "hd95"].set_index("predictor")
    # the failed case is in the distance mean, and counted beside it
    assert hd.loc["ensemble", "mean"] == pytest.approx((1 + 1 + 50) / 3) and hd.loc["ensemble", "n"] == 3
    assert hd.loc["ensemble", "n_penalised"] == 1 and hd.loc["ensemble", "penalised_share"] == pytest.approx(1 / 3)
    assert hd.loc["fold0", "n_penalised"] == 0
    rows.pop()
    s = pd.DataFrame(summarise(rows))
    d = s[s["metric"] == "dice"].set_index("predictor")
    assert d.loc["fold0", "mean"] == pytest.approx(0.7) and d.loc["fold0", "sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert d.loc["cv_pooled", "n"] == 3 and d.loc["cv_pooled", "median"] == pytest.approx(0.7)
    assert d.loc["ensemble", "mean"] == pytest.approx(0.8)
    assert set(s["model"]) == {"unet"} and d.loc["cv_pooled", "set"] == "cv" and d.loc["ensemble", "set"] == "test"
