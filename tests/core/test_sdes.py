"""The forward SDEs against the official reference vectors and against closed-form answers.

Every number here is checked against something computed independently: the official code's outputs
(``shared/reference/sde.pt``), hand-written formulas of the paper (appendix B), a Monte-Carlo
simulation of the forward SDE, or the ODEs that the moments of a linear SDE obey.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scoresde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    probability_flow_drift,
    reverse_discretize,
    reverse_sde,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
BETA_MIN, BETA_MAX, N = 0.1, 20.0, 1000


def make_sde(name: str, **kwargs):
    return {"VE": VESDE, "VP": VPSDE, "subVP": SubVPSDE}[name](**kwargs)


def sigma_ve(t, sigma_min=0.01, sigma_max=50.0):
    return sigma_min * (sigma_max / sigma_min) ** t


def alpha_bar(t):
    """VP/sub-VP ``m(t)^2 = exp(-int_0^t beta) = exp(-(b1 - b0) t^2 / 2 - b0 t)``, by hand."""
    return torch.exp(-0.5 * (BETA_MAX - BETA_MIN) * t**2 - BETA_MIN * t)


def closed_form_coeffs(name: str, t):
    """``(m(t), s(t))`` of appendix B, written out independently of the package."""
    if name == "VE":
        return torch.ones_like(t), sigma_ve(t)
    ab = alpha_bar(t)
    return ab.sqrt(), ((1 - ab).sqrt() if name == "VP" else 1 - ab)


# --------------------------------------------------------------------------------------------
# The official reference vectors (float32 on both sides: agreement to float32 rounding)
# --------------------------------------------------------------------------------------------

REF_TOL = {"rtol": 1e-5, "atol": 1e-5}


def ref_sde(ref, name):
    return make_sde(name, **ref[name]["params"])


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_reference_sde_coefficients(sde_reference, name):
    ref, x, t = sde_reference[name], sde_reference["x"], sde_reference["t"]
    sde = ref_sde(sde_reference, name)
    assert ref["T"] == sde.T
    drift, diffusion = sde.sde(x, t)
    torch.testing.assert_close(drift, ref["sde_drift"], **REF_TOL)
    torch.testing.assert_close(diffusion, ref["sde_diffusion"], **REF_TOL)
    torch.testing.assert_close(sde.diffusion(t), ref["sde_diffusion"], **REF_TOL)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_reference_marginal_prob(sde_reference, name):
    ref, x, t = sde_reference[name], sde_reference["x"], sde_reference["t"]
    mean, std = ref_sde(sde_reference, name).marginal_prob(x, t)
    assert mean.shape == x.shape and std.shape == t.shape
    torch.testing.assert_close(mean, ref["marginal_mean"], **REF_TOL)
    # The official VP std sqrt(1 - exp(2 lmc)) loses ~1e-6 to cancellation at t = 0.001 in float32
    # (ours uses expm1): an absolute difference well inside atol.
    torch.testing.assert_close(std, ref["marginal_std"], **REF_TOL)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_reference_prior_logp(sde_reference, name):
    ref, x = sde_reference[name], sde_reference["x"]
    sde = ref_sde(sde_reference, name)
    z = ref["z"]
    expected_z = x * (sde.prior_std if name == "VE" else 1.0)
    torch.testing.assert_close(z, expected_z)
    torch.testing.assert_close(sde.prior_logp(z), ref["prior_logp"], rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_reference_discretize(sde_reference, name):
    ref, x, t = sde_reference[name], sde_reference["x"], sde_reference["t"]
    f, G = ref_sde(sde_reference, name).discretize(x, t)
    torch.testing.assert_close(f, ref["discretize_f"], **REF_TOL)
    torch.testing.assert_close(G, ref["discretize_G"], **REF_TOL)


def test_reference_discrete_tables(sde_reference):
    ve, vp = ref_sde(sde_reference, "VE"), ref_sde(sde_reference, "VP")
    ve_sigmas = sde_reference["VE"]["discrete_sigmas"]
    torch.testing.assert_close(ve.discrete_sigmas, ve_sigmas, **REF_TOL)
    for key in ("discrete_betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(vp, key), sde_reference["VP"][key], **REF_TOL)


# --------------------------------------------------------------------------------------------
# Closed forms of appendix B
# --------------------------------------------------------------------------------------------

TIMES = torch.tensor([1e-5, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=F64)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_marginal_coeffs_closed_form(name):
    sde = make_sde(name)
    m, s = sde.marginal_coeffs(TIMES)
    m_ref, s_ref = closed_form_coeffs(name, TIMES)
    torch.testing.assert_close(m, m_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_sde_coefficients_closed_form(name):
    sde = make_sde(name)
    x = torch.tensor([[1.0, -2.0]], dtype=F64).expand(len(TIMES), 2)
    drift, g = sde.sde(x, TIMES)
    beta = BETA_MIN + TIMES * (BETA_MAX - BETA_MIN)
    if name == "VE":
        g_ref = sigma_ve(TIMES) * math.sqrt(2 * math.log(50.0 / 0.01))
        drift_ref = torch.zeros_like(x)
    else:
        drift_ref = -0.5 * beta[:, None] * x
        g2 = beta if name == "VP" else beta * (1 - alpha_bar(TIMES) ** 2)
        g_ref = g2.sqrt()
    torch.testing.assert_close(drift, drift_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_moments_obey_the_linear_sde_odes(name):
    """For ``dx = a(t) x dt + g dw``: ``dm/dt = a m`` and ``d s^2/dt = 2 a s^2 + g^2``.

    This ties ``sde()`` to ``marginal_coeffs()`` with no reference to either's formula.
    """
    sde = make_sde(name)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95], dtype=F64)
    h = 1e-6
    m, s = sde.marginal_coeffs(t)
    m_p, s_p = sde.marginal_coeffs(t + h)
    m_m, s_m = sde.marginal_coeffs(t - h)
    dm = (m_p - m_m) / (2 * h)
    ds2 = (s_p**2 - s_m**2) / (2 * h)
    drift, g = sde.sde(torch.ones(len(t), 1, dtype=F64), t)
    a = drift[:, 0]
    torch.testing.assert_close(dm, a * m, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ds2, 2 * a * s**2 + g**2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("name", "t_end"), [("VE", 0.3), ("VP", 0.3), ("subVP", 0.3), ("VE", 0.8)])
def test_marginal_prob_matches_forward_simulation(name, t_end):
    """Euler-Maruyama paths of the forward SDE from ``x0`` have the kernel's mean and std.

    20k paths x 4 coordinates, 500 steps (coefficients at the step midpoints); the time
    discretisation bias is far below the tolerance of 4 standard errors (plus 0.3% on the std).
    At t = 0.3 the VP and sub-VP stds (0.57 vs 0.33) are many tolerances apart.
    """
    sde = make_sde(name)
    gen = torch.Generator().manual_seed(11)
    n, steps = 20_000, 500
    x0 = torch.tensor([1.5, -2.0, 0.5, 0.0], dtype=F64)
    x = x0.expand(n, 4).clone()
    ts = torch.linspace(0.0, t_end, steps + 1, dtype=F64)
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        tm = torch.full((n,), float((ts[i] + ts[i + 1]) / 2), dtype=F64)
        drift, g = sde.sde(x, tm)
        noise = torch.randn(x.shape, generator=gen, dtype=F64)
        x = x + drift * dt + g[:, None] * dt.sqrt() * noise
    mean, std = sde.marginal_prob(x0[None], torch.tensor([t_end], dtype=F64))
    std = float(std)
    emp_mean = x.mean(0)
    assert torch.all((emp_mean - mean[0]).abs() < 4 * std / math.sqrt(n)), (emp_mean, mean)
    emp_std = float((x - emp_mean).pow(2).sum() / (4 * (n - 1))) ** 0.5
    rel_se = 1 / math.sqrt(2 * 4 * n)
    assert abs(emp_std / std - 1) < 4 * rel_se + 3e-3, (emp_std, std)


# --------------------------------------------------------------------------------------------
# Prior
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "prior_std"), [("VE", 50.0), ("VP", 1.0), ("subVP", 1.0)])
def test_prior_logp_is_the_normal_log_density(name, prior_std):
    sde = make_sde(name)
    assert sde.prior_std == prior_std
    gen = torch.Generator().manual_seed(0)
    for shape in [(5, 2), (3, 3, 4, 4)]:
        z = torch.randn(shape, generator=gen, dtype=F64) * prior_std * 1.3
        normal = torch.distributions.Normal(torch.zeros((), dtype=F64), prior_std)
        expected = normal.log_prob(z).reshape(shape[0], -1)
        torch.testing.assert_close(sde.prior_logp(z), expected.sum(1), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_prior_density_integrates_to_one(name):
    sde = make_sde(name)
    L = 10 * sde.prior_std
    grid = torch.linspace(-L, L, 1601, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    dens = sde.prior_logp(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp().reshape(xx.shape)
    mass = torch.trapezoid(torch.trapezoid(dens, grid, dim=1), grid)
    assert abs(float(mass) - 1.0) < 1e-8


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_prior_sampling(name):
    sde = make_sde(name)
    a = sde.prior_sampling((50_000, 2), torch.Generator().manual_seed(5), dtype=F64)
    b = sde.prior_sampling((50_000, 2), torch.Generator().manual_seed(5), dtype=F64)
    c = sde.prior_sampling((50_000, 2), torch.Generator().manual_seed(6), dtype=F64)
    assert a.shape == (50_000, 2) and a.dtype == F64
    assert torch.equal(a, b) and not torch.equal(a, c)
    rel_se = 1 / math.sqrt(2 * a.numel())
    assert abs(float(a.std()) / sde.prior_std - 1) < 4 * rel_se
    assert abs(float(a.mean())) < 4 * sde.prior_std / math.sqrt(a.numel())


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_shape_generic(name):
    """(B, C, H, W) data gives the same numbers as the same data flattened to (B, D)."""
    sde = make_sde(name)
    gen = torch.Generator().manual_seed(1)
    x4 = torch.randn(4, 3, 4, 4, generator=gen, dtype=F64)
    x2 = x4.reshape(4, -1)
    t = torch.tensor([0.001, 0.3, 0.6, 1.0], dtype=F64)
    t_next = t - 0.001

    def flat(v):
        return v.reshape(v.shape[0], -1) if v.ndim > 1 else v

    for fn in (
        lambda x: sde.sde(x, t),
        lambda x: sde.marginal_prob(x, t),
        lambda x: sde.discretize(x, t),
        lambda x: sde.discretize(x, t, t_next),
        lambda x: (sde.prior_logp(x),),
    ):
        for a, b in zip(fn(x4), fn(x2), strict=True):
            torch.testing.assert_close(flat(a), b, rtol=0, atol=0)
    assert sde.sde(x4, t)[0].shape == x4.shape


# --------------------------------------------------------------------------------------------
# Discretisations
# --------------------------------------------------------------------------------------------

T_PAIRS = (
    torch.tensor([1.0, 0.7, 0.31, 0.02, 0.002], dtype=F64),
    torch.tensor([0.99, 0.5, 0.3, 0.001, 0.0], dtype=F64),
)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_discretize_with_t_next_is_the_exact_transition(name):
    sde = make_sde(name)
    t, t_next = T_PAIRS
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64).expand(len(t), 3)
    f, G = sde.discretize(x, t, t_next)
    if name == "VE":
        var = sigma_ve(t) ** 2 - sigma_ve(t_next) ** 2
        torch.testing.assert_close(G**2, var, rtol=1e-10, atol=0)
        torch.testing.assert_close(f, torch.zeros_like(x), rtol=0, atol=0)
    elif name == "VP":
        beta = 1 - alpha_bar(t) / alpha_bar(t_next)
        torch.testing.assert_close(G**2, beta, rtol=1e-10, atol=0)
        torch.testing.assert_close(f, (1 - beta).sqrt()[:, None] * x - x, rtol=1e-10, atol=1e-14)
    else:  # generic Euler-Maruyama with dt = t - t_next
        drift, g = sde.sde(x, t)
        dt = t - t_next
        torch.testing.assert_close(f, drift * dt[:, None], rtol=1e-12, atol=0)
        torch.testing.assert_close(G, g * dt.sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_composed_transitions_give_the_marginal(name):
    """Chaining ``discretize`` steps on any grid from 0 to t reproduces ``N(m(t) x0, s(t)^2)``.

    Each step is ``x <- x + f + G z``; its mean factor ``1 + f/x`` and variance ``G^2`` compose
    to ``m(t)`` and ``s(t)^2`` exactly (VE: the increments telescope; VP: DDPM's variance
    recursion).
    """
    sde = make_sde(name)
    grid = torch.tensor([0.0, 0.013, 0.05, 0.2, 0.21, 0.5, 0.77, 0.9], dtype=F64)
    one = torch.ones(1, 1, dtype=F64)
    mean_factor, var = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    for lo, hi in itertools.pairwise(grid):
        f, G = sde.discretize(one, hi.reshape(1), lo.reshape(1))
        a = 1 + f[:, 0]
        mean_factor, var = a * mean_factor, a**2 * var + G**2
    m, s = sde.marginal_coeffs(grid[-1:])
    if name == "VE":  # starts at sigma(0) = sigma_min, not 0
        var = var + sde.sigma_min**2
    torch.testing.assert_close(mean_factor, m, rtol=1e-12, atol=0)
    torch.testing.assert_close(var, s**2, rtol=1e-10, atol=0)


def test_ve_discretize_official_index_convention():
    """Index ``floor(t (N - 1))`` into the float32 SMLD table, with ``sigma_{-1} = 0``.

    The expected values use the package's own table (checked against the formula in
    ``test_discrete_tables_by_hand``): the difference of neighbouring squares amplifies the
    table's float32 rounding ~60x, which is the official behaviour and not under test here.
    """
    sde = VESDE()
    sigmas = sde.discrete_sigmas.double()
    t = torch.tensor([0.0, 0.0005, 0.25, 0.5, 1.0], dtype=F64)
    idx = [0, 0, 249, 499, 999]  # floor(t * 999)
    f, G = sde.discretize(torch.ones(5, 2, dtype=F64), t)
    expected = [sigmas[0]] * 2 + [(sigmas[i] ** 2 - sigmas[i - 1] ** 2).sqrt() for i in idx[2:]]
    torch.testing.assert_close(G, torch.stack(expected), rtol=1e-12, atol=0)
    assert torch.equal(f, torch.zeros_like(f))


def test_vp_discretize_official_index_convention():
    sde = VPSDE()
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    beta = betas[[0, 249, 499, 999]]
    x = torch.tensor([[2.0, -1.0]], dtype=F64).expand(4, 2)
    f, G = sde.discretize(x, t)
    torch.testing.assert_close(G, beta.sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(f, ((1 - beta).sqrt() - 1)[:, None] * x, rtol=1e-5, atol=1e-12)


def test_discrete_tables_by_hand():
    ve, vp = VESDE(), VPSDE()
    torch.testing.assert_close(
        ve.discrete_sigmas.double(),
        torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=F64)),
        rtol=1e-6, atol=0,
    )
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    torch.testing.assert_close(vp.discrete_betas.double(), betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(vp.alphas.double(), 1 - betas, rtol=1e-6, atol=0)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(vp.alphas_cumprod.double(), alphas_cumprod, rtol=1e-5, atol=0)
    # the discrete scales are the continuous sigma(t) at t_i = i / (N - 1)
    t_i = torch.arange(N, dtype=F64) / (N - 1)
    torch.testing.assert_close(ve.discrete_sigmas.double(), sigma_ve(t_i), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# Reverse-time processes
# --------------------------------------------------------------------------------------------


def affine_score(x, t):
    """An arbitrary score-shaped function of ``(x, t)``: ``-(x - 0.3) / (1 + t) + 0.1``."""
    return -(x - 0.3) / (1 + t.reshape(-1, *([1] * (x.ndim - 1)))) + 0.1


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_reverse_sde_and_probability_flow_algebra(name):
    sde = make_sde(name)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, 3, generator=gen, dtype=F64)
    t = torch.tensor([0.01, 0.3, 0.6, 1.0], dtype=F64)
    f, g = sde.sde(x, t)
    score = affine_score(x, t)
    g2 = (g**2)[:, None, None]

    drift, diff = reverse_sde(sde, affine_score, x, t)
    torch.testing.assert_close(drift, f - g2 * score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diff, g, rtol=0, atol=0)

    drift, diff = reverse_sde(sde, affine_score, x, t, probability_flow=True)
    torch.testing.assert_close(drift, f - 0.5 * g2 * score, rtol=1e-12, atol=1e-12)
    assert torch.equal(diff, torch.zeros_like(g))
    pf_drift = probability_flow_drift(sde, affine_score, x, t)
    torch.testing.assert_close(pf_drift, drift, rtol=0, atol=0)

    for t_next in (None, t - 0.005):
        fd, G = sde.discretize(x, t, t_next)
        G2 = (G**2)[:, None, None]
        rev_f, rev_G = reverse_discretize(sde, affine_score, x, t, t_next)
        torch.testing.assert_close(rev_f, fd - G2 * score, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rev_G, G, rtol=0, atol=0)
        rev_f, rev_G = reverse_discretize(sde, affine_score, x, t, t_next, probability_flow=True)
        torch.testing.assert_close(rev_f, fd - 0.5 * G2 * score, rtol=1e-12, atol=1e-12)
        assert torch.equal(rev_G, torch.zeros_like(G))


# --------------------------------------------------------------------------------------------
# Langevin constants (network labels and stds: tests/core/test_score_model.py)
# --------------------------------------------------------------------------------------------


def test_langevin_alpha():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    assert torch.equal(VESDE().langevin_alpha(t), torch.ones_like(t))
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    for sde in (VPSDE(), SubVPSDE()):
        alpha = sde.langevin_alpha(t)
        assert alpha.dtype == F64
        torch.testing.assert_close(alpha, 1 - betas[[0, 249, 499, 999]], rtol=1e-6, atol=0)
