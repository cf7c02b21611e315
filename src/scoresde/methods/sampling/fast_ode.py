"""Deterministic few-step samplers: solvers of the probability-flow ODE in EDM's variables.

Every SDE of the paper perturbs data by the Gaussian kernel
``x_t = m(t) x_0 + s(t) z = m(t) (x_0 + sigma(t) z)`` with ``sigma = s / m``
(:meth:`scoresde.core.sdes.SDE.sigma`). So the scaled state ``y = x / m(t)`` is the data plus noise
of
level ``sigma``, and the probability-flow ODE (Song et al., 2021, eq. 13), with ``sigma`` as its
time variable, is EDM's ODE (Karras et al., 2022, eq. 4 with ``s(t) = 1`` after the rescaling):

    dy / dsigma = (y - D(y, sigma)) / sigma,                                             (1)

with the denoiser ``D(y, sigma) = E[x_0 | x_t = m y]``, Tweedie's formula
``tweedie_denoise(sde, score_fn, m y, t(sigma))`` (one score evaluation). In
``lambda = -log sigma`` (half the log-SNR, :meth:`scoresde.core.sdes.SDE.log_snr`; the ``lambda`` of
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

The step rules here (entries of :data:`scoresde.SAMPLERS`; the loop, the grid, projection,
callback, final denoising and the NFE count are
:func:`scoresde.methods.sampling.driver.integrate`'s):

- ``"ddim"`` (:func:`ddim_step`): eq. (3) to first order, DDIM (Song et al., 2021) =
  DPM-Solver-1; one score evaluation a step.
- ``"dpmpp_2m"``, ``"dpmpp_3m"`` (:func:`dpmpp_2m_step`, :func:`dpmpp_3m_step`):
  DPM-Solver++ multistep of order 2 and 3 with data prediction (Lu et al., 2022, "DPM-Solver++",
  Algorithm 2 for 2M); one a step.

EDM's Heun method on eq. (1) (``"heun"``) is EDM's stochastic step with no churn
(:func:`scoresde.methods.sampling.fast_sde.edm_step`). All are deterministic given ``x_T``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scoresde.core._tensor import append_dims
from scoresde.core.sdes import SDE
from scoresde.methods.sampling.driver import Step

LOWER_ORDER_FINAL_BELOW = 15
"""With ``lower_order_final``, runs of fewer steps lower the order of their last steps."""


def ddim_step(s: Step, y: Tensor, memory: Any) -> tuple[Tensor, Any]:
    """DDIM (Song et al., 2021, eta = 0), the first-order exponential integrator DPM-Solver-1.

    Eq. (3) to first order, i.e. ``D`` held at ``D_i = D(y_i, sigma_i)`` over the step, on the
    scaled state ``y`` ``(B, ...)``:

        y_{i+1} = D_i + (sigma_{i+1} / sigma_i) (y_i - D_i).
    """
    ratio = append_dims(s.sigma_next / s.sigma, y.ndim)
    d = s.denoise(y, s.t)
    return d + ratio * (y - d), memory


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


def multistep_prepare(order: int):
    """``prepare`` of a multistep rule of ``order``: the orders of its steps."""

    def prepare(sde: SDE, times: Tensor, options: Any, denoise: bool) -> list[int]:
        return multistep_orders(len(times) - 1, order, options.lower_order_final)

    return prepare


def _log_snr_step(s: Step) -> Tensor:
    """``h = lambda(t_next) - lambda(t)`` ``(B,)`` with ``lambda = -log sigma = log_snr / 2``."""
    return (s.sde.log_snr(s.t_next) - s.sde.log_snr(s.t)) / 2


def dpmpp_2m_step(s: Step, y: Tensor, memory: Any) -> tuple[Tensor, Any]:
    """DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++", Algorithm 2): second-order multistep.

    With ``h_i = lambda_{i+1} - lambda_i`` and ``r_i = h_{i-1} / h_i``, the denoiser value is
    extrapolated linearly from the last two, then held over the step as in eq. (3):

        D_hat = (1 + 1 / (2 r_i)) D_i - D_{i-1} / (2 r_i),
        y_{i+1} = e^{-h_i} y_i + (1 - e^{-h_i}) D_hat.

    The first step (no ``D_{i-1}`` yet) is DDIM's; with ``lower_order_final`` and fewer than 15
    steps so is the last (:func:`multistep_orders`). ``memory``: ``(D_{i-1}, h_{i-1})``.
    """
    h = _log_snr_step(s)
    d = s.denoise(y, s.t)
    d_hat = d
    if s.prepared[s.i] == 2:
        d_prev, h_prev = memory
        d_hat = d + append_dims(h / (2 * h_prev), y.ndim) * (d - d_prev)
    y = append_dims(torch.exp(-h), y.ndim) * y - append_dims(torch.expm1(-h), y.ndim) * d_hat
    return y, (d, h)


def dpmpp_3m_step(s: Step, y: Tensor, memory: Any) -> tuple[Tensor, Any]:
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
    15 steps, the last step first order and the one before at most second). ``memory``:
    ``([D_{i-1}, D_{i-2}], [h_{i-1}, h_{i-2}])``.
    """
    ds, hs = memory if memory is not None else ([], [])
    order = s.prepared[s.i]
    h = _log_snr_step(s)
    ds = [s.denoise(y, s.t), *ds][:3]
    w1 = -torch.expm1(-h)
    w2 = h - w1
    w3 = h**2 / 2 - w2
    y = append_dims(torch.exp(-h), y.ndim) * y + append_dims(w1, y.ndim) * ds[0]
    if order >= 2:
        delta_0 = (ds[0] - ds[1]) / append_dims(hs[0], y.ndim)
        slope = delta_0
        if order == 3:
            delta_1 = (ds[1] - ds[2]) / append_dims(hs[1], y.ndim)
            delta_2 = (delta_0 - delta_1) / append_dims(hs[0] + hs[1], y.ndim)
            slope = delta_0 + append_dims(hs[0], y.ndim) * delta_2
            y = y + append_dims(w3, y.ndim) * (2 * delta_2)
        y = y + append_dims(w2, y.ndim) * slope
    return y, (ds, [h, *hs][:2])
