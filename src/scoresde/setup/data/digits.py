"""scikit-learn's 8x8 handwritten digits: a tiny image dataset that ships with scikit-learn.

The 1797 images have integer intensities ``0..16``; here they become float32 ``k / 16`` in
``[0, 1]`` (17 grey levels, :data:`DIGITS_LEVELS`), shaped ``(N, 1, 8, 8)``. The train/test split
is a deterministic permutation drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor

DIGITS_LEVELS = 17
DIGITS_SHAPE = (1, 8, 8)


def load_digits_labeled_split(
    *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the digits into train and test images with their labels.

    Args:
        test_fraction: share of the 1797 images in the test split, in ``(0, 1)``; the test split
            has ``round(1797 * test_fraction)`` images.
        seed: seed of the numpy permutation that assigns images to splits.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: images float32
        ``(N, 1, 8, 8)`` with values ``k / 16``, labels int64 ``(N,)`` in ``0..9``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / (DIGITS_LEVELS - 1))
    images = images.reshape(-1, *DIGITS_SHAPE)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    n = images.shape[0]
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction {test_fraction} leaves an empty split of {n} images")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def load_digits_split(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Train and test images, float32 ``(N, 1, 8, 8)`` with values ``k / 16``.

    Same split as :func:`load_digits_labeled_split` with the same arguments.
    """
    train, _, test, _ = load_digits_labeled_split(test_fraction=test_fraction, seed=seed)
    return train, test
