"""The one place where config strings meet objects: SDEs, networks, losses, sampler options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.core.classifier import NoiseClassifier
from scoresde.core.names import SDE_NAMES
from scoresde.core.score import ScoreFn, ScoreModel, make_score_fn
from scoresde.core.sdes import EDMSDE, SDE, VESDE, VPSDE, SubVPSDE
from scoresde.core.seeding import derive_seed, private_global_rng
from scoresde.methods.losses import check_loss, ddpm_loss, dsm_loss, edm_loss, smld_loss
from scoresde.methods.sampling import check_sampler
from scoresde.setup.config import Config, ModelConfig, SampleConfig, SDEConfig
from scoresde.setup.config_rules import sample_for_method
from scoresde.setup.data.pipeline import data_shape
from scoresde.setup.networks import network_definition

LossFn = Callable[[ScoreFn, Tensor, "torch.Generator | None"], Tensor]


def build_sde(cfg: SDEConfig) -> SDE:
    """The SDE named by ``cfg.kind`` (``"ve"``, ``"vp"``, ``"subvp"``, ``"edm"``)."""
    if cfg.kind == "ve":
        return VESDE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, N=cfg.N)
    if cfg.kind == "vp":
        return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.N)
    if cfg.kind == "subvp":
        return SubVPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.N)
    if cfg.kind == "edm":
        return EDMSDE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, N=cfg.N)
    raise ValueError(f"unknown sde {cfg.kind!r}; choose from {', '.join(SDE_NAMES)}")


def build_model(cfg: Config) -> nn.Module:
    """The score network of ``cfg.model`` for ``cfg.data``'s example shape, on the CPU.

    The only place a network is built from a config: ``MODELS[cfg.model.name]`` says where each
    constructor argument comes from. The image networks also get the image size and channels
    from the data, whether data is centred, and the noise scales of the SDE (which fill the
    official ``sigmas`` buffer). The initial weights are a function of ``cfg.seed`` alone (the
    ``"init"`` stream of :mod:`scoresde.core.seeding`): the same config gives bit-identical weights
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


def is_classifier(cfg: Config) -> bool:
    """Whether ``cfg`` describes a noise-conditional classifier run (a ``"logits"`` network of
    :data:`MODELS`) rather than a score model."""
    return network_definition(cfg.model.name).output == "logits"


def build_classifier_fn(
    model: nn.Module, sde: SDE, *, compute_dtype: torch.dtype | None = None
) -> NoiseClassifier:
    """The classifier network ``model`` as ``log_prob_fn(x, t) -> (B, K)`` logits for ``sde``
    (:class:`~scoresde.core.classifier.NoiseClassifier`)."""
    return NoiseClassifier(model, sde, compute_dtype=compute_dtype)


def build_score_fn(
    model: nn.Module, sde: SDE, cfg: Config | ModelConfig, **kwargs: Any
) -> ScoreModel:
    """The :class:`~scoresde.ScoreModel` of ``model`` with the config's conventions.

    With the full :class:`Config`: time from ``cfg.model.continuous``, the output
    parametrization and the labels the SDE family's (``sde.network_convention``, read by
    :class:`~scoresde.ScoreModel`), or ``cfg.model.parametrization`` when set (its labels then
    derived by :class:`~scoresde.ScoreModel`: ``"c_noise"`` for ``"edm"``), and
    ``cfg.model.sigma_data``.
    A bare :class:`ModelConfig` (older callers) gives the time convention only, and the rest is
    derived from ``sde`` (see :class:`~scoresde.ScoreModel`). ``kwargs`` (``model_kwargs``,
    ``compute_dtype``, or an explicit ``parametrization`` / ``labels``) go to
    :func:`~scoresde.make_score_fn` and take precedence.
    """
    if isinstance(cfg, Config):
        if cfg.model.parametrization:
            kwargs = {"parametrization": cfg.model.parametrization, "labels": None, **kwargs}
        cfg = cfg.model
    kwargs.setdefault("sigma_data", cfg.sigma_data)
    return make_score_fn(model, sde, continuous=cfg.continuous, **kwargs)


SAMPLE_COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
"""``sample.compute_dtype`` as :class:`~scoresde.ScoreModel`'s ``compute_dtype``: ``None`` (no
autocast, the network as it is) for ``"float32"``, bf16 autocast for ``"bfloat16"``."""


def sample_compute_dtype(name: str) -> torch.dtype | None:
    """The ``compute_dtype`` of :class:`~scoresde.ScoreModel` for the ``sample.compute_dtype``
    name ``name`` (:data:`SAMPLE_COMPUTE_DTYPES`); an unknown name is a ``ValueError``."""
    if name not in SAMPLE_COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute dtype {name!r}; choose from {', '.join(SAMPLE_COMPUTE_DTYPES)}"
        )
    return SAMPLE_COMPUTE_DTYPES[name]


def compile_network(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` for sampling (``sample.compile``): the compiled module shares
    ``model``'s parameters, so later in-place updates of the weights (EMA) are seen by it. It
    compiles lazily, on its first call, and again for a new input shape or autocast state."""
    return torch.compile(model)


def build_sampling_score_fn(
    model: nn.Module, sde: SDE, cfg: Config, sample: SampleConfig | None = None,
    *, compiled: nn.Module | None = None,
) -> ScoreModel:
    """:func:`build_score_fn` of ``model`` with the sampling settings of ``sample`` (default
    ``cfg.sample``): the network under bf16 autocast for ``compute_dtype="bfloat16"`` (the score
    itself in float32, see :class:`~scoresde.ScoreModel`) and, when ``sample.compile``, the
    network ``compiled`` (a :func:`compile_network` of ``model``; built here when not given,
    which callers that sample many batches avoid by caching it, as
    :class:`scoresde.jobs.runs.TrainedModel` does)."""
    sample = cfg.sample if sample is None else sample
    net = model
    if sample.compile:
        net = compile_network(model) if compiled is None else compiled
    return build_score_fn(
        net, sde, cfg, compute_dtype=sample_compute_dtype(sample.compute_dtype)
    )


def build_loss(cfg: Config, sde: SDE) -> LossFn:
    """``loss(score_fn, x0, generator) -> (B,)``: continuous DSM or EDM's loss
    (``train.loss``), or SMLD/DDPM when discrete."""
    t = cfg.train
    check_loss(t.loss, continuous=cfg.model.continuous,
               likelihood_weighting=t.likelihood_weighting,
               importance_sampling=t.importance_sampling)
    if t.loss == "edm":

        def edm(score_fn: ScoreFn, x0: Tensor, generator) -> Tensor:
            return edm_loss(sde, score_fn, x0, P_mean=t.P_mean, P_std=t.P_std,
                            sigma_data=cfg.model.sigma_data, eps=t.eps, reduce=t.reduce,
                            generator=generator)

        return edm
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
                importance_sampling=t.importance_sampling,
            )

        return continuous_loss
    if cfg.sde.kind == "ve":
        return lambda score_fn, x0, g: smld_loss(sde, score_fn, x0, reduce=t.reduce, generator=g)
    if cfg.sde.kind == "vp":
        return lambda score_fn, x0, g: ddpm_loss(sde, score_fn, x0, reduce=t.reduce, generator=g)
    raise ValueError("discrete-time training (model.continuous=false) needs sde.kind ve or vp")


def sampler_config(cfg: SampleConfig, method: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` for :func:`scoresde.sample` from the sampling config, checked:
    ``cfg.options`` as the sampler's options class (:data:`scoresde.core.sampler_options.OPTIONS`)
    checks them, so every option the sampler takes and nothing else. ``method`` other than
    ``cfg.method`` runs with its own defaults (a config's options are its own sampler's)."""
    cfg = sample_for_method(cfg, method)
    cfg.sampler_options()
    check_sampler(cfg.method, cfg.options)
    return cfg.method, dict(cfg.options)
