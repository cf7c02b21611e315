"""Paper presets for CIFAR-10: NCSN++, DDPM++ and DDPM with the VE, VP and sub-VP SDEs."""

from __future__ import annotations

from scoresde.setup.config import Config, ModelConfig, SDEConfig
from scoresde.setup.networks import model_config_from_network
from scoresde.setup.presets import networks_baselines as base
from scoresde.setup.presets import networks_ncsnpp as pp
from scoresde.setup.presets.official_defaults import cifar10_config, official_sample, ve_sde

# ---- CIFAR-10, VE SDE (SMLD) -------------------------------------------------------------------


def ve_cifar10_ncsnpp_continuous() -> Config:
    """NCSN++ cont. (VE), CIFAR-10: the paper's FID 2.45 model."""
    net = model_config_from_network("ncsnpp", pp.ncsnpp_cifar10_continuous(), continuous=True)
    return cifar10_config(
        net, ve_sde(50.0), official_sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999
    )


def ve_cifar10_ncsnpp_deep_continuous() -> Config:
    """NCSN++ cont. deep (VE), CIFAR-10: 8 blocks per resolution, the paper's FID 2.20 model."""
    net = model_config_from_network("ncsnpp", pp.ncsnpp_cifar10_deep_continuous(), continuous=True)
    return cifar10_config(
        net,
        ve_sde(50.0),
        official_sample("reverse_diffusion", "langevin", 0.16, 1000),
        ema=0.999,
        steps=950001,
    )


def ve_cifar10_ncsnpp() -> Config:
    """NCSN++ (VE, discrete SMLD objective), CIFAR-10."""
    net = model_config_from_network(
        "ncsnpp", pp.ncsnpp_cifar10_continuous(), continuous=False, embedding_type="positional"
    )
    return cifar10_config(
        net, ve_sde(50.0), official_sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999
    )


def ve_cifar10_ddpm() -> Config:
    """The DDPM network trained as an SMLD model (VE, discrete), CIFAR-10."""
    net = model_config_from_network("ddpm", base.ddpm_cifar10_ve(), continuous=False)
    return cifar10_config(
        net, ve_sde(50.0), official_sample("reverse_diffusion", "langevin", 0.16, 1000), ema=0.999
    )


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
    sample = official_sample(predictor, "none", 0.16, 1000)
    return cifar10_config(
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
