"""Correctors: score-based MCMC steps at a fixed time ``t`` that move ``x`` towards ``p_t``.

Every corrector is a pure function
``step(sde, score_fn, x, t, *, snr, generator=None) -> (x, x_mean)``; one score evaluation each
(``none``: zero).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core._tensor import append_dims, randn_like
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE

Corrector = Callable[..., tuple[Tensor, Tensor]]


def _norms(v: Tensor) -> Tensor:
    """Per-example Euclidean norms ``(B,)`` of ``v`` ``(B, ...)``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)


def _langevin_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    snr: float,
    generator: torch.Generator | None,
    *,
    per_example: bool,
) -> tuple[Tensor, Tensor]:
    score = score_fn(x, t)
    noise = randn_like(x, generator)
    noise_norm, score_norm = _norms(noise), _norms(score)
    if not per_example:
        noise_norm, score_norm = noise_norm.mean(), score_norm.mean()
    step = append_dims(2 * (snr * noise_norm / score_norm) ** 2 * sde.langevin_alpha(t), x.ndim)
    x_mean = x + step * score
    return x_mean + torch.sqrt(2 * step) * noise, x_mean


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

    ``eps = 2 alpha (snr ||z|| / ||score||)^2``, ``x <- x + eps score + sqrt(2 eps) z``, with
    ``alpha`` one for VE and DDPM's ``1 - beta_i`` for VP and sub-VP (the official code has no
    sub-VP case). The norms are batch means, as in the official code: this step size is the one
    place where the examples of a batch interact, so with this corrector a sample depends
    (slightly) on its batch. :func:`langevin_per_example` uses each example's own norms.
    """
    return _langevin_step(sde, score_fn, x, t, snr, generator, per_example=False)


def langevin_per_example(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    snr: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`langevin` with each example's own norms, so no example depends on its batch.

    For images the norms concentrate (``||z|| ~ sqrt(D)``) and the step sizes agree closely
    with the batch-mean ones; this is the corrector for sharded sampling runs whose samples must
    not depend on the batch size. In very low dimension (2-D toys) the per-example norm of the
    noise fluctuates and biases the chain: use ``langevin`` or ``ald`` there.
    """
    return _langevin_step(sde, score_fn, x, t, snr, generator, per_example=True)


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
    "langevin_per_example": langevin_per_example,
    "ald": annealed_langevin,
    "none": no_corrector,
}
