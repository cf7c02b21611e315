"""The networks a config can name: :data:`MODELS` maps ``ModelConfig.name`` to its class and
says where each constructor argument comes from (a model field, the data, the SDE).

:func:`scoresde.setup.build.build_model` builds from this table; the presets and the official-config
reader turn a network's keyword arguments back into a :class:`~scoresde.setup.config.ModelConfig`
(:func:`model_config_from_network`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from scoresde.setup.config import Config, ConfigError, ModelConfig


@dataclass(frozen=True)
class Option:
    """A constructor argument that a :class:`ModelConfig` field holds in another form."""

    field: str
    to_network: Callable[[Any], Any]
    from_network: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _zero_is_none(field_name: str) -> Option:
    """``0`` in the config is ``None`` for the network (no class embedding, automatic variant)."""
    return Option(field_name, lambda v: v or None, lambda v: v or 0)


_CLASSES = _zero_is_none("num_classes")

# SmallUNet has one attention block, at its lowest resolution: any non-empty attn_resolutions.
_ATTENTION_FLAG = Option("attn_resolutions", bool, lambda on: (1,) if on else ())

_CONTEXT: dict[str, Callable[[Config, tuple[int, ...]], Any]] = {
    "dim": lambda cfg, shape: shape[0],
    "in_channels": lambda cfg, shape: shape[0],
    "num_channels": lambda cfg, shape: shape[0],
    "image_size": lambda cfg, shape: shape[-1],
    "centered": lambda cfg, shape: cfg.data.centered,
    "sigma_min": lambda cfg, shape: cfg.sde.sigma_min,
    "sigma_max": lambda cfg, shape: cfg.sde.sigma_max,
    "num_scales": lambda cfg, shape: cfg.sde.N,
}
"""Constructor arguments filled from the data config (example shape, centring) and the SDE's."""


@dataclass(frozen=True)
class Network:
    """One architecture: its class, the data it takes and where each constructor argument
    comes from.

    ``options`` maps constructor arguments to the :class:`ModelConfig` fields holding them (an
    :class:`Option` where the two forms differ); ``context`` names the arguments filled from
    the data and SDE configs (``_CONTEXT``). Together they are exactly the parameters of the
    class's constructor (``inspect.signature``; checked by the tests).
    """

    module: str
    class_name: str
    ndim: int  # of one example: 1 for vectors (D,), 3 for images (C, H, W)
    options: Mapping[str, str | Option]
    context: tuple[str, ...]
    output: str = "score"  # "score": a score network; "logits": a noise-conditional classifier

    def network_class(self) -> type[nn.Module]:
        """The class (imported on first use)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def parameters(self) -> list[str]:
        """The constructor's parameter names, in order."""
        return list(inspect.signature(self.network_class()).parameters)

    def kwargs(self, cfg: Config, shape: tuple[int, ...]) -> dict[str, Any]:
        """The constructor's keyword arguments for ``cfg`` and examples of ``shape``."""
        out = {}
        for arg, option in self.options.items():
            option = _as_option(option)
            out[arg] = option.to_network(getattr(cfg.model, option.field))
        out.update({arg: _CONTEXT[arg](cfg, shape) for arg in self.context})
        return out

    def model_fields(self, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The :class:`ModelConfig` fields held in constructor ``kwargs`` (``context`` keys are
        dropped: they belong to the data and SDE configs).

        Raises:
            ConfigError: a key that is not a parameter of the constructor (unknown, misspelt, or
                an option of another network), named in a one-line message.
        """
        parameters = self.parameters()
        fields = {}
        for key, value in kwargs.items():
            if key not in parameters:
                close = difflib.get_close_matches(key, parameters, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"its options: {parameters}"
                raise ConfigError(
                    f"{key!r} is not an option of {self.class_name} (model {name!r}); {hint}"
                )
            if key in self.context:
                continue
            if key not in self.options:
                raise ConfigError(
                    f"{self.class_name} option {key!r} has no ModelConfig field (model {name!r})"
                )
            option = _as_option(self.options[key])
            fields[option.field] = option.from_network(value)
        return fields


def _as_option(option: str | Option) -> Option:
    return Option(option, _same, _same) if isinstance(option, str) else option


_EMBEDDING = {name: name for name in ("embedding_type", "fourier_scale", "scale_by_sigma")}
_UNET = {  # options NCSN++ and DDPM share
    **{name: name for name in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout")},
    **{name: name for name in ("resamp_with_conv", "conditional", "nonlinearity")},
    "num_classes": _CLASSES,
}
_IMAGE_CONTEXT = ("image_size", "num_channels", "centered", "sigma_min", "sigma_max", "num_scales")

MODELS: dict[str, Network] = {
    "mlp": Network(
        "scoresde.nn.mlp",
        "ScoreMLP",
        1,
        {"hidden": "hidden", "depth": "depth", **_EMBEDDING, "num_classes": _CLASSES},
        ("dim",),
    ),
    "unet": Network(
        "scoresde.nn.unet",
        "SmallUNet",
        3,
        {
            "base_channels": "nf",
            "channel_mults": "ch_mult",
            "num_res_blocks": "num_res_blocks",
            "attention": _ATTENTION_FLAG,
            "dropout": "dropout",
            **_EMBEDDING,
            "num_classes": _CLASSES,
        },
        ("in_channels",),
    ),
    "ncsnpp": Network(
        "scoresde.nn.ncsnpp",
        "NCSNpp",
        3,
        {
            **_UNET,
            **_EMBEDDING,
            **{
                name: name
                for name in (
                    "resblock_type",
                    "fir",
                    "fir_kernel",
                    "skip_rescale",
                    "progressive",
                    "progressive_input",
                    "progressive_combine",
                    "init_scale",
                )
            },
        },
        _IMAGE_CONTEXT,
    ),
    "ddpm": Network(
        "scoresde.nn.ddpm", "DDPM", 3, {**_UNET, "scale_by_sigma": "scale_by_sigma"}, _IMAGE_CONTEXT
    ),
    "ncsn": Network(
        "scoresde.nn.ncsn",
        "NCSN",
        3,
        {"nf": "nf", "nonlinearity": "nonlinearity"},
        ("image_size", "num_channels", "centered", "num_scales"),
    ),
    "ncsnv2": Network(
        "scoresde.nn.ncsn",
        "NCSNv2",
        3,
        {"nf": "nf", "nonlinearity": "nonlinearity", "variant": _zero_is_none("ncsnv2_variant")},
        _IMAGE_CONTEXT,
    ),
    "wideresnet": Network(
        "scoresde.nn.classifiers",
        "NoiseConditionalWideResNet",
        3,
        {
            **{name: name for name in ("num_classes", "depth", "widen_factor", "dropout")},
            "fourier_scale": "fourier_scale",
        },
        ("in_channels",),
        output="logits",
    ),
    "mlp_classifier": Network(
        "scoresde.nn.classifiers",
        "NoiseConditionalMLPClassifier",
        1,
        {name: name for name in ("num_classes", "hidden", "depth", "fourier_scale")},
        ("dim",),
        output="logits",
    ),
}
"""Each architecture (``ModelConfig.name``) and how a config fills its constructor."""


def model_config_from_network(
    name: str, kwargs: dict[str, Any], *, continuous: bool, **changes: Any
) -> ModelConfig:
    """A :class:`ModelConfig` from the keyword arguments of network ``name``'s class (a network
    preset of :mod:`scoresde.setup.presets`, or an official config's network).

    Every key must be a parameter of that class's constructor (:data:`MODELS`, checked with
    ``inspect.signature``). Those held by model fields become the fields (NCSNv2's ``variant``
    is ``ncsnv2_variant``, ``num_classes=None`` is 0); those that belong to the data and SDE
    configs (image size, channels, ``centered``, the noise scales and their number) are dropped.
    ``changes`` override individual kwargs first.

    Raises:
        ConfigError: an unknown model, or a key the network does not take (unknown, misspelt, or
            another network's option), named in a one-line message.
    """
    values = network_definition(name).model_fields(name, {**kwargs, **changes})
    return ModelConfig(name=name, continuous=continuous, **values)


def network_definition(name: str) -> Network:
    """``MODELS[name]``; ``ConfigError`` (a ``ValueError``) listing the choices otherwise."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {list(MODELS)}")
    return MODELS[name]


# The network conventions of each SDE kind (appendix H): VE networks output the score and are
# conditioned on sigma (continuous) or the NCSN noise index (discrete); VP and sub-VP networks
# predict the noise and are conditioned on 999 t (continuous) or the DDPM step index (discrete).
