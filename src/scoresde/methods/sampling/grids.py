"""Time grids for the samplers: discretisation is data, passed to the samplers as a tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from scoresde.core.sdes import SDE


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


def _check_noise_grid(sde: SDE, num_steps: int, eps: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < eps < sde.T:
        raise ValueError(f"need 0 < eps < T, got eps={eps}, T={sde.T}")


def _finish(t: Tensor, sde: SDE, eps: float, device, dtype) -> Tensor:
    """Set the ends to exactly ``T`` and ``eps`` and cast the float64 grid to ``dtype``."""
    t[0], t[-1] = sde.T, eps
    return t.to(device=device, dtype=dtype)


def edm_time_grid(
    sde: SDE,
    num_steps: int,
    *,
    eps: float = 1e-3,
    rho: float = 7.0,
    device=None,
    dtype=torch.float32,
) -> Tensor:
    """Times ``(num_steps + 1,)`` from ``T`` down to ``eps`` at the rho-spaced noise levels of EDM.

    Karras et al. (2022, eq. 5): with ``sigma_max = sigma(T)``, ``sigma_min = sigma(eps)`` and
    ``sigma = s / m`` the SDE's noise-to-signal ratio,
    ``sigma_i = (sigma_max^(1/rho) + i / n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for
    ``i = 0 .. n``, mapped to times by ``sde.t_from_sigma``. Larger ``rho`` packs the steps
    closer to ``eps`` (``rho = 7`` in the paper). Computed in float64, then cast to ``dtype``.
    """
    _check_noise_grid(sde, num_steps, eps)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    sigma_max, sigma_min = sde.sigma(ends) ** (1.0 / rho)
    frac = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    sigmas = (sigma_max + frac * (sigma_min - sigma_max)) ** rho
    return _finish(sde.t_from_sigma(sigmas), sde, eps, device, dtype)


def log_snr_time_grid(
    sde: SDE, num_steps: int, *, eps: float = 1e-3, device=None, dtype=torch.float32
) -> Tensor:
    """Times ``(num_steps + 1,)`` from ``T`` down to ``eps``, equally spaced in the log-SNR.

    ``lambda_i = lambda(T) + i / n (lambda(eps) - lambda(T))`` with
    ``lambda = log(m^2 / s^2)``, mapped to times by ``sde.t_from_log_snr``: the ``logSNR``
    time steps of DPM-Solver (Lu et al., 2022, section 3.3). Computed in float64, then cast to
    ``dtype``.
    """
    _check_noise_grid(sde, num_steps, eps)
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    lam_T, lam_eps = sde.log_snr(ends)
    frac = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    lams = lam_T + frac * (lam_eps - lam_T)
    return _finish(sde.t_from_log_snr(lams), sde, eps, device, dtype)
