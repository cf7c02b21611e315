"""Paper presets of the SMLD baselines: NCSN (Song & Ermon, 2019) and NCSNv2 (2020)."""

from __future__ import annotations

from typing import Any

from scoresde.setup.config import Config
from scoresde.setup.networks import model_config_from_network
from scoresde.setup.presets import networks_baselines as base
from scoresde.setup.presets.official_defaults import (
    official_data,
    official_sample,
    official_train,
    ve_sde,
)

# ---- SMLD baselines: NCSN (Song & Ermon, 2019) and NCSNv2 (Song & Ermon, 2020) -----------------


def _ncsn(
    dataset: str,
    size: int,
    kwargs: dict[str, Any],
    sigma_max: float,
    N: int,
    *,
    snr: float,
    n_steps: int,
    ema: float,
    lr: float = 1e-3,
    name: str = "ncsn",
    batch: int = 128,
    steps: int = 1300001,
) -> Config:
    return Config(
        data=official_data(dataset, size, centered=False),
        sde=ve_sde(sigma_max, N=N),
        model=model_config_from_network(name, kwargs, continuous=False),
        train=official_train(
            ema=ema, reduce_mean=False, lr=lr, warmup=0, grad_clip=-1.0, batch=batch, steps=steps
        ),
        sample=official_sample("none", "ald", snr, N, n_steps=n_steps),
        seed=42,
    )


def ve_ncsn_cifar10() -> Config:
    """NCSN (v1), CIFAR-10: 10 scales from 1 to 0.01, annealed Langevin, 100 steps per scale."""
    return _ncsn("cifar10", 32, base.ncsn_cifar10(), 1.0, 10, snr=0.316, n_steps=100, ema=0.0)


def ve_ncsn_cifar10_5() -> Config:
    """NCSN (v1) + EMA (technique 5), CIFAR-10."""
    return _ncsn("cifar10", 32, base.ncsn_cifar10(), 1.0, 10, snr=0.316, n_steps=100, ema=0.999)


def ve_ncsn_cifar10_124() -> Config:
    """NCSN (v1) with NCSNv2 techniques 1, 2, 4 (232 scales up to 50), CIFAR-10."""
    return _ncsn("cifar10", 32, base.ncsn_cifar10_124(), 50.0, 232, snr=0.176, n_steps=5, ema=0.0)


def ve_ncsn_cifar10_1245() -> Config:
    """NCSN (v1) with NCSNv2 techniques 1, 2, 4, 5, CIFAR-10."""
    return _ncsn("cifar10", 32, base.ncsn_cifar10_124(), 50.0, 232, snr=0.176, n_steps=5, ema=0.999)


def ve_ncsn_celeba() -> Config:
    """NCSN (v1), CelebA 64."""
    return _ncsn("celeba", 64, base.ncsn_celeba(), 1.0, 10, snr=0.316, n_steps=100, ema=0.0)


def ve_ncsn_celeba_5() -> Config:
    """NCSN (v1) + EMA, CelebA 64."""
    return _ncsn("celeba", 64, base.ncsn_celeba(), 1.0, 10, snr=0.316, n_steps=100, ema=0.999)


def ve_ncsn_celeba_124() -> Config:
    """NCSN (v1) with NCSNv2 techniques 1, 2, 4 (500 scales up to 90), CelebA 64."""
    return _ncsn("celeba", 64, base.ncsn_celeba_124(), 90.0, 500, snr=0.128, n_steps=5, ema=0.0)


def ve_ncsn_celeba_1245() -> Config:
    """NCSN (v1) with NCSNv2 techniques 1, 2, 4, 5, CelebA 64."""
    return _ncsn("celeba", 64, base.ncsn_celeba_124(), 90.0, 500, snr=0.128, n_steps=5, ema=0.999)


def ve_ncsnv2_cifar10() -> Config:
    """NCSNv2, CIFAR-10: 232 scales up to 50, annealed Langevin with 5 steps per scale."""
    return _ncsn(
        "cifar10",
        32,
        base.ncsnv2_cifar10(),
        50.0,
        232,
        snr=0.176,
        n_steps=5,
        ema=0.999,
        lr=1e-4,
        name="ncsnv2",
    )


def ve_ncsnv2_celeba() -> Config:
    """NCSNv2, CelebA 64: 500 scales up to 90."""
    return _ncsn(
        "celeba",
        64,
        base.ncsnv2_celeba(),
        90.0,
        500,
        snr=0.128,
        n_steps=5,
        ema=0.999,
        lr=1e-4,
        name="ncsnv2",
    )


def ve_ncsnv2_bedroom() -> Config:
    """NCSNv2, LSUN bedroom 128: 1086 scales up to 190.

    The official file misspells ``training.continuouse``, leaving continuous training on, which
    its NCSNv2 (indexed by integer noise levels) cannot run; this preset is discrete as meant.
    """
    return _ncsn(
        "lsun",
        128,
        base.ncsnv2_bedroom(),
        190.0,
        1086,
        snr=0.095,
        n_steps=3,
        ema=0.9999,
        lr=1e-4,
        name="ncsnv2",
        steps=2400001,
    )
