"""The fed input pipeline: ``device_batches`` gives ``train_batches``'s batches bit for bit,
whatever ``data.num_workers`` and ``data.on_device`` (on the CPU, which runs the on-device
indexing path too)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.setup.config import DataConfig
from scoresde.setup.data.feeding import IN_MEMORY_DATASETS, device_batches, resolve_num_workers
from scoresde.setup.data.image_formats import DatasetError
from scoresde.setup.data.pipeline import train_batches

CPU = torch.device("cpu")
SEED = 1234
BATCH = {"digits": 16, "moons": 16, "cifar10": 16, "folder": 8}  # cifar: 40 images, folder: 20


@pytest.fixture(scope="module")
def image_folder_root(tmp_path_factory):
    """20 random 8x8 RGB PNGs in a ``folder`` dataset."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(3)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.fixture
def config(fake_cifar10_tarball, image_folder_root):
    """``dataset -> DataConfig`` (image datasets with random flips)."""

    def make(dataset: str, **kwargs) -> DataConfig:
        if dataset == "cifar10":
            kwargs = {"root": str(fake_cifar10_tarball), "random_flip": True, **kwargs}
        elif dataset == "folder":
            folder = {"root": str(image_folder_root), "image_size": 8, "random_flip": True}
            kwargs = {**folder, **kwargs}
        return DataConfig(dataset=dataset, **kwargs)

    return make


def _take(batches, n: int):
    return list(itertools.islice(batches, n))


def _reference(cfg: DataConfig, n: int, **kwargs):
    """``train_batches`` as it always fed training: no workers, nothing on a device."""
    plain = replace(cfg, num_workers=0, on_device=False)
    return _take(train_batches(plain, BATCH[cfg.dataset], seed=SEED, **kwargs), n)


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.data.dtype == w.data.dtype and g.data.shape == w.data.shape
        assert g.data.device == CPU
        assert torch.equal(g.data, w.data)
        assert (g.labels is None) == (w.labels is None)
        if w.labels is not None:
            assert g.labels.dtype == torch.int64 and torch.equal(g.labels, w.labels)


@pytest.mark.parametrize(
    ("dataset", "on_device", "num_workers", "with_labels"),
    [
        ("digits", False, 0, False),
        ("digits", True, 0, True),
        ("digits", True, 2, False),  # workers are ignored for in-memory data
        ("moons", False, -1, True),
        ("moons", True, 0, False),
        ("cifar10", False, 0, True),
        ("cifar10", False, 2, False),
        ("cifar10", True, 0, False),
        ("cifar10", True, 2, True),
        ("folder", False, 0, False),
        ("folder", False, 2, False),
    ],
)
def test_batches_equal_train_batches(config, dataset, on_device, num_workers, with_labels):
    cfg = config(dataset, on_device=on_device, num_workers=num_workers)
    n = 5  # image datasets: 2 batches an epoch, so 3 epochs and their reshuffles
    got = _take(
        device_batches(cfg, BATCH[dataset], seed=SEED, with_labels=with_labels, device=CPU), n
    )
    want = _reference(cfg, n, with_labels=with_labels)
    _assert_same(got, want)
    if dataset in ("cifar10", "folder"):  # the flips are real, not a no-op on both sides
        unflipped = _reference(replace(cfg, random_flip=False), n, with_labels=with_labels)
        assert any(not torch.equal(g.data, u.data) for g, u in zip(got, unflipped, strict=True))
        assert float(got[0].data.min()) >= 0.0 and float(got[0].data.max()) <= 1.0


@pytest.mark.parametrize(
    ("dataset", "on_device", "num_workers"),
    [
        ("digits", False, 0),
        ("digits", True, 0),
        ("moons", True, 0),
        ("cifar10", False, 2),
        ("cifar10", True, 0),
        ("folder", False, 0),
    ],
)
def test_rank_shards_and_resume(config, dataset, on_device, num_workers):
    """Two ranks' shards from ``start=3`` put together are batches 3, 4 of a run from 0."""
    cfg = config(dataset, on_device=on_device, num_workers=num_workers)
    bs, cut = BATCH[dataset], 3
    whole = _reference(cfg, 5)
    resumed = _take(device_batches(cfg, bs, seed=SEED, start=3, device=CPU), 2)
    _assert_same(resumed, whole[3:])
    shards = [
        _take(device_batches(cfg, bs, seed=SEED, start=3, rows=rows, device=CPU), 2)
        for rows in (slice(0, cut), slice(cut, bs))
    ]
    for k, (a, b) in enumerate(zip(*shards, strict=True), start=3):
        assert a.data.shape[0] == cut and b.data.shape[0] == bs - cut
        assert torch.equal(torch.cat([a.data, b.data]), whole[k].data)


def test_cifar10_on_device_keeps_uint8_images(config):
    cfg = config("cifar10", on_device=True)
    feeder = device_batches(cfg, 16, seed=SEED, device=CPU)
    assert feeder._resident.data.dtype == torch.uint8
    assert feeder._resident.data.shape == (40, 3, 32, 32)
    assert feeder._resident.labels is None
    batch = next(feeder)
    assert batch.data.dtype == torch.float32 and batch.data.shape == (16, 3, 32, 32)
    levels = batch.data * 255
    assert torch.equal(levels, levels.round())


def test_resolve_num_workers():
    cuda = torch.device("cuda")
    assert resolve_num_workers(DataConfig(), CPU) == 0
    assert resolve_num_workers(DataConfig(), cuda) == 4
    assert resolve_num_workers(DataConfig(), torch.device("cuda", 3)) == 4
    assert resolve_num_workers(DataConfig(), "cpu") == 0
    for n in (0, 3):
        assert resolve_num_workers(DataConfig(num_workers=n), CPU) == n
        assert resolve_num_workers(DataConfig(num_workers=n), cuda) == n
    with pytest.raises(ValueError, match=r"data\.num_workers"):
        DataConfig(num_workers=-2)


@pytest.mark.parametrize("dataset", ["folder", "lsun", "celeba", "ffhq"])
def test_on_device_refused_for_datasets_read_from_disk(tmp_path, dataset):
    """Refused before anything is opened: the root does not even exist."""
    cfg = DataConfig(dataset=dataset, root=str(tmp_path / "nowhere"), image_size=8, on_device=True)
    with pytest.raises(ValueError, match=r"data\.on_device") as err:
        device_batches(cfg, 8, seed=SEED, device=CPU)
    assert "\n" not in str(err.value) and repr(dataset) in str(err.value)
    assert set(IN_MEMORY_DATASETS) == {"digits", "gmm", "moons", "swissroll", "cifar10"}


def test_dataset_is_opened_at_creation(tmp_path, config):
    for on_device in (False, True):
        cfg = DataConfig(dataset="cifar10", root=str(tmp_path / "nowhere"), on_device=on_device)
        with pytest.raises(DatasetError, match="nowhere"):
            device_batches(cfg, 8, seed=SEED, device=CPU)
    with pytest.raises(ValueError, match="has no class labels"):
        device_batches(config("folder"), 8, seed=SEED, with_labels=True, device=CPU)
    with pytest.raises(ValueError, match="yields no batch of 64"):
        device_batches(config("cifar10", on_device=True), 64, seed=SEED, device=CPU)
