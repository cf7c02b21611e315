"""The one place where config strings meet objects: SDEs, networks, losses, sampler options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.config import Config, ModelConfig, SampleConfig, SDEConfig
from scoresde.losses import ddpm_loss, dsm_loss, smld_loss
from scoresde.sampling import CORRECTORS, PREDICTORS
from scoresde.score import ScoreFn, make_score_fn
from scoresde.sdes import SDE, VESDE, VPSDE, SubVPSDE

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


def build_model(cfg: ModelConfig, shape: tuple[int, ...]) -> nn.Module:
    """The score network for examples of ``shape`` (``(C, H, W)`` images or ``(D,)`` vectors)."""
    common: dict[str, Any] = dict(
        embedding_type=cfg.embedding_type,
        fourier_scale=cfg.fourier_scale,
        scale_by_sigma=cfg.scale_by_sigma,
    )
    if cfg.name == "unet":
        if len(shape) != 3:
            raise ValueError(f"model 'unet' needs image data (C, H, W), got shape {shape}")
        from scoresde.nn.unet import SmallUNet

        return SmallUNet(
            in_channels=shape[0],
            base_channels=cfg.base_channels,
            channel_mults=cfg.channel_mults,
            num_res_blocks=cfg.num_res_blocks,
            attention=cfg.attention,
            dropout=cfg.dropout,
            **common,
        )
    if cfg.name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"model 'mlp' needs vector data (D,), got shape {shape}")
        from scoresde.nn.mlp import ScoreMLP

        return ScoreMLP(dim=shape[0], hidden=cfg.hidden, depth=cfg.depth, **common)
    raise ValueError(f"unknown model {cfg.name!r}; choose from ['mlp', 'unet']")


def build_score_fn(model: nn.Module, sde: SDE, cfg: ModelConfig, **kwargs: Any) -> ScoreFn:
    """``make_score_fn`` with the model's time convention (continuous or discrete)."""
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


def pc_options(cfg: SampleConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`scoresde.pc_sample` from the sampling config (names checked)."""
    for kind, name, table in (
        ("predictor", cfg.predictor, PREDICTORS),
        ("corrector", cfg.corrector, CORRECTORS),
    ):
        if name not in table:
            raise ValueError(f"unknown {kind} {name!r}; choose from {sorted(table)}")
    return dict(
        predictor=PREDICTORS[cfg.predictor],
        corrector=CORRECTORS[cfg.corrector],
        snr=cfg.snr,
        n_steps=cfg.n_steps,
        num_steps=cfg.num_steps,
        eps=cfg.eps,
        denoise=cfg.denoise,
    )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; other names go to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}") from None
