"""The ``probability_flow`` predictor: the reverse-diffusion discretisation of the probability-flow
ODE (Song et al., 2021, eq. 13 with eq. 47; Table 1's "probability flow" row).

On Gaussian data ``N(mu, s0^2 I)`` the ODE's flow is affine and keeps each point's standardised
position: ``x_eps = m_eps mu + (std_eps / std_T) (x_T - m_T mu)`` with
``std_t^2 = m_t^2 s0^2 + s_t^2``. With the exact score, the predictor's error against this map
must halve as the number of steps doubles (first order).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, pc_sample
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.methods.sampling import PREDICTORS, check_sampler

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}
MU, S0 = torch.tensor([0.4, -0.9], dtype=F64), 0.6
GAUSS = GaussianMixture(torch.ones(1, dtype=F64), MU[None], torch.tensor([S0], dtype=F64))
EPS = 1e-3

probability_flow = PREDICTORS["probability_flow"]


def exact_flow_map(sde, x_T):
    """The probability-flow ODE's map from ``T`` to ``EPS`` for the Gaussian ``GAUSS``."""

    def mean_std(t):
        m, s = sde.marginal_coeffs(torch.tensor([t], dtype=F64))
        return m, (m**2 * S0**2 + s**2).sqrt()

    m_T, std_T = mean_std(sde.T)
    m_e, std_e = mean_std(EPS)
    return m_e * MU + std_e / std_T * (x_T - m_T * MU)


@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_converges_to_the_exact_flow_map_at_first_order(name):
    """Max error over 64 points at N = 100, 200, 400: log2 of successive ratios in [0.95, 1.1].

    Measured: VE 1.06, 1.03; VP 1.02, 1.01; sub-VP 1.01, 1.005 (errors at N = 400: 0.081, 0.095,
    0.0027). A zeroth-order or wrong-weight step (e.g. the full ``G^2 score`` without noise) fails.
    """
    sde = SDES[name]
    x_T = sde.prior_sampling((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    exact = exact_flow_map(sde, x_T)
    score_fn = mixture_score_fn(sde, GAUSS)
    errors = []
    for n in (100, 200, 400):
        x = pc_sample(sde, score_fn, x_T, predictor="probability_flow", corrector="none",
                      num_steps=n, eps=EPS, denoise=False)
        errors.append(float((x - exact).abs().max()))
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(0.95 < p < 1.1 for p in orders), (errors, orders)
    assert errors[-1] < 0.1, errors


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_step_is_half_the_reverse_diffusion_score_term_and_draws_no_noise(name):
    """VE: ``x + (s_t^2 - s_n^2) score / 2``; VP: ``(2 - sqrt(1 - b)) x + b score / 2``,
    ``b = 1 - (m_t / m_n)^2``; ``x == x_mean``; neither the generator nor the global RNG moves."""
    sde = SDES[name]
    t = torch.tensor([0.9, 0.5, 0.02], dtype=F64)
    t_next = torch.tensor([0.85, 0.49, 0.001], dtype=F64)
    x = torch.tensor([[1.0, -2.0], [0.3, 0.0], [-0.5, 4.0]], dtype=F64)
    score_fn = mixture_score_fn(sde, GAUSS)
    score = score_fn(x, t)
    gen = torch.Generator().manual_seed(7)
    gen_state, global_state = gen.get_state(), torch.get_rng_state()
    x_new, x_mean = probability_flow(sde, score_fn, x, t, t_next, generator=gen)
    assert torch.equal(gen.get_state(), gen_state)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(x_new, x_mean)
    m_t, s_t = sde.marginal_coeffs(t)
    m_n, s_n = sde.marginal_coeffs(t_next)
    if name == "VE":
        expected = x + ((s_t**2 - s_n**2) / 2)[:, None] * score
    else:
        b = 1 - (m_t / m_n) ** 2
        expected = (2 - (1 - b).sqrt())[:, None] * x + (b / 2)[:, None] * score
    torch.testing.assert_close(x_new, expected, rtol=1e-10, atol=1e-12)


def test_shape_generic_and_accepted_by_the_pc_sampler_checks():
    """Image-shaped ``(B, C, H, W)`` input, and the name passes the sampler's option check."""
    sde = SDES["VP"]
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t, t_next = torch.full((2,), 0.5, dtype=F64), torch.full((2,), 0.4, dtype=F64)

    def score_fn(x, t):
        return -x

    x_new, _ = probability_flow(sde, score_fn, x, t, t_next)
    b = 1 - (sde.marginal_coeffs(t)[0] / sde.marginal_coeffs(t_next)[0]) ** 2
    expected = (2 - (1 - b).sqrt() - b / 2)[:, None, None, None] * x
    torch.testing.assert_close(x_new, expected, rtol=1e-12, atol=1e-12)
    check_sampler("pc", {"predictor": "probability_flow", "corrector": "langevin"})
