"""Exact likelihoods with the probability-flow ODE, Hutchinson's estimator, and bits/dim."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    bits_per_dim,
    dequantized_bpd,
    log_likelihood,
    uniform_dequantize,
)
from scoresde.core.mixture import GaussianMixture, mixture_log_prob, mixture_score_fn
from scoresde.methods.sampling import solve_probability_flow

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}

# zero overall mean, so p_T equals the prior up to second order (VE with sigma_max 50, VP, sub-VP)
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)
EPS = 1e-5
TIGHT = {"rtol": 1e-6, "atol": 1e-6}


def points():
    x = MIX.sample(16, generator=torch.Generator().manual_seed(1))
    extra = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, 2.0], [-0.5, 0.2]], dtype=F64)
    return torch.cat([x, extra])


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_exact_trace_matches_the_closed_form_density(name):
    """``log p_eps(x)`` to 0.02 nats, and the model density to 1e-3 nats.

    The model density is ``log p_eps(x) - log p_T(z) + log prior(z)``: the ODE transports the
    prior, not ``p_T``; both are closed form for mixture data.
    """
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, MIX)
    x = points()
    n = x.shape[0]
    logp, z, nfe = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, **TIGHT)
    assert logp.shape == (n,) and z.shape == x.shape
    assert isinstance(nfe, int) and nfe > 0
    closed = mixture_log_prob(sde, MIX, x, torch.full((n,), EPS, dtype=F64))
    model = closed - mixture_log_prob(sde, MIX, z, torch.ones(n, dtype=F64)) + sde.prior_logp(z)
    assert float((logp - closed).abs().max()) < 0.02
    assert float((logp - model).abs().max()) < 1e-3
    # z is the probability-flow ODE's endpoint
    z_ode, _ = solve_probability_flow(sde, score_fn, x, EPS, 1.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(z, z_ode, rtol=0, atol=1e-5 * sde.prior_std)


def test_likelihood_of_a_shifted_gaussian_is_exact():
    """Data ``N(mu, I)`` under VP: ``p_t = N(m mu, I)``, so ``log p_eps`` is closed form and ``z``
    is ``x`` shifted by ``(m(T) - m(eps)) mu``; the divergence integral is zero."""
    sde = SDES["VP"]
    mu = torch.tensor([0.5, -1.0, 0.25], dtype=F64)
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.ones(1, dtype=F64))
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 3.0]], dtype=F64)
    score_fn = mixture_score_fn(sde, gauss)
    logp, z, _ = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, **TIGHT)
    m_eps = float(sde.marginal_coeffs(torch.tensor([EPS], dtype=F64))[0][0])
    m_T = float(sde.marginal_coeffs(torch.tensor([1.0], dtype=F64))[0][0])
    torch.testing.assert_close(z, x + (m_T - m_eps) * mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(logp, sde.prior_logp(z), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_hutchinson_rademacher_is_unbiased(name):
    """In 2-D a Rademacher probe gives ``tr J + v1 v2 (J12 + J21)`` with ``v1 v2 = +-1``: the
    per-probe estimates take two values whose midpoint is the exact-trace answer, and their mean
    over 256 probes is within 4 standard errors of it."""
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, MIX)
    x = torch.tensor([[-0.5, 0.2]], dtype=F64)
    exact, _, _ = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, **TIGHT)
    est, _, _ = log_likelihood(sde, score_fn, x.expand(256, 2).clone(), eps=EPS,
                               trace="hutchinson-rademacher",
                               generator=torch.Generator().manual_seed(3), **TIGHT)
    spread = float(est.max() - est.min())
    assert spread > 0.1  # the off-diagonal term is not negligible here: the check has power
    assert abs(float(est.max() + est.min()) / 2 - float(exact)) < 1e-3
    assert abs(float(est.mean() - exact)) < 4 * float(est.std()) / math.sqrt(256)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_hutchinson_gaussian_is_unbiased(name):
    """The mean of 1024 Gaussian-probe estimates is within 4 standard errors of the exact trace.

    At a mode centre the Jacobian is near isotropic, so one probe's estimate has about the
    trace integral's own size as its std: the integral is > 20 standard errors of the mean, and a
    probe of the wrong scale (a 20% wrong variance) would miss by > 4 of them.
    """
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, MIX)
    x = torch.tensor([[1.2, -0.6]], dtype=F64)
    exact, z, _ = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, **TIGHT)
    n = 1024
    est, _, _ = log_likelihood(sde, score_fn, x.expand(n, 2).clone(), eps=EPS,
                               trace="hutchinson-gaussian",
                               generator=torch.Generator().manual_seed(4), **TIGHT)
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(exact - sde.prior_logp(z))) > 20 * se
    assert abs(float(est.mean() - exact)) < 4 * se


def test_hutchinson_is_reproducible_and_unknown_trace_raises():
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, MIX)
    x = points()[:4]

    def run(seed):
        return log_likelihood(sde, score_fn, x, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(sde, score_fn, x, trace="exact-ish")


# --------------------------------------------------------------------------------------------
# Dequantization and bits per dimension
# --------------------------------------------------------------------------------------------


def test_bits_per_dim_hand_computed():
    logp = torch.tensor([-100.0, 0.0, 50.0], dtype=F64)
    nats = 100 / (10 * math.log(2))  # 14.426950408889634 bits/dim per 100 nats over 10 dims
    cases = {
        (256, False): [nats + 8, 8.0, 8 - nats / 2],
        (256, True): [nats + 7, 7.0, 7 - nats / 2],
        (17, False): [nats + math.log2(17), math.log2(17), math.log2(17) - nats / 2],
        (17, True): [nats + math.log2(17) - 1, math.log2(17) - 1, math.log2(17) - 1 - nats / 2],
    }
    for (levels, centered), expected in cases.items():
        bpd = bits_per_dim(logp, 10, levels=levels, centered=centered)
        torch.testing.assert_close(bpd, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    first = bits_per_dim(logp, 10)[0]
    torch.testing.assert_close(first, torch.tensor(22.426950408889634, dtype=F64), rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("levels", [256, 17])
def test_uniform_dequantize_cells(levels):
    k = torch.arange(levels).repeat(200)
    for dtype in (torch.float32, F64):
        x = (k.to(dtype) / (levels - 1)).reshape(-1, 1)
        u = uniform_dequantize(x, levels=levels, generator=torch.Generator().manual_seed(0))
        assert u.dtype == dtype and u.shape == x.shape
        assert bool(((u >= 0) & (u < 1)).all())
        cell = torch.floor(u.double() * levels).long()[:, 0]
        assert torch.equal(cell, k)
    offset = u[:, 0] * levels - k  # U[0, 1)
    n = offset.numel()
    assert abs(float(offset.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(float((offset < 0.25).double().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    same = uniform_dequantize(x, levels=levels, generator=torch.Generator().manual_seed(0))
    other = uniform_dequantize(x, levels=levels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(u, same) and not torch.equal(u, other)


@pytest.mark.parametrize("levels", [256, 17])
def test_bpd_of_the_uniform_model_is_log2_levels(levels):
    """A model uniform on the data's cube spends exactly ``log2(levels)`` bits per dimension.

    Monte Carlo over dequantized images: the model density is ``1`` on ``[0, 1)^D`` (logp = 0) or
    ``2^-D`` on ``[-1, 1)^D`` (centred); every dequantized point must land in the support.
    """
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (64, 3, 4, 4), generator=gen)
    x = k.to(F64) / (levels - 1)
    D = 48
    for centered in (False, True):
        u = uniform_dequantize(x, levels=levels, generator=gen)
        y = 2 * u - 1 if centered else u
        lo = -1.0 if centered else 0.0
        inside = ((y >= lo) & (y < 1)).reshape(64, -1).all(1)
        logp = torch.where(inside, torch.full((64,), -D * math.log(2) if centered else 0.0,
                                              dtype=F64), torch.full((64,), -math.inf, dtype=F64))
        bpd = bits_per_dim(logp, D, levels=levels, centered=centered)
        torch.testing.assert_close(bpd, torch.full((64,), math.log2(levels), dtype=F64),
                                   rtol=1e-12, atol=0)


def test_dequantized_bpd_end_to_end():
    """VP with data ``N(0, I)``: every marginal is ``N(0, I)``, the score is ``-x`` and the flow is
    still, so the model density of ``y = 2u - 1`` is ``N(y; 0, I)``. ``dequantized_bpd`` then
    equals the hand computation, and its average over dequantization draws is the Jensen upper
    bound on ``-log2 P(k) / D`` with ``P(k)`` the Gaussian mass of the cell (tight: < 0.01 bits)."""
    sde = SDES["VP"]
    levels = 17

    def score_fn(x, t):
        return -x

    k = torch.tensor([[0, 8, 16], [3, 9, 12]])
    x = (k.to(F64) / (levels - 1)).repeat(200, 1)  # 2 data points, 200 dequantizations each
    bpd, nfe = dequantized_bpd(sde, score_fn, x, levels=levels, centered=True, trace="exact",
                               generator=torch.Generator().manual_seed(5))
    assert bpd.shape == (400,) and nfe > 0
    y = 2 * uniform_dequantize(x, levels=levels, generator=torch.Generator().manual_seed(5)) - 1
    logp = torch.distributions.Normal(torch.zeros((), dtype=F64), 1.0).log_prob(y).sum(1)
    torch.testing.assert_close(bpd, bits_per_dim(logp, 3, levels=levels, centered=True),
                               rtol=0, atol=1e-6)
    phi = torch.distributions.Normal(torch.zeros((), dtype=F64), 1.0).cdf
    lo, hi = 2 * k.to(F64) / levels - 1, 2 * (k.to(F64) + 1) / levels - 1
    discrete = -torch.log2(phi(hi) - phi(lo)).sum(1) / 3
    mean_bpd = bpd.reshape(200, 2).mean(0)
    se = bpd.reshape(200, 2).std(0) / math.sqrt(200)
    gap = mean_bpd - discrete
    assert bool((gap > -4 * se).all()) and bool((gap < 0.01 + 4 * se).all()), (gap, se)


# --------------------------------------------------------------------------------------------
# Fixed-step solvers
# --------------------------------------------------------------------------------------------

STAGES = {"euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4}


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_fixed_step_rk4_matches_dopri5_and_the_closed_form(name):
    """RK4 on 200 equal steps: within 2e-5 nats of a dopri5 solve at 1e-8 tolerances and of the
    closed-form model density (both measured at ~5e-6), fourth order (halving the step cuts the
    error ~17x: > 10x), and exactly 4 drift evaluations per step."""
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, MIX)
    x = points()[::2]
    n = x.shape[0]
    ref, z_ref, _ = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, rtol=1e-8,
                                   atol=1e-8)
    logp, z, nfe = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS, method="rk4",
                                  num_steps=200)
    assert nfe == 4 * 200
    assert logp.dtype == F64 and logp.shape == (n,) and z.shape == x.shape
    error = float((logp - ref).abs().max())
    assert error < 2e-5
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-4 * sde.prior_std)
    closed = mixture_log_prob(sde, MIX, x, torch.full((n,), EPS, dtype=F64))
    model = closed - mixture_log_prob(sde, MIX, z, torch.ones(n, dtype=F64)) + sde.prior_logp(z)
    assert float((logp - model).abs().max()) < 2e-5
    coarse, _, nfe_coarse = log_likelihood(sde, score_fn, x, trace="exact", eps=EPS,
                                           method="rk4", num_steps=100)
    assert nfe_coarse == 4 * 100
    assert float((coarse - ref).abs().max()) > 10 * error


@pytest.mark.parametrize("method", sorted(STAGES))
@pytest.mark.parametrize("num_steps", [1, 14, 28, 29])
def test_fixed_step_nfe_is_stages_times_num_steps(method, num_steps):
    """Exactly ``num_steps`` steps from ``eps`` to ``T`` (14, 28 and 29 steps from 1e-5 to 1 are
    where a grid built from a step size gets one step too many). Data ``N(0, I)`` under VP: the
    score is ``-x``, the flow is still, so ``z = x`` and ``log p = log prior(x)`` for any solver."""
    sde = SDES["VP"]
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.3, 2.5]], dtype=F64)
    logp, z, nfe = log_likelihood(sde, lambda x, t: -x, x, trace="exact", eps=EPS,
                                  method=method, num_steps=num_steps)
    assert nfe == STAGES[method] * num_steps
    torch.testing.assert_close(z, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, sde.prior_logp(x), rtol=0, atol=1e-12)


def test_fixed_step_needs_num_steps():
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, MIX)
    x = points()[:2]
    for method in STAGES:
        with pytest.raises(ValueError, match="num_steps"):
            log_likelihood(sde, score_fn, x, method=method)
    with pytest.raises(ValueError, match="num_steps"):
        log_likelihood(sde, score_fn, x, method="rk4", num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        dequantized_bpd(sde, score_fn, x.clamp(0, 1), levels=17, method="euler")


def test_dequantized_bpd_passes_num_steps():
    """The still flow of ``N(0, I)`` data under VP (score ``-x``): RK4 with 3 steps is exact."""
    sde = SDES["VP"]
    levels = 17
    x = torch.tensor([[0, 8, 16], [3, 9, 12]]).to(F64) / (levels - 1)
    kwargs = {"levels": levels, "centered": True, "trace": "exact"}
    bpd, nfe = dequantized_bpd(sde, lambda x, t: -x, x, method="rk4", num_steps=3,
                               generator=torch.Generator().manual_seed(5), **kwargs)
    assert nfe == 12
    ref, _ = dequantized_bpd(sde, lambda x, t: -x, x, generator=torch.Generator().manual_seed(5),
                             **kwargs)
    torch.testing.assert_close(bpd, ref, rtol=0, atol=1e-9)
