"""From a :class:`~scoresde.config.DataConfig` to tensors: splits, model scale and back.

Image data is kept in ``[0, 1]`` with ``levels`` grey levels; the model sees it uniformly
dequantized (optional) and centred to ``[-1, 1]`` (optional). Toy 2-D data is used as is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.config import DataConfig
from scoresde.data.toy import TOY_DATASETS, sample_toy
from scoresde.likelihood import uniform_dequantize

TOY_SPLIT_SIZES = {"train": 20000, "test": 2000}


def is_image_data(cfg: DataConfig) -> bool:
    return cfg.dataset not in TOY_DATASETS


def data_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one example: ``(1, 8, 8)`` for digits, ``(2,)`` for toy data."""
    if cfg.dataset == "digits":
        return (1, 8, 8)
    if cfg.dataset in TOY_DATASETS:
        return (2,)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose from {['digits', *TOY_DATASETS]}")


def load_split(cfg: DataConfig, split: str) -> Tensor:
    """The ``"train"`` or ``"test"`` split: digits ``(N, 1, 8, 8)`` in ``[0, 1]``, toys ``(N, 2)``.

    Toy splits are fixed draws (seeded by ``split_seed``; the test draw uses a different seed).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    data_shape(cfg)
    if cfg.dataset == "digits":
        from scoresde.data.digits import load_digits_split

        train, test = load_digits_split(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        return train if split == "train" else test
    seed = cfg.split_seed + (0 if split == "train" else 1_000_003)
    gen = torch.Generator().manual_seed(seed)
    return sample_toy(cfg.dataset, TOY_SPLIT_SIZES[split], generator=gen)


def to_model_scale(
    x: Tensor, cfg: DataConfig, *, generator: torch.Generator | None = None
) -> Tensor:
    """Map data to what the model sees: dequantize (if set) and centre (if set)."""
    if cfg.dequantize:
        x = uniform_dequantize(x, levels=cfg.levels, generator=generator)
    return 2 * x - 1 if cfg.centered else x


def from_model_scale(y: Tensor, cfg: DataConfig) -> Tensor:
    """Map model outputs back to data scale; images are clamped to ``[0, 1]``."""
    x = (y + 1) / 2 if cfg.centered else y
    return x.clamp(0, 1) if is_image_data(cfg) else x
