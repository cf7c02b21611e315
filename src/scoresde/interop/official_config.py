"""Official ``score_sde_pytorch`` config dicts -> our networks and their kwargs.

``official_network(config.model, config.data)`` dispatches on ``model.name`` (``'ncsnpp'``,
``'ddpm'``, ``'ncsn'``, ``'ncsnv2_64'``/``'_128'``/``'_256'``) and returns an ``OfficialNetwork``
(our network's name plus its keyword arguments) after checking the options the network does not
support. Loading checkpoints is :mod:`scoresde.interop.official`'s job, writing scoresde runs
from them :mod:`scoresde.interop.convert`'s; networks are built by
:func:`scoresde.setup.build.build_model` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any


@dataclass(frozen=True)
class OfficialNetwork:
    """Which of our networks an official config describes, and its keyword arguments.

    Attributes:
        name: the scoresde network (``ModelConfig.name``): ``'ncsnpp'``, ``'ddpm'``, ``'ncsn'``
            or ``'ncsnv2'``; :func:`scoresde.setup.build.build_model` builds it from a config.
        kwargs: keyword arguments of that network's class (``NCSNpp``, ``DDPM``, ``NCSN``,
            ``NCSNv2``), as :func:`scoresde.setup.networks.model_config_from_network` takes them.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _check(model_cfg: Mapping[str, Any], field_name: str, expected: Any, network: str) -> None:
    """Raise ``ValueError`` unless ``model_cfg[field_name]`` (if present) equals ``expected``."""
    if model_cfg.get(field_name, expected) != expected:
        raise ValueError(
            f"unsupported {field_name}={model_cfg[field_name]!r} ({network} uses {expected!r})"
        )


def _num_channels(data_cfg: Mapping[str, Any]) -> int:
    """Image channels: ``data.num_channels`` (the official NCSN code reads ``data.channels``)."""
    return int(data_cfg["num_channels"] if "num_channels" in data_cfg else data_cfg["channels"])


def _unet_kwargs(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``NCSNpp`` and ``DDPM`` share, from an official config."""
    return {
        "image_size": int(data_cfg["image_size"]),
        "num_channels": _num_channels(data_cfg),
        "nf": int(model_cfg["nf"]),
        "ch_mult": tuple(int(m) for m in model_cfg["ch_mult"]),
        "num_res_blocks": int(model_cfg["num_res_blocks"]),
        "attn_resolutions": tuple(int(r) for r in model_cfg["attn_resolutions"]),
        "dropout": float(model_cfg["dropout"]),
        "resamp_with_conv": bool(model_cfg["resamp_with_conv"]),
        "conditional": bool(model_cfg["conditional"]),
        "scale_by_sigma": bool(model_cfg["scale_by_sigma"]),
        "centered": bool(data_cfg["centered"]),
        "sigma_min": float(model_cfg["sigma_min"]),
        "sigma_max": float(model_cfg["sigma_max"]),
        "num_scales": int(model_cfg["num_scales"]),
        "nonlinearity": str(model_cfg["nonlinearity"]).lower(),
    }


def _ncsnpp_kwargs(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``NCSNpp`` keyword arguments of an official ``'ncsnpp'`` config."""
    for field_name, expected in (
        ("normalization", "GroupNorm"),
        ("conv_size", 3),
        ("attention_type", "ddpm"),
    ):
        _check(model_cfg, field_name, expected, "NCSN++")
    return {
        **_unet_kwargs(model_cfg, data_cfg),
        "resblock_type": str(model_cfg["resblock_type"]).lower(),
        "fir": bool(model_cfg["fir"]),
        "fir_kernel": tuple(float(k) for k in model_cfg["fir_kernel"]),
        "skip_rescale": bool(model_cfg["skip_rescale"]),
        "progressive": str(model_cfg["progressive"]).lower(),
        "progressive_input": str(model_cfg["progressive_input"]).lower(),
        "progressive_combine": str(model_cfg["progressive_combine"]).lower(),
        "embedding_type": str(model_cfg["embedding_type"]).lower(),
        "fourier_scale": float(model_cfg["fourier_scale"]),
        "init_scale": float(model_cfg["init_scale"]),
    }


def _ddpm_kwargs(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``DDPM`` keyword arguments of an official ``'ddpm'`` config (its ``embedding_type`` and
    ``conv_size`` are unused by the official DDPM: it always has sinusoidal embeddings and 3x3
    convolutions)."""
    _check(model_cfg, "normalization", "GroupNorm", "DDPM")
    return _unet_kwargs(model_cfg, data_cfg)


def _refinenet_check(model_cfg: Mapping[str, Any], network: str) -> None:
    """NCSN/NCSNv2 configs must ask for InstanceNorm++ and bilinear fusion (all official ones
    do; the networks are built for exactly these)."""
    _check(model_cfg, "normalization", "InstanceNorm++", network)
    _check(model_cfg, "interpolation", "bilinear", network)


def _ncsn_kwargs(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``NCSN`` keyword arguments of an official ``'ncsn'`` config. ``num_scales`` sizes the
    conditional norms; NCSN has no ``sigmas`` buffer, so ``sigma_min``/``sigma_max`` are unused."""
    _refinenet_check(model_cfg, "NCSN")
    return {
        "image_size": int(data_cfg["image_size"]),
        "num_channels": _num_channels(data_cfg),
        "nf": int(model_cfg["nf"]),
        "num_scales": int(model_cfg["num_scales"]),
        "centered": bool(data_cfg["centered"]),
        "nonlinearity": str(model_cfg["nonlinearity"]).lower(),
    }


def _ncsnv2_kwargs(
    model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], variant: int
) -> dict[str, Any]:
    """``NCSNv2`` keyword arguments of an official ``'ncsnv2_{variant}'`` config (the output is
    always divided by sigma, as officially, whatever ``scale_by_sigma`` says)."""
    _refinenet_check(model_cfg, "NCSNv2")
    return {
        "image_size": int(data_cfg["image_size"]),
        "num_channels": _num_channels(data_cfg),
        "nf": int(model_cfg["nf"]),
        "sigma_min": float(model_cfg["sigma_min"]),
        "sigma_max": float(model_cfg["sigma_max"]),
        "num_scales": int(model_cfg["num_scales"]),
        "centered": bool(data_cfg["centered"]),
        "nonlinearity": str(model_cfg["nonlinearity"]).lower(),
        "variant": variant,
    }


_Builder = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
_OFFICIAL_NAMES: dict[str, tuple[str, _Builder]] = {
    "ncsnpp": ("ncsnpp", _ncsnpp_kwargs),
    "ddpm": ("ddpm", _ddpm_kwargs),
    "ncsn": ("ncsn", _ncsn_kwargs),
    **{f"ncsnv2_{v}": ("ncsnv2", partial(_ncsnv2_kwargs, variant=v)) for v in (64, 128, 256)},
}


def official_network(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> OfficialNetwork:
    """Our network for the official ``config.model`` and ``config.data`` dicts.

    Dispatches on ``model_cfg['name']`` (default ``'ncsnpp'``): ``'ncsnpp'`` -> ``NCSNpp``,
    ``'ddpm'`` -> ``DDPM``, ``'ncsn'`` -> ``NCSN``, ``'ncsnv2_64'``/``'_128'``/``'_256'`` ->
    ``NCSNv2`` with that ``variant`` (as the official registry, not chosen from the image size).

    Raises:
        ValueError: an unknown network name or an option the network does not support.
    """
    name = str(model_cfg.get("name", "ncsnpp"))
    if name not in _OFFICIAL_NAMES:
        raise ValueError(
            f"unsupported official network {name!r}; expected one of {sorted(_OFFICIAL_NAMES)}"
        )
    our_name, builder = _OFFICIAL_NAMES[name]
    return OfficialNetwork(our_name, builder(model_cfg, data_cfg))


def from_official_config(
    model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """Keyword arguments of our network for the official ``config.model`` / ``config.data``.

    Same dispatch as ``official_network`` (which also names the network); for ``'ncsnpp'``
    configs these are ``NCSNpp`` kwargs.
    """
    return official_network(model_cfg, data_cfg).kwargs
