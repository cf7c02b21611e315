"""Time grids for the samplers: discretisation is data, passed to the samplers as a tensor."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_time_grid(
    num_steps: int, *, T: float = 1.0, eps: float = 1e-3, device=None, dtype=torch.float32
) -> Tensor:
    """``num_steps + 1`` equally spaced times from ``T`` down to ``eps``: ``(num_steps + 1,)``.

    A sampler takes one step between each pair of neighbours, so ``num_steps`` predictor steps
    bring ``x_T`` to time ``eps``, where the final denoising step is taken.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 <= eps < T:
        raise ValueError(f"need 0 <= eps < T, got eps={eps}, T={T}")
    return torch.linspace(T, eps, num_steps + 1, device=device, dtype=dtype)
