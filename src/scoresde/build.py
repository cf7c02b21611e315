"""The one place where config strings meet objects: SDEs, networks, losses, sampler options."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.classifier import NoiseClassifier
from scoresde.config import Config, ConfigError, ModelConfig, SampleConfig, SDEConfig
from scoresde.data.pipeline import data_shape
from scoresde.losses import ddpm_loss, dsm_loss, smld_loss
from scoresde.sampling import check_sampler
from scoresde.score import ScoreFn, ScoreModel, make_score_fn
from scoresde.sdes import SDE, VESDE, VPSDE, SubVPSDE
from scoresde.seeding import derive_seed, private_global_rng

LossFn = Callable[[ScoreFn, Tensor, "torch.Generator | None"], Tensor]


def build_sde(cfg: SDEConfig) -> SDE:
    """The SDE named by ``cfg.kind`` (``"ve"``, ``"vp"``, ``"subvp"``)."""
    if cfg.kind == "ve":
        return VESDE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, N=cfg.N)
    if cfg.kind == "vp":
        return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.N)
    if cfg.kind == "subvp":
        return SubVPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.N)
    raise ValueError(f"unknown sde {cfg.kind!r}; choose from ['subvp', 've', 'vp']")


def build_model(cfg: Config) -> nn.Module:
    """The score network of ``cfg.model`` for ``cfg.data``'s example shape, on the CPU.

    The only place a network is built from a config: ``MODELS[cfg.model.name]`` says where each
    constructor argument comes from. The image networks also get the image size and channels
    from the data, whether data is centred, and the noise scales of the SDE (which fill the
    official ``sigmas`` buffer). The initial weights are a function of ``cfg.seed`` alone (the
    ``"init"`` stream of :mod:`scoresde.seeding`): the same config gives bit-identical weights
    in every process, and the caller's global RNG state is left as it was.
    """
    with private_global_rng(derive_seed(cfg.seed, "init")):
        return _build_network(cfg)


def _build_network(cfg: Config) -> nn.Module:
    shape = data_shape(cfg.data)
    net = network_definition(cfg.model.name)
    if len(shape) != net.ndim:
        what = "vector data (D,)" if net.ndim == 1 else "image data (C, H, W)"
        raise ValueError(
            f"model {cfg.model.name!r} needs {what}, got examples of shape {shape}"
        )
    return net.network_class()(**net.kwargs(cfg, shape))


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


def is_classifier(cfg: Config) -> bool:
    """Whether ``cfg`` describes a noise-conditional classifier run (a ``"logits"`` network of
    :data:`MODELS`) rather than a score model."""
    return network_definition(cfg.model.name).output == "logits"


def build_classifier_fn(
    model: nn.Module, sde: SDE, *, compute_dtype: torch.dtype | None = None
) -> NoiseClassifier:
    """The classifier network ``model`` as ``log_prob_fn(x, t) -> (B, K)`` logits for ``sde``
    (:class:`~scoresde.classifier.NoiseClassifier`)."""
    return NoiseClassifier(model, sde, compute_dtype=compute_dtype)


def model_config_from_network(
    name: str, kwargs: dict[str, Any], *, continuous: bool, **changes: Any
) -> ModelConfig:
    """A :class:`ModelConfig` from the keyword arguments of network ``name``'s class (a network
    preset of :mod:`scoresde.presets`, or an official config's network).

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
SCORE_CONVENTIONS: dict[str, dict[str, str]] = {
    "ve": {"parametrization": "score", "labels": "sigma"},
    "vp": {"parametrization": "eps", "labels": "time"},
    "subvp": {"parametrization": "eps", "labels": "time"},
}


def build_score_fn(
    model: nn.Module, sde: SDE, cfg: Config | ModelConfig, **kwargs: Any
) -> ScoreModel:
    """The :class:`~scoresde.ScoreModel` of ``model`` with the config's conventions.

    With the full :class:`Config`, everything is explicit: time from ``cfg.model.continuous``,
    the output parametrization and the labels from ``cfg.sde.kind`` (``SCORE_CONVENTIONS``).
    A bare :class:`ModelConfig` (older callers) gives the time convention only, and the rest is
    derived from ``sde`` (see :class:`~scoresde.ScoreModel`). ``kwargs`` (``model_kwargs``,
    ``compute_dtype``, or an explicit ``parametrization`` / ``labels``) go to
    :func:`~scoresde.make_score_fn` and take precedence.
    """
    if isinstance(cfg, Config):
        if cfg.sde.kind not in SCORE_CONVENTIONS:
            raise ValueError(
                f"unknown sde {cfg.sde.kind!r}; choose from {sorted(SCORE_CONVENTIONS)}"
            )
        kwargs = {**SCORE_CONVENTIONS[cfg.sde.kind], **kwargs}
        cfg = cfg.model
    return make_score_fn(model, sde, continuous=cfg.continuous, **kwargs)


def build_loss(cfg: Config, sde: SDE) -> LossFn:
    """``loss(score_fn, x0, generator) -> (B,)``: continuous DSM, or SMLD/DDPM when discrete."""
    t = cfg.train
    if cfg.model.continuous:

        def continuous_loss(score_fn: ScoreFn, x0: Tensor, generator) -> Tensor:
            return dsm_loss(
                sde,
                score_fn,
                x0,
                eps=t.eps,
                reduce=t.reduce,
                generator=generator,
                likelihood_weighting=t.likelihood_weighting,
            )

        return continuous_loss
    if cfg.sde.kind == "ve":
        return lambda score_fn, x0, g: smld_loss(sde, score_fn, x0, reduce=t.reduce, generator=g)
    if cfg.sde.kind == "vp":
        return lambda score_fn, x0, g: ddpm_loss(sde, score_fn, x0, reduce=t.reduce, generator=g)
    raise ValueError("discrete-time training (model.continuous=false) needs sde.kind ve or vp")


def sampler_config(cfg: SampleConfig, method: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` for :func:`scoresde.sample` from the sampling config, checked.

    ``method`` overrides ``cfg.method``. The PC sampler takes the predictor, corrector,
    ``snr``, ``n_steps``, ``num_steps``, ``eps`` and ``denoise``; the ODE sampler the
    tolerances ``ode_rtol``/``ode_atol``, ``eps`` and ``denoise``; the few-step ODE samplers
    (``ddim``, ``heun``, ``dpmpp_2m``, ``dpmpp_3m``) ``num_steps``, ``eps``, ``denoise``,
    ``rho`` and ``grid`` (only when set: empty keeps the sampler's own default grid); EDM's
    stochastic sampler (``edm``) ``num_steps``, ``eps``, ``rho``, ``s_churn``, ``s_noise`` and
    ``denoise``; the adaptive SDE solver (``adaptive``) ``adaptive_rtol``/``adaptive_atol``
    (0: its default), ``eps`` and ``denoise``.
    """
    method = method or cfg.method
    few_step = dict(num_steps=cfg.num_steps, eps=cfg.eps, denoise=cfg.denoise, rho=cfg.rho)
    if cfg.grid:
        few_step["grid"] = cfg.grid
    fields = {
        "pc": dict(
            predictor=cfg.predictor,
            corrector=cfg.corrector,
            snr=cfg.snr,
            n_steps=cfg.n_steps,
            num_steps=cfg.num_steps,
            eps=cfg.eps,
            denoise=cfg.denoise,
        ),
        "ode": dict(rtol=cfg.ode_rtol, atol=cfg.ode_atol, eps=cfg.eps, denoise=cfg.denoise),
        **{name: dict(few_step) for name in ("ddim", "heun", "dpmpp_2m", "dpmpp_3m")},
        "edm": dict(
            num_steps=cfg.num_steps,
            eps=cfg.eps,
            rho=cfg.rho,
            s_churn=cfg.s_churn,
            s_noise=cfg.s_noise,
            denoise=cfg.denoise,
        ),
        "adaptive": dict(
            rtol=cfg.adaptive_rtol,
            atol=cfg.adaptive_atol or None,
            eps=cfg.eps,
            denoise=cfg.denoise,
        ),
    }
    options = fields.get(method, {})
    check_sampler(method, options)
    return method, options
