"""Predictors: one step of a numerical solver of the reverse-time SDE from ``t`` to ``t_next < t``.

Every predictor is a pure function
``step(sde, score_fn, x, t, t_next, *, generator=None) -> (x, x_mean)`` with ``x`` ``(B, ...)``
and ``t``, ``t_next`` ``(B,)``; ``x_mean`` is the update without its noise term. Each costs one
score evaluation (``none``: zero). ``probability_flow`` is deterministic (``x == x_mean``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core._tensor import append_dims, randn_like
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE, reverse_discretize, reverse_sde

Predictor = Callable[..., tuple[Tensor, Tensor]]


def euler_maruyama(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama step of the reverse SDE (eq. 6) with ``dt = t_next - t < 0``."""
    dt = append_dims(t_next - t, x.ndim)
    drift, g = reverse_sde(sde, score_fn, x, t)
    x_mean = x + drift * dt
    return x_mean + append_dims(g, x.ndim) * torch.sqrt(-dt) * randn_like(x, generator), x_mean


def reverse_diffusion(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Reverse-diffusion predictor (eq. 47): ``x - (f - G^2 score) + G z`` from ``sde.discretize``.

    The forward update is taken between the exact noise levels at ``t_next`` and ``t``.
    """
    rev_f, G = reverse_discretize(sde, score_fn, x, t, t_next)
    x_mean = x - rev_f
    return x_mean + append_dims(G, x.ndim) * randn_like(x, generator), x_mean


def ancestral_sampling(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Ancestral sampling of SMLD/DDPM (eq. 47 and Ho et al., 2020), for any SDE of the paper.

    The forward transition from ``t_next`` to ``t`` is Gaussian, ``x_t = a x_s + sqrt(v) z`` with
    ``a = m(t) / m(t_next)``, ``v = s(t)^2 - a^2 s(t_next)^2``. Its exact reverse mean (Tweedie's
    formula on this kernel) is ``(x_t + v score) / a``; the noise has the posterior variance
    ``v s(t_next)^2 / s(t)^2``. For VE this is the official SMLD ancestral step; for VP it is
    DDPM with ``sigma_i^2 = beta_tilde_i`` (the official code uses ``beta_i``).
    """
    m_t, s_t = sde.marginal_coeffs(t)
    m_s, s_s = sde.marginal_coeffs(t_next)
    a = m_t / m_s
    v = s_t**2 - a**2 * s_s**2
    score = score_fn(x, t)
    x_mean = (x + append_dims(v, x.ndim) * score) / append_dims(a, x.ndim)
    std = torch.sqrt(v * s_s**2 / s_t**2)
    return x_mean + append_dims(std, x.ndim) * randn_like(x, generator), x_mean


def probability_flow(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Reverse-diffusion step of the probability-flow ODE (eq. 13 discretised as eq. 47).

    ``x - (f - G^2 score / 2)`` with ``(f, G)`` from ``sde.discretize`` between ``t_next`` and
    ``t``, and no noise: the paper's "probability flow" predictor of Table 1 (the official
    ``ReverseDiffusionPredictor`` with ``probability_flow=True``). A first-order solver of the
    ODE; ``generator`` is unused.
    """
    rev_f, _ = reverse_discretize(sde, score_fn, x, t, t_next, probability_flow=True)
    x_new = x - rev_f
    return x_new, x_new


def no_predictor(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The identity (corrector-only samplers such as NCSN's annealed Langevin dynamics)."""
    return x, x


PREDICTORS: dict[str, Predictor] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "probability_flow": probability_flow,
    "none": no_predictor,
}
