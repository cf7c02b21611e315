"""The variational bound on the negative log-likelihood of the reverse-SDE model (Song, Durkan,
Murray & Ermon, 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", Theorem 3,
in its denoising form).

For data ``x`` and the forward SDE ``dx = f dt + g dw`` with kernel
``p_0t(x_t | x) = N(m(t) x, s(t)^2 I)``, the per-example bound is

    L(x) = E[-log pi(x_T)]
           + 1/2 int_eps^T E[g^2 ||s_theta(x_t, t) - grad log p_0t(x_t | x)||^2
                             - g^2 ||grad log p_0t(x_t | x)||^2 - 2 div f(x_t, t)] dt.

**Where ``eps`` enters.** Let ``p_theta^eps`` be the density at time ``eps`` of the reverse SDE
run from ``pi`` at ``T`` with the model's score. Theorem 3 with the kernel started at ``eps``
bounds ``-log p_theta^eps(y)`` for every ``y``; averaged over ``y ~ p_0,eps(. | x)`` its score
term may use the kernel from time 0 instead (``grad log p_0t(x_t | x)`` is the conditional mean of
``grad log p_eps,t(x_t | y)``), which gives exactly ``L(x) = E_y[bound on -log p_theta^eps(y)]``.
``L`` is therefore a bound for the model with a Gaussian decoder at ``eps``: ``y ~ p_theta^eps``,
then ``x | y ~ N(y / m(eps), (s(eps) / m(eps))^2 I)``. Its evidence bound with the encoder
``y ~ p_0,eps(. | x)`` adds ``E[-log decoder] - H(encoder) = -D log m(eps)``, so

    -log p_model(x) <= L(x) - D log m(eps)                                    (returned)

(``-D log m(eps) = 0`` for VE, ``D B(eps) / 2`` for VP and sub-VP). For the exact score,
``E_data[L(x) - D log m(eps)] = H(p_data * N(0, (s(eps) / m(eps))^2 I)) + KL(p_T || pi)``: the
entropy of slightly blurred data plus the prior mismatch, which is what the tests check.

**The estimate.** With ``x_t = m x + s z``, ``grad log p_0t = -z / s`` and
``E||z||^2 = D``, the integrand is ``(g^2 / s^2) E[||s s_theta + z||^2 - D] - 2 E div f``.
The divergence of the paper's linear drift ``f = a(t) x`` is ``D a(t)`` with ``a = d log m / dt``,
so its integral is closed form, ``-2 int div f = 2 D log(m(eps) / m(T))`` (``D (B(T) - B(eps))``
for VP and sub-VP, zero for VE); so is the prior term for the Gaussian ``x_T | x`` and prior
``N(0, sigma_pi^2 I)``: ``D/2 log(2 pi sigma_pi^2) + (m(T)^2 ||x||^2 + D s(T)^2) / (2 sigma_pi^2)``.
Only the score term is Monte Carlo: ``num_times`` draws ``(t, z)`` per example, ``t ~ U(eps, T)``
with weight ``(T - eps) g^2 / s^2``, or (``importance_sampling``, the default) ``t`` from
``q ∝ g^2 / s^2`` (:mod:`scoresde.methods.importance`) with weight ``Z``, which keeps the variance
bounded
as ``t -> eps``. Shapes: data ``(B, ...)``, results ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.core._tensor import NoiseSource, append_dims, flat_sum, randn_like
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE
from scoresde.core.transforms import uniform_dequantize
from scoresde.methods.importance import likelihood_ratio, time_proposal
from scoresde.methods.likelihood import bits_per_dim


def _coeffs(sde: SDE, t: float, x: Tensor) -> tuple[Tensor, Tensor]:
    return sde.marginal_coeffs(torch.tensor([t], dtype=x.dtype, device=x.device))


def closed_form_terms(sde: SDE, x: Tensor) -> Tensor:
    """The bound's exact part ``(B,)``: the prior term ``E[-log pi(x_T) | x]``, the drift's
    ``-int_eps^T div f dt`` and the decoder's ``-D log m(eps)``; together
    ``E[-log pi(x_T)] - D log m(T)``."""
    D = x[0].numel()
    m_T, s_T = _coeffs(sde, sde.T, x)
    var = sde.prior_std**2
    prior = 0.5 * D * math.log(2 * math.pi * var) + (m_T**2 * flat_sum(x**2) + D * s_T**2) / (
        2 * var
    )
    return prior - D * torch.log(m_T)


def score_term(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    eps: float = 1e-5,
    num_times: int = 1,
    importance_sampling: bool = True,
    generator: NoiseSource = None,
) -> Tensor:
    """The Monte-Carlo part ``1/2 int_eps^T (g^2 / s^2) E[||s s_theta + z||^2 - D] dt``, ``(B,)``:
    the mean over ``num_times`` draws ``(t (B,), z like x)``, each ``t`` drawn before its ``z``."""
    D = x[0].numel()
    proposal = time_proposal(sde, eps) if importance_sampling else None
    total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for _ in range(num_times):
        shape = (x.shape[0],)
        if proposal is not None:
            t = proposal.sample(shape, generator, device=x.device, dtype=x.dtype)
            weight = torch.full_like(t, proposal.normalizer)
        else:
            t = sde.sample_times(shape[0], generator, eps=eps, device=x.device, dtype=x.dtype)
            weight = (sde.T - eps) * likelihood_ratio(sde, t)
        z = randn_like(x, generator)
        s = append_dims(sde.marginal_coeffs(t)[1], x.ndim)
        score = score_fn(sde.perturb(x, t, z), t)
        total = total + weight * (flat_sum((s * score + z) ** 2) - D)
    return 0.5 * total / num_times


def likelihood_bound(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    eps: float = 1e-5,
    num_times: int = 1,
    importance_sampling: bool = True,
    generator: NoiseSource = None,
) -> Tensor:
    """An unbiased estimate of the upper bound on ``-log p(x)``, in nats per example ``(B,)``.

    ``p`` is the reverse-SDE model from ``eps`` with a Gaussian decoder at ``eps`` (module
    docstring); ``score_fn`` is evaluated ``num_times`` times on ``(B, ...)``. ``generator`` (a
    ``torch.Generator`` or per-example :class:`~scoresde.core.seeding.SampleStreams`) draws
    ``t`` and
    ``z``, so with streams an example's value does not depend on its batch.

    Args:
        x: data ``(B, ...)`` in the model's scale.
        eps: the smallest time (``0 < eps < T``).
        num_times: Monte-Carlo draws of ``(t, z)`` per example (``>= 1``).
        importance_sampling: ``t ~ q ∝ g^2 / s^2`` (default) instead of ``U(eps, T)``.
    """
    if num_times < 1:
        raise ValueError(f"num_times must be >= 1, got {num_times}")
    if not 0 < eps < sde.T:
        raise ValueError(f"the likelihood bound needs 0 < eps < T, got eps={eps}")
    est = score_term(
        sde,
        score_fn,
        x,
        eps=eps,
        num_times=num_times,
        importance_sampling=importance_sampling,
        generator=generator,
    )
    return closed_form_terms(sde, x) + est


def bound_bpd(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    levels: int = 256,
    centered: bool = False,
    generator: NoiseSource = None,
    **bound_kwargs,
) -> Tensor:
    """The bound in bits/dim of quantised data ``x`` in ``[0, 1]``, ``(B,)``: uniformly
    dequantized, scaled and converted exactly as :func:`scoresde.methods.likelihood.dequantized_bpd`
    (:func:`scoresde.methods.likelihood.bits_per_dim`); the dequantization is drawn first, then the
    bound's ``(t, z)`` from the same ``generator``. ``bound_kwargs`` go to
    :func:`likelihood_bound` (``eps``, ``num_times``, ``importance_sampling``)."""
    u = uniform_dequantize(x, levels=levels, generator=generator)
    y = 2 * u - 1 if centered else u
    nll = likelihood_bound(sde, score_fn, y, generator=generator, **bound_kwargs)
    return bits_per_dim(-nll, x[0].numel(), levels=levels, centered=centered)
