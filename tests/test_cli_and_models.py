import hashlib
import subprocess
import sys

import pytest
import torch

STAGES = ["demo-cohort", "index", "select", "convert", "preprocess", "split", "train", "ensemble", "export", "infer", "metrics"]


def test_cli_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "cohortseg.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


def test_cli_reports_bad_config_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: {folds: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "cohortseg.cli", "split", "-c", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid configuration" in proc.stderr


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_from_its_seed(tmp_path):
    from cohortseg.demo_cohort import generate

    generate(tmp_path / "a", n_subjects=3, seed=11, size="tiny")
    generate(tmp_path / "b", n_subjects=3, seed=11, size="tiny")
    generate(tmp_path / "c", n_subjects=3, seed=12, size="tiny")
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


@pytest.mark.parametrize("model", ["unet", "unetr", "segresnet"])
@pytest.mark.parametrize("n_labels", [1, 2])
def test_models_train_a_step_and_round_trip_weights_only(tmp_path, model, n_labels):
    from cohortseg.config import load
    from cohortseg.model import build_loss, build_model, load_model, n_outputs, probabilities, save_model, target

    cfg = load(None, {"train": {"model": model, "base_filters": 4, "levels": 3, "unetr_hidden_size": 48,
                                "unetr_heads": 4, "unetr_feature_size": 8},
                      "preprocess": {"size": [32, 32, 32]}, "labels": [f"l{i}" for i in range(n_labels)]})
    torch.manual_seed(0)
    from cohortseg.settings import TrainSettings

    net = build_model(TrainSettings.from_dict(cfg["train"]), n_labels, [32, 32, 32])
    x = torch.randn(2, 1, 32, 32, 32)
    y = torch.randint(0, n_labels + 1, (2, 1, 32, 32, 32))
    logits = net(x)
    assert logits.shape == (2, n_outputs(n_labels), 32, 32, 32)
    loss = build_loss(0.5, n_labels)(logits, target(y, n_labels))
    loss.backward()
    assert torch.isfinite(loss)
    p = probabilities(logits, n_labels)
    if n_labels > 1:
        torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 32, 32, 32))
    save_model(tmp_path / "m.pt", net, {"train": cfg["train"], "labels": cfg["labels"], "size": [32, 32, 32],
                                        "input_padding": "image_minimum"})
    net2, meta = load_model(tmp_path / "m.pt")
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net2(x))


def test_flip_tta_averages_the_mirrored_predictions():
    """Test-time flips: a mirror-equivariant model gives the plain prediction back; any other model gives
    the mean over the 8 mirrorings, each mirrored back (computed here by hand)."""
    import itertools

    from cohortseg.infer import average_probabilities, network_predictor

    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 8, 10)
    ramp = torch.linspace(-2, 2, 10)

    class Equivariant(torch.nn.Module):  # voxel-wise: mirroring commutes with it
        def forward(self, v):
            return v * 3

    class Ramped(torch.nn.Module):  # depends on position along the last axis
        def forward(self, v):
            return v + ramp

    def avg(model, tta=False):  # one window covering the image: the sliding pass is the network itself
        return average_probabilities([network_predictor(model, 1)], x, [6, 8, 10], "image_minimum", tta_flip=tta)

    plain = avg(Equivariant())
    torch.testing.assert_close(plain, torch.sigmoid(x * 3))
    torch.testing.assert_close(avg(Equivariant(), True), plain)
    by_hand = []
    for k in range(4):
        for dims in itertools.combinations((2, 3, 4), k):
            v = torch.flip(x, dims) if dims else x
            p = torch.sigmoid(Ramped()(v))
            by_hand.append(torch.flip(p, dims) if dims else p)
    assert len(by_hand) == 8
    got = avg(Ramped(), True)
    torch.testing.assert_close(got, torch.stack(by_hand).mean(0))
    assert not torch.allclose(got, avg(Ramped()))
