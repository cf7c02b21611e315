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

They step on a decreasing time grid ``T = t_0 > ... > t_n = eps``: one of
:data:`~scoresde.sampling.scaled.GRIDS` (by name) or a tensor ``time_grid``, with the shared
bookkeeping of :mod:`scoresde.sampling.scaled`. All are deterministic given ``x_T``
(``generator`` is unused).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scoresde._tensor import append_dims
from scoresde.sampling.pc import Callback, Projection
from scoresde.sampling.scaled import Denoiser, ScaledPath, sampler_times
from scoresde.score import ScoreFn
from scoresde.sdes import SDE

LOWER_ORDER_FINAL_BELOW = 15
"""With ``lower_order_final``, runs of fewer steps lower the order of their last steps."""


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
        grid: the time grid, a name of :data:`~scoresde.sampling.scaled.GRIDS`.
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
    path, D = ScaledPath(sde, x_T, times, project, callback), Denoiser(sde, score_fn)
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
    path, D = ScaledPath(sde, x_T, times, project, callback), Denoiser(sde, score_fn)
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
    path, D = ScaledPath(sde, x_T, times, project, callback), Denoiser(sde, score_fn)
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
    path, D = ScaledPath(sde, x_T, times, project, callback), Denoiser(sde, score_fn)
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
