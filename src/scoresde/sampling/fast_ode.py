"""Deterministic few-step samplers: solvers of the probability-flow ODE in EDM's variables.

Every SDE of the paper perturbs data by the Gaussian kernel
``x_t = m(t) x_0 + s(t) z = m(t) (x_0 + sigma(t) z)`` with ``sigma = s / m``
(:meth:`scoresde.sdes.SDE.sigma`). So the scaled state ``y = x / m(t)`` is the data plus noise of
level ``sigma``, and the probability-flow ODE (Song et al., 2021, eq. 13), with ``sigma`` as its
time variable, is EDM's ODE (Karras et al., 2022, eq. 4 with ``s(t) = 1`` after the rescaling):

    dy / dsigma = (y - D(y, sigma)) / sigma,                                             (1)

with the denoiser ``D(y, sigma) = E[x_0 | x_t = m y]``, Tweedie's formula
``tweedie_denoise(sde, score_fn, m y, t(sigma))`` (one score evaluation). In
``lambda = -log sigma`` (half the log-SNR, :meth:`scoresde.sdes.SDE.log_snr`; the ``lambda`` of
DPM-Solver, Lu et al., 2022) eq. (1) is linear in ``y``, ``dy / dlambda = D - y``, with the exact
solution over a step ``h = lambda_{i+1} - lambda_i``

    y_{i+1} = e^{-h} y_i + int_0^h e^{-(h - u)} D(lambda_i + u) du.                      (2)

Every sampler below is a step rule in ``(y, sigma)`` or ``(y, lambda)``; the SDE enters only
through its closed forms ``m(t)``, ``sigma(t)``, ``log_snr(t)`` and the time grid, so VE, VP and
sub-VP are handled alike. Expanding ``D`` in eq. (2) as ``D_i + u D' + u^2 / 2 D''`` gives

    y_{i+1} = e^{-h} y_i + w_1(h) D_i + w_2(h) D' + w_3(h) D''                           (3)

with ``w_1 = 1 - e^{-h}``, ``w_2 = h - w_1`` and ``w_3 = h^2 / 2 - w_2`` (``h^k phi_k(-h)`` of the
exponential integrators); the multistep solvers estimate ``D'`` and ``D''`` from the denoiser
values of the previous steps.

The samplers (the table :data:`scoresde.SAMPLERS`), all of the shared signature
``sampler(sde, score_fn, x_T, *, generator, project, callback, progress, **options)``:

- ``"ddim"`` (:func:`ddim_sampler`): eq. (3) to first order, DDIM (Song et al., 2021) =
  DPM-Solver-1; one score evaluation a step.
- ``"heun"`` (:func:`heun_sampler`): EDM's Heun method on eq. (1) (Karras et al., 2022,
  Algorithm 1 with ``S_churn = 0``); two a step.
- ``"dpmpp_2m"``, ``"dpmpp_3m"`` (:func:`dpmpp_2m_sampler`, :func:`dpmpp_3m_sampler`):
  DPM-Solver++ multistep of order 2 and 3 with data prediction (Lu et al., 2022, "DPM-Solver++",
  Algorithm 2 for 2M); one a step.

They step on a decreasing time grid ``T = t_0 > ... > t_n = eps``: one of :data:`GRIDS` (by name)
or a tensor ``time_grid``. All are deterministic given ``x_T`` (``generator`` is unused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

LOWER_ORDER_FINAL_BELOW = 15
"""With ``lower_order_final``, runs of fewer steps lower the order of their last steps."""


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
        raise ValueError(f"time_grid must be 1-d with >= 2 times, got shape {tuple(times.shape)}")
    if not bool(torch.all(times[1:] < times[:-1])):
        raise ValueError("time_grid must be strictly decreasing (from T down to the last time)")
    if not bool(sde.sigma(times[-1:]) > 0):
        raise ValueError(
            f"the last time {float(times[-1])} has sigma = s/m = 0; the ODE samplers need it > 0"
        )
    return times


class _Denoiser:
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


class _Path:
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

    def finish(self, y: Tensor, denoiser: _Denoiser, denoise: bool) -> tuple[Tensor, dict]:
        t_last = self.t(self.num_steps)
        if not denoise:
            x = self._m(t_last, y.ndim) * y
        else:
            x = denoiser(y, t_last)
            x = self.project(x, None) if self.project else x
            if self.callback is not None:
                self.callback(self.num_steps, t_last, x)
        return x, {"nfe": denoiser.nfe, "num_steps": self.num_steps}


def ddim_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    num_steps: int = 50,
    eps: float = 1e-3,
    grid: str = "uniform",
    rho: float = 7.0,
    time_grid: Tensor | None = None,
    denoise: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """DDIM (Song et al., 2021, eta = 0), the first-order exponential integrator DPM-Solver-1.

    Eq. (3) to first order, i.e. ``D`` held at ``D_i = D(y_i, sigma_i)`` over the step:

        y_{i+1} = D_i + (sigma_{i+1} / sigma_i) (y_i - D_i).

    Args:
        sde: the forward SDE.
        score_fn: ``score_fn(x (B, ...), t (B,)) -> (B, ...)``.
        x_T: the prior draw ``(B, ...)`` at time ``T``.
        generator: unused (deterministic).
        project: ``project(x, t) -> x`` in x-space after every step (``t=None`` after denoising).
        callback: ``callback(i, t, x)`` after step ``i`` with its end time ``t`` ``(B,)`` and
            ``x = m y``, and once more after denoising (``i = num_steps``).
        progress: show a progress bar.
        num_steps: steps between grid points; ignored with ``time_grid``.
        eps: the last time of the grid.
        grid: the time grid, a name of :data:`GRIDS`.
        rho: the EDM grid's ``rho``.
        time_grid: decreasing times ``(n + 1,)`` from ``T`` down to the last time, used instead of
            ``grid``.
        denoise: finish with the Tweedie estimate ``D`` at the last time.

    Returns:
        ``(x (B, ...), info)``, ``info = {"nfe": num_steps + denoise, "num_steps": num_steps}``.
    """
    times = sampler_times(
        sde, x_T, num_steps=num_steps, eps=eps, grid=grid, rho=rho, time_grid=time_grid
    )
    path, D = _Path(sde, x_T, times, project, callback), _Denoiser(sde, score_fn)
    y = path.start(x_T)
    for i in path.steps("DDIM", progress):
        t, t_next = path.t(i), path.t(i + 1)
        ratio = append_dims(sde.sigma(t_next) / sde.sigma(t), y.ndim)
        d = D(y, t)
        y = path.stepped(i, d + ratio * (y - d))
    return path.finish(y, D, denoise)


def heun_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    num_steps: int = 18,
    eps: float = 1e-3,
    grid: str = "edm",
    rho: float = 7.0,
    time_grid: Tensor | None = None,
    denoise: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """EDM's deterministic Heun sampler (Karras et al., 2022, Algorithm 1, ``S_churn = 0``).

    On eq. (1), with ``dsigma = sigma_{i+1} - sigma_i`` and ``d(y, sigma) = (y - D) / sigma``:
    the Euler step ``y' = y_i + dsigma d(y_i, sigma_i)``, then the trapezoidal correction

        y_{i+1} = y_i + dsigma (d(y_i, sigma_i) + d(y', sigma_{i+1})) / 2.

    EDM skips the correction on a last step to ``sigma = 0``; the grids here end at a positive
    ``sigma``, so every step is corrected: two score evaluations a step.

    Args and returns as :func:`ddim_sampler` (default grid ``"edm"``, 18 steps: EDM's CIFAR-10
    setting), with ``info["nfe"] = 2 num_steps + denoise``.
    """
    times = sampler_times(
        sde, x_T, num_steps=num_steps, eps=eps, grid=grid, rho=rho, time_grid=time_grid
    )
    path, D = _Path(sde, x_T, times, project, callback), _Denoiser(sde, score_fn)
    y = path.start(x_T)
    for i in path.steps("Heun", progress):
        t, t_next = path.t(i), path.t(i + 1)
        sigma = append_dims(sde.sigma(t), y.ndim)
        sigma_next = append_dims(sde.sigma(t_next), y.ndim)
        d = (y - D(y, t)) / sigma
        y_euler = y + (sigma_next - sigma) * d
        d_next = (y_euler - D(y_euler, t_next)) / sigma_next
        y = path.stepped(i, y + (sigma_next - sigma) * (d + d_next) / 2)
    return path.finish(y, D, denoise)


def multistep_orders(num_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """The order of each step of a multistep solver: ``num_steps`` ints.

    Step ``i`` (from 0) has only ``i`` previous denoiser values, so its order is
    ``min(order, i + 1)``. With ``lower_order_final`` and fewer than
    :data:`LOWER_ORDER_FINAL_BELOW` (15) steps, the last steps are lowered too, to
    ``min(order, num_steps - i)`` (the last step first order, the one before at most second), the
    stabilisation of DPM-Solver's few-step runs.
    """
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
        orders = [min(k, num_steps - i) for i, k in enumerate(orders)]
    return orders


def _log_snr_step(sde: SDE, t: Tensor, t_next: Tensor) -> Tensor:
    """``h = lambda(t_next) - lambda(t)`` ``(B,)`` with ``lambda = -log sigma = log_snr / 2``."""
    return (sde.log_snr(t_next) - sde.log_snr(t)) / 2


def dpmpp_2m_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    num_steps: int = 20,
    eps: float = 1e-3,
    grid: str = "log_snr",
    rho: float = 7.0,
    time_grid: Tensor | None = None,
    denoise: bool = True,
    lower_order_final: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++", Algorithm 2): second-order multistep.

    With ``h_i = lambda_{i+1} - lambda_i`` and ``r_i = h_{i-1} / h_i``, the denoiser value is
    extrapolated linearly from the last two, then held over the step as in eq. (3):

        D_hat = (1 + 1 / (2 r_i)) D_i - D_{i-1} / (2 r_i),
        y_{i+1} = e^{-h_i} y_i + (1 - e^{-h_i}) D_hat.

    The first step (no ``D_{i-1}`` yet) is DDIM's; with ``lower_order_final`` and fewer than 15
    steps so is the last (:func:`multistep_orders`). One score evaluation a step.

    Args and returns as :func:`ddim_sampler` (default grid ``"log_snr"``, DPM-Solver's), with
    ``info["nfe"] = num_steps + denoise``; ``lower_order_final``: as :func:`multistep_orders`.
    """
    times = sampler_times(
        sde, x_T, num_steps=num_steps, eps=eps, grid=grid, rho=rho, time_grid=time_grid
    )
    path, D = _Path(sde, x_T, times, project, callback), _Denoiser(sde, score_fn)
    orders = multistep_orders(path.num_steps, 2, lower_order_final)
    y = path.start(x_T)
    d_prev = h_prev = None
    for i in path.steps("DPM-Solver++(2M)", progress):
        t, t_next = path.t(i), path.t(i + 1)
        h = _log_snr_step(sde, t, t_next)
        d = D(y, t)
        d_hat = d
        if orders[i] == 2:
            d_hat = d + append_dims(h / (2 * h_prev), y.ndim) * (d - d_prev)
        y = append_dims(torch.exp(-h), y.ndim) * y - append_dims(torch.expm1(-h), y.ndim) * d_hat
        y = path.stepped(i, y)
        d_prev, h_prev = d, h
    return path.finish(y, D, denoise)


def dpmpp_3m_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    num_steps: int = 20,
    eps: float = 1e-3,
    grid: str = "log_snr",
    rho: float = 7.0,
    time_grid: Tensor | None = None,
    denoise: bool = True,
    lower_order_final: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """DPM-Solver++(3M): third-order multistep in ``lambda`` with data prediction.

    Eq. (3) with ``D'`` and ``D''`` taken from the quadratic through the last three denoiser
    values ``D_i, D_{i-1}, D_{i-2}`` at ``lambda_i, lambda_i - h_{i-1}, lambda_i - h_{i-1} -
    h_{i-2}``, by divided differences:

        delta_0 = (D_i - D_{i-1}) / h_{i-1},   delta_1 = (D_{i-1} - D_{i-2}) / h_{i-2},
        delta_2 = (delta_0 - delta_1) / (h_{i-1} + h_{i-2}),
        D' = delta_0 + h_{i-1} delta_2,        D'' = 2 delta_2,
        y_{i+1} = e^{-h_i} y_i + w_1 D_i + w_2 D' + w_3 D''.

    (The ``eta = 0`` update of k-diffusion's ``sample_dpmpp_3m_sde`` and DPM-Solver's 3M weigh the
    ``D''`` term by half of ``w_3``; the exact weight of eq. (3) is what makes it third order.)
    Second-order steps use ``D' = delta_0``, ``D'' = 0``; first-order steps are DDIM's. The
    orders: :func:`multistep_orders` (1, 2, then 3; with ``lower_order_final`` and fewer than
    15 steps, the last step first order and the one before at most second). One score
    evaluation a step.

    Args and returns as :func:`ddim_sampler` (default grid ``"log_snr"``), with
    ``info["nfe"] = num_steps + denoise``; ``lower_order_final``: as :func:`multistep_orders`.
    """
    times = sampler_times(
        sde, x_T, num_steps=num_steps, eps=eps, grid=grid, rho=rho, time_grid=time_grid
    )
    path, D = _Path(sde, x_T, times, project, callback), _Denoiser(sde, score_fn)
    orders = multistep_orders(path.num_steps, 3, lower_order_final)
    y = path.start(x_T)
    ds: list[Tensor] = []  # D_i, D_{i-1}, D_{i-2}
    hs: list[Tensor] = []  # h_{i-1}, h_{i-2}
    for i in path.steps("DPM-Solver++(3M)", progress):
        t, t_next = path.t(i), path.t(i + 1)
        h = _log_snr_step(sde, t, t_next)
        ds = [D(y, t), *ds][:3]
        w1 = -torch.expm1(-h)
        w2 = h - w1
        w3 = h**2 / 2 - w2
        y = append_dims(torch.exp(-h), y.ndim) * y + append_dims(w1, y.ndim) * ds[0]
        if orders[i] >= 2:
            delta_0 = (ds[0] - ds[1]) / append_dims(hs[0], y.ndim)
            slope = delta_0
            if orders[i] == 3:
                delta_1 = (ds[1] - ds[2]) / append_dims(hs[1], y.ndim)
                delta_2 = (delta_0 - delta_1) / append_dims(hs[0] + hs[1], y.ndim)
                slope = delta_0 + append_dims(hs[0], y.ndim) * delta_2
                y = y + append_dims(w3, y.ndim) * (2 * delta_2)
            y = y + append_dims(w2, y.ndim) * slope
        y = path.stepped(i, y)
        hs = [h, *hs][:2]
    return path.finish(y, D, denoise)
