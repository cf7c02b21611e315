"""Paper presets at high resolution: CelebA 64, LSUN 256, CelebA-HQ and FFHQ 256 / 1024."""

from __future__ import annotations

from typing import Any

from scoresde.setup.config import Config, SDEConfig
from scoresde.setup.networks import model_config_from_network
from scoresde.setup.presets import networks_baselines as base
from scoresde.setup.presets import networks_ncsnpp as pp
from scoresde.setup.presets.official_defaults import (
    official_data,
    official_sample,
    official_train,
    ve_sde,
)

# ---- High resolution: CelebA, LSUN, CelebA-HQ, FFHQ --------------------------------------------


def _ve_256(
    dataset: str,
    kwargs: dict[str, Any],
    sigma_max: float,
    *,
    size: int = 256,
    ema: float = 0.999,
    batch: int = 64,
    snr: float = 0.075,
    reduce_mean: bool = False,
) -> Config:
    return Config(
        data=official_data(dataset, size, centered=False),
        sde=ve_sde(sigma_max, N=2000),
        model=model_config_from_network("ncsnpp", kwargs, continuous=True),
        train=official_train(ema=ema, reduce_mean=reduce_mean, batch=batch, steps=2400001),
        sample=official_sample("reverse_diffusion", "langevin", snr, 2000),
        seed=42,
    )


def ve_bedroom_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), LSUN bedroom 256 (``data.root``: the bedroom lmdb or image folder)."""
    return _ve_256("lsun", pp.ncsnpp_bedroom_continuous(), 378.0)


def ve_church_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), LSUN church_outdoor 256."""
    return _ve_256("lsun", pp.ncsnpp_church_continuous(), 380.0)


def ve_celebahq_256_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), CelebA-HQ 256 (an image folder)."""
    return _ve_256("celebahq", pp.ncsnpp_celebahq256_continuous(), 348.0)


def ve_ffhq_256_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), FFHQ 256 (an image folder)."""
    return _ve_256("ffhq", pp.ncsnpp_ffhq256_continuous(), 348.0)


def ve_celebahq_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), CelebA-HQ 1024: the paper's first 1024x1024 score-based samples."""
    return _ve_256(
        "celebahq", pp.ncsnpp_1024_continuous(), 1348.0, size=1024, ema=0.9999, batch=8, snr=0.15
    )


def ve_ffhq_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), FFHQ 1024."""
    return _ve_256(
        "ffhq",
        pp.ncsnpp_1024_continuous(),
        1348.0,
        size=1024,
        ema=0.9999,
        batch=8,
        snr=0.15,
        reduce_mean=True,
    )


def ve_celeba_ncsnpp() -> Config:
    """NCSN++ (VE, discrete SMLD objective), CelebA 64 (center crop 140, resize 64)."""
    net = model_config_from_network(
        "ncsnpp",
        pp.ncsnpp_cifar10_continuous(),
        continuous=False,
        embedding_type="positional",
        image_size=64,
    )
    return Config(
        data=official_data("celeba", 64, centered=False),
        sde=ve_sde(90.0),
        model=net,
        train=official_train(ema=0.999, reduce_mean=False),
        sample=official_sample("reverse_diffusion", "langevin", 0.17, 1000),
        seed=42,
    )


def _vp_ddpm_256(dataset: str) -> Config:
    return Config(
        data=official_data(dataset, 256, centered=True),
        sde=SDEConfig(kind="vp"),
        model=model_config_from_network("ddpm", base.ddpm_256(), continuous=False),
        train=official_train(ema=0.9999, reduce_mean=True, batch=64, steps=2400001, lr=2e-5),
        sample=official_sample("ancestral_sampling", "none", 0.075, 1000),
        seed=42,
    )


def vp_ddpm_bedroom() -> Config:
    """DDPM (VP discrete), LSUN bedroom 256."""
    return _vp_ddpm_256("lsun")


def vp_ddpm_church() -> Config:
    """DDPM (VP discrete), LSUN church_outdoor 256."""
    return _vp_ddpm_256("lsun")


def vp_ddpm_celebahq() -> Config:
    """DDPM (VP discrete), CelebA-HQ 256."""
    return _vp_ddpm_256("celebahq")
