"""EDM's preconditioning and loss in the configs, builds, presets and the command line."""

import json

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde.core.config_errors import ConfigError
from scoresde.core.names import LOSS_NAMES, NETWORK_CONVENTIONS, PARAMETRIZATION_NAMES, SDE_NAMES
from scoresde.core.score import PARAMETRIZATIONS, ScoreModel
from scoresde.core.sdes import EDMSDE
from scoresde.methods.losses import LOSSES, edm_loss
from scoresde.setup.build import build_loss, build_model, build_score_fn, build_sde
from scoresde.setup.config import Config, SDEConfig
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.presets import PRESETS, get_preset


def _one_line(cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        apply_overrides(cfg, overrides)
    assert "\n" not in str(info.value)


def test_name_lists_agree():
    assert tuple(NETWORK_CONVENTIONS) == SDE_NAMES
    for kind in SDE_NAMES:  # the SDE classes read their convention from the one table
        assert build_sde(SDEConfig(kind=kind)).network_convention == NETWORK_CONVENTIONS[kind]
    assert PARAMETRIZATION_NAMES == PARAMETRIZATIONS and LOSS_NAMES == LOSSES
    assert {"digits_edm", "edm_cifar10_ddpmpp"} <= set(PRESETS)


@pytest.mark.parametrize(
    "preset, overrides, match",
    [
        ("digits_vp", ["model.parametrization=edm", "model.continuous=false"], "continuous"),
        ("digits_vp", ["sde.kind=edm", "model.continuous=false"], "continuous"),
        ("digits_ve", ["sde.kind=edm"], "embedding_type=positional"),
        ("digits_ve", ["model.parametrization=edm"], "embedding_type=positional"),
        ("digits_vp", ["model.parametrization=edm", "model.scale_by_sigma=true"], "scale_by"),
        ("digits_vp", ["train.loss=edm", "train.likelihood_weighting=true"], "own weighting"),
        ("digits_vp", ["train.loss=edm", "model.continuous=false"], "continuous-time"),
        ("digits_vp", ["train.loss=x0"], "unknown train.loss 'x0'"),
        ("digits_vp", ["model.parametrization=x0"], "model.parametrization"),
        ("digits_vp", ["model.sigma_data=0"], "sigma_data must be > 0"),
        ("digits_vp", ["model.sigma_data=nan"], "finite"),
        ("digits_vp", ["train.P_std=-1"], "P_std"),
        ("digits_vp", ["sde.kind=edmm"], "unknown sde 'edmm'"),
    ],
)
def test_bad_edm_combinations_are_one_line_config_errors(preset, overrides, match):
    _one_line(get_preset(preset), overrides, match)


def test_edm_parametrization_is_allowed_on_any_sde():
    cfg = apply_overrides(get_preset("digits_vp"), ["model.parametrization=edm", "train.loss=edm"])
    score = build_score_fn(build_model(cfg), build_sde(cfg.sde), cfg)
    assert (score.parametrization, score.labels) == ("edm", "c_noise")
    assert type(build_sde(SDEConfig(kind="edm"))) is EDMSDE


def test_digits_edm_builds_an_edm_score_model():
    cfg = get_preset("digits_edm")
    sde = build_sde(cfg.sde)
    assert sde == EDMSDE(sigma_min=0.002, sigma_max=80.0, N=1000)
    score = build_score_fn(build_model(cfg), sde, cfg)
    assert isinstance(score, ScoreModel)
    assert (score.parametrization, score.labels, score.sigma_data) == ("edm", "c_noise", 0.5)
    method, options = cfg.sample.method, cfg.sample.options
    assert (method, options) == ("heun", {"num_steps": 9, "grid": "edm", "eps": 0.002})
    # The default ("") parametrization of sde.kind=edm is EDM's too.
    plain = apply_overrides(cfg, ["model.parametrization="])
    assert build_score_fn(build_model(plain), sde, plain).parametrization == "edm"


def test_digits_edm_loss_is_edm_loss():
    cfg = get_preset("digits_edm")
    sde = build_sde(cfg.sde)
    score = build_score_fn(build_model(cfg), sde, cfg)
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = build_loss(cfg, sde)(score, x0, torch.Generator().manual_seed(3))
    want = edm_loss(sde, score, x0, P_mean=-1.2, P_std=1.2, sigma_data=0.5, eps=cfg.train.eps,
                    reduce="mean", generator=torch.Generator().manual_seed(3))
    assert got.shape == (8,) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_edm_cifar10_preset_is_the_ddpmpp_network():
    cfg, vp = get_preset("edm_cifar10_ddpmpp"), get_preset("vp_cifar10_ddpmpp_continuous")
    with torch.device("meta"):
        n_edm = sum(p.numel() for p in build_model(cfg).parameters())
        n_vp = sum(p.numel() for p in build_model(vp).parameters())
    assert n_edm == n_vp == 61_804_419
    assert cfg.model.dropout == 0.13 and cfg.model.parametrization == "edm"
    t = cfg.train
    assert (t.loss, t.lr, t.batch_size, t.steps) == ("edm", 1e-3, 512, 390_625)
    assert t.ema_decay == pytest.approx(0.5 ** (512 / 500_000))
    assert cfg.sample.options == {"num_steps": 17, "grid": "edm", "eps": 0.002}
    build_loss(cfg, build_sde(cfg.sde))


def test_train_and_sample_digits_edm_on_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--preset", "digits_edm", "--out", str(run), "--steps", "3",
            "--no-progress", "--threads", "1", "--device", "cpu", "--set", "train.batch_size=16"]
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["loss"] == "edm" and saved["sde"]["kind"] == "edm"
    capsys.readouterr()
    out = tmp_path / "samples"
    argv = ["sample", "--checkpoint", str(run), "--out", str(out), "--num-samples", "4",
            "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "heun" and info["nfe"] == 19  # 9 Heun steps and the denoising step
    samples = np.load(out / "samples.npy")
    assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all()


def test_toy_moons_trains_with_the_edm_sde(tmp_path):
    argv = ["train", "--preset", "toy_moons", "--out", str(tmp_path), "--steps", "3",
            "--no-progress", "--threads", "1", "--device", "cpu", "--set", "sde.kind=edm",
            "--set", "train.batch_size=64"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["sde"]["kind"] == "edm"


def test_default_config_is_unchanged():
    cfg = Config()
    assert (cfg.model.parametrization, cfg.model.sigma_data) == ("", 0.5)
    assert (cfg.train.loss, cfg.train.P_mean, cfg.train.P_std) == ("dsm", -1.2, 1.2)
