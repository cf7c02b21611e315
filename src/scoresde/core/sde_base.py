"""The contract of a forward SDE: what every SDE gives, and what follows from it by default.

An SDE ``dx = f(x, t) dt + g(t) dw`` (Song et al., 2021, eq. 5) with a Gaussian perturbation
kernel ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)`` must give two things (abstract here):
``sde(x, t) -> (f, g)`` and ``marginal_coeffs(t) -> (m, s)``. Everything else the package uses
has a default computed from those, which the paper's SDEs (:mod:`scoresde.core.sdes`) override with
closed forms:

- the noise-to-signal ratio ``sigma(t) = s / m`` (EDM's noise level) and ``t_from_sigma``, the
  log-SNR ``log_snr(t) = 2 log(m / s)`` and ``t_from_log_snr``: the inverses tabulated once in
  float64 (:func:`monotone_inverse`, relative error ~1e-7 in ``t``);
- ``discretize`` (Euler-Maruyama of the forward SDE, for PC's reverse-diffusion predictor) and
  ``langevin_alpha`` (one);
- the prior ``N(0, prior_std^2 I)``, its sampling and log-density;
- ``perturb(x0, t, z) = m x0 + s z`` and ``sample_times`` (``t ~ U(eps, T)``), the one draw of
  the training losses, the classifier loss and the likelihood bound;
- ``network_convention``: how a score network of this family is conditioned and what it outputs,
  ``(parametrization, labels)``: ``("eps", "time")`` (VP-like, the default) or ``("score",
  "sigma")`` (VE), read by :class:`scoresde.ScoreModel`.

The importance-sampling proposal's primitive ``weight_integral`` is optional: without it
:mod:`scoresde.methods.importance` tabulates one. Shapes: ``x`` ``(B, ...)``, ``t`` ``(B,)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core._tensor import NoiseSource, append_dims, flat_sum, rand, randn
from scoresde.core.names import NETWORK_CONVENTIONS

TABLE_POINTS = 8193
"""Points of a tabulated inverse (geometric in ``t`` over ``[T 1e-9, T]``)."""


def interp_monotone(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Piecewise-linear interpolation of the table ``(xs, ys)`` (``xs`` increasing) at ``x``,
    clamped to the table's ends; computed in the table's dtype (float32 on MPS, which has no
    float64), returned in ``x``'s."""
    wide = torch.float32 if x.device.type == "mps" else xs.dtype
    xs, ys = xs.to(x.device, wide), ys.to(x.device, wide)
    xw = x.to(wide).contiguous()
    i = torch.searchsorted(xs, xw).clamp(1, xs.numel() - 1)
    w = ((xw - xs[i - 1]) / (xs[i] - xs[i - 1])).clamp(0.0, 1.0)
    return (ys[i - 1] + w * (ys[i] - ys[i - 1])).to(x.dtype)


def monotone_inverse(fn: Callable[[Tensor], Tensor], T: float) -> Callable[[Tensor], Tensor]:
    """The inverse of an increasing ``fn`` on ``(0, T]`` by a float64 table in ``log t``.

    ``fn`` is evaluated once on :data:`TABLE_POINTS` geometric times; the inverse interpolates
    ``log t`` linearly in ``fn``, then takes one Newton step on ``fn`` (by a central difference)
    against the interpolation error. Decreasing functions are inverted through ``-fn``.
    """
    t = torch.logspace(math.log10(T * 1e-9), math.log10(T), TABLE_POINTS, dtype=torch.float64)
    values = fn(t)
    sign = 1.0 if bool(values[-1] > values[0]) else -1.0
    keys = sign * values

    def inverse(v: Tensor) -> Tensor:
        target = sign * v.to(torch.float64)
        tau = interp_monotone(target, keys, torch.log(t))
        guess = torch.exp(tau)
        h = 1e-6 * guess
        slope = sign * (fn(guess + h) - fn(guess - h)) / (2 * h)
        better = guess - (sign * fn(guess) - target) / slope
        ok = torch.isfinite(better) & (better > 0) & (better <= T)
        return torch.where(ok, better, guess).to(v.dtype)

    return inverse


class SDE(abc.ABC):
    """A forward SDE with a Gaussian perturbation kernel (module docstring for the contract).

    Subclasses must give ``sde`` and ``marginal_coeffs`` (and set ``T``, ``N``); the rest has
    defaults. ``N`` is the number of discrete steps of the matching discrete model (and PC's
    default number of steps).
    """

    T: float = 1.0
    N: int = 1000
    prior_std: float = 1.0
    network_convention: tuple[str, str] = NETWORK_CONVENTIONS["vp"]  # the default family

    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` like ``x`` and diffusion ``g(t)`` ``(B,)``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(m(t), s(t))`` of the perturbation kernel ``N(m(t) x_0, s(t)^2 I)``, each ``(B,)``."""

    # ---- the kernel and the prior ----------------------------------------------------------

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(B, ...)`` and std ``(B,)`` of ``p_0t(x_t | x_0)`` (appendix B)."""
        mean_coeff, std = self.marginal_coeffs(t)
        return append_dims(mean_coeff, x0.ndim) * x0, std

    def perturb(self, x0: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """``x_t = m(t) x0 + s(t) z`` ``(B, ...)``: for ``z ~ N(0, I)`` a draw of
        ``p_0t(x_t | x0)``."""
        mean_coeff, std = self.marginal_coeffs(t)
        return append_dims(mean_coeff, x0.ndim) * x0 + append_dims(std, x0.ndim) * z

    def sample_times(
        self, n: int, generator: NoiseSource = None, *, eps: float, device=None, dtype=None
    ) -> Tensor:
        """``t ~ U(eps, T)``, ``(n,)``, from ``generator``: the losses' draw of the time."""
        return rand((n,), generator, device=device, dtype=dtype) * (self.T - eps) + eps

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)``, shape ``(B,)``."""
        return self.sde(torch.zeros_like(t), t)[1]

    def prior_sampling(self, shape, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std^2 I)`` of ``shape`` (``kwargs``: ``device``, ``dtype``)."""
        return randn(tuple(shape), generator, **kwargs) * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density ``(B,)`` of ``z`` under the prior ``N(0, prior_std^2 I)``."""
        D = z[0].numel()
        var = self.prior_std**2
        return -0.5 * D * math.log(2 * math.pi * var) - flat_sum(z**2) / (2 * var)

    # ---- the noise schedule in the fast samplers' variables --------------------------------

    def sigma(self, t: Tensor) -> Tensor:
        """The noise-to-signal ratio ``sigma(t) = s(t) / m(t)``, ``(B,)``."""
        mean_coeff, std = self.marginal_coeffs(t)
        return std / mean_coeff

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma` (tabulated once), ``(B,)``."""
        return self._inverse("sigma", self.sigma)(sigma)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(m^2 / s^2) = -2 log sigma(t)``, ``(B,)``."""
        mean_coeff, std = self.marginal_coeffs(t)
        return 2.0 * (torch.log(mean_coeff) - torch.log(std))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr` (tabulated once), ``(B,)``."""
        return self._inverse("log_snr", self.log_snr)(lam)

    def _inverse(self, name: str, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        cache = self.__dict__.setdefault("_inverses", {})  # also on frozen dataclasses
        if name not in cache:
            cache[name] = monotone_inverse(fn, float(self.T))
        return cache[name]

    # ---- the discrete steps ----------------------------------------------------------------

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor | None = None):
        """Euler-Maruyama of the forward SDE as ``(f, G)``: ``f = drift dt``, ``G = g sqrt(dt)``
        with ``dt = T / N`` or ``t - t_next``."""
        dt = torch.full_like(t, self.T / self.N) if t_next is None else t - t_next
        drift, g = self.sde(x, t)
        return drift * append_dims(dt, x.ndim), g * torch.sqrt(dt)

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """The ``alpha_i`` of the Langevin corrector's step size: one by default."""
        return torch.ones_like(t)
