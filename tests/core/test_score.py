"""The network-to-score boundary (``make_score_fn``) and Tweedie's formula."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import Recorder
from scoresde import VESDE, VPSDE, SubVPSDE, make_score_fn, tweedie_denoise
from scoresde.core.mixture import GaussianMixture, mixture_score_fn

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
BETA_MIN, BETA_MAX, N = 0.1, 20.0, 1000




def alpha_bar(t):
    return torch.exp(-0.5 * (BETA_MAX - BETA_MIN) * t**2 - BETA_MIN * t)


X = torch.tensor([[[0.5, -1.0], [2.0, 0.0]], [[1.0, 1.0], [-3.0, 0.25]], [[0.0, 4.0], [1.0, -1.0]]],
                 dtype=F64)  # (B=3, 2, 2)
T_GRID = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
T_CONT = torch.tensor([1e-3, 0.42, 1.0], dtype=F64)


def out(x):
    return 3 * x + 0.5


def test_ve_continuous_labels_sigma_and_returns_output():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 0.01 * 5000.0**T_CONT, rtol=1e-12, atol=0)
    assert torch.equal(score, out(X))


def test_ve_discrete_labels_ncsn_index():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE(), continuous=False)
    score = score_fn(X, T_GRID)
    assert model.labels[0].tolist() == [999, round(0.5 * 999), 0]
    assert torch.equal(score, out(X))


def test_vp_continuous_labels_999t_and_eps_parametrization():
    model = Recorder()
    score_fn = make_score_fn(model, VPSDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 999 * T_CONT, rtol=1e-15, atol=0)
    std = (1 - alpha_bar(T_CONT)).sqrt()
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-10, atol=0)


def test_subvp_continuous_uses_its_own_std():
    model = Recorder()
    score_fn = make_score_fn(model, SubVPSDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 999 * T_CONT, rtol=1e-15, atol=0)
    std = 1 - alpha_bar(T_CONT)  # sub-VP: s(t) = 1 - m(t)^2, not its square root
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-10, atol=0)


def test_subvp_discrete_raises():
    with pytest.raises(ValueError):
        score_fn = make_score_fn(Recorder(), SubVPSDE(), continuous=False)
        score_fn(X, T_GRID)


def test_vp_discrete_uses_ddpm_table():
    model = Recorder()
    sde = VPSDE()
    score_fn = make_score_fn(model, sde, continuous=False)
    i = torch.tensor([0, 123, 999])
    t = i.to(F64) / (N - 1)
    score = score_fn(X, t)
    torch.testing.assert_close(model.labels[0], i.to(F64), rtol=0, atol=1e-9)
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    std = (1 - torch.cumprod(1 - betas, 0)[i]).sqrt()
    # the table is float32 (as the official code): sqrt(1 - alpha_bar_0) = sqrt(beta_1) loses ~4e-4
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-3, atol=0)
    exact_table = (1 - sde.alphas_cumprod[i]).sqrt().double()  # the table's own values
    torch.testing.assert_close(score, -out(X) / exact_table[:, None, None], rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_explicit_parametrization_overrides_default(sde):
    std = sde.marginal_coeffs(T_CONT)[1][:, None, None]
    as_score = make_score_fn(Recorder(), sde, parametrization="score")(X, T_CONT)
    as_eps = make_score_fn(Recorder(), sde, parametrization="eps")(X, T_CONT)
    assert torch.equal(as_score, out(X))
    torch.testing.assert_close(as_eps, -out(X) / std, rtol=1e-12, atol=0)


def test_bad_parametrization_raises():
    with pytest.raises(ValueError, match="parametrization"):
        make_score_fn(Recorder(), VPSDE(), parametrization="x0")


def test_model_kwargs_are_forwarded_every_call():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE(), model_kwargs={"shift": 2.0})
    for _ in range(2):
        score = score_fn(X, T_CONT)
    assert model.kwargs == [{"shift": 2.0}, {"shift": 2.0}]
    assert torch.equal(score, out(X) + 2.0)


# --------------------------------------------------------------------------------------------
# Tweedie's formula
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_tweedie_is_the_gaussian_posterior_mean(sde):
    """Data ``N(mu, s0^2 I)``: ``E[x0 | x_t] = mu + m s0^2 / (m^2 s0^2 + s^2) (x_t - m mu)``."""
    mu = torch.tensor([0.7, -1.2, 0.1], dtype=F64)
    s0 = 0.6
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s0], dtype=F64))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=F64) * 2
    t = torch.tensor([1e-4, 0.1, 0.3, 0.7, 1.0], dtype=F64)
    m, s = sde.marginal_coeffs(t)
    m, s = m[:, None], s[:, None]
    expected = mu + m * s0**2 / (m**2 * s0**2 + s**2) * (x - m * mu)
    got = tweedie_denoise(sde, mixture_score_fn(sde, gauss), x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_tweedie_is_the_mixture_posterior_mean():
    """Two components: the posterior mean is the responsibility-weighted per-component one."""
    sde = VPSDE()
    w = torch.tensor([0.3, 0.7], dtype=F64)
    mus = torch.tensor([[-2.0, 1.0], [1.0, 0.5]], dtype=F64)
    sds = torch.tensor([0.3, 0.5], dtype=F64)
    mix = GaussianMixture(w, mus, sds)
    x = torch.tensor([[0.1, 0.2], [-1.0, 0.7], [0.5, 0.5]], dtype=F64)
    t = torch.tensor([0.05, 0.2, 0.4], dtype=F64)
    m, s = (v[:, None] for v in sde.marginal_coeffs(t))
    expected = torch.zeros_like(x)
    log_r = []
    for k in range(2):
        var = m**2 * sds[k] ** 2 + s**2
        log_r.append(math.log(w[k]) - ((x - m * mus[k]) ** 2).sum(1, keepdim=True) / (2 * var)
                     - torch.log(2 * math.pi * var))
    r = torch.softmax(torch.cat(log_r, 1), 1)
    for k in range(2):
        var = m**2 * sds[k] ** 2 + s**2
        expected += r[:, k:k + 1] * (mus[k] + m * sds[k] ** 2 / var * (x - m * mus[k]))
    got = tweedie_denoise(sde, mixture_score_fn(sde, mix), x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_tweedie_monte_carlo_orthogonality():
    """``D(x_t) = E[x0 | x_t]`` iff ``E[(x0 - D(x_t)) h(x_t)] = 0`` for every test function ``h``.

    1-D mixture data, VE at sigma = 0.59: checked for h = 1, x, tanh(2x), x^2 by Monte Carlo
    (4 standard errors); the naive denoiser ``D(x) = x`` fails the same check by ~100 se.
    """
    sde = VESDE()
    gen = torch.Generator().manual_seed(3)
    n = 200_000
    mix = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64),
                          torch.tensor([[-1.0], [1.5]], dtype=F64),
                          torch.tensor([0.3, 0.4], dtype=F64))
    x0 = mix.sample(n, generator=gen)
    t = torch.full((n,), 0.75, dtype=F64)
    s = sde.marginal_coeffs(t)[1][:, None]
    xt = x0 + s * torch.randn(n, 1, generator=gen, dtype=F64)
    denoised = tweedie_denoise(sde, mixture_score_fn(sde, mix), xt, t)
    tests = [torch.ones_like(xt), xt, torch.tanh(2 * xt), xt**2]
    for h in tests:
        prod = (x0 - denoised) * h
        assert abs(float(prod.mean())) < 4 * float(prod.std()) / math.sqrt(n)
    naive = (x0 - xt) * xt
    assert abs(float(naive.mean())) > 50 * float(naive.std()) / math.sqrt(n)
