"""Training objectives: continuous-time denoising score matching, EDM's loss and the discrete
SMLD/DDPM losses.

Each returns one loss per example, ``(B,)``; averaging over the batch is the caller's job.
Every loss here is the weighted denoising objective
``lambda(t) || score(m x_0 + s z, t) + z / s ||^2`` (eq. 7) with the noise level drawn
differently, so they share :func:`weighted_dsm`. :func:`edm_loss` is EDM's (Karras et al.,
2022, eq. 8) for any SDE: ``sigma = s / m`` lognormal, ``t = t_from_sigma(sigma)``.

``reduce="mean"`` averages the squared error over data dims; ``reduce="sum"`` takes **half** its sum
(``1/2 ||.||^2``), which is the official code's ``reduce_mean=False`` convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.core._tensor import (
    NoiseSource,
    append_dims,
    flat_mean,
    flat_sum,
    randint,
    randn,
    randn_like,
)
from scoresde.core.names import LOSS_NAMES, loss_problem
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE, VESDE, VPSDE
from scoresde.methods.importance import time_proposal

REDUCTIONS = ("mean", "sum")
LOSSES = LOSS_NAMES
"""The continuous-time losses (``train.loss``): :func:`dsm_loss` and :func:`edm_loss`."""


def _reduce(sq: Tensor, reduce: str) -> Tensor:
    if reduce == "mean":
        return flat_mean(sq)
    if reduce == "sum":
        return 0.5 * flat_sum(sq)
    raise ValueError(f"unknown reduce {reduce!r}; choose from {REDUCTIONS}")


def weighted_dsm(
    score_fn: ScoreFn,
    x0: Tensor,
    t: Tensor,
    z: Tensor,
    mean_coeff: Tensor,
    std: Tensor,
    *,
    reduce: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """``(B,)`` loss ``|| score(x_t, t) s + z ||^2`` (reduced), times ``weight / s^2`` if given.

    With ``weight=None`` the weighting is ``lambda(t) = s(t)^2``, the paper's default, written in
    the numerically safe form ``(score s + z)^2``; otherwise ``lambda = weight``, e.g. ``g(t)^2``.
    """
    s = append_dims(std, x0.ndim)
    xt = append_dims(mean_coeff, x0.ndim) * x0 + s * z  # sde.perturb with the coefficients known
    score = score_fn(xt, t)
    if weight is None:
        return _reduce((score * s + z) ** 2, reduce)
    return _reduce((score + z / s) ** 2, reduce) * weight


def dsm_loss(
    sde: SDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    eps: float = 1e-5,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    reduce: str = "mean",
    generator: NoiseSource = None,
    t: Tensor | None = None,
    z: Tensor | None = None,
) -> Tensor:
    """Continuous-time denoising score matching (eq. 7), one value per example ``(B,)``.

    ``t ~ U(eps, T)`` and ``z ~ N(0, I)`` unless given. The weighting is ``lambda(t) = s(t)^2``,
    or ``g(t)^2`` with ``likelihood_weighting`` (Song et al., 2021b), which makes the loss a bound
    on the negative log-likelihood.

    ``importance_sampling`` (with ``likelihood_weighting`` only) draws ``t`` from
    ``q(t) ∝ g^2 / s^2`` (:func:`scoresde.methods.importance.time_proposal`) and returns
    ``Z / (T - eps) || s score + z ||^2`` (reduced): the same expectation as the
    likelihood-weighted loss with a uniform ``t``, at a lower variance. A given ``t`` is then
    taken to be a draw of ``q``.

    Args:
        x0: clean data ``(B, ...)``.
        t: optional times ``(B,)``; z: optional noise like ``x0`` (to reproduce a draw).
    """
    if importance_sampling and not likelihood_weighting:
        raise ValueError("importance_sampling needs likelihood_weighting (q is g^2 / s^2)")
    proposal = time_proposal(sde, eps) if importance_sampling else None
    if t is None:
        shape = (x0.shape[0],)
        if proposal is not None:
            t = proposal.sample(shape, generator, device=x0.device, dtype=x0.dtype)
        else:
            t = sde.sample_times(shape[0], generator, eps=eps, device=x0.device, dtype=x0.dtype)
    z = randn_like(x0, generator) if z is None else z
    mean_coeff, std = sde.marginal_coeffs(t)
    if proposal is not None:
        loss = weighted_dsm(score_fn, x0, t, z, mean_coeff, std, reduce=reduce)
        return loss * proposal.weight
    weight = sde.diffusion(t) ** 2 if likelihood_weighting else None
    return weighted_dsm(score_fn, x0, t, z, mean_coeff, std, reduce=reduce, weight=weight)


def _random_index(sde: SDE, x0: Tensor, generator) -> tuple[Tensor, Tensor]:
    """A uniform discrete noise index ``i`` ``(B,)`` and its time ``t_i = i T / (N - 1)``."""
    idx = randint(sde.N, (x0.shape[0],), generator, device=x0.device)
    return idx, idx.to(x0.dtype) * sde.T / (sde.N - 1)


def smld_loss(
    sde: VESDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    reduce: str = "sum",
    generator: NoiseSource = None,
) -> Tensor:
    """The NCSN (SMLD) loss of Song & Ermon (2019): DSM at a uniformly drawn scale ``sigma_i``.

    ``score_fn`` must be built with ``continuous=False``: time ``t_i = i T / (N - 1)`` carries the
    ``i``-th smallest scale, ``sigma_i = sigma(t_i)``. Weighting ``sigma_i^2``. Returns ``(B,)``.
    """
    idx, t = _random_index(sde, x0, generator)
    sigma = sde.discrete_sigmas.to(x0.device, x0.dtype)[idx]
    z = randn_like(x0, generator)
    return weighted_dsm(score_fn, x0, t, z, torch.ones_like(sigma), sigma, reduce=reduce)


def ddpm_loss(
    sde: VPSDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    reduce: str = "mean",
    generator: NoiseSource = None,
) -> Tensor:
    """The DDPM loss of Ho et al. (2020), ``|| eps_theta(x_i, i) - z ||^2`` at a uniform step ``i``.

    ``score_fn`` must wrap an ``eps`` network with ``continuous=False``; since
    ``score = -eps_theta / sqrt(1 - alpha_bar_i)`` this equals :func:`weighted_dsm` with
    ``m = sqrt(alpha_bar_i)``, ``s = sqrt(1 - alpha_bar_i)``. Returns ``(B,)``.
    """
    idx, t = _random_index(sde, x0, generator)
    alpha_bar = sde.alphas_cumprod.to(x0.device, x0.dtype)[idx]
    z = randn_like(x0, generator)
    return weighted_dsm(
        score_fn, x0, t, z, torch.sqrt(alpha_bar), torch.sqrt(1 - alpha_bar), reduce=reduce
    )


def check_loss(
    loss: str,
    *,
    continuous: bool = True,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
) -> None:
    """Refuse a loss choice that makes no sense (one-line ``ValueError``): an unknown ``loss``,
    ``"edm"`` in discrete time, or ``"edm"`` with ``likelihood_weighting`` or
    ``importance_sampling`` (EDM's loss has its own weight and noise distribution; those two
    are :func:`dsm_loss`'s), or ``importance_sampling`` without ``likelihood_weighting``. The
    rule is :func:`scoresde.core.names.loss_problem`, which the config checks too."""
    problem = loss_problem(loss, continuous=continuous, likelihood_weighting=likelihood_weighting,
                           importance_sampling=importance_sampling)
    if problem is not None:
        raise ValueError(problem)


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` ``(B,)`` (Karras
    et al., 2022, Table 1): ``lambda c_out^2 = 1``, the network's target has unit weight."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_times(
    sde: SDE,
    n: int,
    generator: NoiseSource = None,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    eps: float = 1e-5,
    sigma: Tensor | None = None,
    device=None,
    dtype=None,
) -> Tensor:
    """EDM's training noise levels as times ``(n,)``: ``ln sigma ~ N(P_mean, P_std^2)``
    (one ``(n,)`` normal draw from ``generator``, or the given ``sigma``), mapped by
    ``sde.t_from_sigma`` and clipped to ``[eps, T]``: the noise level actually used is
    ``sde.sigma(t)``, EDM's clipped to ``[sigma(eps), sigma(T)]``."""
    if not P_std >= 0:
        raise ValueError(f"P_std must be >= 0, got {P_std}")
    if sigma is None:
        sigma = torch.exp(P_mean + P_std * randn((n,), generator, device=device, dtype=dtype))
    return sde.t_from_sigma(sigma).clamp(eps, sde.T)


def edm_loss(
    sde: SDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: NoiseSource = None,
    sigma: Tensor | None = None,
    z: Tensor | None = None,
) -> Tensor:
    """EDM's loss (Karras et al., 2022, eq. 8 with Table 1's weight) for any SDE, ``(B,)``.

    ``t`` from :func:`edm_times` (``sigma`` lognormal, or the given ``sigma`` ``(B,)``), then
    ``z ~ N(0, I)`` like ``x0`` (or the given ``z``), both from ``generator``. With
    ``x_t = m x0 + s z`` (so ``y = x_t / m = x0 + sigma z``) and Tweedie's
    ``D = (x_t + s^2 score) / m`` (EDM's denoiser, :meth:`scoresde.ScoreModel.denoise`), the
    loss is ``lambda(sigma) || D - x0 ||^2`` (reduced; :func:`edm_weight`, ``sigma = sigma(t)``).
    Since ``D - x0 = sigma (s score + z)`` it is computed as
    ``(1 + sigma^2 / sd^2) || s score + z ||^2``: eq. 7 with ``lambda(t) = s^2 (1 + sigma^2 /
    sd^2)`` at these times, for any score function. EDM sums over dims (``2 x reduce="sum"``);
    ``"mean"`` divides that by the dimension. With an ``"edm"`` :class:`~scoresde.ScoreModel`
    it is ``|| F - (x0 - c_skip y) / c_out ||^2``, EDM's unit-weight target.
    """
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    n = x0.shape[0]
    t = edm_times(sde, n, generator, P_mean=P_mean, P_std=P_std, eps=eps, sigma=sigma,
                  device=x0.device, dtype=x0.dtype)
    z = randn_like(x0, generator) if z is None else z
    mean_coeff, std = sde.marginal_coeffs(t)
    weight = 1.0 + (sde.sigma(t) / sigma_data) ** 2
    return weighted_dsm(score_fn, x0, t, z, mean_coeff, std, reduce=reduce) * weight
