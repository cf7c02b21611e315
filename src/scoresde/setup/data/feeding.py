"""Training batches fed to the training device: :func:`device_batches`.

:func:`device_batches` yields the batches of :func:`~scoresde.setup.data.pipeline.train_batches`,
bit
for bit, already on the device. Batch ``k`` stays a function of the seed and ``k`` only:
``data.num_workers`` and ``data.on_device`` change where and how fast batches are made, never
which examples they hold nor their values (a run may resume with either changed).

* Off the device (the default): image datasets are decoded by a ``DataLoader`` with
  :func:`~scoresde.setup.data.pipeline.resolve_num_workers` worker processes (a
  ``DataLoader`` yields
  in sampler order, so workers cannot reorder batches); digits and the 2-D toys are indexed in
  memory on the CPU and use no workers. On CUDA each host batch is in page-locked memory (the
  ``DataLoader``'s ``pin_memory``, or ``Tensor.pin_memory``) and copied with
  ``non_blocking=True``.
* ``data.on_device`` (only for :data:`IN_MEMORY_DATASETS`: digits, the toys, CIFAR-10): the
  whole training split is put on the device once, CIFAR-10 as uint8 ``(50000, 3, 32, 32)``
  (150 MB) converted per batch through a 256-entry table of ``k / 255`` (the very values the
  CPU path computes). Per batch only its indices, drawn from the same CPU streams as off the
  device, are copied, and the batch is gathered on the device. Other datasets are refused.
* Random flips (image datasets with ``data.random_flip``) are drawn on the CPU from the stream
  ``(seed, "flip", k)`` exactly as :func:`~scoresde.setup.data.images.image_batches` draws them, and
  applied on the device (``torch.where``, exact).
* Prefetch (CUDA): batch ``k + 1``'s copies (and its gather and flips) are issued on a side
  CUDA stream before batch ``k`` is handed out, so they overlap batch ``k``'s training step;
  the caller's current stream waits for the side stream before it uses a batch
  (``wait_stream``, and ``record_stream`` so its memory is not reused early). No thread: the
  host work of batch ``k + 1`` (taking a decoded batch from the workers, or drawing indices) is
  done when batch ``k`` is taken. On other devices (the CPU) a batch is made when it is taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from scoresde.core._tensor import rand
from scoresde.core.seeding import BatchRows, stream
from scoresde.setup.config import DataConfig
from scoresde.setup.data.image_formats import ImageArrayDataset
from scoresde.setup.data.images import IMAGE_DATASETS, epoch_batches, image_loader
from scoresde.setup.data.pipeline import (
    IN_MEMORY_DATASETS,
    Batch,
    check_labels,
    image_dataset,
    load_labeled_split,
    load_split,
    resampled_indices,
    resolve_num_workers,
    train_batches,
)

__all__ = ["IN_MEMORY_DATASETS", "device_batches", "resolve_num_workers"]


def device_batches(
    cfg: DataConfig,
    batch_size: int,
    *,
    seed: int,
    start: int = 0,
    with_labels: bool = False,
    rows: slice | None = None,
    device: torch.device,
) -> Iterator[Batch]:
    """Endless training batches on ``device``: exactly those of ``train_batches(cfg,
    batch_size, seed=seed, start=start, with_labels=with_labels, rows=rows)``, in order.

    The dataset is opened (and, with ``data.on_device``, copied to ``device``) here, so a
    missing one fails before training; workers start, and the first batch is made, on the
    first ``next``.

    Args:
        cfg: the data config; ``num_workers`` and ``on_device`` pick the feeding (module
            docstring), nothing else.
        batch_size: the whole (all-device) batch size; ``rows`` as in ``train_batches``.
        device: the training device.

    Yields:
        :class:`~scoresde.setup.data.pipeline.Batch`: ``data`` ``(B, ...)`` float32 in data scale
        and
        ``labels`` ``(B,)`` int64 (or ``None``), both on ``device`` (``B`` the number of
        ``rows``).

    Raises:
        ValueError: ``data.on_device`` with a dataset not in :data:`IN_MEMORY_DATASETS`
            (checked first), or what ``train_batches`` refuses.
    """
    if cfg.on_device and cfg.dataset not in IN_MEMORY_DATASETS:
        raise ValueError(
            f"data.on_device needs a dataset held in memory ({', '.join(IN_MEMORY_DATASETS)}), "
            f"not {cfg.dataset!r}, which is read from disk: set data.on_device=false"
        )
    check_labels(cfg, with_labels)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    resident = None
    if cfg.on_device:
        host, resident = _resident_source(cfg, batch_size, seed, start, with_labels, rows, device)
    elif cfg.dataset in IMAGE_DATASETS:
        dataset = image_dataset(cfg, "train", with_labels=with_labels)
        loader = image_loader(
            dataset,
            batch_size,
            seed=seed,
            start=start,
            rows=rows,
            num_workers=resolve_num_workers(cfg, device),
            pin_memory=device.type == "cuda",
        )
        host = _loader_batches(loader, cfg.random_flip, seed, start, batch_size, rows)
    else:
        batches = train_batches(
            cfg, batch_size, seed=seed, start=start, with_labels=with_labels, rows=rows
        )
        host = (_HostBatch(b.data, b.labels) for b in batches)
    return _Feeder(host, resident, device)


@dataclass
class _HostBatch:
    """The host's part of one batch: ``data`` ``(B, ...)`` and ``labels`` ``(B,)`` to copy, or
    ``index`` ``(B,)`` int64 into the resident training set; ``flip`` ``(B,)`` bool marks the
    images to mirror (``None``: no flips)."""

    data: Tensor | None = None
    labels: Tensor | None = None
    index: Tensor | None = None
    flip: Tensor | None = None

    def pinned(self) -> _HostBatch:
        """The same tensors in page-locked memory (tensors already pinned are kept)."""

        def pin(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.is_pinned() else t.pin_memory()

        return _HostBatch(pin(self.data), pin(self.labels), pin(self.index), pin(self.flip))


@dataclass
class _Resident:
    """A training split kept on the device: ``data`` ``(N, ...)`` (uint8 for CIFAR-10), int64
    ``labels`` ``(N,)`` or ``None``, and for uint8 data ``table`` ``(256,)`` float32 ``k / 255``.
    """

    data: Tensor
    labels: Tensor | None = None
    table: Tensor | None = None


def _full_rows(rows: slice | None, batch_size: int) -> slice:
    return rows if rows is not None else slice(0, batch_size)


def _flip_mask(seed: int, k: int, batch_size: int, rows: slice) -> Tensor:
    """Batch ``k``'s flips ``(B,)`` bool (CPU), drawn as ``image_batches`` draws them: uniform
    ``< 1/2`` for the whole batch from the stream ``(seed, "flip", k)``, ``rows`` kept."""
    draws = BatchRows(stream(seed, "flip", k), batch_size, rows.start, rows.stop)
    return rand((rows.stop - rows.start,), draws, device=torch.device("cpu")) < 0.5


def _loader_batches(
    loader: DataLoader, flips: bool, seed: int, start: int, batch_size: int, rows: slice | None
) -> Iterator[_HostBatch]:
    rows = _full_rows(rows, batch_size)
    for k, item in enumerate(loader, start=start):
        data, labels = item if isinstance(item, (list, tuple)) else (item, None)
        flip = _flip_mask(seed, k, batch_size, rows) if flips else None
        yield _HostBatch(data, labels, flip=flip)


def _indexed_batches(
    batches: Iterable[list[int]], flips: bool, seed: int, start: int, batch_size: int, rows: slice
) -> Iterator[_HostBatch]:
    for k, index in enumerate(batches, start=start):
        flip = _flip_mask(seed, k, batch_size, rows) if flips else None
        yield _HostBatch(index=torch.tensor(index, dtype=torch.int64), flip=flip)


def _resident_source(
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    start: int,
    with_labels: bool,
    rows: slice | None,
    device: torch.device,
) -> tuple[Iterator[_HostBatch], _Resident]:
    """The training split on ``device`` and the host batches (indices, flips) that index it."""
    if cfg.dataset == "cifar10":
        dataset = image_dataset(cfg, "train", with_labels=with_labels)
        if not isinstance(dataset, ImageArrayDataset):  # pragma: no cover - a broken invariant
            raise TypeError(f"CIFAR-10 is expected in memory, got {type(dataset).__name__}")
        batches = epoch_batches(len(dataset), batch_size, seed=seed, start=start, rows=rows)
        # ImageArrayDataset's own conversion, image.float() / 255, for every uint8 value.
        table = torch.arange(256, dtype=torch.uint8).float() / 255
        labels = dataset.labels.to(device) if with_labels else None
        resident = _Resident(dataset.images.to(device), labels, table.to(device))
        host = _indexed_batches(
            batches, cfg.random_flip, seed, start, batch_size, _full_rows(rows, batch_size)
        )
        return host, resident
    if with_labels:
        data, labels = load_labeled_split(cfg, "train")
    else:
        data, labels = load_split(cfg, "train"), None
    resident = _Resident(data.to(device), labels.to(device) if labels is not None else None)
    indices = resampled_indices(data.shape[0], batch_size, seed, start, rows)
    return (_HostBatch(index=index) for index in indices), resident


def _finish(host: _HostBatch, resident: _Resident | None, device: torch.device) -> Batch:
    """Batch on ``device`` from its host part: copy (or gather from ``resident``), then flip."""
    non_blocking = device.type == "cuda"
    if host.index is not None:
        assert resident is not None
        index = host.index.to(device, non_blocking=non_blocking)
        data = resident.data[index]
        labels = resident.labels[index] if resident.labels is not None else None
        if resident.table is not None:
            data = resident.table[data.long()]
    else:
        assert host.data is not None
        data = host.data.to(device, non_blocking=non_blocking)
        labels = host.labels
        labels = labels.to(device, non_blocking=non_blocking) if labels is not None else None
    if host.flip is not None:
        flip = host.flip.to(device, non_blocking=non_blocking)
        data = torch.where(flip.view(-1, *[1] * (data.ndim - 1)), data.flip(-1), data)
    return Batch(data, labels)


class _Feeder(Iterator[Batch]):
    """The iterator :func:`device_batches` returns (prefetching on CUDA, see the module)."""

    def __init__(
        self, host: Iterator[_HostBatch], resident: _Resident | None, device: torch.device
    ) -> None:
        self._host, self._resident, self.device = host, resident, device
        self._stream: torch.cuda.Stream | None = None
        self._ahead: Batch | None = None
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device=device)
            # the resident split was uploaded on the current stream
            self._stream.wait_stream(torch.cuda.current_stream(device))

    def __iter__(self) -> _Feeder:
        return self

    def __next__(self) -> Batch:
        if self._stream is None:
            return _finish(next(self._host), self._resident, self.device)
        with torch.cuda.device(self.device):
            batch = self._ahead if self._ahead is not None else self._issue()
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for tensor in (batch.data, batch.labels):
                if tensor is not None:
                    tensor.record_stream(current)
            self._ahead = None
            self._ahead = self._issue()  # batch k + 1, overlapping batch k's step
        return batch

    def _issue(self) -> Batch:
        """Take the next host batch and enqueue its copies and device work on the side stream."""
        host = next(self._host).pinned()
        with torch.cuda.stream(self._stream):
            return _finish(host, self._resident, self.device)
