"""The scaled state of the few-step samplers: time grids by name, the denoiser and the path.

Every SDE of the paper perturbs data as ``x_t = m(t) (x_0 + sigma(t) z)``, so the samplers of
:mod:`scoresde.sampling.fast_ode` and :mod:`scoresde.sampling.fast_sde` step on the scaled
state ``y = x / m(t)`` against ``sigma(t) = s(t) / m(t)``. This module holds what they share:
the named grids (:data:`GRIDS`, :func:`sampler_times`), the denoiser ``D(y, t) = E[x_0 | x_t =
m y]`` (:class:`Denoiser`) and the bookkeeping of a path on a grid: ``x <-> y``, projection,
callback and the final denoising step (:class:`ScaledPath`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde._tensor import append_dims
from scoresde.sampling.grids import edm_time_grid, log_snr_time_grid, uniform_time_grid
from scoresde.sampling.pc import Callback, Projection
from scoresde.score import ScoreFn, tweedie_denoise
from scoresde.sdes import SDE

GridFn = Callable[[SDE, int, float, float], Tensor]


def _uniform_grid(sde: SDE, num_steps: int, eps: float, rho: float) -> Tensor:
    return uniform_time_grid(num_steps, T=sde.T, eps=eps, dtype=torch.float64)


def _edm_grid(sde: SDE, num_steps: int, eps: float, rho: float) -> Tensor:
    return edm_time_grid(sde, num_steps, eps=eps, rho=rho, dtype=torch.float64)


def _log_snr_grid(sde: SDE, num_steps: int, eps: float, rho: float) -> Tensor:
    return log_snr_time_grid(sde, num_steps, eps=eps, dtype=torch.float64)


GRIDS: dict[str, GridFn] = {
    "uniform": _uniform_grid,
    "edm": _edm_grid,
    "log_snr": _log_snr_grid,
}
"""Grid name -> ``fn(sde, num_steps, eps, rho) -> times (num_steps + 1,)`` (float64, CPU), from
``T`` down to ``eps``: equal steps in ``t`` (:func:`uniform_time_grid`), EDM's rho-spaced noise
levels (:func:`edm_time_grid`, the only one that uses ``rho``), or equal steps in the log-SNR
(:func:`log_snr_time_grid`)."""

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
) -> Tensor:
    """The decreasing times ``(n + 1,)`` a sampler steps on, on ``x_T``'s device and dtype.

    ``time_grid`` (from ``T`` down to the last time) wins over ``grid``/``num_steps``/``eps``;
    else the grid ``GRIDS[grid](sde, num_steps, eps, rho)``. The last time must have
    ``sigma > 0`` (eq. 1 divides by it).
    """
    if time_grid is None:
        check_grid(grid)
        time_grid = GRIDS[grid](sde, num_steps, eps, rho)
    times = torch.as_tensor(time_grid).to(device=x_T.device, dtype=x_T.dtype)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(
            f"time_grid must be 1-d with at least 2 times, got shape {tuple(times.shape)}"
        )
    if not bool(torch.all(times[1:] < times[:-1])):
        raise ValueError("time_grid must be strictly decreasing (from T down to the last time)")
    if not bool(sde.sigma(times[-1:]) > 0):
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


class Denoiser:
    """``D(y, t) = E[x_0 | x_t = m(t) y]`` ``(B, ...)`` by Tweedie's formula; counts its calls.

    ``y`` is the scaled state ``(B, ...)``, ``t`` the times ``(B,)``; ``nfe`` is the number of
    score evaluations so far (one a call).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        self.sde, self.score_fn, self.nfe = sde, score_fn, 0

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        m, _ = self.sde.marginal_coeffs(t)
        return tweedie_denoise(self.sde, self.score_fn, append_dims(m, y.ndim) * y, t)


class ScaledPath:
    """The bookkeeping shared by the samplers: the grid, ``x <-> y``, projection and callback.

    ``t(i)`` is grid time ``i`` as ``(B,)``; :meth:`start` gives ``y_0 = x_T / m(T)``;
    :meth:`stepped` applies ``project`` in x-space after step ``i`` (ending at ``t(i + 1)``) and
    reports ``x = m y`` to ``callback``; :meth:`finish` returns ``x`` at the last time, or, with
    ``denoise``, the Tweedie estimate ``D`` there (one more score evaluation, then
    ``project(x, None)`` and ``callback(n, t_n, x)`` as :func:`scoresde.pc_sample` does).
    """

    def __init__(
        self,
        sde: SDE,
        x_T: Tensor,
        times: Tensor,
        project: Projection | None,
        callback: Callback | None,
    ) -> None:
        self.sde, self.times, self.project, self.callback = sde, times, project, callback
        self.ones = torch.ones(x_T.shape[0], device=x_T.device, dtype=x_T.dtype)
        self.num_steps = len(times) - 1

    def t(self, i: int) -> Tensor:
        return self.times[i] * self.ones

    def _m(self, t: Tensor, ndim: int) -> Tensor:
        return append_dims(self.sde.marginal_coeffs(t)[0], ndim)

    def start(self, x_T: Tensor) -> Tensor:
        return x_T / self._m(self.t(0), x_T.ndim)

    def steps(self, desc: str, progress: bool):
        return tqdm(range(self.num_steps), desc=desc, disable=not progress)

    def stepped(self, i: int, y: Tensor) -> Tensor:
        if self.project is None and self.callback is None:
            return y
        t_next = self.t(i + 1)
        m = self._m(t_next, y.ndim)
        x = m * y
        if self.project is not None:
            x = self.project(x, t_next)
            y = x / m
        if self.callback is not None:
            self.callback(i, t_next, x)
        return y

    def finish(self, y: Tensor, denoiser: Denoiser, denoise: bool) -> tuple[Tensor, dict]:
        t_last = self.t(self.num_steps)
        if not denoise:
            x = self._m(t_last, y.ndim) * y
        else:
            x = denoiser(y, t_last)
            x = self.project(x, None) if self.project else x
            if self.callback is not None:
                self.callback(self.num_steps, t_last, x)
        return x, {"nfe": denoiser.nfe, "num_steps": self.num_steps}
