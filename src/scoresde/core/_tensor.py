"""The few tensor helpers shared by every module: broadcasting per-example values over data."""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.core.seeding import BatchRows, SampleStreams

NoiseSource = torch.Generator | SampleStreams | BatchRows | None
"""Where math code draws: a generator, per-example streams or rows of a whole batch's draws."""


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-example tensor broadcasts against data.

    Args:
        v: tensor of shape ``(B,)`` (or any shape with ``v.ndim <= ndim``).
        ndim: number of dims of the data it must broadcast against, e.g. 4 for ``(B, C, H, W)``.

    Returns:
        ``v`` viewed with shape ``(B, 1, ..., 1)`` and ``ndim`` dims.
    """
    if v.ndim > ndim:
        raise ValueError(f"cannot append dims to a {v.ndim}-d tensor to reach {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def batch_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Return time as a ``(B,)`` tensor on ``x``'s device and dtype (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def flat_sum(x: Tensor) -> Tensor:
    """Sum over every dim but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def flat_mean(x: Tensor) -> Tensor:
    """Mean over every dim but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: NoiseSource = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)`` from ``generator``.

    A :class:`~scoresde.core.seeding.SampleStreams` draws example ``i``'s noise from example ``i``'s
    own stream, so it does not depend on the batch it is drawn in.
    """
    if isinstance(generator, (SampleStreams, BatchRows)):
        return generator.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def rand(
    shape: tuple[int, ...] | torch.Size,
    generator: NoiseSource = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform noise on ``[0, 1)`` of ``shape`` ``(B, ...)`` from ``generator``."""
    if isinstance(generator, (SampleStreams, BatchRows)):
        return generator.rand(tuple(shape), device=device, dtype=dtype)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def randint(
    high: int,
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | BatchRows | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integers in ``[0, high)`` of ``shape`` ``(B, ...)`` from ``generator``."""
    if isinstance(generator, BatchRows):
        return generator.randint(high, tuple(shape), device=device)
    return torch.randint(0, high, tuple(shape), generator=generator, device=device)


def randn_like(x: Tensor, generator: NoiseSource = None) -> Tensor:
    """Standard normal noise like ``x`` from ``generator`` (``torch.randn_like`` takes none)."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)
