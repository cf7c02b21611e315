"""The demo's configs per training recipe: EDM's by default, the paper's as it was."""

from __future__ import annotations

import pytest

from scoresde.core.names import TRAINING_NAMES
from scoresde.jobs.demo import DEMO_TRAINING, demo_config
from scoresde.setup.presets import get_preset
from scoresde.setup.presets.edm import EDM_TRAINING, edm_training


def test_demo_trainings_are_the_named_ones():
    assert tuple(DEMO_TRAINING) == TRAINING_NAMES


def test_paper_demo_is_the_preset_as_before():
    cfg = demo_config(training="paper", device="cpu")
    preset = get_preset("digits_subvp")
    assert cfg.train.steps == 1800 and cfg.train.loss == "dsm"
    assert cfg.train.ema_decay == preset.train.ema_decay == 0.999
    assert cfg.model == preset.model and cfg.sde == preset.sde and cfg.sample == preset.sample


@pytest.mark.parametrize("sde", ["ve", "vp", "subvp"])
def test_edm_demo_is_edm_training_of_the_preset(sde):
    cfg = demo_config(sde, device="cpu")
    preset = get_preset(f"digits_{sde}")
    assert cfg.model == edm_training(preset).model
    assert cfg.model.parametrization == "edm" and cfg.model.embedding_type == "positional"
    assert cfg.model.scale_by_sigma is False and cfg.train.loss == "edm"
    assert (cfg.train.steps, cfg.train.ema_decay) == (3000, preset.train.ema_decay)
    assert (cfg.train.P_mean, cfg.train.P_std) == (-1.2, 1.2)
    # the SDE, data, network size and the run's default sampler (PC) stay the preset's
    assert cfg.sde == preset.sde and cfg.data == preset.data and cfg.sample == preset.sample
    assert (cfg.model.nf, cfg.model.ch_mult) == (preset.model.nf, preset.model.ch_mult)


def test_edm_training_sets_exactly_its_table():
    cfg = edm_training(get_preset("digits_ve"))
    for key, value in EDM_TRAINING.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value


def test_steps_and_overrides_win():
    cfg = demo_config(steps=50, overrides=["train.ema_decay=0.9"], device="cpu")
    assert (cfg.train.steps, cfg.train.ema_decay) == (50, 0.9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sde": "vv"}, "unknown sde 'vv'"),
        ({"training": "dsm"}, "unknown training 'dsm'"),
        ({"sde": "edm", "training": "paper"}, "only with --training edm"),
    ],
)
def test_bad_choices_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo_config(**kwargs)
