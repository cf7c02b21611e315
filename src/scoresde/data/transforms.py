"""Batch transforms for image data in ``[0, 1]``: random flips and centring.

Uniform dequantization is :func:`scoresde.likelihood.uniform_dequantize`, re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde._tensor import append_dims
from scoresde.likelihood import uniform_dequantize

__all__ = ["center", "random_horizontal_flip", "uncenter", "uniform_dequantize"]


def random_horizontal_flip(
    x: Tensor, generator: torch.Generator | None, *, p: float = 0.5
) -> Tensor:
    """Flip each image of a batch left-right with probability ``p``.

    The draw is ``torch.rand(B, generator=generator) < p`` (on the generator's device, CPU
    without one): image ``i`` is flipped where it is true.

    Args:
        x: images ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)``, a new tensor.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    flip = (torch.rand(x.shape[0], generator=generator, device=device) < p).to(x.device)
    return torch.where(append_dims(flip, x.ndim), x.flip(-1), x)


def center(x: Tensor) -> Tensor:
    """Map data in ``[0, 1]`` to ``[-1, 1]``: ``2 x - 1`` (any shape)."""
    return 2 * x - 1


def uncenter(y: Tensor) -> Tensor:
    """Inverse of :func:`center`: ``(y + 1) / 2`` (no clamping; any shape)."""
    return (y + 1) / 2
