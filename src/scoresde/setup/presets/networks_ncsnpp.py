"""``NCSNpp`` keyword arguments of the official networks (score_sde_pytorch ``configs/``).

Each function returns a fresh dict for ``NCSNpp(**kwargs)``. Only network options are set; the
SDE, sampler and optimiser of each config are outside the network. ``sigma_min``/``sigma_max``/
``num_scales`` only fill the ``sigmas`` buffer (used by ``scale_by_sigma`` with positional
embeddings); they match the configs so state dicts compare equal.
"""

from __future__ import annotations

from typing import Any

_NCSNPP_COMMON: dict[str, Any] = {
    "num_channels": 3,
    "attn_resolutions": (16,),
    "resamp_with_conv": True,
    "resblock_type": "biggan",
    "fir_kernel": (1, 3, 3, 1),
    "skip_rescale": True,
    "progressive_combine": "sum",
    "fourier_scale": 16.0,
    "init_scale": 0.0,
    "conditional": True,
    "nonlinearity": "swish",
    "sigma_min": 0.01,
}

_CIFAR10: dict[str, Any] = {
    **_NCSNPP_COMMON,
    "image_size": 32,
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 4,
    "dropout": 0.1,
    "sigma_max": 50.0,
    "num_scales": 1000,
}


def ncsnpp_cifar10_continuous() -> dict[str, Any]:
    """NCSN++ cont. for the VE SDE on CIFAR-10 (``ve/cifar10_ncsnpp_continuous``), 62,758,915
    parameters: Fourier embedding, FIR, residual input pyramid, output scaled by 1/sigma."""
    return {
        **_CIFAR10,
        "fir": True,
        "progressive": "none",
        "progressive_input": "residual",
        "embedding_type": "fourier",
        "scale_by_sigma": True,
        "centered": False,
    }


def ncsnpp_cifar10_deep_continuous() -> dict[str, Any]:
    """NCSN++ cont. (deep) for the VE SDE on CIFAR-10: 8 residual blocks per resolution."""
    return {**ncsnpp_cifar10_continuous(), "num_res_blocks": 8}


def ddpmpp_cifar10_continuous() -> dict[str, Any]:
    """DDPM++ cont. for the VP / sub-VP SDEs on CIFAR-10 (``vp/cifar10_ddpmpp_continuous``),
    61,804,419 parameters: positional embedding of ``999 t``, no FIR, no pyramids, centred data."""
    return {
        **_CIFAR10,
        "fir": False,
        "progressive": "none",
        "progressive_input": "none",
        "embedding_type": "positional",
        "scale_by_sigma": False,
        "centered": True,
    }


def ddpmpp_cifar10_deep_continuous() -> dict[str, Any]:
    """DDPM++ cont. (deep) for the VP / sub-VP SDEs on CIFAR-10: 8 residual blocks per level."""
    return {**ddpmpp_cifar10_continuous(), "num_res_blocks": 8}


def ncsnpp_256_continuous(sigma_max: float = 348.0) -> dict[str, Any]:
    """NCSN++ cont. for the VE SDE at 256x256 (CelebA-HQ, FFHQ, LSUN): output-skip / input-skip
    pyramids, 7 resolutions, 2 blocks each, 2000 noise scales, no dropout.

    ``sigma_max``: 348 (CelebA-HQ 256, FFHQ 256), 378 (LSUN bedroom), 380 (LSUN church).
    """
    return {
        **_NCSNPP_COMMON,
        "image_size": 256,
        "nf": 128,
        "ch_mult": (1, 1, 2, 2, 2, 2, 2),
        "num_res_blocks": 2,
        "dropout": 0.0,
        "fir": True,
        "progressive": "output_skip",
        "progressive_input": "input_skip",
        "embedding_type": "fourier",
        "scale_by_sigma": True,
        "centered": False,
        "sigma_max": float(sigma_max),
        "num_scales": 2000,
    }


def ncsnpp_celebahq256_continuous() -> dict[str, Any]:
    """``ve/celebahq_256_ncsnpp_continuous`` (sigma_max 348)."""
    return ncsnpp_256_continuous(348.0)


def ncsnpp_ffhq256_continuous() -> dict[str, Any]:
    """``ve/ffhq_256_ncsnpp_continuous`` (sigma_max 348)."""
    return ncsnpp_256_continuous(348.0)


def ncsnpp_bedroom_continuous() -> dict[str, Any]:
    """``ve/bedroom_ncsnpp_continuous``, LSUN bedroom 256 (sigma_max 378)."""
    return ncsnpp_256_continuous(378.0)


def ncsnpp_church_continuous() -> dict[str, Any]:
    """``ve/church_ncsnpp_continuous``, LSUN church 256 (sigma_max 380)."""
    return ncsnpp_256_continuous(380.0)


def ncsnpp_1024_continuous() -> dict[str, Any]:
    """NCSN++ cont. for the VE SDE at 1024x1024 (``ve/celebahq_ncsnpp_continuous``,
    ``ve/ffhq_ncsnpp_continuous``): nf 16, 8 resolutions, one block each, sigma_max 1348."""
    return {
        **_NCSNPP_COMMON,
        "image_size": 1024,
        "nf": 16,
        "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
        "num_res_blocks": 1,
        "dropout": 0.0,
        "fir": True,
        "progressive": "output_skip",
        "progressive_input": "input_skip",
        "embedding_type": "fourier",
        "scale_by_sigma": True,
        "centered": False,
        "sigma_max": 1348.0,
        "num_scales": 2000,
    }


PRESETS = {
    "ncsnpp_cifar10_continuous": ncsnpp_cifar10_continuous,
    "ncsnpp_cifar10_deep_continuous": ncsnpp_cifar10_deep_continuous,
    "ddpmpp_cifar10_continuous": ddpmpp_cifar10_continuous,
    "ddpmpp_cifar10_deep_continuous": ddpmpp_cifar10_deep_continuous,
    "ncsnpp_celebahq256_continuous": ncsnpp_celebahq256_continuous,
    "ncsnpp_ffhq256_continuous": ncsnpp_ffhq256_continuous,
    "ncsnpp_bedroom_continuous": ncsnpp_bedroom_continuous,
    "ncsnpp_church_continuous": ncsnpp_church_continuous,
    "ncsnpp_celebahq1024_continuous": ncsnpp_1024_continuous,
    "ncsnpp_ffhq1024_continuous": ncsnpp_1024_continuous,
}
