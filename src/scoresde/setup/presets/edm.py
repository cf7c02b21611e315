"""EDM's CIFAR-10 recipe (Karras et al., 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 7, unconditional VP / DDPM++ column) on the paper's
DDPM++ network: EDM's SDE, preconditioning, loss and Heun sampler. Not one of the paper's
(Song et al.) experiments: those are :mod:`.paper`."""

from __future__ import annotations

from dataclasses import replace

from scoresde.setup.config import Config, SampleConfig, SDEConfig
from scoresde.setup.networks import model_config_from_network
from scoresde.setup.presets import networks_ncsnpp as pp
from scoresde.setup.presets.official_defaults import cifar10_config

EDM_BATCH = 512
EDM_IMAGES = 200_000_000
"""EDM trains CIFAR-10 on 200 M images: 390,625 steps of 512."""
EDM_EMA_HALF_LIFE = 500_000
"""EDM's EMA half-life in images (0.5 M): per step of 512 images the decay is
``0.5 ** (512 / 500000) = 0.999290...``."""
EDM_WARMUP_IMAGES = 10_000_000
"""EDM ramps the learning rate up linearly over 10 M images (19,531 steps of 512)."""


def edm_cifar10_ddpmpp() -> Config:
    """EDM's unconditional CIFAR-10 recipe (Karras et al., 2022) on the paper's DDPM++.

    EDM's VP setting with the DDPM++ network of ``vp_cifar10_ddpmpp_continuous`` (same
    network, 61,804,419 parameters) at EDM's dropout 0.13: ``sde.kind=edm`` (sigma 0.002 ..
    80), ``model.parametrization=edm`` (sigma_data 0.5), ``train.loss=edm`` (P_mean -1.2,
    P_std 1.2), Adam lr 1e-3 with 10 M images of warmup and no gradient clipping, batch 512 for
    200 M images (390,625 steps), EMA half-life 0.5 M images (:data:`EDM_EMA_HALF_LIFE`), EDM's
    summed loss (``reduce="sum"``), and no augmentation (EDM uses its non-leaky augmentation
    with p = 0.12, which this package does not have; flips are off too). Sampling: Heun, 17
    steps on EDM's grid down to sigma 0.002 (EDM's 18 levels, 35 NFE); the test likelihood also
    stops at sigma 0.002."""
    net = model_config_from_network(
        "ncsnpp", pp.ddpmpp_cifar10_continuous(), continuous=True, dropout=0.13
    )
    net = replace(net, parametrization="edm", sigma_data=0.5)
    sample = SampleConfig(method="heun", num_steps=17, grid="edm", eps=0.002)
    cfg = cifar10_config(
        net,
        SDEConfig(kind="edm", sigma_min=0.002, sigma_max=80.0),
        sample,
        ema=0.5 ** (EDM_BATCH / EDM_EMA_HALF_LIFE),
        batch=EDM_BATCH,
        steps=EDM_IMAGES // EDM_BATCH,
        lr=1e-3,
        warmup=EDM_WARMUP_IMAGES // EDM_BATCH,
        grad_clip=-1.0,
    )
    return replace(
        cfg,
        data=replace(cfg.data, random_flip=False),
        train=replace(cfg.train, loss="edm", P_mean=-1.2, P_std=1.2, reduce="sum"),
        eval=replace(cfg.eval, eps=0.002),
    )


EDM_TRAINING: dict[str, object] = {
    "model.parametrization": "edm",
    "model.embedding_type": "positional",
    "model.scale_by_sigma": False,
    "train.loss": "edm",
}
"""What :func:`edm_training` sets: EDM's preconditioning (labels ``ln(sigma) / 4`` through the
positional embedding, no ``1 / sigma`` output scaling) and EDM's loss."""


def edm_training(cfg: Config) -> Config:
    """``cfg`` trained EDM's way (Karras et al., 2022, Table 1): the preconditioning
    ``D = c_skip y + c_out F(c_in y; ln(sigma) / 4)`` with ``model.sigma_data`` and the loss
    with ``ln sigma ~ N(train.P_mean, train.P_std^2)`` (:data:`EDM_TRAINING`), for any SDE; the
    SDE, network, data, optimiser and sampler stay as they are (``docs/edm.md``)."""
    sections: dict[str, dict[str, object]] = {}
    for key, value in EDM_TRAINING.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return replace(cfg, **{s: replace(getattr(cfg, s), **kw) for s, kw in sections.items()})


EDM_PRESETS = {"edm_cifar10_ddpmpp": edm_cifar10_ddpmpp}
