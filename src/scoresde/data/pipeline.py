"""From a :class:`~scoresde.config.DataConfig` to tensors: splits, batches, model scale and back.

Image data is kept in ``[0, 1]`` with ``levels`` grey levels; the model sees it uniformly
dequantized (optional) and centred to ``[-1, 1]`` (optional). Toy 2-D data is used as is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.config import DataConfig
from scoresde.data.images import IMAGE_DATASETS, image_batches, load_image_dataset
from scoresde.data.toy import TOY_DATASETS, sample_toy
from scoresde.data.transforms import center, uncenter, uniform_dequantize
from scoresde.seeding import stream

TOY_SPLIT_SIZES = {"train": 20000, "test": 2000}
DEFAULT_IMAGE_SIZES = {"cifar10": 32, "celeba": 64, "lsun": 256}
DATASETS = ("digits", *TOY_DATASETS, *IMAGE_DATASETS)


def is_image_data(cfg: DataConfig) -> bool:
    return cfg.dataset not in TOY_DATASETS


def data_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one example: ``(1, 8, 8)`` for digits, ``(2,)`` for toys, ``(3, S, S)``."""
    if cfg.dataset == "digits":
        return (1, 8, 8)
    if cfg.dataset in TOY_DATASETS:
        return (2,)
    if cfg.dataset in IMAGE_DATASETS:
        size = cfg.image_size or DEFAULT_IMAGE_SIZES.get(cfg.dataset, 0)
        if not size:
            raise ValueError(f"dataset {cfg.dataset!r} needs data.image_size")
        return (3, size, size)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose from {list(DATASETS)}")


def _image_dataset(cfg: DataConfig, split: str, *, with_labels: bool = False):
    if not cfg.root:
        raise ValueError(f"dataset {cfg.dataset!r} is read from disk: set data.root=PATH")
    return load_image_dataset(
        cfg.dataset, cfg.root, split=split, image_size=data_shape(cfg)[-1], with_labels=with_labels
    )


def load_split(cfg: DataConfig, split: str, *, limit: int = 0) -> Tensor:
    """A split as one tensor: ``(N, C, H, W)`` images in ``[0, 1]`` or ``(N, 2)`` toy points.

    Toy splits are fixed draws (seeded by ``split_seed``; the test draw uses another seed).
    ``limit`` > 0 keeps the first ``limit`` examples (image datasets are only read that far).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    data_shape(cfg)
    if cfg.dataset == "digits":
        from scoresde.data.digits import load_digits_split

        train, test = load_digits_split(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        data = train if split == "train" else test
    elif cfg.dataset in TOY_DATASETS:
        seed = cfg.split_seed + (0 if split == "train" else 1_000_003)
        gen = torch.Generator().manual_seed(seed)
        data = sample_toy(cfg.dataset, TOY_SPLIT_SIZES[split], generator=gen)
    else:
        dataset = _image_dataset(cfg, split)
        n = min(limit, len(dataset)) if limit else len(dataset)
        return torch.stack([dataset[i] for i in range(n)])
    return data[:limit] if limit else data


@dataclass
class Batch:
    """A training minibatch: ``data`` ``(B, ...)`` and an optional condition ``labels`` ``(B,)``
    (int64 class labels), which training passes on to the network."""

    data: Tensor
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        labels = self.labels.to(device) if self.labels is not None else None
        return Batch(self.data.to(device), labels)


LABELED_DATASETS = ("digits", "cifar10")


def train_batches(
    cfg: DataConfig,
    batch_size: int,
    *,
    seed: int,
    start: int = 0,
    with_labels: bool = False,
    rows: slice | None = None,
) -> Iterator[Batch]:
    """Endless shuffled training batches in data scale: batch ``k`` depends on ``seed`` and
    ``k`` only, so ``start=k`` resumes a run that has taken ``k`` batches exactly.

    The dataset is opened here, so a missing or corrupt one fails before training starts.
    In-memory data (digits, toys) is sampled with replacement (batch ``k``'s indices from the
    stream ``(seed, "batch", k)``); image datasets are read epoch by epoch in a random order,
    with random flips if set (:func:`scoresde.data.images.image_batches`). ``with_labels``
    attaches the class labels (digits and CIFAR-10 have them). ``rows`` keeps only those rows
    of every batch (a device's shard of a distributed batch of ``batch_size``): the shards of
    all devices put together are the batch one device would see.
    """
    if with_labels and cfg.dataset not in LABELED_DATASETS:
        raise ValueError(
            f"dataset {cfg.dataset!r} has no class labels (model.num_classes > 0 needs one of "
            f"{list(LABELED_DATASETS)})"
        )
    if cfg.dataset in IMAGE_DATASETS:
        batches = image_batches(
            _image_dataset(cfg, "train", with_labels=with_labels),
            batch_size,
            seed=seed,
            start=start,
            random_flip=cfg.random_flip,
            num_workers=cfg.num_workers,
            rows=rows,
        )
        return (Batch(*b) if with_labels else Batch(b) for b in batches)
    if with_labels:
        from scoresde.data.digits import load_digits_labeled_split

        images, labels, _, _ = load_digits_labeled_split(
            test_fraction=cfg.test_fraction, seed=cfg.split_seed
        )
        return _resampled(images, labels, batch_size, seed, start, rows)
    return _resampled(load_split(cfg, "train"), None, batch_size, seed, start, rows)


def _resampled(
    data: Tensor, labels: Tensor | None, batch_size: int, seed: int, start: int, rows: slice | None
) -> Iterator[Batch]:
    rows = rows if rows is not None else slice(0, batch_size)
    for k in itertools.count(start):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=stream(seed, "batch", k))
        idx = idx[rows]
        yield Batch(data[idx], labels[idx] if labels is not None else None)


def to_model_scale(
    x: Tensor, cfg: DataConfig, *, generator: torch.Generator | None = None
) -> Tensor:
    """Map data to what the model sees: dequantize (if set) and centre (if set)."""
    if cfg.dequantize:
        x = uniform_dequantize(x, levels=cfg.levels, generator=generator)
    return center(x) if cfg.centered else x


def from_model_scale(y: Tensor, cfg: DataConfig) -> Tensor:
    """Map model outputs back to data scale; images are clamped to ``[0, 1]``."""
    x = uncenter(y) if cfg.centered else y
    return x.clamp(0, 1) if is_image_data(cfg) else x
