"""Network options: one definition per architecture (``scoresde.setup.networks.MODELS``), checked
against
the network's constructor, so that an unknown or misspelt key is an error, not silently dropped."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from scoresde.setup.build import build_model
from scoresde.setup.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    SDEConfig,
)
from scoresde.setup.data.pipeline import data_shape
from scoresde.setup.networks import (
    _CONTEXT,
    MODELS,
    Option,
    model_config_from_network,
    network_definition,
)
from scoresde.setup.presets import networks_baselines, networks_ncsnpp

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}

NETWORK_PRESETS = [
    *(("ncsnpp", name, fn) for name, fn in sorted(networks_ncsnpp.PRESETS.items())),
    *(
        (networks_baselines.PRESET_NETWORKS[name].__name__.lower(), name, fn)
        for name, fn in sorted(networks_baselines.PRESETS.items())
    ),
]


@pytest.mark.parametrize("name", list(MODELS))
def test_each_definition_is_exactly_its_constructor(name):
    """Every constructor parameter comes from one place: a model field or the data/SDE configs."""
    net = MODELS[name]
    parameters = list(inspect.signature(net.network_class()).parameters)
    assert net.parameters() == parameters
    assert set(net.options) | set(net.context) == set(parameters)
    assert not set(net.options) & set(net.context)
    assert set(net.context) <= set(_CONTEXT)
    for option in net.options.values():
        field_name = option.field if isinstance(option, Option) else option
        assert field_name in MODEL_FIELDS, (name, field_name)


@pytest.mark.parametrize(
    "name, key, hint",
    [
        ("ncsnpp", "progresive", "did you mean 'progressive'?"),  # misspelt
        ("ncsnpp", "embeding_type", "did you mean 'embedding_type'?"),
        ("ncsnv2", "variants", "did you mean 'variant'?"),
        ("ddpm", "fir", "its options"),  # an NCSN++ option DDPM does not take
        ("ncsn", "sigma_max", "its options"),  # NCSN has no sigmas buffer
        ("ncsnpp", "ncsnv2_variant", "its options"),  # a model field, not a constructor argument
        ("ncsnpp", "continuous", "its options"),
        ("mlp", "nf", "its options"),
    ],
)
def test_unknown_or_misspelt_network_key_is_a_one_line_config_error(name, key, hint):
    with pytest.raises(ConfigError) as info:
        model_config_from_network(name, {key: 1}, continuous=True)
    message = str(info.value)
    assert repr(key) in message and hint in message and "\n" not in message


def test_misspelt_key_in_changes_is_an_error_too():
    kwargs = networks_ncsnpp.ncsnpp_cifar10_continuous()
    with pytest.raises(ConfigError, match="'scale_by_sigmaa'"):
        model_config_from_network("ncsnpp", kwargs, continuous=True, scale_by_sigmaa=False)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'ncsnpp2'"):
        model_config_from_network("ncsnpp2", {}, continuous=True)
    with pytest.raises(ValueError, match="unknown model 'ncsnpp2'"):
        build_model(Config(model=ModelConfig(name="ncsnpp2")))


@pytest.mark.parametrize(
    "arch, preset", [(arch, fn) for arch, _, fn in NETWORK_PRESETS],
    ids=[name for _, name, _ in NETWORK_PRESETS],
)
def test_every_network_preset_converts_without_loss(arch, preset):
    """preset kwargs -> ModelConfig (+ the data and SDE configs) -> the same constructor kwargs."""
    kwargs = preset()
    model = model_config_from_network(arch, kwargs, continuous=True)
    cfg = Config(
        data=DataConfig(
            dataset="folder", image_size=kwargs["image_size"], centered=kwargs["centered"]
        ),
        sde=SDEConfig(
            kind="ve",
            sigma_min=kwargs.get("sigma_min", 0.01),
            sigma_max=kwargs.get("sigma_max", 50.0),
            N=kwargs["num_scales"],
        ),
        model=model,
    )
    net = network_definition(arch)
    built = net.kwargs(cfg, data_shape(cfg.data))
    assert {key: built[key] for key in kwargs} == kwargs
    defaults = inspect.signature(net.network_class()).parameters
    assert all(built[key] == defaults[key].default for key in set(built) - set(kwargs))


def test_zero_means_none_for_class_count_and_ncsnv2_variant():
    unconditional = model_config_from_network("ncsnpp", {"num_classes": None}, continuous=True)
    assert unconditional.num_classes == 0
    v2 = model_config_from_network("ncsnv2", {"variant": 128}, continuous=False)
    assert v2.ncsnv2_variant == 128
    cfg = Config(data=DataConfig(dataset="folder", image_size=32), model=v2)
    assert network_definition("ncsnv2").kwargs(cfg, data_shape(cfg.data))["variant"] == 128
    auto = Config(data=cfg.data, model=ModelConfig(name="ncsnv2"))
    assert network_definition("ncsnv2").kwargs(auto, (3, 32, 32))["variant"] is None
