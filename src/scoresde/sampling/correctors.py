"""Correctors: score-based MCMC steps at a fixed time ``t`` that move ``x`` towards ``p_t``.

Every corrector is a pure function
``step(sde, score_fn, x, t, *, snr, generator=None) -> (x, x_mean)``; one score evaluation each
(``none``: zero).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde._tensor import append_dims, randn_like
from scoresde.score import ScoreFn
from scoresde.sdes import SDE

Corrector = Callable[..., tuple[Tensor, Tensor]]


def _batch_mean_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1).mean()


def langevin(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    snr: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Langevin corrector with the signal-to-noise step size of Algorithms 4 and 5.

    ``eps = 2 alpha (snr ||z|| / ||score||)^2``, ``x <- x + eps score + sqrt(2 eps) z``; the norms
    are batch means as in the official code, ``alpha`` is one for VE and DDPM's ``1 - beta_i`` for
    VP and sub-VP (the official code has no sub-VP case).
    """
    score = score_fn(x, t)
    noise = randn_like(x, generator)
    step = 2 * (snr * _batch_mean_norm(noise) / _batch_mean_norm(score)) ** 2
    step = append_dims(step * sde.langevin_alpha(t), x.ndim)
    x_mean = x + step * score
    return x_mean + torch.sqrt(2 * step) * noise, x_mean


def annealed_langevin(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    snr: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Annealed Langevin dynamics of NCSN (Song & Ermon, 2019): step ``2 alpha (snr s(t))^2``."""
    std = sde.marginal_coeffs(t)[1]
    step = append_dims(2 * (snr * std) ** 2 * sde.langevin_alpha(t), x.ndim)
    x_mean = x + step * score_fn(x, t)
    return x_mean + torch.sqrt(2 * step) * randn_like(x, generator), x_mean


def no_corrector(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    snr: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The identity (predictor-only samplers)."""
    return x, x


CORRECTORS: dict[str, Corrector] = {
    "langevin": langevin,
    "ald": annealed_langevin,
    "none": no_corrector,
}
