"""A new SDE written here alone, with nothing changed in the package: the cosine-schedule VP SDE
(Nichol & Dhariwal, 2021) gives only its drift, diffusion and kernel; it samples with every
sampler, trains a step and has a likelihood, all against the exact answers of Gaussian data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from scoresde import ScoreModel, sample
from scoresde.core.mixture import GaussianMixture, mixture_log_prob, mixture_score_fn
from scoresde.core.sdes import SDE
from scoresde.methods.importance import time_proposal
from scoresde.methods.likelihood import log_likelihood
from scoresde.methods.losses import dsm_loss

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
OFFSET = 0.008


@dataclass(frozen=True)
class CosineVPSDE(SDE):
    """``m(t) = cos(pi/2 (t + o) / (1 + o)) / cos(pi/2 o / (1 + o))``, ``s^2 = 1 - m^2``; then
    ``f = (d log m / dt) x`` and ``g^2 = -2 d log m / dt`` (variance preserving)."""

    T: float = 0.99
    N: int = 1000

    def _angle(self, t):
        return 0.5 * math.pi * (t + OFFSET) / (1 + OFFSET)

    def marginal_coeffs(self, t):
        m = torch.cos(self._angle(t)) / math.cos(0.5 * math.pi * OFFSET / (1 + OFFSET))
        return m, torch.sqrt(1 - m**2)

    def sde(self, x, t):
        dlogm = -0.5 * math.pi / (1 + OFFSET) * torch.tan(self._angle(t))
        return dlogm[:, None] * x, torch.sqrt(-2 * dlogm)


DATA = GaussianMixture(torch.ones(1, dtype=F64), torch.tensor([[1.0, -0.5]], dtype=F64),
                       torch.tensor([0.4], dtype=F64))


def test_the_defaults_of_the_contract_invert_the_schedule():
    sde = CosineVPSDE()
    t = torch.linspace(1e-3, sde.T, 50, dtype=F64)
    m, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(sde.sigma(t), s / m)
    torch.testing.assert_close(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-7, atol=1e-9)
    assert sde.network_convention == ("eps", "time")
    z = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x0 = torch.ones(50, 2, dtype=F64)
    torch.testing.assert_close(sde.perturb(x0, t, z), m[:, None] * x0 + s[:, None] * z)


@pytest.mark.parametrize("method", ["pc", "ode", "ddim", "heun", "dpmpp_2m", "edm", "adaptive"])
def test_every_sampler_samples_the_new_sde(method):
    sde = CosineVPSDE()
    x_T = sde.prior_sampling((4000, 2), torch.Generator().manual_seed(1), dtype=F64)
    options = {"pc": {"num_steps": 200}, "ode": {"rtol": 1e-4, "atol": 1e-4},
               "edm": {"num_steps": 20, "s_churn": 10.0}, "adaptive": {"rtol": 0.05},
               "ddim": {"num_steps": 100, "grid": "log_snr"}}.get(method, {"num_steps": 20})
    x, info = sample(sde, mixture_score_fn(sde, DATA), x_T, method=method,
                     generator=torch.Generator().manual_seed(2), **options)
    assert info["nfe"] > 0
    torch.testing.assert_close(x.mean(0), DATA.means[0], atol=0.04, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), 0.4, dtype=F64), atol=0.04, rtol=0)


def test_it_trains_a_step_with_uniform_and_importance_sampled_times():
    sde = CosineVPSDE()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2)).double()
    model = ScoreModel(lambda x, labels: net(torch.cat([x, labels[:, None] / 999], 1)), sde)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x0 = DATA.sample(256, generator=torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    for step in range(2):
        loss = dsm_loss(sde, model, x0, generator=torch.Generator().manual_seed(step),
                        likelihood_weighting=bool(step), importance_sampling=bool(step)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    proposal = time_proposal(sde, 1e-5)  # tabulated: the SDE has no weight_integral
    t = proposal.sample((20000,), torch.Generator().manual_seed(4), dtype=F64)
    assert float(t.min()) >= 1e-5 and float(t.max()) <= sde.T


def test_its_likelihood_is_the_exact_density():
    sde = CosineVPSDE()
    x = DATA.sample(16, generator=torch.Generator().manual_seed(5))
    logp, z, nfe = log_likelihood(sde, mixture_score_fn(sde, DATA), x, trace="exact",
                                  rtol=1e-7, atol=1e-7, eps=1e-5)
    exact = mixture_log_prob(sde, DATA, x, torch.full((16,), 1e-5, dtype=F64))
    # The model's density is the exact flow's push-forward of the prior N(0, I), which stands
    # in for p_T (mean m(T) mu, m(T) = 0.016): exact up to log N(z; 0, I) - log p_T(z).
    prior_gap = sde.prior_logp(z) - mixture_log_prob(sde, DATA, z, torch.full((16,), sde.T,
                                                                                dtype=F64))
    torch.testing.assert_close(logp, exact + prior_gap, atol=1e-4, rtol=0)
    assert float(prior_gap.abs().max()) > 1e-3 and nfe > 10
