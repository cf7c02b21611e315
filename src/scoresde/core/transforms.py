"""Batch transforms for data in ``[0, 1]``: uniform dequantization, random flips and centring.

Bits per dimension (the likelihood module) and the data pipeline both dequantize with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.core._tensor import NoiseSource, append_dims, rand

__all__ = ["center", "random_horizontal_flip", "uncenter", "uniform_dequantize"]


def random_horizontal_flip(x: Tensor, generator: NoiseSource, *, p: float = 0.5) -> Tensor:
    """Flip each image of a batch left-right with probability ``p``.

    The draw is ``rand((B,), generator) < p`` (on the generator's device, CPU without one):
    image ``i`` is flipped where it is true.

    Args:
        x: images ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)``, a new tensor.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    flip = (rand((x.shape[0],), generator, device=device) < p).to(x.device)
    return torch.where(append_dims(flip, x.ndim), x.flip(-1), x)


def center(x: Tensor) -> Tensor:
    """Map data in ``[0, 1]`` to ``[-1, 1]``: ``2 x - 1`` (any shape)."""
    return 2 * x - 1


def uncenter(y: Tensor) -> Tensor:
    """Inverse of :func:`center`: ``(y + 1) / 2`` (no clamping; any shape)."""
    return (y + 1) / 2


def uniform_dequantize(x: Tensor, *, levels: int = 256, generator: NoiseSource = None) -> Tensor:
    """Uniform dequantization ``u = (k + U[0, 1)) / levels`` of data ``x = k / (levels - 1)``.

    Args:
        x: quantised data in ``[0, 1]`` with values ``k / (levels - 1)``, ``k in {0..levels-1}``
            (8-bit images: ``levels=256``; scikit-learn's digits: ``levels=17``).

    Returns:
        Continuous data in ``[0, 1)``, shape of ``x``.
    """
    k = torch.round(x * (levels - 1))
    noise = rand(x.shape, generator, device=x.device, dtype=x.dtype)
    return (k + noise) / levels
