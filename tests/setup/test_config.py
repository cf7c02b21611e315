"""Typed configs: presets build, overrides are type-checked, JSON round trips."""

import json

import pytest
import torch

from scoresde.core.score import ScoreModel
from scoresde.core.sdes import VESDE, VPSDE, SubVPSDE
from scoresde.setup.build import build_loss, build_model, build_sde, sampler_config
from scoresde.setup.config import Config, ConfigError
from scoresde.setup.config_io import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from scoresde.setup.data.pipeline import data_shape
from scoresde.setup.presets import PRESETS, get_preset
from scoresde.setup.presets.small import SMALL_PRESETS


@pytest.mark.parametrize("name", sorted(SMALL_PRESETS))
def test_small_presets_build_and_run(name):
    cfg = get_preset(name)
    shape = data_shape(cfg.data)
    model = build_model(cfg)
    sde = build_sde(cfg.sde)
    x = torch.zeros(2, *shape)
    labels = ScoreModel(model, sde).network_labels(torch.full((2,), 0.5))
    assert model(x, labels).shape == x.shape
    sampler_config(cfg.sample)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = get_preset(name)
    assert load_config(save_config(cfg, tmp_path / "c.json")) == cfg


def test_sde_kinds_map_to_classes():
    kinds = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
    for kind, cls in kinds.items():
        assert type(build_sde(Config().sde.__class__(kind=kind))) is cls
    with pytest.raises(ValueError, match="unknown sde 'xx'"):
        build_sde(Config().sde.__class__(kind="xx"))


def test_overrides_convert_to_declared_types():
    cfg = apply_overrides(
        Config(),
        [
            "train.lr=1e-4",
            "train.steps=12",
            "model.ch_mult=1,2,2",
            "data.centered=false",
            "sample.predictor=euler_maruyama",
            "seed=7",
        ],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.model.ch_mult == (1, 2, 2)
    assert cfg.data.centered is False
    assert cfg.sample.predictor == "euler_maruyama"
    assert cfg.seed == 7


@pytest.mark.parametrize(
    "bad, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosection.x=1", "unknown config key"),
        ("train.steps=ten", "cannot parse 'ten' as int"),
        ("data.centered=maybe", "cannot parse 'maybe' as bool"),
        ("train=3", "unknown config key 'train'"),
        ("train.steps", "not of the form key=value"),
    ],
)
def test_bad_overrides_raise_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(Config(), [bad])
    assert "\n" not in str(info.value)


def test_config_from_dict_rejects_unknown_keys(tmp_path):
    d = config_to_dict(Config())
    d["train"]["typo"] = 1
    with pytest.raises(ConfigError, match="typo"):
        config_from_dict(d)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    assert json.loads(json.dumps(config_to_dict(Config())))["model"]["ch_mult"] == [1, 2]


def test_discrete_losses_need_ve_or_vp():
    cfg = apply_overrides(get_preset("digits_vp"), ["model.continuous=false"])
    build_loss(cfg, build_sde(cfg.sde))
    cfg = apply_overrides(cfg, ["sde.kind=subvp"])
    with pytest.raises(ValueError, match="discrete-time training"):
        build_loss(cfg, build_sde(cfg.sde))


def test_unknown_sampler_names_are_rejected():
    with pytest.raises(ValueError, match="unknown corrector 'langevinn'"):
        apply_overrides(Config(), ["sample.corrector=langevinn"])


@pytest.mark.parametrize("bad, message", [
    ("train.steps=-5", "train.steps must be >= 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.ema_decay=1.5", "train.ema_decay must be in"),
    ("train.reduce=median", "train.reduce must be mean or sum"),
    ("sample.num_steps=0", "sample.num_steps must be >= 1"),
    ("eval.rtol=0", "eval.rtol/eval.atol must be > 0"),
])
def test_out_of_range_values_are_rejected(bad, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [bad])


def test_demo_rejects_negative_steps(capsys):
    from scoresde.cli import main

    assert main(["demo", "--steps", "-5", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "--steps must be >= 1, got -5" in err and len(err.strip().splitlines()) == 1


def test_overrides_of_a_section_are_checked_together():
    """Checks that relate two fields see the final values whatever the order of the overrides;
    the last value of a key wins, and a combination that is still bad is refused in one line."""
    cfg = apply_overrides(
        Config(), ["train.importance_sampling=true", "train.likelihood_weighting=true"]
    )
    assert cfg.train.importance_sampling and cfg.train.likelihood_weighting
    cfg = apply_overrides(Config(), ["eval.method=rk4", "eval.num_steps=8", "eval.num_steps=16"])
    assert (cfg.eval.method, cfg.eval.num_steps) == ("rk4", 16)
    with pytest.raises(ConfigError, match=r"eval\.num_steps"):
        apply_overrides(Config(), ["eval.num_steps=8", "eval.method=rk4", "eval.num_steps=0"])
