"""Image datasets read from local files: CIFAR-10, CelebA, LSUN, CelebA-HQ, FFHQ, image folders.

Every dataset yields float32 images ``(C, H, W)`` with values ``k / 255`` in ``[0, 1]`` (decoded
as 8-bit RGB; any resize is done by Pillow on uint8 images, so resized pixels are rounded to
``k / 255`` too). Centring to ``[-1, 1]`` (:func:`scoresde.core.transforms.center`) and uniform
dequantization (:func:`scoresde.core.transforms.uniform_dequantize`) are applied to batches later.
Decoding uses Pillow and numpy only (plus ``lmdb`` for LSUN's lmdb export); nothing is downloaded.

Layouts (``root`` as passed to :func:`load_image_dataset`):

* ``cifar10``: ``cifar-10-python.tar.gz`` (read in place), the extracted ``cifar-10-batches-py/``
  folder, or a folder holding either. Splits ``"train"`` (50000) and ``"test"`` (10000).
* ``celeba``: ``img_align_celeba/`` (the folder or its parent). Splits ``"train"``,
  ``"validation"``, ``"test"`` from ``list_eval_partition.txt`` (in ``root``, the parent of the
  image folder, or an ``Eval/`` folder in either); without that file ``"train"`` is every image.
* ``lsun``: an lmdb export (a folder with ``data.mdb``, e.g. ``bedroom_train_lmdb/``), a folder
  holding ``*_train_lmdb/`` and ``*_val_lmdb/`` (split ``"train"``, ``"test"``/``"validation"``),
  or an image folder.
* ``celebahq``, ``ffhq``, ``folder``: a folder scanned recursively for png/jpg/jpeg/webp/bmp files
  (sorted by relative path); ``root/<split>/`` if that folder exists, else ``root`` itself for
  ``"train"``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from scoresde.core.seeding import BatchRows, stream
from scoresde.core.transforms import random_horizontal_flip
from scoresde.setup.data.cifar import read_cifar10
from scoresde.setup.data.image_formats import (
    IMAGE_EXTENSIONS,
    DatasetError,
    ImageArrayDataset,
    ImageFileDataset,
    Item,
    LmdbImageDataset,
    MirroredDataset,
    celeba_preprocess,
    list_image_files,
    lsun_preprocess,
    square_preprocess,
)

IMAGE_DATASETS = ("cifar10", "celeba", "lsun", "celebahq", "ffhq", "folder")
CELEBA_PARTITIONS = {"train": 0, "validation": 1, "test": 2}
LSUN_SPLITS = {"train": "train", "validation": "val", "test": "val"}

__all__ = [
    "IMAGE_DATASETS",
    "DatasetError",
    "ImageArrayDataset",
    "ImageFileDataset",
    "LmdbImageDataset",
    "MirroredDataset",
    "celeba",
    "cifar10",
    "epoch_batches",
    "image_batches",
    "image_folder",
    "image_loader",
    "load_image_dataset",
    "lsun",
]


def _existing_dir(root: str | os.PathLike, what: str, layout: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"{what} path {path} does not exist; {layout}")
    if not path.is_dir():
        raise DatasetError(f"{what} path {path} is not a folder; {layout}")
    return path


def _split_folder(root: Path, split: str, what: str, layout: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise DatasetError(
        f"{what} folder {root} has no {split}/ subfolder for split {split!r}; {layout}"
    )


def _nonempty(files: list[Path], folder: Path, what: str, layout: str) -> list[Path]:
    if not files:
        raise DatasetError(f"no images in {what} folder {folder}; {layout}")
    return files


def cifar10(
    root: str | os.PathLike, *, split: str = "train", with_labels: bool = False
) -> ImageArrayDataset:
    """CIFAR-10 from the python release (see :func:`scoresde.setup.data.cifar.read_cifar10`).

    Returns:
        Images ``(3, 32, 32)`` (or ``(image, label)`` pairs with ``with_labels``); the ``labels``
        attribute is always set, int64 ``(N,)`` in ``0..9``.
    """
    images, labels = read_cifar10(Path(root), split)
    return ImageArrayDataset(images, labels, with_labels=with_labels)


def celeba(
    root: str | os.PathLike,
    *,
    split: str = "train",
    image_size: int = 64,
    crop_size: int = 140,
    resample: str = "bilinear",
) -> ImageFileDataset:
    """Aligned CelebA with Song & Ermon's preprocessing: central 140x140 crop, resize to 64x64.

    Images ``(3, image_size, image_size)``; the resize is Pillow's antialiased ``resample``
    filter, bilinear by default as in NCSNv2 and score_sde (see
    :func:`scoresde.setup.data.image_formats.celeba_preprocess`). Files are sorted by name.
    """
    layout = "expected img_align_celeba/*.jpg (the folder or its parent)"
    root = _existing_dir(root, "CelebA", layout)
    folder = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    files = _nonempty(list_image_files(folder, recursive=False), folder, "CelebA", layout)
    if split not in CELEBA_PARTITIONS:
        raise ValueError(f"unknown CelebA split {split!r}; choose from {list(CELEBA_PARTITIONS)}")
    partition_file = _find_partition_file(root, folder)
    if partition_file is not None:
        partition = _read_partition(partition_file)
        files = [p for p in files if partition.get(p.name) == CELEBA_PARTITIONS[split]]
        if not files:
            raise DatasetError(f"no images of split {split!r} of {partition_file} in {folder}")
    elif split != "train":
        raise DatasetError(
            f"CelebA split {split!r} needs list_eval_partition.txt beside {folder} or in {root}"
        )
    preprocess = functools.partial(
        celeba_preprocess, image_size=image_size, crop_size=crop_size, resample=resample
    )
    return ImageFileDataset(files, preprocess)


def _find_partition_file(root: Path, folder: Path) -> Path | None:
    for base in dict.fromkeys([root, folder.parent]):
        for candidate in (
            base / "list_eval_partition.txt",
            base / "Eval" / "list_eval_partition.txt",
        ):
            if candidate.is_file():
                return candidate
    return None


def _read_partition(path: Path) -> dict[str, int]:
    """``{file name: 0 | 1 | 2}`` from lines ``000001.jpg 0`` (or csv ``image_id,partition``)."""
    partition = {}
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1].isdigit():
            partition[fields[0]] = int(fields[1])
    if not partition:
        raise DatasetError(
            f"{path} has no lines '<file> <0|1|2>'; expected CelebA's partition file"
        )
    return partition


def lsun(
    root: str | os.PathLike, *, split: str = "train", image_size: int = 256
) -> LmdbImageDataset | ImageFileDataset:
    """LSUN (one category) from its lmdb export or an image folder, preprocessed as score_sde.

    Images ``(3, image_size, image_size)``: at 128, shorter side resized to 128 then a central
    crop; at other sizes, central square crop then an antialiased bicubic resize (see
    :func:`scoresde.setup.data.image_formats.lsun_preprocess`).
    """
    layout = (
        "expected an lmdb folder with data.mdb (e.g. bedroom_train_lmdb/), a folder holding "
        "*_train_lmdb/ and *_val_lmdb/, or an image folder"
    )
    if split not in LSUN_SPLITS:
        raise ValueError(f"unknown LSUN split {split!r}; choose from {list(LSUN_SPLITS)}")
    root = Path(root)
    if root.name == "data.mdb" and root.is_file():
        root = root.parent
    root = _existing_dir(root, "LSUN", layout)
    preprocess = functools.partial(lsun_preprocess, image_size=image_size)
    if (root / "data.mdb").is_file():
        return LmdbImageDataset(root, preprocess)
    exports = sorted(
        p for p in root.glob(f"*_{LSUN_SPLITS[split]}_lmdb") if (p / "data.mdb").is_file()
    )
    if len(exports) > 1:
        names = ", ".join(p.name for p in exports)
        raise DatasetError(f"LSUN folder {root} holds several {split} exports ({names}); pick one")
    if exports:
        return LmdbImageDataset(exports[0], preprocess)
    folder = _split_folder(root, split, "LSUN", layout)
    return ImageFileDataset(_nonempty(list_image_files(folder), folder, "LSUN", layout), preprocess)


def image_folder(
    root: str | os.PathLike,
    *,
    split: str = "train",
    image_size: int | None = None,
    resample: str = "bicubic",
) -> ImageFileDataset:
    """Every image under a folder (CelebA-HQ, FFHQ, ...), recursively, sorted by relative path.

    Images ``(3, H, W)`` as stored, or with ``image_size`` the largest central square resized to
    ``image_size`` with Pillow's antialiased ``resample`` filter (bicubic, as score_sde's
    ``crop_resize``). Batching needs equal sizes, so give ``image_size`` for mixed folders.
    """
    layout = f"expected image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}), nested or not"
    folder = _split_folder(_existing_dir(root, "image", layout), split, "image", layout)
    files = _nonempty(list_image_files(folder), folder, "image", layout)
    preprocess = None
    if image_size is not None:
        preprocess = functools.partial(square_preprocess, image_size=image_size, resample=resample)
    return ImageFileDataset(files, preprocess)


def load_image_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    split: str = "train",
    image_size: int | None = None,
    random_flip: bool = False,
    with_labels: bool = False,
) -> Dataset:
    """One of :data:`IMAGE_DATASETS` read from ``root`` (layouts in the module docstring).

    Args:
        name: "cifar10", "celeba", "lsun", "celebahq", "ffhq" or "folder".
        split: "train" or "test" (CelebA and LSUN also take "validation").
        image_size: output side; ``None`` is each dataset's default (CIFAR-10 32, which is the
            only size it takes; CelebA 64; LSUN 256; folders as stored).
        random_flip: append mirrored copies (:class:`MirroredDataset`, doubling the length);
            for random flips per draw use ``image_batches(..., random_flip=True)`` instead.
        with_labels: items are ``(image, label)`` pairs (CIFAR-10 only).

    Returns:
        A dataset of float32 ``(3, image_size, image_size)`` images in ``[0, 1]`` (folders with
        ``image_size=None``: ``(3, H, W)`` as stored).
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose from {list(IMAGE_DATASETS)}")
    if with_labels and name != "cifar10":
        raise ValueError(f"labels are available for cifar10 only, not {name!r}")
    dataset: Dataset
    if name == "cifar10":
        if image_size not in (None, 32):
            raise ValueError(f"CIFAR-10 images are 32x32; got image_size={image_size}")
        dataset = cifar10(root, split=split, with_labels=with_labels)
    elif name == "celeba":
        dataset = celeba(root, split=split, image_size=image_size or 64)
    elif name == "lsun":
        dataset = lsun(root, split=split, image_size=image_size or 256)
    else:
        dataset = image_folder(root, split=split, image_size=image_size)
    return MirroredDataset(dataset) if random_flip else dataset


def image_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    random_flip: bool,
    drop_last: bool = True,
    num_workers: int = 0,
    start: int = 0,
    rows: slice | None = None,
) -> Iterator[Item]:
    """Shuffled minibatches for training, forever: epoch after epoch, reshuffled each epoch.

    Batch ``k`` (counting from 0 over all epochs) is a function of ``seed`` and ``k`` only: epoch
    ``e``'s order is a permutation drawn from the stream ``(seed, "epoch", e)`` and batch ``k``'s
    flips from ``(seed, "flip", k)``. So ``start=k`` continues exactly where a run that had
    taken ``k`` batches stopped, without reading the skipped images (a resumed training run
    passes its step). Workers get their seeds from ``seed`` as well.

    Args:
        dataset: items are images ``(C, H, W)`` or ``(image, label)`` pairs.
        seed: the data seed (e.g. ``derive_seed(cfg.seed, "data")``).
        random_flip: flip each image horizontally with probability 1/2
            (:func:`scoresde.core.transforms.random_horizontal_flip`).
        drop_last: skip each epoch's last incomplete batch (all batches are then ``batch_size``).
        num_workers: ``DataLoader`` worker processes (0 decodes in this process); workers
            persist across epochs.
        start: the index of the first batch to yield.
        rows: only these rows of each batch (one device's shard of a distributed batch): the
            other rows are not read, and the flips are those the whole batch would have had.

    Yields:
        Float32 ``(B, C, H, W)`` in ``[0, 1]``, or ``(images, labels (B,) int64)`` for pairs
        (``B`` the number of ``rows``).
    """
    loader = image_loader(
        dataset, batch_size, seed=seed, drop_last=drop_last, num_workers=num_workers,
        start=start, rows=rows,
    )  # fmt: skip
    return _flipped(loader, seed, start, random_flip, batch_size, _check_rows(rows, batch_size))


def image_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    drop_last: bool = True,
    num_workers: int = 0,
    start: int = 0,
    rows: slice | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The batches of :func:`image_batches` before their random flips, as an endless
    ``DataLoader``: its ``j``-th batch is batch ``start + j`` (same order, same images, whatever
    ``num_workers``). ``pin_memory`` puts each batch in page-locked memory (for asynchronous
    copies to a CUDA device; the loader pins for the current CUDA device). Arguments as
    :func:`image_batches`."""
    sampler = epoch_batches(
        len(dataset), batch_size, seed=seed, drop_last=drop_last, start=start, rows=rows
    )
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, generator=stream(seed, "workers"),
    )  # fmt: skip


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    drop_last: bool = True,
    start: int = 0,
    rows: slice | None = None,
) -> Iterable[list[int]]:
    """The dataset indices of the batches of :func:`image_batches` over ``n`` images: an endless
    iterable of lists (``rows`` of each batch) from batch ``start`` on, epoch ``e``'s order from
    the stream ``(seed, "epoch", e)``. Raises ``ValueError`` where no batch can be made."""
    if n == 0 or (drop_last and n < batch_size):
        raise ValueError(
            f"a dataset of {n} images yields no batch of {batch_size} (drop_last={drop_last})"
        )
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    rows = _check_rows(rows, batch_size)
    return _EpochBatches(n, batch_size, seed=seed, drop_last=drop_last, start=start, rows=rows)


def _check_rows(rows: slice | None, batch_size: int) -> slice:
    rows = rows if rows is not None else slice(0, batch_size)
    if not 0 <= rows.start < rows.stop <= batch_size or rows.step not in (None, 1):
        raise ValueError(f"rows {rows.start}:{rows.stop} are not a part of a batch of {batch_size}")
    return rows


def _flipped(
    loader: DataLoader, seed: int, start: int, random_flip: bool, batch_size: int, rows: slice
) -> Iterator[Item]:
    for k, batch in enumerate(loader, start=start):
        flip = (
            BatchRows(stream(seed, "flip", k), batch_size, rows.start, rows.stop)
            if random_flip
            else None
        )
        if isinstance(batch, (list, tuple)):
            images, labels = batch
            yield (random_horizontal_flip(images, flip) if random_flip else images, labels)
        else:
            yield random_horizontal_flip(batch, flip) if random_flip else batch


class _EpochBatches:
    """An endless batch sampler: the index lists of batches ``start, start + 1, ...``."""

    def __init__(
        self, n: int, batch_size: int, *, seed: int, drop_last: bool, start: int, rows: slice
    ):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rows = rows
        self.per_epoch = n // batch_size if drop_last else -(-n // batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = divmod(self.start, self.per_epoch)
        while True:
            order = torch.randperm(self.n, generator=stream(self.seed, "epoch", epoch)).tolist()
            for b in range(position, self.per_epoch):
                yield order[b * self.batch_size : (b + 1) * self.batch_size][self.rows]
            epoch, position = epoch + 1, 0
