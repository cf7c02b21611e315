"""Presets for the small experiments: 8x8 digits (the demo) and 2-D toy distributions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from scoresde.setup.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    SampleConfig,
    SDEConfig,
    TrainConfig,
)


def digits_vp() -> Config:
    """8x8 digits, VP SDE, a small U-Net with positional time embedding (DDPM++ style).

    The likelihood's ODE tolerances are ``1e-4``: on the demo model they change the test
    bits/dim by under 0.001 against ``1e-5`` (the dequantization and trace noise of one seed is
    0.014) at a third of the cost. ``scoresde evaluate`` measures 1000 samples in the feature
    space of the package's digits classifier (no download) and the test bits/dim.
    """
    return Config(
        data=DataConfig(dataset="digits", centered=True, dequantize=True, levels=17),
        sde=SDEConfig(kind="vp"),
        model=ModelConfig(name="unet", embedding_type="positional"),
        eval=EvalConfig(
            rtol=1e-4,
            atol=1e-4,
            features="digits",
            num_samples=1000,
            metrics=("fid", "is", "kid", "bpd"),
        ),
    )


def digits_subvp() -> Config:
    """8x8 digits, sub-VP SDE (the paper's choice for likelihoods)."""
    c = digits_vp()
    return replace(c, sde=replace(c.sde, kind="subvp"))


def digits_ve() -> Config:
    """8x8 digits, VE SDE, Fourier embedding of ``log sigma`` with output scaled by ``1/sigma``.

    ``sigma_max = 12`` is about the largest distance between two centred digits (Song & Ermon,
    2020, technique 1).
    """
    c = digits_vp()
    model = replace(c.model, embedding_type="fourier", scale_by_sigma=True)
    return replace(c, sde=SDEConfig(kind="ve", sigma_min=0.01, sigma_max=12.0), model=model)


def digits_edm() -> Config:
    """8x8 digits, EDM's recipe: EDM SDE, preconditioning, loss; Heun, 19 NFE.

    Karras et al. (2022) on the network and data of ``digits_subvp``: EDM's SDE
    ``sigma(t) = t`` on ``[0.002, 80]``, EDM's preconditioning (``sigma_data = 0.5``, positional
    embedding of ``ln(sigma) / 4``), EDM's loss (``ln sigma ~ N(-1.2, 1.2^2)``) and Heun's
    sampler on EDM's grid down to ``sigma = 0.002``: 9 steps, 19 NFE (EDM's 18 levels / 35 NFE
    would be ``sample.num_steps=17``). The test likelihood also stops at ``sigma = 0.002``
    (``eval.eps``)."""
    c = digits_subvp()
    return replace(
        c,
        sde=SDEConfig(kind="edm", sigma_min=0.002, sigma_max=80.0),
        model=replace(c.model, parametrization="edm", sigma_data=0.5),
        train=replace(c.train, loss="edm", P_mean=-1.2, P_std=1.2),
        sample=SampleConfig(method="heun", num_steps=9, grid="edm", eps=0.002),
        eval=replace(c.eval, eps=0.002),
    )


def _toy(dataset: str, kind: str, sigma_max: float) -> Config:
    embedding = "fourier" if kind == "ve" else "positional"
    return Config(
        data=DataConfig(dataset=dataset, centered=False, dequantize=False),
        sde=SDEConfig(kind=kind, sigma_max=sigma_max),
        model=ModelConfig(
            name="mlp", hidden=128, depth=3, embedding_type=embedding, scale_by_sigma=kind == "ve"
        ),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, warmup=100),
        sample=SampleConfig(num_samples=2000, options={"num_steps": 500}),
        eval=EvalConfig(metrics=("bpd",)),  # the likelihood in nats: no image features
    )


def toy_gmm() -> Config:
    """Eight Gaussians on a circle (exact score known), VP SDE, MLP score network."""
    return _toy("gmm", "vp", 10.0)


def toy_gmm_ve() -> Config:
    """Eight Gaussians on a circle, VE SDE (``sigma_max = 10``)."""
    return _toy("gmm", "ve", 10.0)


def toy_moons() -> Config:
    """Two moons, VP SDE, MLP score network."""
    return _toy("moons", "vp", 5.0)


def toy_swissroll() -> Config:
    """Swiss roll, sub-VP SDE, MLP score network."""
    return _toy("swissroll", "subvp", 5.0)


SMALL_PRESETS: dict[str, Callable[[], Config]] = {
    "digits_vp": digits_vp,
    "digits_subvp": digits_subvp,
    "digits_ve": digits_ve,
    "digits_edm": digits_edm,
    "toy_gmm": toy_gmm,
    "toy_gmm_ve": toy_gmm_ve,
    "toy_moons": toy_moons,
    "toy_swissroll": toy_swissroll,
}
