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


def test_empty_masks_are_reported_not_nan():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    both = case_metrics(z, z, (1, 1, 1))
    assert both["status"] == "both_empty" and both["dice"] == 1.0 and math.isnan(both["hd95"])
    ep = case_metrics(z, one, (1, 1, 1))
    assert ep["status"] == "empty_prediction" and ep["dice"] == 0.0 and ep["vol_diff_pct"] == -100
    er = case_metrics(one, z, (1, 1, 1))
    assert er["status"] == "empty_reference" and er["dice"] == 0.0 and math.isnan(er["vol_diff_pct"])


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
            rows.append({"model": model, "subject": f"s{i}", "label": "lesion", "status": "ok", "dice": d, "iou": d,
                         "hd95": 1, "hd": 1, "avg_hd": 1, "vol_ref_mm3": 1, "vol_pred_mm3": 1, "vol_diff_mm3": 0,
                         "vol_diff_pct": 0})
    s = summarise(pd.DataFrame(rows))
    d = s[s["metric"] == "dice"].set_index("model")
    assert d.loc["fold0", "mean"] == pytest.approx(0.7) and d.loc["fold0", "sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert d.loc["cv_pooled", "n"] == 3 and d.loc["cv_pooled", "median"] == pytest.approx(0.7)
    assert d.loc["ensemble", "mean"] == pytest.approx(0.8)
