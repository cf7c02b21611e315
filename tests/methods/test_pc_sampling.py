"""Predictor-corrector sampling with the exact score of a Gaussian mixture.

The mixture's perturbed score is closed form, so a correct sampler must reproduce the mixture:
its weight (within Monte-Carlo error) and each mode's mean and std (within Monte-Carlo error plus
the sampler's discretisation bias, which was measured with 10x more samples to be below 1% on the
weight, 0.01 on the means and 3.5% on the stds for the settings below; with the Langevin
corrector ~2.5% of that std bias is its own stationary inflation, exact in
``test_langevin_corrector_stationary_variance``). Single steps and the
correctors' stationary laws are checked against exact formulas.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, pc_sample, tweedie_denoise, uniform_time_grid
from scoresde.core._tensor import randn_like
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.methods.sampling import (
    CORRECTORS,
    PREDICTORS,
    ancestral_sampling,
    annealed_langevin,
    euler_maruyama,
    langevin,
    reverse_diffusion,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}

# weights (0.3, 0.7); zero overall mean; modes 4.5 apart with stds 0.3 and 0.5
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)


def check(x, check_mixture, mix=MIX):
    """Sampler bias allowances: measured below 1% (weight), 0.01 (means), 3.5% (stds)."""
    check_mixture(x, mix, weight_bias=0.01, mean_bias=0.02, std_bias=0.04)


COMBOS = [
    ("VE", "reverse_diffusion", "langevin", {}),
    ("VE", "euler_maruyama", "none", {}),
    ("VE", "ancestral_sampling", "none", {}),
    ("VE", "reverse_diffusion", "none", {}),
    ("VE", "none", "ald", {"snr": 0.5, "n_steps": 2, "num_steps": 300}),
    ("VP", "reverse_diffusion", "langevin", {}),
    ("VP", "euler_maruyama", "none", {}),
    ("VP", "ancestral_sampling", "none", {}),
    ("VP", "reverse_diffusion", "none", {}),
    ("subVP", "reverse_diffusion", "langevin", {}),
    ("subVP", "euler_maruyama", "none", {}),
    ("subVP", "ancestral_sampling", "none", {}),
    ("VE", "probability_flow", "none", {}),
    ("VP", "probability_flow", "langevin", {}),
    ("subVP", "probability_flow", "none", {}),
]


@pytest.mark.parametrize(("name", "predictor", "corrector", "kwargs"), COMBOS,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in COMBOS])
def test_pc_samples_the_mixture(name, predictor, corrector, kwargs, check_mixture):
    sde = SDES[name]
    gen = torch.Generator().manual_seed(0)
    n = 4000
    x_T = sde.prior_sampling((n, 2), gen, dtype=F64)
    kw = {"num_steps": 500, "snr": 0.16, **kwargs}
    x = pc_sample(sde, mixture_score_fn(sde, MIX), x_T, predictor=predictor, corrector=corrector,
                  generator=gen, **kw)
    assert x.shape == (n, 2) and x.dtype == F64
    check(x, check_mixture)


def test_mixture_check_has_power(check_mixture):
    """The moment check rejects plausible sampler failures: wrong weights, too much noise."""
    gen = torch.Generator().manual_seed(0)
    good = MIX.sample(4000, generator=gen)
    check(good, check_mixture)
    swapped = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), MIX.means, MIX.stds)
    wide = GaussianMixture(MIX.weights, MIX.means, MIX.stds * 1.1)
    for bad in (swapped, wide):
        with pytest.raises(AssertionError):
            check(bad.sample(4000, generator=gen), check_mixture)


# --------------------------------------------------------------------------------------------
# Single steps against their formulas
# --------------------------------------------------------------------------------------------


def affine_score(x, t):
    return -(x - 0.2) / (1 + t[:, None]) ** 2


STEP_T = torch.tensor([0.9, 0.5, 0.02], dtype=F64)
STEP_T_NEXT = torch.tensor([0.85, 0.49, 0.001], dtype=F64)
STEP_X = torch.tensor([[1.0, -2.0], [0.3, 0.0], [-0.5, 4.0]], dtype=F64)


def step_noise(seed):
    return randn_like(STEP_X, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_euler_maruyama_step(name):
    sde = SDES[name]
    x, x_mean = euler_maruyama(sde, affine_score, STEP_X, STEP_T, STEP_T_NEXT,
                               generator=torch.Generator().manual_seed(3))
    f, g = sde.sde(STEP_X, STEP_T)
    dt = (STEP_T - STEP_T_NEXT)[:, None]
    expected_mean = STEP_X - (f - g[:, None] ** 2 * affine_score(STEP_X, STEP_T)) * dt
    torch.testing.assert_close(x_mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x, x_mean + g[:, None] * dt.sqrt() * step_noise(3), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_reverse_diffusion_step(name):
    """Eq. 47 between the exact noise levels: VE ``x + (s_t^2 - s_n^2) score``; VP DDPM-like."""
    sde = SDES[name]
    x, x_mean = reverse_diffusion(sde, affine_score, STEP_X, STEP_T, STEP_T_NEXT,
                                  generator=torch.Generator().manual_seed(4))
    score = affine_score(STEP_X, STEP_T)
    m_t, s_t = sde.marginal_coeffs(STEP_T)
    m_n, s_n = sde.marginal_coeffs(STEP_T_NEXT)
    if name == "VE":
        G2 = s_t**2 - s_n**2
        expected_mean = STEP_X + G2[:, None] * score
    else:
        G2 = 1 - (m_t / m_n) ** 2
        expected_mean = (2 - (1 - G2).sqrt())[:, None] * STEP_X + G2[:, None] * score
    torch.testing.assert_close(x_mean, expected_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x, x_mean + G2.sqrt()[:, None] * step_noise(4), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_ancestral_step_mean_is_the_exact_posterior_mean(name):
    """Gaussian data: ``x_mean = E[x_{t'} | x_t]`` exactly; the noise has DDPM's variance.

    With ``x_t = a x_{t'} + sqrt(w) z``, ``a = m_t / m_{t'}``, ``w = s_t^2 - a^2 s_{t'}^2`` and
    ``x_{t'} ~ N(m_{t'} mu, V I)``:
    ``E[x_{t'} | x_t] = m_{t'} mu + a V / (a^2 V + w) (x_t - m_t mu)``.
    """
    sde = SDES[name]
    mu, s0 = torch.tensor([0.4, -0.9], dtype=F64), 0.6
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s0], dtype=F64))
    x, x_mean = ancestral_sampling(sde, mixture_score_fn(sde, gauss), STEP_X, STEP_T, STEP_T_NEXT,
                                   generator=torch.Generator().manual_seed(5))
    m_t, s_t = (v[:, None] for v in sde.marginal_coeffs(STEP_T))
    m_n, s_n = (v[:, None] for v in sde.marginal_coeffs(STEP_T_NEXT))
    a = m_t / m_n
    w = s_t**2 - a**2 * s_n**2
    V = m_n**2 * s0**2 + s_n**2
    expected = m_n * mu + a * V / (a**2 * V + w) * (STEP_X - m_t * mu)
    torch.testing.assert_close(x_mean, expected, rtol=1e-10, atol=1e-12)
    std = (w * s_n**2 / s_t**2).sqrt()
    torch.testing.assert_close(x, x_mean + std * step_noise(5), rtol=1e-10, atol=1e-12)


def _gaussian_stationary(sde, corrector, t_val, snr, steps, seed=0, n=20_000):
    mu, s0 = torch.tensor([0.5, -1.0], dtype=F64), 1.0
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s0], dtype=F64))
    score_fn = mixture_score_fn(sde, gauss)
    t = torch.full((n,), t_val, dtype=F64)
    m, s = (float(v[0]) for v in sde.marginal_coeffs(t[:1]))
    v = m**2 * s0**2 + s**2
    gen = torch.Generator().manual_seed(seed)
    x = m * mu + math.sqrt(v) * torch.randn(n, 2, generator=gen, dtype=F64)
    for _ in range(steps):
        x, _ = corrector(sde, score_fn, x, t, snr=snr, generator=gen)
    emp_var = float(((x - x.mean(0)) ** 2).mean())
    return x, m * mu, v, s, emp_var


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_langevin_corrector_stationary_variance(name):
    """On ``N(c, v I)`` the batch-norm step ``eps = 2 alpha r^2 v^2 / V`` has stationary ``V``.

    ULA ``x' = x + eps score + sqrt(2 eps) z`` keeps ``V = v / (1 - eps / (2 v))``; with the
    official step-size rule that solves to ``V = v (1 + alpha r^2)``: 25% too wide at r = 0.5.
    """
    sde, snr, t_val = SDES[name], 0.5, 0.4
    x, center, v, _, emp_var = _gaussian_stationary(sde, langevin, t_val, snr, steps=60)
    alpha = float(sde.langevin_alpha(torch.tensor([t_val], dtype=F64))[0])
    expected = v * (1 + alpha * snr**2)
    se = math.sqrt(2 / x.numel())
    assert abs(emp_var / expected - 1) < 4 * se, (emp_var, expected, v)
    assert float((x.mean(0) - center).abs().max()) < 4 * math.sqrt(expected / x.shape[0])


def test_annealed_langevin_stationary_variance():
    """ALD step ``eps = 2 (r s(t))^2``: stationary ``V = v / (1 - r^2 s^2 / v)`` on ``N(c, v)``."""
    sde, snr = SDES["VE"], 0.5
    x, center, v, s, emp_var = _gaussian_stationary(sde, annealed_langevin, 0.5, snr, steps=150)
    expected = v / (1 - snr**2 * s**2 / v)
    se = math.sqrt(2 / x.numel())
    assert abs(emp_var / expected - 1) < 4 * se, (emp_var, expected, v)
    assert float((x.mean(0) - center).abs().max()) < 4 * math.sqrt(expected / x.shape[0])


# --------------------------------------------------------------------------------------------
# The loop: order of calls, NFE, options, reproducibility
# --------------------------------------------------------------------------------------------


def test_loop_calls_predictor_then_corrector_on_the_grid():
    sde = SDES["VP"]
    calls = []

    def predictor(sde_, score_fn, x, t, t_next, *, generator=None):
        calls.append(("P", float(t[0]), float(t_next[0])))
        return x + 1, x

    def corrector(sde_, score_fn, x, t, *, snr, generator=None):
        calls.append(("C", float(t[0]), snr))
        return x * 2, x

    grid = torch.tensor([1.0, 0.6, 0.25, 0.01], dtype=F64)
    projected = []

    def project(x, t):
        projected.append(None if t is None else float(t[0]))
        return x

    x_T = torch.zeros(3, 2, dtype=F64)
    x = pc_sample(sde, lambda x, t: torch.zeros_like(x), x_T, predictor=predictor,
                  corrector=corrector, n_steps=2, snr=0.3, time_grid=grid, denoise=False,
                  project=project)
    expected = []
    for hi, lo in itertools.pairwise(grid.tolist()):
        expected += [("P", hi, lo), ("C", lo, 0.3), ("C", lo, 0.3)]
    assert calls == expected
    assert projected == [lo for lo in grid[1:].tolist() for _ in range(3)]
    assert torch.equal(x, torch.full_like(x_T, ((1 * 4 + 1) * 4 + 1) * 4.0))


@pytest.mark.parametrize(("n_steps", "denoise"), [(1, True), (2, False), (0, True)])
def test_nfe_is_num_steps_times_one_plus_n_steps_plus_denoise(n_steps, denoise):
    sde = SDES["VE"]
    count = 0
    score = mixture_score_fn(sde, MIX)

    def counting(x, t):
        nonlocal count
        count += 1
        return score(x, t)

    pc_sample(sde, counting, sde.prior_sampling((5, 2), torch.Generator().manual_seed(0)),
              num_steps=7, n_steps=n_steps, denoise=denoise,
              generator=torch.Generator().manual_seed(1))
    assert count == 7 * (1 + n_steps) + int(denoise)


def test_default_grid_is_uniform_from_t_max_to_eps():
    sde = VESDE(N=10)
    seen = []

    def predictor(sde_, score_fn, x, t, t_next, *, generator=None):
        seen.append((float(t[0]), float(t_next[0])))
        return x, x

    pc_sample(sde, lambda x, t: x, torch.zeros(2, 2), predictor=predictor, corrector="none",
              eps=0.1, denoise=False)
    grid = torch.linspace(1.0, 0.1, 11).tolist()
    assert seen == list(itertools.pairwise(grid))
    torch.testing.assert_close(uniform_time_grid(4, eps=0.2, dtype=F64),
                               torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=F64))
    with pytest.raises(ValueError):
        uniform_time_grid(0)
    with pytest.raises(ValueError):
        uniform_time_grid(3, eps=1.0)


def test_denoise_is_one_tweedie_step_on_the_undenoised_samples():
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((6, 2), torch.Generator().manual_seed(0), dtype=F64)
    kw = {"num_steps": 20, "eps": 1e-3}
    raw = pc_sample(sde, score_fn, x_T, denoise=False, generator=torch.Generator().manual_seed(1),
                    **kw)
    den = pc_sample(sde, score_fn, x_T, denoise=True, generator=torch.Generator().manual_seed(1),
                    **kw)
    t_eps = torch.full((6,), 1e-3, dtype=F64)
    torch.testing.assert_close(den, tweedie_denoise(sde, score_fn, raw, t_eps), rtol=0, atol=0)


def test_same_seed_same_samples_and_callables_equal_names():
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((50, 2), torch.Generator().manual_seed(0), dtype=F64)

    def run(seed, predictor="euler_maruyama", corrector="langevin"):
        return pc_sample(sde, score_fn, x_T, predictor=predictor, corrector=corrector,
                         num_steps=30, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(run(1, euler_maruyama, langevin), a)
    assert PREDICTORS["ancestral_sampling"] is ancestral_sampling
    assert CORRECTORS["ald"] is annealed_langevin


def test_unknown_names_raise_with_the_choices():
    sde = SDES["VP"]
    x_T = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"predictor.*euler_maruyama"):
        pc_sample(sde, lambda x, t: x, x_T, predictor="heun")
    with pytest.raises(ValueError, match=r"corrector.*langevin"):
        pc_sample(sde, lambda x, t: x, x_T, corrector="hmc")


# Recorded with this implementation (torch 2.13, CPU, float64): a regression guard for the full
# loop (prior draw, predictor, corrector, denoising), not an independent truth.
REGRESSION = {
    ("VP", "reverse_diffusion", "langevin"): [
        [0.414826101, 0.068067335], [1.909462914, -0.642493705], [0.907667071, -1.690192005]],
    ("VE", "ancestral_sampling", "ald"): [
        [0.80687162, -0.661840249], [1.664817096, -1.107497738], [-2.864041335, 1.091747879]],
    ("subVP", "euler_maruyama", "none"): [
        [1.04062289, -0.890399479], [2.736590726, -1.35766081], [-3.039806784, 0.683751489]],
}


@pytest.mark.parametrize(("name", "predictor", "corrector"), list(REGRESSION))
def test_seeded_regression_values(name, predictor, corrector):
    sde = SDES[name]
    gen = torch.Generator().manual_seed(1234)
    x_T = sde.prior_sampling((3, 2), gen, dtype=F64)
    x = pc_sample(sde, mixture_score_fn(sde, MIX), x_T, predictor=predictor, corrector=corrector,
                  num_steps=20, generator=gen)
    expected = torch.tensor(REGRESSION[(name, predictor, corrector)], dtype=F64)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
