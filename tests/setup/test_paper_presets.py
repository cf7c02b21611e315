"""Every experiment of the paper has a preset whose network has the official parameter count.

The counts were measured by building the official score_sde_pytorch networks (``models/ncsnpp.py``,
``models/ddpm.py``, ``models/ncsnv2.py``) from the same config files, and the key lists of the
CIFAR-10 NCSN++ / DDPM++ ones are in ``shared/reference/keys_*.txt``.
"""

import pytest
import torch

from scoresde.setup.build import build_loss, build_model, build_sde, sampler_config
from scoresde.setup.config import Config
from scoresde.setup.presets import PRESETS, get_preset
from scoresde.setup.presets.paper import PAPER_PRESETS

OFFICIAL_PARAMETERS = {
    "ve_cifar10_ncsnpp_continuous": 62_758_915,
    "ve_cifar10_ncsnpp_deep_continuous": 107_587_075,
    "ve_cifar10_ncsnpp": 62_693_251,
    "ve_cifar10_ddpm": 35_218_947,
    "vp_cifar10_ddpmpp_continuous": 61_804_419,
    "vp_cifar10_ddpmpp_deep_continuous": 106_632_579,
    "vp_cifar10_ddpmpp": 61_804_419,
    "vp_cifar10_ncsnpp_continuous": 62_693_251,
    "vp_cifar10_ncsnpp_deep_continuous": 107_521_411,
    "vp_cifar10_ncsnpp": 62_693_251,
    "subvp_cifar10_ddpmpp_continuous": 61_804_419,
    "subvp_cifar10_ddpmpp_deep_continuous": 106_632_579,
    "subvp_cifar10_ncsnpp_continuous": 62_693_251,
    "subvp_cifar10_ncsnpp_deep_continuous": 107_521_411,
    "subvp_cifar10_ddpm_continuous": 35_218_947,
    "vp_ddpm_cifar10": 35_218_947,
    "vp_ddpm_cifar10_continuous": 35_218_947,
    "vp_ddpm_cifar10_unconditional": 34_890_243,
    "ve_bedroom_ncsnpp_continuous": 65_574_549,
    "ve_church_ncsnpp_continuous": 65_574_549,
    "ve_celebahq_256_ncsnpp_continuous": 65_574_549,
    "ve_ffhq_256_ncsnpp_continuous": 65_574_549,
    "ve_celebahq_ncsnpp_continuous": 105_785_896,
    "ve_ffhq_ncsnpp_continuous": 105_785_896,
    "ve_celeba_ncsnpp": 62_693_251,
    "vp_ddpm_bedroom": 111_569_923,
    "vp_ddpm_church": 111_569_923,
    "vp_ddpm_celebahq": 111_569_923,
    "ve_ncsn_cifar10": 30_117_635,
    "ve_ncsn_cifar10_5": 30_117_635,
    "ve_ncsn_cifar10_124": 39_750_659,
    "ve_ncsn_cifar10_1245": 39_750_659,
    "ve_ncsn_celeba": 30_117_635,
    "ve_ncsn_celeba_5": 30_117_635,
    "ve_ncsn_celeba_124": 51_379_715,
    "ve_ncsn_celeba_1245": 51_379_715,
    "ve_ncsnv2_cifar10": 29_694_083,
    "ve_ncsnv2_celeba": 29_694_083,
    "ve_ncsnv2_bedroom": 83_445_379,
}


def test_every_official_config_has_a_preset():
    assert set(PAPER_PRESETS) == set(OFFICIAL_PARAMETERS)
    assert set(PAPER_PRESETS) <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_preset_network_has_the_official_parameter_count(name):
    cfg = get_preset(name)
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS[name]
    build_loss(cfg, build_sde(cfg.sde))
    sampler_config(cfg.sample)


@pytest.mark.parametrize("name, keys_file", [
    ("ve_cifar10_ncsnpp_continuous", "keys_ncsnpp_cifar10_continuous.txt"),
    ("vp_cifar10_ddpmpp_continuous", "keys_ddpmpp_cifar10_continuous.txt"),
])
def test_preset_state_dict_keys_match_the_official_list(name, keys_file, reference_path):
    path = reference_path(keys_file)
    listed = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0].startswith("module."):
            listed[parts[0].removeprefix("module.")] = parts[1] if len(parts) > 1 else ""
    with torch.device("meta"):
        sd = build_model(get_preset(name)).state_dict()
    assert set(sd) == set(listed)


def _fields(cfg: Config) -> dict:
    return {
        "sde": (cfg.sde.kind, cfg.sde.sigma_max, cfg.sde.N),
        "train": (cfg.train.batch_size, cfg.train.steps, cfg.train.lr, cfg.train.warmup,
                  cfg.train.grad_clip, cfg.train.ema_decay, cfg.train.reduce),
        "sample": (cfg.sample.predictor, cfg.sample.corrector, cfg.sample.snr,
                   cfg.sample.n_steps),
        "data": (cfg.data.dataset, cfg.data.image_size, cfg.data.centered),
        "continuous": cfg.model.continuous,
    }


@pytest.mark.parametrize("name, expected", [
    ("ve_cifar10_ncsnpp_continuous", {
        "sde": ("ve", 50.0, 1000),
        "train": (128, 1300001, 2e-4, 5000, 1.0, 0.999, "sum"),
        "sample": ("reverse_diffusion", "langevin", 0.16, 1),
        "data": ("cifar10", 32, False), "continuous": True}),
    ("subvp_cifar10_ddpmpp_deep_continuous", {
        "sde": ("subvp", 50.0, 1000),
        "train": (128, 950001, 2e-4, 5000, 1.0, 0.9999, "mean"),
        "sample": ("euler_maruyama", "none", 0.16, 1),
        "data": ("cifar10", 32, True), "continuous": True}),
    ("vp_ddpm_cifar10", {
        "sde": ("vp", 50.0, 1000),
        "train": (128, 1300001, 2e-4, 5000, 1.0, 0.9999, "mean"),
        "sample": ("ancestral_sampling", "none", 0.16, 1),
        "data": ("cifar10", 32, True), "continuous": False}),
    ("ve_celebahq_ncsnpp_continuous", {
        "sde": ("ve", 1348.0, 2000),
        "train": (8, 2400001, 2e-4, 5000, 1.0, 0.9999, "sum"),
        "sample": ("reverse_diffusion", "langevin", 0.15, 1),
        "data": ("celebahq", 1024, False), "continuous": True}),
    ("ve_ncsn_cifar10", {
        "sde": ("ve", 1.0, 10),
        "train": (128, 1300001, 1e-3, 0, -1.0, 0.0, "sum"),
        "sample": ("none", "ald", 0.316, 100),
        "data": ("cifar10", 32, False), "continuous": False}),
    ("ve_ncsnv2_bedroom", {
        "sde": ("ve", 190.0, 1086),
        "train": (128, 2400001, 1e-4, 0, -1.0, 0.9999, "sum"),
        "sample": ("none", "ald", 0.095, 3),
        "data": ("lsun", 128, False), "continuous": False}),
])
def test_preset_hyperparameters_follow_the_official_configs(name, expected):
    assert _fields(get_preset(name)) == expected
