"""The forward SDEs of the paper and the reverse-time processes built from a score function.

Each SDE ``dx = f(x, t) dt + g(t) dw`` (Song et al., 2021, eq. 5) is a small frozen object with
closed-form pieces: drift and diffusion, the Gaussian perturbation kernel
``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)`` (appendix B), the prior ``p_T`` and the discrete-time
SMLD/DDPM updates it generalises (appendix B and eq. 45-47). The reverse-time SDE (eq. 6) and the
probability-flow ODE (eq. 13) are plain functions of ``(sde, score_fn)``.

Shapes: data ``x`` is ``(B, ...)`` (vectors ``(B, D)`` and images ``(B, C, H, W)`` alike) and time
``t`` is ``(B,)``; per-example coefficients are ``(B,)`` and broadcast with ``append_dims``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from scoresde.core._tensor import append_dims
from scoresde.core._types import ScoreFn
from scoresde.core.names import NETWORK_CONVENTIONS
from scoresde.core.sde_base import SDE

__all__ = [
    "EDMSDE",
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "probability_flow_drift",
    "reverse_discretize",
    "reverse_sde",
]


def _index(t: Tensor, N: int, T: float) -> Tensor:
    """Discretisation index ``floor(t (N - 1) / T)`` of the official code, ``(B,)`` long."""
    return (t * (N - 1) / T).long()


def _lookup(table: Tensor, idx: Tensor, like: Tensor) -> Tensor:
    return table.to(device=like.device)[idx.to(like.device)].to(like.dtype)


@dataclass(frozen=True, eq=True)
class VESDE(SDE):
    """Variance-exploding SDE ``dx = sqrt(d[sigma^2(t)]/dt) dw`` (eq. 9), the limit of SMLD.

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``. ``N`` is the number of discrete noise scales
    of the matching SMLD model (and the default number of sampling steps).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    T: float = 1.0

    network_convention = NETWORK_CONVENTIONS["ve"]

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    @cached_property
    def discrete_sigmas(self) -> Tensor:
        """The SMLD noise scales ``sigma_0 < ... < sigma_{N-1}``, ``(N,)``, geometric."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``(B,)``: the std ``s(t)``, and also
        ``s(t) / m(t)`` since ``m = 1``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma`, ``(B,)``:
        ``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``."""
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = -2 log sigma(t) = -2 (log sigma_min + t log(sigma_max / sigma_min))``,
        ``(B,)``, in closed form (no rounding of ``sigma`` before the log)."""
        return -2.0 * (math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`: ``t = (-lambda / 2 - log sigma_min) / log(sigma_max /
        sigma_min)``, ``(B,)``."""
        return (-0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def weight_integral(self, t: Tensor) -> Tensor:
        """``F(t) = 2 log(sigma_max / sigma_min) t``: ``g^2 / s^2`` is constant (``s = sigma``)."""
        return 2.0 * math.log(self.sigma_max / self.sigma_min) * t

    def t_from_weight_integral(self, f: Tensor) -> Tensor:
        return f / (2.0 * math.log(self.sigma_max / self.sigma_min))

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``0`` and diffusion ``sigma(t) sqrt(2 log(sigma_max / sigma_min))``."""
        g = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), g

    def marginal_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor | None = None):
        """SMLD update ``x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z`` as ``(f, G)`` (eq. 45).

        Without ``t_next`` this is the official discretisation: ``t`` is mapped to the table
        index ``floor(t (N - 1) / T)`` and the previous scale is ``sigma_{-1} = 0``. With
        ``t_next < t`` the step goes between the exact noise levels ``sigma(t_next)`` and
        ``sigma(t)``, so any time grid works. Returns ``f`` like ``x`` and ``G`` ``(B,)``.
        """
        if t_next is None:
            idx = _index(t, self.N, self.T)
            sigma = _lookup(self.discrete_sigmas, idx, t)
            prev = _lookup(self.discrete_sigmas, (idx - 1).clamp(min=0), t)
            prev = torch.where(idx == 0, torch.zeros_like(prev), prev)
        else:
            sigma, prev = self.sigma(t), self.sigma(t_next)
        return torch.zeros_like(x), torch.sqrt(sigma**2 - prev**2)


@dataclass(frozen=True, eq=True)
class EDMSDE(SDE):
    """EDM's SDE (Karras et al., 2022, eq. 4 and Table 1): VE with ``sigma(t) = s(t) = t``,
    ``m = 1``, so ``dx = sqrt(2 t) dw`` and ``x_t = x_0 + t z``; time *is* the noise level.

    ``T = sigma_max`` (80) and the prior is ``N(0, sigma_max^2 I)``. The SDE is exact down to
    ``t = 0`` (``s(0) = 0``); ``sigma_min`` (0.002) is where EDM stops sampling, so pass
    ``eps=sigma_min`` to the samplers and the likelihood (the package's ``sample.eps`` default
    1e-3 would stop at ``sigma = 0.001``). Its networks use EDM's preconditioning by default
    (``network_convention = ("edm", "c_noise")``, :class:`scoresde.ScoreModel`). ``N`` is PC's
    default number of steps only: there is no discrete-time model.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    network_convention = NETWORK_CONVENTIONS["edm"]

    @property
    def T(self) -> float:  # type: ignore[override]  # noqa: N802 (the SDE's T)
        return self.sigma_max

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``0`` and diffusion ``g(t) = sqrt(d[t^2]/dt) = sqrt(2 t)``."""
        return torch.zeros_like(x), torch.sqrt(2.0 * t)

    def marginal_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), t.clone()

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = t``, ``(B,)`` (a copy)."""
        return t.clone()

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """``t = sigma``, ``(B,)`` (a copy)."""
        return sigma.clone()

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = -2 log t``, ``(B,)``."""
        return -2.0 * torch.log(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """``t = exp(-lambda / 2)``, ``(B,)``."""
        return torch.exp(-0.5 * lam)

    def weight_integral(self, t: Tensor) -> Tensor:
        """``F(t) = 2 log t``: ``g^2 / s^2 = 2 / t``."""
        return 2.0 * torch.log(t)

    def t_from_weight_integral(self, f: Tensor) -> Tensor:
        return torch.exp(0.5 * f)

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor | None = None):
        """The exact VE step ``x_{i+1} = x_i + sqrt(t_{i+1}^2 - t_i^2) z`` as ``(f, G)``
        (eq. 45), between ``t`` and ``t_next`` (default ``max(t - T / N, 0)``); ``G`` ``(B,)``."""
        prev = (t - self.T / self.N).clamp(min=0.0) if t_next is None else t_next
        return torch.zeros_like(x), torch.sqrt(t**2 - prev**2)


@dataclass(frozen=True, eq=True)
class _BetaSchedule(SDE):
    """The linear ``beta(t) = beta_min + t (beta_max - beta_min)`` shared by VP and sub-VP."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    T: float = 1.0

    @cached_property
    def discrete_betas(self) -> Tensor:
        """DDPM's ``beta_1 .. beta_N = linspace(beta_min / N, beta_max / N, N)``, ``(N,)``."""
        return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @cached_property
    def alphas(self) -> Tensor:
        return 1.0 - self.discrete_betas

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """DDPM's ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``, ``(N,)`` float32."""
        return torch.cumprod(self.alphas, dim=0)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """``log m(t) = -1/2 int_0^t beta(s) ds``, ``(B,)``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_mean_coeff(self, log_m: Tensor) -> Tensor:
        """The inverse of :meth:`log_mean_coeff` on ``t >= 0``, ``(B,)``.

        ``L = -2 log m = t^2 D / 2 + t beta_min`` with ``D = beta_max - beta_min``: the positive
        root ``t = (-beta_min + sqrt(beta_min^2 + 2 D L)) / D``, written without cancellation as
        ``2 L / (beta_min + sqrt(beta_min^2 + 2 D L))`` (which also holds for ``D = 0``).
        """
        L = -2.0 * log_m
        D = self.beta_max - self.beta_min
        return 2.0 * L / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * D * L))

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """DDPM's ``alpha_i = 1 - beta_i`` at ``t``'s discretisation index (Algorithm 5)."""
        return _lookup(self.alphas, _index(t, self.N, self.T), t)


class VPSDE(_BetaSchedule):
    """Variance-preserving SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` (eq. 11): DDPM."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta)

    def marginal_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``m(t) = exp(log_mean_coeff)``, ``s(t) = sqrt(1 - m(t)^2)`` (eq. 29)."""
        lmc = self.log_mean_coeff(t)
        return torch.exp(lmc), torch.sqrt(-torch.expm1(2 * lmc))

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = s / m = sqrt(1 / m^2 - 1) = sqrt(expm1(-2 log m))``, ``(B,)``."""
        return torch.sqrt(torch.expm1(-2.0 * self.log_mean_coeff(t)))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma`: ``log m = -log1p(sigma^2) / 2``, then
        :meth:`t_from_log_mean_coeff`, ``(B,)``."""
        return self.t_from_log_mean_coeff(-0.5 * torch.log1p(sigma**2))

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(m^2 / s^2) = 2 log m - log(-expm1(2 log m))``, ``(B,)``.

        Equal to ``-log(expm1(-2 log m))`` but free of overflow when ``-2 log m`` is large.
        """
        lmc = self.log_mean_coeff(t)
        return 2.0 * lmc - torch.log(-torch.expm1(2.0 * lmc))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`, ``(B,)``.

        ``1 / m^2 = 1 + exp(-lambda)``, so ``-2 log m = softplus(-lambda)``, evaluated as
        ``max(-lambda, 0) + log1p(exp(-|lambda|))`` (no overflow, no loss for large ``lambda``).
        """
        L = torch.clamp(-lam, min=0.0) + torch.log1p(torch.exp(-torch.abs(lam)))
        return self.t_from_log_mean_coeff(-0.5 * L)

    def weight_integral(self, t: Tensor) -> Tensor:
        """``F(t) = log(e^B - 1)`` with ``B = -2 log m(t)``: ``F' = beta / (1 - e^{-B})``."""
        return torch.log(torch.expm1(-2.0 * self.log_mean_coeff(t)))

    def t_from_weight_integral(self, f: Tensor) -> Tensor:
        """``B = softplus(F)``."""
        return self.t_from_log_mean_coeff(-0.5 * torch.logaddexp(f, torch.zeros_like(f)))

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor | None = None):
        """DDPM update ``x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z`` as ``(f, G)`` (eq. 46).

        Without ``t_next``, ``beta_i`` is read from the DDPM table at ``floor(t (N-1) / T)``
        (official); with ``t_next < t`` it is the exact ``1 - alpha_bar(t) / alpha_bar(t_next)``
        of the continuous schedule, so any time grid works.
        """
        if t_next is None:
            beta = _lookup(self.discrete_betas, _index(t, self.N, self.T), t)
        else:
            beta = -torch.expm1(2 * (self.log_mean_coeff(t) - self.log_mean_coeff(t_next)))
        f = append_dims(torch.sqrt(1.0 - beta), x.ndim) * x - x
        return f, torch.sqrt(beta)


class SubVPSDE(_BetaSchedule):
    """Sub-VP SDE ``dx = -1/2 beta x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw`` (eq. 14)."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(t)
        discount = -torch.expm1(4 * self.log_mean_coeff(t))
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * discount)

    def marginal_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``m(t)`` as VP, ``s(t) = 1 - m(t)^2`` (eq. 30)."""
        lmc = self.log_mean_coeff(t)
        return torch.exp(lmc), -torch.expm1(2 * lmc)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = s / m = (1 - m^2) / m = -expm1(2 log m) / m``, ``(B,)``.

        Equivalently ``2 sinh(-log m)``, the form that :meth:`t_from_sigma` inverts.
        """
        lmc = self.log_mean_coeff(t)
        return -torch.expm1(2.0 * lmc) / torch.exp(lmc)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma`, ``(B,)``.

        ``m^2 + sigma m - 1 = 0`` has the root ``m = 2 / (sigma + sqrt(sigma^2 + 4))``, i.e.
        ``log m = -asinh(sigma / 2)`` (accurate also where ``m`` rounds to one), then
        :meth:`t_from_log_mean_coeff`.
        """
        return self.t_from_log_mean_coeff(-torch.asinh(0.5 * sigma))

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(m^2 / s^2) = 2 log m - 2 log(-expm1(2 log m))``, ``(B,)``."""
        lmc = self.log_mean_coeff(t)
        return 2.0 * lmc - 2.0 * torch.log(-torch.expm1(2.0 * lmc))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`: ``sigma = exp(-lambda / 2)``, then :meth:`t_from_sigma`,
        ``(B,)``."""
        return self.t_from_sigma(torch.exp(-0.5 * lam))

    def weight_integral(self, t: Tensor) -> Tensor:
        """``F(t) = 2 log(e^B - 1) - B = 2 log(2 sinh(B / 2))`` with ``B = -2 log m(t)``:
        ``F' = beta (1 + e^{-B}) / (1 - e^{-B})``."""
        b = -2.0 * self.log_mean_coeff(t)
        return 2.0 * torch.log(torch.expm1(b)) - b

    def t_from_weight_integral(self, f: Tensor) -> Tensor:
        """``B = 2 asinh(e^{F / 2} / 2)``."""
        return self.t_from_log_mean_coeff(-torch.asinh(0.5 * torch.exp(0.5 * f)))


def reverse_sde(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, *, probability_flow: bool = False
) -> tuple[Tensor, Tensor]:
    """Drift and diffusion of the reverse-time SDE (eq. 6), or of the probability-flow ODE (eq. 13).

    Reverse SDE: ``dx = [f - g^2 score] dt + g dw_bar``; ODE: ``dx = [f - g^2 score / 2] dt``.
    Returns drift like ``x`` and diffusion ``(B,)`` (zeros for the ODE).
    """
    drift, g = sde.sde(x, t)
    weight = 0.5 if probability_flow else 1.0
    drift = drift - append_dims(g**2, x.ndim) * score_fn(x, t) * weight
    return drift, torch.zeros_like(g) if probability_flow else g


def probability_flow_drift(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow ODE's velocity ``f(x, t) - g(t)^2 score(x, t) / 2`` (eq. 13)."""
    return reverse_sde(sde, score_fn, x, t, probability_flow=True)[0]


def reverse_discretize(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor | None = None,
    *,
    probability_flow: bool = False,
) -> tuple[Tensor, Tensor]:
    """The reverse of ``sde.discretize`` (reverse diffusion, eq. 47): ``f - G^2 score``, ``G``.

    For the probability flow the score term is halved and ``G`` is zero.
    """
    f, G = sde.discretize(x, t, t_next)
    weight = 0.5 if probability_flow else 1.0
    rev_f = f - append_dims(G**2, x.ndim) * score_fn(x, t) * weight
    return rev_f, torch.zeros_like(G) if probability_flow else G
