"""EDM's preconditioning, loss and SDE (Karras et al., 2022) for every SDE of the package.

Checked against a Gaussian mixture, whose perturbed scores and posterior means are exact: a
network that outputs the exact ``F = (D_exact - c_skip y) / c_out`` makes the ``"edm"``
:class:`ScoreModel` exact in all three views; the EDM loss has EDM's weight, equals EDM's formula
written by hand (and is the same number under every SDE for the same draws), is minimised by the
exact denoiser, and draws ``ln sigma ~ N(P_mean, P_std^2)``; EDM's SDE inverts its closed forms,
samples and has the exact likelihood.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import ScoreModel, sample, tweedie_denoise
from scoresde.core.mixture import GaussianMixture, mixture_log_prob, mixture_score_fn
from scoresde.core.score import edm_coefficients
from scoresde.core.sde_base import SDE
from scoresde.core.sdes import EDMSDE, VESDE, VPSDE, SubVPSDE
from scoresde.methods.importance import time_proposal
from scoresde.methods.likelihood import log_likelihood
from scoresde.methods.losses import check_loss, edm_loss, edm_times, edm_weight

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SD = 0.5
MIX = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                      torch.tensor([[-1.0, 0.5], [0.5, 0.25]], dtype=F64),
                      torch.tensor([0.15, 0.25], dtype=F64))
SDES = [VESDE(), VPSDE(), SubVPSDE(), EDMSDE()]
IDS = ["VE", "VP", "subVP", "EDM"]
SIGMAS = torch.tensor([0.02, 0.1, 0.3, 0.5, 1.0, 3.0, 10.0, 40.0], dtype=F64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def posterior_mean(sde, x, t):
    """``E[x_0 | x_t]`` of the mixture by Tweedie on its exact score."""
    return tweedie_denoise(sde, mixture_score_fn(sde, MIX), x, t)


class ExactF:
    """The exact EDM network output: it reads ``sigma = exp(4 c_noise)`` and ``y = x_in / c_in``
    off its inputs and returns ``(D_exact(y) - c_skip y) / c_out`` (+ ``shift``, ``* scale``)."""

    def __init__(self, sde, shift=0.0, scale=1.0):
        self.sde, self.shift, self.scale, self.calls = sde, shift, scale, []

    def __call__(self, x_in, c_noise):
        self.calls.append((x_in, c_noise))
        sigma = torch.exp(4 * c_noise)
        t = self.sde.t_from_sigma(sigma)
        c_skip, c_out, c_in, _ = (c[:, None] for c in edm_coefficients(sigma, SD))
        y = x_in / c_in
        m = self.sde.marginal_coeffs(t)[0][:, None]
        exact = (posterior_mean(self.sde, m * y, t) - c_skip * y) / c_out
        return exact * self.scale + self.shift


# --------------------------------------------------------------------------------------------
# The parametrization
# --------------------------------------------------------------------------------------------


def test_coefficients_are_edms_table_1():
    sigma = SIGMAS
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, SD)
    torch.testing.assert_close(c_skip, SD**2 / (sigma**2 + SD**2), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_out, sigma * SD / torch.sqrt(sigma**2 + SD**2), rtol=1e-15,
                               atol=0)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + SD**2), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4, rtol=1e-15, atol=0)
    # the loss weight gives the network's target unit weight: lambda c_out^2 = 1
    weight = edm_weight(sigma, SD)
    torch.testing.assert_close(weight, (sigma**2 + SD**2) / (sigma * SD) ** 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(weight * c_out**2, torch.ones_like(sigma), rtol=1e-14, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_the_exact_network_output_makes_every_view_exact(sde):
    t = sde.t_from_sigma(SIGMAS)
    m, s = (v[:, None] for v in sde.marginal_coeffs(t))
    sigma = (s / m)
    x = m * (MIX.sample(len(t), generator=gen(0)) + sigma * torch.randn(len(t), 2, generator=gen(1),
                                                                        dtype=F64))
    net = ExactF(sde)
    sm = ScoreModel(net, sde, parametrization="edm", sigma_data=SD)
    exact = mixture_score_fn(sde, MIX)(x, t)
    score = sm.score(x, t)
    torch.testing.assert_close(score, exact, rtol=1e-9, atol=1e-10)
    assert torch.equal(sm(x, t), score)
    # the network saw c_in y and c_noise = ln(sigma) / 4
    x_in, c_noise = net.calls[-1]
    c_skip, c_out, c_in, _ = (c[:, None] for c in edm_coefficients(sigma[:, 0], SD))
    torch.testing.assert_close(c_noise, torch.log(sigma[:, 0]) / 4, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(x_in, c_in * x / m, rtol=1e-14, atol=0)
    # D = c_skip y + c_out F is the posterior mean; score = (m D - x) / s^2; eps = -s score
    den = sm.denoise(x, t)
    F = sm.network_output(x, t)
    torch.testing.assert_close(den, c_skip * x / m + c_out * F, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(den, posterior_mean(sde, x, t), rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(score, (m * den - x) / s**2, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sm.eps(x, t), -s * score, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(sm.eps(x, t), (x / m - den) / sigma, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(tweedie_denoise(sde, sm, x, t), den, rtol=1e-10, atol=1e-11)


def test_conventions_and_refusals():
    edm = ScoreModel(ExactF(EDMSDE()), EDMSDE())
    assert (edm.parametrization, edm.labels, edm.sigma_data) == ("edm", "c_noise", 0.5)
    assert "sigma_data=0.5" in repr(edm)
    ve = ScoreModel(ExactF(VESDE()), VESDE(), parametrization="edm")
    assert ve.labels == "c_noise"
    assert ScoreModel(ExactF(EDMSDE()), EDMSDE(), parametrization="score").labels == "sigma"
    assert ScoreModel(ExactF(VPSDE()), VPSDE()).parametrization == "eps"  # unchanged
    t = torch.tensor([0.002, 1.0, 80.0], dtype=F64)
    torch.testing.assert_close(edm.network_labels(t), torch.log(t) / 4, rtol=1e-15, atol=0)
    for bad in ({"continuous": False}, {"labels": "sigma"}, {"sigma_data": 0.0}):
        with pytest.raises(ValueError):
            ScoreModel(ExactF(VESDE()), VESDE(), parametrization="edm", **bad)
    with pytest.raises(ValueError, match="continuous"):
        ScoreModel(ExactF(VESDE()), VESDE(), labels="c_noise", continuous=False)
    with pytest.raises(ValueError, match="continuous"):
        ScoreModel(ExactF(EDMSDE()), EDMSDE(), continuous=False)


def test_float32_stays_float32():
    sde = VPSDE()
    sm = ScoreModel(lambda x, c: torch.tanh(x) * c[:, None, None], sde, parametrization="edm")
    x, t = torch.randn(5, 3, 4, generator=gen(2)), torch.linspace(0.01, 1.0, 5)
    for view in (sm.score, sm.eps, sm.denoise):
        out = view(x, t)
        assert out.dtype == torch.float32 and out.shape == x.shape
    loss = edm_loss(sde, sm, x, generator=gen(3))
    assert loss.dtype == torch.float32 and loss.shape == (5,)


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def toy_net(x_in, c_noise):
    """A fixed, non-exact network ``F(c_in y; c_noise)``."""
    return torch.sin(x_in) * (1 + c_noise[:, None]) - 0.3 * x_in**2


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_the_loss_is_edms_formula_on_the_same_draws(sde):
    """``lambda(sigma) ||D(x0 + sigma z; sigma) - x0||^2`` with EDM's ``D`` written by hand:
    the same number under every SDE (only the time label and the scale ``m`` differ)."""
    x0 = MIX.sample(len(SIGMAS), generator=gen(4))
    z = torch.randn(x0.shape, generator=gen(5), dtype=F64)
    sm = ScoreModel(toy_net, sde, parametrization="edm", sigma_data=SD)
    loss = edm_loss(sde, sm, x0, sigma=SIGMAS, z=z, sigma_data=SD, reduce="sum")
    c_skip, c_out, c_in, c_noise = (c[:, None] for c in edm_coefficients(SIGMAS, SD))
    y = x0 + SIGMAS[:, None] * z
    D = c_skip * y + c_out * toy_net(c_in * y, c_noise[:, 0])
    by_hand = edm_weight(SIGMAS, SD) * ((D - x0) ** 2).sum(1)  # EDM sums over dims
    torch.testing.assert_close(2 * loss, by_hand, rtol=1e-9, atol=0)
    mean = edm_loss(sde, sm, x0, sigma=SIGMAS, z=z, sigma_data=SD)
    torch.testing.assert_close(mean, by_hand / 2, rtol=1e-9, atol=0)


def test_the_per_sigma_weight_is_the_closed_form_for_any_score_function():
    """``loss / ||D - x0||^2`` with Tweedie's ``D`` of a plain (non-EDM) score function."""
    sde = SubVPSDE()
    x0 = MIX.sample(len(SIGMAS), generator=gen(6))
    z = torch.randn(x0.shape, generator=gen(7), dtype=F64)
    t = sde.t_from_sigma(SIGMAS)

    def score_fn(x, t_):
        return -x / (1 + t_[:, None]) + torch.cos(x)

    loss = edm_loss(sde, score_fn, x0, sigma=SIGMAS, z=z, sigma_data=0.7)
    xt = sde.perturb(x0, t, z)
    sq = ((tweedie_denoise(sde, score_fn, xt, t) - x0) ** 2).mean(1)
    torch.testing.assert_close(loss / sq, edm_weight(sde.sigma(t), 0.7), rtol=1e-9, atol=0)
    torch.testing.assert_close(loss / sq, (SIGMAS**2 + 0.49) / (SIGMAS * 0.7) ** 2, rtol=1e-8,
                               atol=0)


@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE()], ids=["EDM", "VP"])
def test_the_exact_denoiser_minimises_the_loss(sde):
    n = 20000
    x0 = MIX.sample(n, generator=gen(8))
    draws = {"sigma": edm_times(EDMSDE(), n, gen(9), dtype=F64),  # lognormal sigma
             "z": torch.randn(n, 2, generator=gen(10), dtype=F64)}
    if isinstance(sde, VPSDE):  # inside VP's range [sigma(1e-5), sigma(1)] = [0.003, 152]
        draws["sigma"] = draws["sigma"].clamp(0.004, 150.0)

    def loss(net):
        sm = ScoreModel(net, sde, parametrization="edm", sigma_data=SD)
        return edm_loss(sde, sm, x0, sigma_data=SD, **draws)

    exact = loss(ExactF(sde))
    for worse in (ExactF(sde, shift=0.1), ExactF(sde, scale=1.2)):
        gap = loss(worse) - exact
        se = float(gap.std()) / math.sqrt(n)
        assert float(gap.mean()) > 6 * se and float(gap.mean()) > 1e-3
    # the shift's expected gap is exactly 0.1^2 (unit weight of the target)
    gap = loss(ExactF(sde, shift=0.1)) - exact
    assert abs(float(gap.mean()) - 0.01) < 4 * float(gap.std()) / math.sqrt(n)
    # d loss / d a at a = 0 for F + a h: zero in expectation (per-example gradients)
    a = torch.zeros(n, 1, dtype=F64, requires_grad=True)
    base = ExactF(sde)
    grad = torch.autograd.grad(loss(lambda x_in, c: base(x_in, c) + a * torch.tanh(x_in))
                               .sum(), a)[0][:, 0]
    assert abs(float(grad.mean())) < 4 * float(grad.std()) / math.sqrt(n)
    assert float(grad.std()) > 0


def test_sigma_is_lognormal_through_t_from_sigma():
    n = 200000
    for sde, eps in ((EDMSDE(), 1e-5), (VPSDE(), 1e-5), (SubVPSDE(), 1e-5)):
        log_sigma = torch.log(sde.sigma(edm_times(sde, n, gen(11), eps=eps, dtype=F64)))
        assert abs(float(log_sigma.mean()) + 1.2) < 0.01
        assert abs(float(log_sigma.std()) - 1.2) < 0.01
    # clipped to [eps, T]: VE's sigma in [0.01, 50] with a wide distribution
    sde, eps = VESDE(), 0.1
    t = edm_times(sde, n, gen(12), P_mean=0.0, P_std=3.0, eps=eps, dtype=F64)
    assert float(t.min()) == eps and float(t.max()) == sde.T
    low = math.log(float(sde.sigma(torch.tensor(eps, dtype=F64))))
    normal_cdf = 0.5 * (1 + math.erf(low / 3.0 / math.sqrt(2)))
    assert abs(float((t == eps).double().mean()) - normal_cdf) < 0.005
    high = 0.5 * (1 - math.erf(math.log(50.0) / 3.0 / math.sqrt(2)))
    assert abs(float((t == sde.T).double().mean()) - high) < 0.005
    # the loss draws sigma first, then z, from its generator
    x0 = MIX.sample(64, generator=gen(13))
    sm = ScoreModel(toy_net, VPSDE(), parametrization="edm")
    g = gen(14)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(64, generator=g, dtype=F64))
    z = torch.randn(64, 2, generator=g, dtype=F64)
    torch.testing.assert_close(edm_loss(VPSDE(), sm, x0, generator=gen(14)),
                               edm_loss(VPSDE(), sm, x0, sigma=sigma, z=z), rtol=0, atol=0)


def test_loss_choices_that_make_no_sense_are_refused():
    check_loss("dsm", likelihood_weighting=True, importance_sampling=True)
    check_loss("edm")
    for bad in ({"loss": "x0"}, {"loss": "edm", "continuous": False},
                {"loss": "edm", "likelihood_weighting": True},
                {"loss": "edm", "importance_sampling": True},
                {"loss": "dsm", "importance_sampling": True}):
        with pytest.raises(ValueError):
            check_loss(**bad)


# --------------------------------------------------------------------------------------------
# EDM's SDE
# --------------------------------------------------------------------------------------------


def test_edm_sde_closed_forms():
    sde = EDMSDE()
    assert (sde.T, sde.prior_std, sde.sigma_min) == (80.0, 80.0, 0.002)
    t = torch.logspace(math.log10(0.002), math.log10(80.0), 40, dtype=F64)
    m, s = sde.marginal_coeffs(t)
    assert torch.equal(m, torch.ones_like(t)) and torch.equal(s, t)
    assert torch.equal(sde.sigma(t), t) and torch.equal(sde.t_from_sigma(t), t)
    torch.testing.assert_close(sde.log_snr(t), -2 * torch.log(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.t_from_weight_integral(sde.weight_integral(t)), t,
                               rtol=1e-14, atol=0)
    # the contract's generic (tabulated) inverses agree with the closed forms
    torch.testing.assert_close(SDE.t_from_sigma(sde, t), t, rtol=1e-7, atol=0)
    torch.testing.assert_close(SDE.log_snr(sde, t), sde.log_snr(t), rtol=1e-14, atol=1e-14)
    # g^2 = d s^2 / dt = 2 t, and F' = g^2 / s^2
    x = torch.randn(40, 2, generator=gen(15), dtype=F64)
    drift, g = sde.sde(x, t)
    assert torch.equal(drift, torch.zeros_like(x))
    torch.testing.assert_close(g**2, 2 * t, rtol=1e-15, atol=0)
    h = 1e-6 * t
    dF = (sde.weight_integral(t + h) - sde.weight_integral(t - h)) / (2 * h)
    torch.testing.assert_close(dF, g**2 / s**2, rtol=1e-8, atol=0)
    # the exact step between two noise levels, and the importance-sampling proposal
    f, G = sde.discretize(x, t, t / 2)
    torch.testing.assert_close(G**2, 0.75 * t**2, rtol=1e-14, atol=0)
    assert torch.equal(f, torch.zeros_like(x))
    draws = time_proposal(sde, 0.002).sample((1000,), gen(16), dtype=F64)
    assert float(draws.min()) >= 0.002 and float(draws.max()) <= 80.0


# EDM's grid throughout; this mixture's narrow components (stds 0.15, 0.25) need ~40 Heun steps
SAMPLING = {"heun": {"num_steps": 40}, "edm": {"num_steps": 40, "s_churn": 10.0},
            "pc": {"num_steps": 200, "grid": "edm"}}


@pytest.mark.parametrize("method", sorted(SAMPLING))
def test_edm_sde_samples_the_mixture(method):
    sde = EDMSDE()
    n = 4000
    x_T = sde.prior_sampling((n, 2), gen(17), dtype=F64)
    x, info = sample(sde, mixture_score_fn(sde, MIX), x_T, method=method, eps=sde.sigma_min,
                     generator=gen(18), **SAMPLING[method])
    ref = MIX.sample(200000, generator=gen(19))
    torch.testing.assert_close(x.mean(0), ref.mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(x.std(0), ref.std(0), atol=0.04, rtol=0)
    left = (x[:, 0] < -0.25).double().mean()
    assert abs(float(left) - 0.3) < 0.03 and info["nfe"] > 0


def test_edm_sde_likelihood_is_the_exact_density():
    sde = EDMSDE()
    x = MIX.sample(8, generator=gen(20))
    eps = sde.sigma_min
    logp, z, nfe = log_likelihood(sde, mixture_score_fn(sde, MIX), x, trace="exact",
                                  rtol=1e-7, atol=1e-7, eps=eps)
    exact = mixture_log_prob(sde, MIX, x, torch.full((8,), eps, dtype=F64))
    # the prior N(0, 80^2 I) stands in for p_T (the mixture convolved with N(0, 80^2 I))
    p_T = mixture_log_prob(sde, MIX, z, torch.full((8,), sde.T, dtype=F64))
    torch.testing.assert_close(logp, exact + sde.prior_logp(z) - p_T, atol=1e-4, rtol=0)
    assert nfe > 10
