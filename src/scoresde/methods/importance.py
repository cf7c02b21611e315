"""The importance-sampling proposal of likelihood-weighted training (Song, Durkan, Murray &
Ermon, 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", section 5).

With the likelihood weighting ``lambda(t) = g(t)^2`` the denoising loss is
``E_{t ~ U(eps, T)} [(g^2 / s^2) || s score + z ||^2]``, whose weight ``g^2 / s^2`` grows like
``1 / t`` near ``t = 0`` for VP and sub-VP: a uniform ``t`` gives a high-variance estimate. The
proposal ``q(t) = r(t) / Z`` with ``r = g^2 / s^2`` and ``Z = int_eps^T r(t) dt`` removes the
weight: ``E_U[r h] = Z / (T - eps) E_q[h]`` for any ``h(t)``.

``q`` is sampled by inverting its CDF ``(F(t) - F(eps)) / Z``, ``F`` a primitive of ``r``, in
closed form for the paper's SDEs (their ``weight_integral`` and ``t_from_weight_integral``,
:mod:`scoresde.core.sdes`; ``B(t) = int_0^t beta = -2 log m(t)``):

* VE (``s = sigma(t)``): ``r = 2 log(sigma_max / sigma_min)`` is constant, ``q`` is uniform;
* VP: ``r = beta / (1 - e^{-B})``, ``F = log(e^B - 1)``, inverse ``B = softplus(F)``;
* sub-VP: ``r = beta (1 + e^{-B}) / (1 - e^{-B})``, ``F = 2 log(e^B - 1) - B
  = 2 log(2 sinh(B / 2))``, inverse ``B = 2 asinh(e^{F / 2} / 2)``;

and numerically for any other SDE: ``F`` tabulated in float64 on a geometric time grid (the
trapezoid rule in ``log t``, where ``r(t) t`` is smooth) and inverted by monotone (piecewise
linear) interpolation. Times are ``(B,)``; the tables are float64 and the results take the
dtype and device of the draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from scoresde.core._tensor import NoiseSource, rand
from scoresde.core.sde_base import interp_monotone
from scoresde.core.sdes import SDE

Primitive = Callable[[Tensor], Tensor]


def _wide(device: torch.device) -> torch.dtype:
    """float64 for the CDF arithmetic, float32 on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def likelihood_ratio(sde: SDE, t: Tensor) -> Tensor:
    """``r(t) = g(t)^2 / s(t)^2``, ``(B,)``: the weight of the likelihood-weighted loss."""
    return sde.diffusion(t) ** 2 / sde.marginal_coeffs(t)[1] ** 2


def _tabulated(sde: SDE, eps: float, num_points: int) -> tuple[Primitive, Primitive]:
    """``F`` and its inverse by the trapezoid rule on a geometric grid of ``num_points`` times."""
    tau = torch.linspace(math.log(eps), math.log(sde.T), num_points, dtype=torch.float64)
    t = torch.exp(tau)
    integrand = likelihood_ratio(sde, t) * t  # dt = t d(log t)
    steps = 0.5 * (integrand[1:] + integrand[:-1]) * (tau[1:] - tau[:-1])
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])

    def primitive(t_: Tensor) -> Tensor:
        return interp_monotone(torch.log(t_), tau, cum)

    def inverse(f: Tensor) -> Tensor:
        return torch.exp(interp_monotone(f, cum, tau))

    return primitive, inverse


@dataclass(frozen=True)
class TimeProposal:
    """``q(t) = r(t) / Z`` on ``[eps, T]`` with ``r = g^2 / s^2`` (:func:`likelihood_ratio`).

    Attributes:
        sde, eps: the SDE and the lower end of the time interval.
        primitive, inverse: ``F`` with ``F' = r`` and ``F^{-1}``, float64 ``(B,) -> (B,)``.
        closed_form: whether ``F`` is the closed form (else the tabulated one).
    """

    sde: SDE
    eps: float
    primitive: Primitive
    inverse: Primitive
    closed_form: bool

    @property
    def normalizer(self) -> float:
        """``Z = int_eps^T g^2 / s^2 dt = F(T) - F(eps)``."""
        ends = self.primitive(torch.tensor([self.eps, self.sde.T], dtype=torch.float64))
        return float(ends[1] - ends[0])

    @property
    def weight(self) -> float:
        """``Z / (T - eps)``: ``E_U[r h] = weight * E_q[h]``."""
        return self.normalizer / (self.sde.T - self.eps)

    def density(self, t: Tensor) -> Tensor:
        """``q(t)``, ``(B,)``, in ``t``'s dtype."""
        return (likelihood_ratio(self.sde, t.to(_wide(t.device))) / self.normalizer).to(t.dtype)

    def cdf(self, t: Tensor) -> Tensor:
        """``Q(t) = (F(t) - F(eps)) / Z``, ``(B,)``, in ``t``'s dtype."""
        wide = _wide(t.device)
        f_eps = self.primitive(torch.tensor([self.eps], dtype=wide, device=t.device))
        return ((self.primitive(t.to(wide)) - f_eps) / self.normalizer).to(t.dtype)

    def icdf(self, u: Tensor) -> Tensor:
        """``Q^{-1}(u)`` for ``u`` in ``[0, 1]``, ``(B,)``, clamped to ``[eps, T]``, in ``u``'s
        dtype."""
        wide = _wide(u.device)
        f_eps = self.primitive(torch.tensor([self.eps], dtype=wide, device=u.device))
        t = self.inverse(f_eps + u.to(wide) * self.normalizer)
        return t.clamp(self.eps, self.sde.T).to(u.dtype)

    def sample(
        self,
        shape: tuple[int, ...],
        generator: NoiseSource = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Times ``t ~ q`` of ``shape`` (``(B,)``): ``Q^{-1}(u)`` of one uniform draw ``u``."""
        return self.icdf(rand(shape, generator, device=device, dtype=dtype))


@lru_cache(maxsize=32)
def time_proposal(
    sde: SDE, eps: float, *, numerical: bool = False, num_points: int = 4097
) -> TimeProposal:
    """The proposal ``q(t) ∝ g(t)^2 / s(t)^2`` on ``[eps, T]`` of ``sde`` (cached).

    Closed form for an SDE with ``weight_integral`` and ``t_from_weight_integral`` (the paper's
    three); the tabulated inverse with ``num_points`` grid times for any other SDE, or for any
    SDE when ``numerical``.

    Raises:
        ValueError: unless ``0 < eps < T`` (``Z`` diverges at ``eps = 0`` for VP and sub-VP).
    """
    if not 0 < eps < sde.T:
        raise ValueError(f"the importance-sampling proposal needs 0 < eps < T, got eps={eps}")
    closed = not numerical and hasattr(sde, "weight_integral")
    if closed:
        primitive, inverse = sde.weight_integral, sde.t_from_weight_integral
    else:
        primitive, inverse = _tabulated(sde, eps, num_points)
    return TimeProposal(sde, eps, primitive, inverse, closed_form=closed)
