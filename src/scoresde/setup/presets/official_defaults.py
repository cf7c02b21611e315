"""Shared pieces of the paper presets: the official configs' data, training and sampling blocks.

Every official file starts from ``default_{cifar10,celeba,lsun}_configs.py``; these helpers hold
those defaults so each preset states only what its file changes.
"""

from __future__ import annotations

from typing import Any

from scoresde.setup.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    SampleConfig,
    SDEConfig,
    TrainConfig,
)


def official_data(dataset: str, size: int, *, centered: bool) -> DataConfig:
    return DataConfig(
        dataset=dataset,
        image_size=size,
        centered=centered,
        dequantize=False,
        random_flip=True,
        levels=256,
    )


def official_train(
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


def official_sample(
    predictor: str, corrector: str, snr: float, num_steps: int, n_steps: int = 1
) -> SampleConfig:
    options = dict(predictor=predictor, corrector=corrector, snr=snr, num_steps=num_steps,
                   n_steps=n_steps)
    return SampleConfig(method="pc", options=options)


def ve_sde(sigma_max: float, N: int = 1000) -> SDEConfig:
    return SDEConfig(kind="ve", sigma_min=0.01, sigma_max=sigma_max, N=N)


def cifar10_config(
    model: ModelConfig, sde: SDEConfig, sample: SampleConfig, *, ema: float, **train: Any
) -> Config:
    centered = sde.kind != "ve"
    return Config(
        data=official_data("cifar10", 32, centered=centered),
        sde=sde,
        model=model,
        train=official_train(ema=ema, reduce_mean=centered, **train),
        sample=sample,
        eval=EvalConfig(bpd_repeats=5),  # the official evaluation: the test split 5 times
        seed=42,
    )
