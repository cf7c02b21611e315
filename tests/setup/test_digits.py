from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from scoresde.setup.data.digits import DIGITS_LEVELS, load_digits_labeled_split, load_digits_split


def test_shapes_dtype_and_grey_levels():
    train, test = load_digits_split()
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8)
    assert train.dtype == torch.float32 and test.dtype == torch.float32
    assert DIGITS_LEVELS == 17
    everything = torch.cat([train, test])
    levels = everything * (DIGITS_LEVELS - 1)
    assert torch.equal(levels, levels.round())
    assert torch.equal(torch.unique(everything), torch.arange(17) / 16)
    assert abs(everything.mean().item() - 0.305260) < 1e-5


def test_split_is_a_seeded_permutation_of_the_whole_set():
    digits = load_digits()
    train, y_train, test, y_test = load_digits_labeled_split(test_fraction=0.2, seed=0)
    perm = np.random.default_rng(0).permutation(1797)
    expected_first = torch.from_numpy(digits.images[perm[0]].astype(np.float32) / 16)
    assert torch.equal(test[0, 0], expected_first)
    assert y_test[:3].tolist() == digits.target[perm[:3]].tolist() == [6, 6, 6]
    assert y_train.dtype == torch.int64 and y_train.shape == (1438,)

    def as_multiset(images: np.ndarray) -> Counter:
        return Counter(img.tobytes() for img in images.reshape(len(images), -1))

    together = torch.cat([train, test]).numpy() * 16
    assert as_multiset(together) == as_multiset(digits.images.astype(np.float32))
    counts = torch.bincount(torch.cat([y_train, y_test]), minlength=10)
    assert counts.tolist() == np.bincount(digits.target).tolist()


def test_split_is_deterministic_and_depends_on_seed_and_fraction():
    a_train, a_test = load_digits_split(seed=5)
    b_train, b_test = load_digits_split(seed=5)
    c_train, _ = load_digits_split(seed=6)
    assert torch.equal(a_train, b_train) and torch.equal(a_test, b_test)
    assert not torch.equal(a_train, c_train)
    train, test = load_digits_split(test_fraction=0.5, seed=5)
    assert (len(train), len(test)) == (899, 898)  # round(898.5) == 898


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1e-6])
def test_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=fraction)
