"""Probability-flow ODE sampling: mixture moments, NFE accounting, the closed-form linear flow of
Gaussian data, and the convergence order of the fixed-step solvers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, ode_sample, tweedie_denoise
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.methods.sampling import solve_probability_flow

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}

MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)

MU = torch.tensor([0.7, -0.4], dtype=F64)
S0 = 0.3
GAUSS = GaussianMixture(torch.ones(1, dtype=F64), MU[None], torch.tensor([S0], dtype=F64))
X_T = torch.tensor([[1.3, -0.2], [-0.8, 0.5], [0.1, 2.0]], dtype=F64)


def gaussian_flow(sde, x_t0, t0: float, t1: float):
    """The probability-flow map of data ``N(mu, s0^2 I)``, in closed form.

    The marginals are ``N(m mu, v I)`` with ``v = m^2 s0^2 + s^2``; the ODE velocity is
    ``a x + g^2 (x - m mu) / (2 v)`` for drift ``a x``, so ``y = x - m mu`` obeys
    ``y' = (a + g^2 / (2 v)) y = (d log sqrt(v) / dt) y``: ``y(t1) = sqrt(v(t1) / v(t0)) y(t0)``.
    """
    m0, s0_ = (float(v) for v in sde.marginal_coeffs(torch.tensor([t0], dtype=F64)))
    m1, s1_ = (float(v) for v in sde.marginal_coeffs(torch.tensor([t1], dtype=F64)))
    v0, v1 = m0**2 * S0**2 + s0_**2, m1**2 * S0**2 + s1_**2
    return m1 * MU + math.sqrt(v1 / v0) * (x_t0 - m0 * MU)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_ode_samples_the_mixture(name, check_mixture):
    sde = SDES[name]
    x_T = sde.prior_sampling((4000, 2), torch.Generator().manual_seed(0), dtype=F64)
    x, nfe = ode_sample(sde, mixture_score_fn(sde, MIX), x_T)
    assert x.shape == x_T.shape and nfe > 0
    # the solver's bias was measured with 10x more samples below 0.3% (weight), 0.007 (means)
    # and 1% (stds)
    check_mixture(x, MIX, weight_bias=0.005, mean_bias=0.01, std_bias=0.02)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_gaussian_endpoint_matches_the_closed_form_flow(name):
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, GAUSS)
    eps = 1e-3
    x_eps, _ = ode_sample(sde, score_fn, X_T, eps=eps, denoise=False)
    expected = gaussian_flow(sde, X_T, 1.0, eps)
    torch.testing.assert_close(x_eps, expected, rtol=0, atol=1e-4)
    x0, _ = ode_sample(sde, score_fn, X_T, eps=eps)
    t_eps = torch.full((3,), eps, dtype=F64)
    torch.testing.assert_close(x0, tweedie_denoise(sde, score_fn, expected, t_eps), rtol=0,
                               atol=1e-4)
    # tight tolerances converge to the closed form
    tight, _ = solve_probability_flow(sde, score_fn, X_T, 1.0, eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tight, expected, rtol=0, atol=1e-8)


def test_gaussian_flow_pushes_the_prior_to_the_marginal():
    """Sanity of the closed form: it maps ``N(m(T) mu, v(T))`` onto ``N(m(eps) mu, v(eps))``."""
    sde = SDES["VP"]
    gen = torch.Generator().manual_seed(0)
    m1, s1 = (float(v) for v in sde.marginal_coeffs(torch.tensor([1.0], dtype=F64)))
    v1 = m1**2 * S0**2 + s1**2
    x_T = m1 * MU + math.sqrt(v1) * torch.randn(20_000, 2, generator=gen, dtype=F64)
    x = gaussian_flow(sde, x_T, 1.0, 1e-3)
    m, s = (float(v) for v in sde.marginal_coeffs(torch.tensor([1e-3], dtype=F64)))
    torch.testing.assert_close(x.std(0), torch.full((2,), math.sqrt(m**2 * S0**2 + s**2),
                                                    dtype=F64), rtol=0.02, atol=0)


def test_nfe_counts_every_score_call_and_the_denoising_one():
    sde = SDES["VP"]
    count = 0
    base = mixture_score_fn(sde, MIX)

    def counting(x, t):
        nonlocal count
        count += 1
        return base(x, t)

    x_T = sde.prior_sampling((8, 2), torch.Generator().manual_seed(1), dtype=F64)
    x, nfe = ode_sample(sde, counting, x_T)
    assert isinstance(nfe, int) and nfe > 0
    assert nfe == count
    count = 0
    x_raw, nfe_raw = ode_sample(sde, counting, x_T, denoise=False)
    assert nfe_raw == nfe - 1 == count
    t_eps = torch.full((8,), 1e-3, dtype=F64)
    torch.testing.assert_close(x, tweedie_denoise(sde, base, x_raw, t_eps), rtol=0, atol=0)


def test_deterministic_given_the_prior_draw():
    sde = SDES["VE"]
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((16, 2), torch.Generator().manual_seed(2), dtype=F64)
    a, nfe_a = ode_sample(sde, score_fn, x_T)
    b, nfe_b = ode_sample(sde, score_fn, x_T.clone())
    assert torch.equal(a, b) and nfe_a == nfe_b


@pytest.mark.parametrize(("method", "evals_per_step"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_nfe(method, evals_per_step):
    sde = SDES["VP"]
    _, nfe = ode_sample(sde, mixture_score_fn(sde, GAUSS), X_T, method=method, num_steps=7)
    assert nfe == 7 * evals_per_step + 1


def test_fixed_step_without_num_steps_raises():
    sde = SDES["VP"]
    with pytest.raises(ValueError, match="num_steps"):
        ode_sample(sde, mixture_score_fn(sde, GAUSS), X_T, method="rk4")


def _slope(steps, errors):
    """Least-squares slope of log(error) against log(step size)."""
    x = torch.log(1.0 / torch.tensor(steps, dtype=F64))
    y = torch.log(torch.tensor(errors, dtype=F64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x**2).sum())


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
@pytest.mark.parametrize(("method", "steps", "order"), [
    ("euler", [40, 80, 160, 320], 1),
    ("midpoint", [20, 40, 80, 160], 2),
    ("rk4", [10, 20, 40, 80], 4),
])
def test_fixed_step_convergence_order(name, method, steps, order):
    """Error against the closed-form flow (T to 1e-3) falls as ``h^order``: fitted slope +-15%."""
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, GAUSS)
    exact = gaussian_flow(sde, X_T, 1.0, 1e-3)
    errors = []
    for n in steps:
        x, _ = solve_probability_flow(sde, score_fn, X_T, 1.0, 1e-3, method=method, num_steps=n)
        errors.append(float((x - exact).abs().max()))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    slope = _slope(steps, errors)
    assert abs(slope - order) < 0.15 * order + 0.1, (slope, errors)
