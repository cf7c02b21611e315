"""Class labels of the labelled datasets: toys (gmm, moons), digits and a fake CIFAR-10."""

from __future__ import annotations

import pickle
import tarfile
from itertools import islice

import numpy as np
import pytest
import torch

from scoresde.core.mixture import GaussianMixture
from scoresde.setup.config import DataConfig
from scoresde.setup.data.digits import load_digits_labeled_split, load_digits_split
from scoresde.setup.data.pipeline import (
    LABELED_DATASETS,
    TOY_SPLIT_SIZES,
    load_labeled_split,
    load_split,
    num_classes,
    train_batches,
)
from scoresde.setup.data.toy import toy_gmm

IN_MEMORY = ["gmm", "moons", "digits"]


def _cifar_truth(tarball) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The fake tarball's batches read back directly: name -> (uint8 (8, 3072), labels)."""
    out = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            batch = pickle.load(tar.extractfile(member))  # written by the conftest fixture
            out[member.name.rsplit("/", 1)[1]] = (batch[b"data"], batch[b"labels"])
    return out


def test_mixture_components_come_with_the_same_samples():
    mix = GaussianMixture(
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        means=torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, -10.0]]).double(),
        stds=torch.tensor([0.5, 1.0, 0.2], dtype=torch.float64),
    )
    state = torch.get_rng_state()
    g_plain, g_comp = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = mix.sample(4000, generator=g_plain)
    x, k = mix.sample_with_components(4000, generator=g_comp)
    assert torch.equal(x, plain) and x.dtype == torch.float64
    assert k.shape == (4000,) and k.dtype == torch.int64
    assert torch.equal(torch.rand(3, generator=g_plain), torch.rand(3, generator=g_comp))
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"
    assert torch.equal(torch.cdist(x, mix.means).argmin(1), k)  # modes >= 10 apart, std <= 1
    freq = torch.bincount(k, minlength=3).double() / 4000
    assert (freq - mix.weights).abs().max().item() < 5 * (0.25 / 4000) ** 0.5
    residual = x - mix.means[k]
    for j, sd in enumerate(mix.stds.tolist()):
        assert abs(residual[k == j].square().mean().sqrt().item() / sd - 1) < 0.05


def test_num_classes_and_labelled_datasets():
    assert set(LABELED_DATASETS) == {"digits", "cifar10", "gmm", "moons"}
    expected = {"digits": 10, "cifar10": 10, "gmm": 8, "moons": 2}
    assert {name: num_classes(DataConfig(dataset=name)) for name in expected} == expected
    for name in ("swissroll", "celeba", "folder"):
        with pytest.raises(ValueError, match=rf"^dataset '{name}' has no class labels") as err:
            num_classes(DataConfig(dataset=name))
        assert "\n" not in str(err.value)
        assert all(repr(d) in str(err.value) for d in LABELED_DATASETS)


@pytest.mark.parametrize("name", IN_MEMORY)
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_labeled_split_matches_load_split(name, split):
    cfg = DataConfig(dataset=name, split_seed=3)
    data, labels = load_labeled_split(cfg, split)
    expected = load_split(cfg, split)
    assert torch.equal(data, expected)
    assert labels.shape == (data.shape[0],) and labels.dtype == torch.int64
    assert labels.min().item() == 0 and labels.max().item() == num_classes(cfg) - 1
    few, few_labels = load_labeled_split(cfg, split, limit=17)
    assert torch.equal(few, load_split(cfg, split, limit=17))
    assert torch.equal(few_labels, labels[:17])
    if name != "digits":
        assert data.shape == (TOY_SPLIT_SIZES[split], 2)


def test_digits_labels_and_images_are_the_split():
    cfg = DataConfig(dataset="digits", test_fraction=0.25, split_seed=1)
    train_x, _, test_x, test_y = load_digits_labeled_split(test_fraction=0.25, seed=1)
    plain_train, plain_test = load_digits_split(test_fraction=0.25, seed=1)
    assert torch.equal(train_x, plain_train) and torch.equal(test_x, plain_test)
    x, y = load_labeled_split(cfg, "test")
    assert torch.equal(x, test_x) and torch.equal(y, test_y)
    assert x.shape == (449, 1, 8, 8)  # round(1797 * 0.25)
    assert torch.bincount(y, minlength=10).min().item() > 20  # every digit in the test split


def test_toy_split_labels_are_those_of_the_draw():
    x, y = load_labeled_split(DataConfig(dataset="gmm"), "train")
    assert (torch.cdist(x, toy_gmm().means).argmin(1) == y).float().mean().item() > 0.999
    x, y = load_labeled_split(DataConfig(dataset="moons"), "train")
    assert x[y == 0, 1].mean().item() > 0.5 > -0.5 > x[y == 1, 1].mean().item()


@pytest.mark.parametrize("name", IN_MEMORY)
def test_train_batches_with_labels_give_the_same_data(name):
    cfg = DataConfig(dataset=name)
    plain = list(islice(train_batches(cfg, 32, seed=11, start=4), 3))
    labeled = list(islice(train_batches(cfg, 32, seed=11, start=4, with_labels=True), 3))
    data, labels = load_labeled_split(cfg, "train")
    for a, b in zip(plain, labeled, strict=True):
        assert a.labels is None and torch.equal(a.data, b.data)
        assert b.labels.shape == (32,) and b.labels.dtype == torch.int64
        # each batch row is a row of the split, with that row's label
        match = (b.data.reshape(32, 1, -1) == data.reshape(1, data.shape[0], -1)).all(-1)
        for row, y in zip(match, b.labels, strict=True):
            assert row.any() and labels[row].eq(y).all()
    shard = next(train_batches(cfg, 32, seed=11, start=4, with_labels=True, rows=slice(8, 16)))
    assert torch.equal(shard.data, labeled[0].data[8:16])
    assert torch.equal(shard.labels, labeled[0].labels[8:16])


def test_fake_cifar10_labels(fake_cifar10_tarball):
    cfg = DataConfig(dataset="cifar10", root=str(fake_cifar10_tarball))
    assert num_classes(cfg) == 10
    truth = _cifar_truth(fake_cifar10_tarball)
    train_labels = [y for i in range(1, 6) for y in truth[f"data_batch_{i}"][1]]
    x, y = load_labeled_split(cfg, "train")
    assert x.shape == (40, 3, 32, 32) and torch.equal(x, load_split(cfg, "train"))
    assert y.dtype == torch.int64 and y.tolist() == train_labels
    pixels = torch.from_numpy(truth["data_batch_3"][0][5].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x[2 * 8 + 5], pixels)
    few_x, few_y = load_labeled_split(cfg, "test", limit=5)
    assert torch.equal(few_x, load_split(cfg, "test", limit=5))
    assert few_y.tolist() == truth["test_batch"][1][:5]
    batch = next(train_batches(cfg, 8, seed=0, with_labels=True))
    for image, label in zip(batch.data, batch.labels, strict=True):
        i = next(j for j in range(40) if torch.equal(x[j], image))
        assert label.item() == train_labels[i]


def test_unlabelled_datasets_are_refused():
    swiss = DataConfig(dataset="swissroll")
    with pytest.raises(ValueError, match=r"^dataset 'swissroll' has no class labels") as err:
        load_labeled_split(swiss, "train")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"has no class labels") as err:
        train_batches(swiss, 8, seed=0, with_labels=True)
    message = str(err.value)
    assert "label-conditional model" in message and "model.num_classes > 0" in message
    assert "classifier" in message and "'gmm'" in message and "\n" not in message
    with pytest.raises(ValueError, match=r"unknown split 'val'"):
        load_labeled_split(DataConfig(dataset="gmm"), "val")
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'"):
        load_labeled_split(DataConfig(dataset="mnist"), "train")
    assert next(train_batches(swiss, 8, seed=0)).data.shape == (8, 2)
