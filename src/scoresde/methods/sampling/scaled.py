"""Time grids by name, and the checked times a sampler steps on.

:data:`GRIDS` maps the names of :data:`scoresde.core.names.GRID_NAMES` to the grids of
:mod:`scoresde.methods.sampling.grids`; :func:`sampler_times` turns a sampler's options (a named
grid
with ``num_steps``, ``eps`` and ``rho``, or an explicit ``time_grid``) into the decreasing
times :func:`scoresde.methods.sampling.driver.integrate` steps on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core.sdes import SDE
from scoresde.methods.sampling.grids import edm_time_grid, log_snr_time_grid, uniform_time_grid

GridFn = Callable[..., Tensor]


def _uniform_grid(sde: SDE, num_steps: int, eps: float, rho: float, dtype=torch.float64) -> Tensor:
    return uniform_time_grid(num_steps, T=sde.T, eps=eps, dtype=dtype)


def _edm_grid(sde: SDE, num_steps: int, eps: float, rho: float, dtype=torch.float64) -> Tensor:
    return edm_time_grid(sde, num_steps, eps=eps, rho=rho, dtype=torch.float64)


def _log_snr_grid(sde: SDE, num_steps: int, eps: float, rho: float, dtype=torch.float64) -> Tensor:
    return log_snr_time_grid(sde, num_steps, eps=eps, dtype=torch.float64)


GRIDS: dict[str, GridFn] = {
    "uniform": _uniform_grid,
    "edm": _edm_grid,
    "log_snr": _log_snr_grid,
}
"""Grid name -> ``fn(sde, num_steps, eps, rho, dtype=float64) -> times (num_steps + 1,)`` (CPU),
from ``T`` down to ``eps``: equal steps in ``t`` (:func:`uniform_time_grid`, computed in
``dtype``), EDM's rho-spaced noise levels (:func:`edm_time_grid`, the only one that uses
``rho``), or equal steps in the log-SNR (:func:`log_snr_time_grid`); the last two are computed
in float64 whatever ``dtype``."""

def check_grid(grid: str) -> None:
    """Refuse a ``grid`` name that is not in :data:`GRIDS`, with a one-line ``ValueError``."""
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid {grid!r}; choose from {sorted(GRIDS)}")


def sampler_times(
    sde: SDE,
    x_T: Tensor,
    *,
    num_steps: int,
    eps: float,
    grid: str,
    rho: float,
    time_grid: Tensor | None,
    scaled: bool = True,
) -> Tensor:
    """The decreasing times ``(n + 1,)`` a sampler steps on, on ``x_T``'s device and dtype.

    ``time_grid`` (from ``T`` down to the last time) wins over ``grid``/``num_steps``/``eps``;
    else the grid ``GRIDS[grid](sde, num_steps, eps, rho)`` (for PC the uniform one in
    ``x_T``'s dtype, as the paper's code; on the scaled state in float64). For a sampler on the
    scaled state (``scaled``) the last time must have ``sigma > 0`` (eq. 1 divides by it); PC,
    on ``x``, may end at ``t = 0``.
    """
    if time_grid is None:
        check_grid(grid)
        dtype = torch.float64 if scaled else x_T.dtype
        time_grid = GRIDS[grid](sde, num_steps, eps, rho, dtype=dtype)
    times = torch.as_tensor(time_grid).to(device=x_T.device, dtype=x_T.dtype)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(
            f"time_grid must be 1-d with at least 2 times, got shape {tuple(times.shape)}"
        )
    if not bool(torch.all(times[1:] < times[:-1])):
        raise ValueError("time_grid must be strictly decreasing (from T down to the last time)")
    if scaled and not bool(sde.sigma(times[-1:]) > 0):
        raise ValueError(
            f"the last time {float(times[-1])} has sigma = s/m = 0: the samplers divide by it; "
            f"time_grid must lie in (0, T] = (0, {sde.T}]"
        )
    if float(times[0]) > sde.T * (1 + 1e-6):
        raise ValueError(
            f"time_grid starts at {float(times[0])}, after T: it must lie in (0, T] = "
            f"(0, {sde.T}], where the score is known"
        )
    return times
