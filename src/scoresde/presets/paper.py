"""Presets for every experiment of the paper: one function per official config file.

Each preset is named after its file in the official ``score_sde_pytorch/configs/`` folder
(``ve/cifar10_ncsnpp_continuous.py`` -> ``ve_cifar10_ncsnpp_continuous``) and carries its
hyperparameters: data, SDE, network, optimiser, warmup, gradient clipping, EMA rate, batch size,
iterations, sampler and signal-to-noise ratio. Image datasets are read from ``data.root``
(``--set data.root=PATH``). Where the official file has a bug, the preset does what was meant
and says so.
"""

from __future__ import annotations

from typing import Any

from scoresde.config import (
    Config,
    DataConfig,
    ModelConfig,
    SampleConfig,
    SDEConfig,
    TrainConfig,
    model_config_from_network,
)
from scoresde.nn import baseline_presets as base
from scoresde.nn import ncsnpp_presets as pp


def _data(dataset: str, size: int, *, centered: bool) -> DataConfig:
    return DataConfig(
        dataset=dataset,
        image_size=size,
        centered=centered,
        dequantize=False,
        random_flip=True,
        levels=256,
    )


def _train(
    *,
    ema: float,
    reduce_mean: bool,
    batch: int = 128,
    steps: int = 1300001,
    lr: float = 2e-4,
    warmup: int = 5000,
    grad_clip: float = 1.0,
) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup=warmup,
        grad_clip=grad_clip,
        ema_decay=ema,
        reduce="mean" if reduce_mean else "sum",
        log_every=50,
        checkpoint_every=10000,
    )


def _sample(
    predictor: str, corrector: str, snr: float, num_steps: int, n_steps: int = 1
) -> SampleConfig:
    return SampleConfig(
        predictor=predictor, corrector=corrector, snr=snr, num_steps=num_steps, n_steps=n_steps
    )


def _ve(sigma_max: float, N: int = 1000) -> SDEConfig:
    return SDEConfig(kind="ve", sigma_min=0.01, sigma_max=sigma_max, N=N)


def _cifar10(
    model: ModelConfig, sde: SDEConfig, sample: SampleConfig, *, ema: float, **train: Any
) -> Config:
    centered = sde.kind != "ve"
    return Config(
        data=_data("cifar10", 32, centered=centered),
        sde=sde,
        model=model,
        train=_train(ema=ema, reduce_mean=centered, **train),
        sample=sample,
        seed=42,
    )


# ---- CIFAR-10, VE SDE (SMLD) -------------------------------------------------------------------


def ve_cifar10_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), CIFAR-10: the paper's FID 2.45 model."""
    net = model_config_from_network("ncsnpp", pp.ncsnpp_cifar10_continuous(), continuous=True)
    return _cifar10(net, _ve(50.0), _sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999)


def ve_cifar10_ncsnpp_deep_continuous() -> Config:
    """NCSN++ cont. deep (VE), CIFAR-10: 8 blocks per resolution, the paper's FID 2.20 model."""
    net = model_config_from_network("ncsnpp", pp.ncsnpp_cifar10_deep_continuous(), continuous=True)
    return _cifar10(
        net,
        _ve(50.0),
        _sample("reverse_diffusion", "langevin", 0.16, 1000),
        ema=0.999,
        steps=950001,
    )


def ve_cifar10_ncsnpp() -> Config:
    """NCSN++ (VE, discrete SMLD objective), CIFAR-10."""
    net = model_config_from_network(
        "ncsnpp", pp.ncsnpp_cifar10_continuous(), continuous=False, embedding_type="positional"
    )
    return _cifar10(net, _ve(50.0), _sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999)


def ve_cifar10_ddpm() -> Config:
    """The DDPM network trained as an SMLD model (VE, discrete), CIFAR-10."""
    net = model_config_from_network("ddpm", base.ddpm_cifar10_ve(), continuous=False)
    return _cifar10(net, _ve(50.0), _sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999)


# ---- CIFAR-10, VP and sub-VP SDEs (DDPM) -------------------------------------------------------


def _ddpmpp(deep: bool, continuous: bool) -> ModelConfig:
    kwargs = pp.ddpmpp_cifar10_deep_continuous() if deep else pp.ddpmpp_cifar10_continuous()
    return model_config_from_network("ncsnpp", kwargs, continuous=continuous)


def _ncsnpp_vp(deep: bool, continuous: bool) -> ModelConfig:
    kwargs = pp.ncsnpp_cifar10_deep_continuous() if deep else pp.ncsnpp_cifar10_continuous()
    return model_config_from_network(
        "ncsnpp", kwargs, continuous=continuous, embedding_type="positional", scale_by_sigma=False
    )


def _vp_cifar10(kind: str, net: ModelConfig, predictor: str, *, deep: bool = False) -> Config:
    sample = _sample(predictor, "none", 0.16, 1000)
    return _cifar10(
        net, SDEConfig(kind=kind), sample, ema=0.9999, steps=950001 if deep else 1300001
    )


def vp_cifar10_ddpmpp_continuous() -> Config:
    """DDPM++ cont. (VP), CIFAR-10."""
    return _vp_cifar10("vp", _ddpmpp(False, True), "euler_maruyama")


def vp_cifar10_ddpmpp_deep_continuous() -> Config:
    """DDPM++ cont. deep (VP), CIFAR-10."""
    return _vp_cifar10("vp", _ddpmpp(True, True), "euler_maruyama", deep=True)


def vp_cifar10_ddpmpp() -> Config:
    """DDPM++ (VP, discrete DDPM objective), CIFAR-10."""
    return _vp_cifar10("vp", _ddpmpp(False, False), "ancestral_sampling")


def vp_cifar10_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VP), CIFAR-10."""
    return _vp_cifar10("vp", _ncsnpp_vp(False, True), "euler_maruyama")


def vp_cifar10_ncsnpp_deep_continuous() -> Config:
    """NCSN++ cont. deep (VP), CIFAR-10."""
    return _vp_cifar10("vp", _ncsnpp_vp(True, True), "euler_maruyama", deep=True)


def vp_cifar10_ncsnpp() -> Config:
    """NCSN++ (VP, discrete DDPM objective), CIFAR-10."""
    return _vp_cifar10("vp", _ncsnpp_vp(False, False), "reverse_diffusion")


def subvp_cifar10_ddpmpp_continuous() -> Config:
    """DDPM++ cont. (sub-VP), CIFAR-10."""
    return _vp_cifar10("subvp", _ddpmpp(False, True), "euler_maruyama")


def subvp_cifar10_ddpmpp_deep_continuous() -> Config:
    """DDPM++ cont. deep (sub-VP), CIFAR-10: the paper's 2.99 bits/dim model."""
    return _vp_cifar10("subvp", _ddpmpp(True, True), "euler_maruyama", deep=True)


def subvp_cifar10_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (sub-VP), CIFAR-10."""
    return _vp_cifar10("subvp", _ncsnpp_vp(False, True), "euler_maruyama")


def subvp_cifar10_ncsnpp_deep_continuous() -> Config:
    """NCSN++ cont. deep (sub-VP), CIFAR-10."""
    return _vp_cifar10("subvp", _ncsnpp_vp(True, True), "euler_maruyama", deep=True)


def subvp_cifar10_ddpm_continuous() -> Config:
    """DDPM cont. (sub-VP), CIFAR-10."""
    return _vp_cifar10(
        "subvp",
        model_config_from_network("ddpm", base.ddpm_cifar10(), continuous=True),
        "euler_maruyama",
    )


def vp_ddpm_cifar10() -> Config:
    """DDPM (Ho et al., 2020), VP discrete, ancestral sampling, CIFAR-10."""
    return _vp_cifar10(
        "vp",
        model_config_from_network("ddpm", base.ddpm_cifar10(), continuous=False),
        "ancestral_sampling",
    )


def vp_ddpm_cifar10_continuous() -> Config:
    """DDPM cont. (VP), CIFAR-10."""
    return _vp_cifar10(
        "vp",
        model_config_from_network("ddpm", base.ddpm_cifar10(), continuous=True),
        "euler_maruyama",
    )


def vp_ddpm_cifar10_unconditional() -> Config:
    """DDPM without noise-level conditioning (VP discrete), CIFAR-10."""
    net = model_config_from_network("ddpm", base.ddpm_cifar10_unconditional(), continuous=False)
    return _vp_cifar10("vp", net, "ancestral_sampling")


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
        data=_data(dataset, size, centered=False),
        sde=_ve(sigma_max, N=2000),
        model=model_config_from_network("ncsnpp", kwargs, continuous=True),
        train=_train(ema=ema, reduce_mean=reduce_mean, batch=batch, steps=2400001),
        sample=_sample("reverse_diffusion", "langevin", snr, 2000),
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
        data=_data("celeba", 64, centered=False),
        sde=_ve(90.0),
        model=net,
        train=_train(ema=0.999, reduce_mean=False),
        sample=_sample("reverse_diffusion", "langevin", 0.17, 1000),
        seed=42,
    )


def _vp_ddpm_256(dataset: str) -> Config:
    return Config(
        data=_data(dataset, 256, centered=True),
        sde=SDEConfig(kind="vp"),
        model=model_config_from_network("ddpm", base.ddpm_256(), continuous=False),
        train=_train(ema=0.9999, reduce_mean=True, batch=64, steps=2400001, lr=2e-5),
        sample=_sample("ancestral_sampling", "none", 0.075, 1000),
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
        data=_data(dataset, size, centered=False),
        sde=_ve(sigma_max, N=N),
        model=model_config_from_network(name, kwargs, continuous=False),
        train=_train(
            ema=ema, reduce_mean=False, lr=lr, warmup=0, grad_clip=-1.0, batch=batch, steps=steps
        ),
        sample=_sample("none", "ald", snr, N, n_steps=n_steps),
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


PAPER_PRESETS = {
    fn.__name__: fn
    for fn in (
        ve_cifar10_ncsnpp_continuous,
        ve_cifar10_ncsnpp_deep_continuous,
        ve_cifar10_ncsnpp,
        ve_cifar10_ddpm,
        vp_cifar10_ddpmpp_continuous,
        vp_cifar10_ddpmpp_deep_continuous,
        vp_cifar10_ddpmpp,
        vp_cifar10_ncsnpp_continuous,
        vp_cifar10_ncsnpp_deep_continuous,
        vp_cifar10_ncsnpp,
        subvp_cifar10_ddpmpp_continuous,
        subvp_cifar10_ddpmpp_deep_continuous,
        subvp_cifar10_ncsnpp_continuous,
        subvp_cifar10_ncsnpp_deep_continuous,
        subvp_cifar10_ddpm_continuous,
        vp_ddpm_cifar10,
        vp_ddpm_cifar10_continuous,
        vp_ddpm_cifar10_unconditional,
        ve_bedroom_ncsnpp_continuous,
        ve_church_ncsnpp_continuous,
        ve_celebahq_256_ncsnpp_continuous,
        ve_ffhq_256_ncsnpp_continuous,
        ve_celebahq_ncsnpp_continuous,
        ve_ffhq_ncsnpp_continuous,
        ve_celeba_ncsnpp,
        vp_ddpm_bedroom,
        vp_ddpm_church,
        vp_ddpm_celebahq,
        ve_ncsn_cifar10,
        ve_ncsn_cifar10_5,
        ve_ncsn_cifar10_124,
        ve_ncsn_cifar10_1245,
        ve_ncsn_celeba,
        ve_ncsn_celeba_5,
        ve_ncsn_celeba_124,
        ve_ncsn_celeba_1245,
        ve_ncsnv2_cifar10,
        ve_ncsnv2_celeba,
        ve_ncsnv2_bedroom,
    )
}
