"""From a :class:`~scoresde.setup.config.DataConfig` to tensors: splits, batches, model scale and
back.

Image data is kept in ``[0, 1]`` with ``levels`` grey levels; the model sees it uniformly
dequantized (optional) and centred to ``[-1, 1]`` (optional). Toy 2-D data is used as is.
The datasets of :data:`LABELED_DATASETS` also have int64 class labels (:func:`num_classes`,
:func:`load_labeled_split`, ``train_batches(..., with_labels=True)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.core.seeding import stream
from scoresde.core.transforms import center, uncenter, uniform_dequantize
from scoresde.setup.config import DataConfig
from scoresde.setup.data.images import IMAGE_DATASETS, image_batches, load_image_dataset
from scoresde.setup.data.toy import TOY_DATASETS, TOY_NUM_CLASSES, sample_toy, sample_toy_labeled

TOY_SPLIT_SIZES = {"train": 20000, "test": 2000}
DEFAULT_IMAGE_SIZES = {"cifar10": 32, "celeba": 64, "lsun": 256}
DATASETS = ("digits", *TOY_DATASETS, *IMAGE_DATASETS)
NUM_CLASSES = {"digits": 10, "cifar10": 10, **TOY_NUM_CLASSES}
LABELED_DATASETS = tuple(NUM_CLASSES)
IN_MEMORY_DATASETS = ("digits", *TOY_DATASETS, "cifar10")
"""Datasets whose whole training split is held in memory (CIFAR-10 as uint8): those
``data.on_device`` can keep on the training device."""
AUTO_CUDA_WORKERS = 4


def resolve_num_workers(cfg: DataConfig, device: torch.device | str) -> int:
    """The ``DataLoader`` worker processes that decode an image dataset for ``device``:
    ``data.num_workers`` when >= 0, else (-1, auto) 4 on a CUDA device and 0 (decode in this
    process) elsewhere. Only image datasets read through a ``DataLoader`` (all of
    :data:`IMAGE_DATASETS`, unless CIFAR-10 is kept on the device) use workers; digits and the
    2-D toys are indexed in memory and ignore the setting. Workers never change the batches."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    return AUTO_CUDA_WORKERS if torch.device(device).type == "cuda" else 0


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


def image_dataset(cfg: DataConfig, split: str, *, with_labels: bool = False):
    """The image dataset ``cfg`` names, opened from ``data.root`` (items float32 ``(3, S, S)``
    in ``[0, 1]``, or ``(image, label)`` pairs; CIFAR-10 an
    :class:`~scoresde.setup.data.image_formats.ImageArrayDataset` holding uint8 ``images``)."""
    if not cfg.root:
        raise ValueError(f"dataset {cfg.dataset!r} is read from disk: set data.root=PATH")
    return load_image_dataset(
        cfg.dataset, cfg.root, split=split, image_size=data_shape(cfg)[-1], with_labels=with_labels
    )


def num_classes(cfg: DataConfig) -> int:
    """The number of class labels of ``cfg.dataset``: 10 for digits and CIFAR-10, 8 for the
    "gmm" toy (its mixture components), 2 for "moons" (0 = upper moon, 1 = lower)."""
    if cfg.dataset not in NUM_CLASSES:
        raise ValueError(
            f"dataset {cfg.dataset!r} has no class labels; labelled datasets: "
            f"{list(LABELED_DATASETS)}"
        )
    return NUM_CLASSES[cfg.dataset]


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")


def _toy_generator(cfg: DataConfig, split: str) -> torch.Generator:
    """The generator of a toy split's fixed draw (the test draw uses another seed)."""
    seed = cfg.split_seed + (0 if split == "train" else 1_000_003)
    return torch.Generator().manual_seed(seed)


def load_split(cfg: DataConfig, split: str, *, limit: int = 0) -> Tensor:
    """A split as one tensor: ``(N, C, H, W)`` images in ``[0, 1]`` or ``(N, 2)`` toy points.

    Toy splits are fixed draws (seeded by ``split_seed``; the test draw uses another seed).
    ``limit`` > 0 keeps the first ``limit`` examples (image datasets are only read that far).
    """
    _check_split(split)
    data_shape(cfg)
    if cfg.dataset == "digits":
        from scoresde.setup.data.digits import load_digits_split

        train, test = load_digits_split(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        data = train if split == "train" else test
    elif cfg.dataset in TOY_DATASETS:
        gen = _toy_generator(cfg, split)
        data = sample_toy(cfg.dataset, TOY_SPLIT_SIZES[split], generator=gen)
    else:
        dataset = image_dataset(cfg, split)
        n = min(limit, len(dataset)) if limit else len(dataset)
        return torch.stack([dataset[i] for i in range(n)])
    return data[:limit] if limit else data


def load_labeled_split(cfg: DataConfig, split: str, *, limit: int = 0) -> tuple[Tensor, Tensor]:
    """A split of a labelled dataset with its class labels.

    Returns:
        ``(data, labels)``: ``data`` exactly as :func:`load_split` gives it (same examples, same
        order, same ``limit``), ``(N, C, H, W)`` images or ``(N, 2)`` toy points, and int64
        labels ``(N,)`` in ``0..num_classes(cfg)-1`` (toy labels come from the same draw).

    Raises:
        ValueError: an unknown split, or a dataset not in :data:`LABELED_DATASETS`.
    """
    _check_split(split)
    data_shape(cfg)
    num_classes(cfg)
    if cfg.dataset == "digits":
        from scoresde.setup.data.digits import load_digits_labeled_split

        train, train_labels, test, test_labels = load_digits_labeled_split(
            test_fraction=cfg.test_fraction, seed=cfg.split_seed
        )
        data, labels = (train, train_labels) if split == "train" else (test, test_labels)
    elif cfg.dataset in TOY_DATASETS:
        gen = _toy_generator(cfg, split)
        data, labels = sample_toy_labeled(cfg.dataset, TOY_SPLIT_SIZES[split], generator=gen)
    else:
        dataset = image_dataset(cfg, split, with_labels=True)
        n = min(limit, len(dataset)) if limit else len(dataset)
        items = [dataset[i] for i in range(n)]
        images = torch.stack([image for image, _ in items])
        return images, torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    return (data[:limit], labels[:limit]) if limit else (data, labels)


@dataclass
class Batch:
    """A training minibatch: ``data`` ``(B, ...)`` and an optional condition ``labels`` ``(B,)``
    (int64 class labels), which training passes on to the network."""

    data: Tensor
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        labels = self.labels.to(device) if self.labels is not None else None
        return Batch(self.data.to(device), labels)


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
    with random flips if set (:func:`scoresde.setup.data.images.image_batches`). ``with_labels``
    attaches the class labels (:data:`LABELED_DATASETS` have them; the data is the same as
    without). ``rows`` keeps only those rows of every batch (a device's shard of a distributed
    batch of ``batch_size``): the shards of all devices put together are the batch one device
    would see. The batches stay on the CPU, so ``data.num_workers`` -1 (auto) means 0 here;
    :func:`scoresde.setup.data.feeding.device_batches` gives the same batches on a training device.
    """
    check_labels(cfg, with_labels)
    if cfg.dataset in IMAGE_DATASETS:
        batches = image_batches(
            image_dataset(cfg, "train", with_labels=with_labels),
            batch_size,
            seed=seed,
            start=start,
            random_flip=cfg.random_flip,
            num_workers=resolve_num_workers(cfg, "cpu"),
            rows=rows,
        )
        return (Batch(*b) if with_labels else Batch(b) for b in batches)
    if with_labels:
        data, labels = load_labeled_split(cfg, "train")
        return _resampled(data, labels, batch_size, seed, start, rows)
    return _resampled(load_split(cfg, "train"), None, batch_size, seed, start, rows)


def check_labels(cfg: DataConfig, with_labels: bool) -> None:
    """Raise ``ValueError`` if ``with_labels`` asks for labels ``cfg.dataset`` does not have."""
    if with_labels and cfg.dataset not in LABELED_DATASETS:
        raise ValueError(
            f"dataset {cfg.dataset!r} has no class labels (a label-conditional model, "
            f"model.num_classes > 0, or a classifier needs one of {list(LABELED_DATASETS)})"
        )


def resampled_indices(
    n: int, batch_size: int, seed: int, start: int, rows: slice | None
) -> Iterator[Tensor]:
    """The indices ``(B,)`` int64 (CPU) of the in-memory batches ``start, start + 1, ...`` over
    ``n`` examples: batch ``k`` draws ``batch_size`` with replacement from the stream
    ``(seed, "batch", k)`` and keeps ``rows``."""
    rows = rows if rows is not None else slice(0, batch_size)
    for k in itertools.count(start):
        idx = torch.randint(0, n, (batch_size,), generator=stream(seed, "batch", k))
        yield idx[rows]


def _resampled(
    data: Tensor, labels: Tensor | None, batch_size: int, seed: int, start: int, rows: slice | None
) -> Iterator[Batch]:
    for idx in resampled_indices(data.shape[0], batch_size, seed, start, rows):
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
