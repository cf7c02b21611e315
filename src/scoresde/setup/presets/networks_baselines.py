"""Keyword arguments of the paper's baseline networks, one preset per official config.

The official ``score_sde_pytorch`` configs ``vp/ddpm/*``, ``ve/cifar10_ddpm``,
``subvp/cifar10_ddpm_continuous`` (network ``'ddpm'`` -> ``DDPM``), ``ve/ncsn/*`` (``'ncsn'`` ->
``NCSN``) and ``ve/ncsnv2/*`` (``'ncsnv2_64'`` / ``'ncsnv2_128'`` -> ``NCSNv2``). Each function
returns a fresh dict for the class named in ``PRESET_NETWORKS``; ``build_baseline(name)`` does both.
Only network options are set: the SDE, loss and sampler of each config live outside the network,
so configs that differ only there (continuous vs discrete time, VP vs sub-VP, with or without EMA)
share a network. Noise-level fields fill the ``sigmas`` buffers (used by ``scale_by_sigma``) and
the size of NCSN's conditional norms, as in the configs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from scoresde.nn.ddpm import DDPM
from scoresde.nn.ncsn import NCSN, NCSNv2

Preset = Callable[[], dict[str, Any]]

_DDPM_CIFAR10: dict[str, Any] = {
    "image_size": 32,
    "num_channels": 3,
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.1,
    "resamp_with_conv": True,
    "conditional": True,
    "nonlinearity": "swish",
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "num_scales": 1000,
}


def ddpm_cifar10() -> dict[str, Any]:
    """DDPM on CIFAR-10 for the VP / sub-VP SDEs (``vp/ddpm/cifar10``,
    ``vp/ddpm/cifar10_continuous``, ``subvp/cifar10_ddpm_continuous``): 35,218,947 parameters,
    centred data, predicts the noise."""
    return {**_DDPM_CIFAR10, "scale_by_sigma": False, "centered": True}


def ddpm_cifar10_unconditional() -> dict[str, Any]:
    """``vp/ddpm/cifar10_unconditional``: the CIFAR-10 DDPM without the noise-level embedding."""
    return {**ddpm_cifar10(), "conditional": False}


def ddpm_cifar10_ve() -> dict[str, Any]:
    """DDPM (VE): the CIFAR-10 DDPM trained as an SMLD model (``ve/cifar10_ddpm``): data in
    ``[0, 1]``, noise-level index labels, output divided by sigma."""
    return {**_DDPM_CIFAR10, "scale_by_sigma": True, "centered": False}


def ddpm_256() -> dict[str, Any]:
    """DDPM at 256x256 (``vp/ddpm/bedroom``, ``vp/ddpm/church``, ``vp/ddpm/celebahq``): six
    resolutions with multipliers (1, 1, 2, 2, 4, 4), no dropout (LSUN defaults), 111,569,923
    parameters."""
    return {
        **_DDPM_CIFAR10,
        "image_size": 256,
        "ch_mult": (1, 1, 2, 2, 4, 4),
        "dropout": 0.0,
        "sigma_max": 378.0,
        "scale_by_sigma": False,
        "centered": True,
    }


def _ncsn(image_size: int, num_scales: int) -> dict[str, Any]:
    return {
        "image_size": image_size,
        "num_channels": 3,
        "nf": 128,
        "num_scales": num_scales,
        "centered": False,
        "nonlinearity": "elu",
    }


def ncsn_cifar10() -> dict[str, Any]:
    """NCSN v1 on CIFAR-10 (``ve/ncsn/cifar10``, ``ve/ncsn/cifar10_5``): 10 noise levels (sigmas
    1 -> 0.01), 30,117,635 parameters."""
    return _ncsn(32, 10)


def ncsn_cifar10_124() -> dict[str, Any]:
    """NCSN v1 with NCSNv2's CIFAR-10 schedule (``ve/ncsn/cifar10_124``, ``cifar10_1245``): 232
    noise levels (sigmas 50 -> 0.01), 39,750,659 parameters."""
    return _ncsn(32, 232)


def ncsn_celeba() -> dict[str, Any]:
    """NCSN v1 on CelebA 64x64 (``ve/ncsn/celeba``, ``ve/ncsn/celeba_5``): 10 noise levels."""
    return _ncsn(64, 10)


def ncsn_celeba_124() -> dict[str, Any]:
    """NCSN v1 with NCSNv2's CelebA schedule (``ve/ncsn/celeba_124``, ``celeba_1245``): 500 noise
    levels (sigmas 90 -> 0.01), 51,379,715 parameters."""
    return _ncsn(64, 500)


def _ncsnv2(image_size: int, sigma_max: float, num_scales: int, variant: int) -> dict[str, Any]:
    return {
        "image_size": image_size,
        "num_channels": 3,
        "nf": 128,
        "sigma_min": 0.01,
        "sigma_max": sigma_max,
        "num_scales": num_scales,
        "centered": False,
        "nonlinearity": "elu",
        "variant": variant,
    }


def ncsnv2_cifar10() -> dict[str, Any]:
    """NCSNv2 on CIFAR-10 (``ve/ncsnv2/cifar10``, ``'ncsnv2_64'``): sigmas 50 -> 0.01 over 232
    levels, 29,694,083 parameters."""
    return _ncsnv2(32, 50.0, 232, 64)


def ncsnv2_celeba() -> dict[str, Any]:
    """NCSNv2 on CelebA 64x64 (``ve/ncsnv2/celeba``, ``'ncsnv2_64'``): sigmas 90 -> 0.01 over 500
    levels."""
    return _ncsnv2(64, 90.0, 500, 64)


def ncsnv2_bedroom() -> dict[str, Any]:
    """NCSNv2 on LSUN bedroom 128x128 (``ve/ncsnv2/bedroom``, ``'ncsnv2_128'``): sigmas 190 ->
    0.01 over 1086 levels, 83,445,379 parameters."""
    return _ncsnv2(128, 190.0, 1086, 128)


PRESETS: dict[str, Preset] = {
    "ddpm_cifar10": ddpm_cifar10,
    "ddpm_cifar10_unconditional": ddpm_cifar10_unconditional,
    "ddpm_cifar10_ve": ddpm_cifar10_ve,
    "ddpm_bedroom": ddpm_256,
    "ddpm_church": ddpm_256,
    "ddpm_celebahq": ddpm_256,
    "ncsn_cifar10": ncsn_cifar10,
    "ncsn_cifar10_124": ncsn_cifar10_124,
    "ncsn_celeba": ncsn_celeba,
    "ncsn_celeba_124": ncsn_celeba_124,
    "ncsnv2_cifar10": ncsnv2_cifar10,
    "ncsnv2_celeba": ncsnv2_celeba,
    "ncsnv2_bedroom": ncsnv2_bedroom,
}
"""Preset name -> kwargs function. The ``*_124`` NCSN presets (``ve/ncsn/*_124`` and ``*_1245``)
use NCSNv2's noise schedule with the NCSN network; ``ve/ncsn/cifar10_5`` / ``celeba_5`` are
``ncsn_cifar10`` / ``ncsn_celeba`` (technique 5, EMA, is not part of the network)."""

PRESET_NETWORKS: dict[str, type[nn.Module]] = {
    name: DDPM if name.startswith("ddpm") else NCSNv2 if name.startswith("ncsnv2") else NCSN
    for name in PRESETS
}
"""Preset name -> the network class its kwargs are for."""

OFFICIAL_CONFIGS: dict[str, str] = {
    "vp/ddpm/cifar10.py": "ddpm_cifar10",
    "vp/ddpm/cifar10_continuous.py": "ddpm_cifar10",
    "vp/ddpm/cifar10_unconditional.py": "ddpm_cifar10_unconditional",
    "subvp/cifar10_ddpm_continuous.py": "ddpm_cifar10",
    "ve/cifar10_ddpm.py": "ddpm_cifar10_ve",
    "vp/ddpm/bedroom.py": "ddpm_bedroom",
    "vp/ddpm/church.py": "ddpm_church",
    "vp/ddpm/celebahq.py": "ddpm_celebahq",
    "ve/ncsn/cifar10.py": "ncsn_cifar10",
    "ve/ncsn/cifar10_5.py": "ncsn_cifar10",
    "ve/ncsn/cifar10_124.py": "ncsn_cifar10_124",
    "ve/ncsn/cifar10_1245.py": "ncsn_cifar10_124",
    "ve/ncsn/celeba.py": "ncsn_celeba",
    "ve/ncsn/celeba_5.py": "ncsn_celeba",
    "ve/ncsn/celeba_124.py": "ncsn_celeba_124",
    "ve/ncsn/celeba_1245.py": "ncsn_celeba_124",
    "ve/ncsnv2/cifar10.py": "ncsnv2_cifar10",
    "ve/ncsnv2/celeba.py": "ncsnv2_celeba",
    "ve/ncsnv2/bedroom.py": "ncsnv2_bedroom",
}
"""Official config file (under ``configs/``) -> the preset of its network."""


def build_baseline(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` (a key of ``PRESETS``), with keyword ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown baseline preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESET_NETWORKS[name](**{**PRESETS[name](), **overrides})
