"""The one place where config strings meet objects: SDEs, networks, losses, sampler options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.config import Config, ModelConfig, SampleConfig, SDEConfig
from scoresde.data.pipeline import data_shape
from scoresde.losses import ddpm_loss, dsm_loss, smld_loss
from scoresde.sampling import CORRECTORS, PREDICTORS
from scoresde.score import ScoreFn, make_score_fn
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

    The image networks also get the image size and channels from the data, whether data is
    centred, and the noise scales of the SDE (which fill the official ``sigmas`` buffer).
    The initial weights are a function of ``cfg.seed`` alone (the ``"init"`` stream of
    :mod:`scoresde.seeding`): the same config gives bit-identical weights in every process,
    and the caller's global RNG state is left as it was.
    """
    with private_global_rng(derive_seed(cfg.seed, "init")):
        return _build_network(cfg)


def _build_network(cfg: Config) -> nn.Module:
    m, shape = cfg.model, data_shape(cfg.data)
    if m.name == "mlp":
        _expect(len(shape) == 1, m.name, "vector data (D,)", shape)
        from scoresde.nn.mlp import ScoreMLP

        return ScoreMLP(dim=shape[0], hidden=m.hidden, depth=m.depth, **_embedding(m))
    if m.name not in MODELS:
        raise ValueError(f"unknown model {m.name!r}; choose from {['mlp', *MODELS]}")
    _expect(len(shape) == 3, m.name, "image data (C, H, W)", shape)
    return MODELS[m.name](cfg, shape)


def _expect(ok: bool, name: str, what: str, shape: tuple[int, ...]) -> None:
    if not ok:
        raise ValueError(f"model {name!r} needs {what}, got examples of shape {shape}")


def _embedding(m: ModelConfig) -> dict[str, Any]:
    return dict(
        embedding_type=m.embedding_type,
        fourier_scale=m.fourier_scale,
        scale_by_sigma=m.scale_by_sigma,
    )


def _small_unet(cfg: Config, shape: tuple[int, ...]) -> nn.Module:
    from scoresde.nn.unet import SmallUNet

    m = cfg.model
    return SmallUNet(
        in_channels=shape[0],
        base_channels=m.nf,
        channel_mults=m.ch_mult,
        num_res_blocks=m.num_res_blocks,
        attention=bool(m.attn_resolutions),
        dropout=m.dropout,
        **_embedding(m),
    )


def _image_net_common(cfg: Config, shape: tuple[int, ...]) -> dict[str, Any]:
    m, s = cfg.model, cfg.sde
    return dict(
        image_size=shape[-1],
        num_channels=shape[0],
        nf=m.nf,
        centered=cfg.data.centered,
        sigma_min=s.sigma_min,
        sigma_max=s.sigma_max,
        num_scales=s.N,
        nonlinearity=m.nonlinearity,
    )


def _unet_common(m: ModelConfig) -> dict[str, Any]:
    """Options NCSN++ and DDPM share."""
    return dict(
        ch_mult=m.ch_mult,
        num_res_blocks=m.num_res_blocks,
        attn_resolutions=m.attn_resolutions,
        dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv,
        conditional=m.conditional,
        num_classes=m.num_classes or None,
    )


def _ncsnpp(cfg: Config, shape: tuple[int, ...]) -> nn.Module:
    from scoresde.nn.ncsnpp import NCSNpp

    m = cfg.model
    return NCSNpp(
        **_image_net_common(cfg, shape),
        **_unet_common(m),
        **_embedding(m),
        resblock_type=m.resblock_type,
        fir=m.fir,
        fir_kernel=m.fir_kernel,
        skip_rescale=m.skip_rescale,
        progressive=m.progressive,
        progressive_input=m.progressive_input,
        progressive_combine=m.progressive_combine,
        init_scale=m.init_scale,
    )


def _ddpm(cfg: Config, shape: tuple[int, ...]) -> nn.Module:
    from scoresde.nn.ddpm import DDPM

    return DDPM(
        **_image_net_common(cfg, shape),
        **_unet_common(cfg.model),
        scale_by_sigma=cfg.model.scale_by_sigma,
    )


def _ncsn(cfg: Config, shape: tuple[int, ...]) -> nn.Module:
    from scoresde.nn.ncsn import NCSN

    common = _image_net_common(cfg, shape)
    for unused in ("sigma_min", "sigma_max"):
        common.pop(unused)
    return NCSN(**common)


def _ncsnv2(cfg: Config, shape: tuple[int, ...]) -> nn.Module:
    from scoresde.nn.ncsn import NCSNv2

    return NCSNv2(**_image_net_common(cfg, shape), variant=cfg.model.ncsnv2_variant or None)


MODELS: dict[str, Callable[[Config, tuple[int, ...]], nn.Module]] = {
    "unet": _small_unet,
    "ncsnpp": _ncsnpp,
    "ddpm": _ddpm,
    "ncsn": _ncsn,
    "ncsnv2": _ncsnv2,
}


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
    """The device called ``name``, checked to exist here; ``"auto"`` picks CUDA when available.

    Raises:
        ValueError: an unknown name, or a device this machine or PyTorch build does not have
            (the message lists the ones it has).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {name!r}; available here: {available_devices()}"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (device.index is None or device.index < count):
            return device
        why = (
            "this PyTorch build has no CUDA support"
            if torch.version.cuda is None
            else (f"{count} CUDA device(s) visible")
        )
        raise ValueError(
            f"device {name!r} is not available ({why}); available: {available_devices()}"
        )
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ValueError(f"device {name!r} is not available; available: {available_devices()}")


def available_devices() -> str:
    """The devices this process can use, e.g. ``"cpu, cuda:0, cuda:1"``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)
