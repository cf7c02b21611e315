"""Training losses: the exact score minimises DSM, closed-form values, and the discrete losses."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, ddpm_loss, dsm_loss, make_score_fn, smld_loss
from scoresde.core.mixture import GaussianMixture, mixture_score_fn

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(), "VP": VPSDE(), "subVP": SubVPSDE()}

MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)


def gaussian_fit(mix: GaussianMixture) -> GaussianMixture:
    """The isotropic Gaussian with the mixture's mean and mean per-coordinate variance."""
    w = mix.weights
    mean = (w[:, None] * mix.means).sum(0)
    second = (w * (mix.stds**2 + (mix.means**2).mean(1))).sum()
    var = second - (mean**2).mean()
    return GaussianMixture(torch.ones(1, dtype=F64), mean[None], var.sqrt().reshape(1))


def crn_loss(sde, score_fn, x0, *, seed=7, **kwargs):
    """``dsm_loss`` with common random numbers: the same (t, z) for every score function."""
    return dsm_loss(sde, score_fn, x0, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("likelihood_weighting", [False, True], ids=["std2", "g2"])
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_exact_score_minimises_dsm(name, likelihood_weighting):
    """``L(c) = E loss(score* + c d)`` is the quadratic ``L0 + 2 B c + Q c^2`` with ``B = 0``.

    The direction ``d`` points from the exact mixture score to the score of a Gaussian fit of the
    data. With common random numbers each per-example loss is exactly quadratic in ``c``; the
    linear coefficient's mean is zero within 4 standard errors, ``Q > 0``, and every perturbed
    score has a larger loss. The Gaussian fit's own score fails the same first-order check.
    """
    sde = SDES[name]
    n = 20_000
    x0 = MIX.sample(n, generator=torch.Generator().manual_seed(1))
    true = mixture_score_fn(sde, MIX)
    alt = mixture_score_fn(sde, gaussian_fit(MIX))
    kw = {"eps": 1e-3, "likelihood_weighting": likelihood_weighting}

    def loss_at(c, base=true, other=alt):
        return crn_loss(sde, lambda x, t: base(x, t) + c * (other(x, t) - base(x, t)), x0, **kw)

    h = 0.5
    l0, lp, lm = loss_at(0.0), loss_at(h), loss_at(-h)
    b = (lp - lm) / (4 * h)
    q = (lp + lm - 2 * l0) / (2 * h**2)
    torch.testing.assert_close(loss_at(1.3), l0 + 2 * 1.3 * b + 1.3**2 * q, rtol=1e-9, atol=1e-9)
    assert abs(float(b.mean())) < 4 * float(b.std()) / math.sqrt(n)
    assert float(q.mean()) > 0
    for c in (-1.0, -0.3, 0.3, 1.0):
        assert float(loss_at(c).mean()) > float(l0.mean())
    # power: at the wrong (Gaussian-fit) score the loss decreases towards the true one
    b_alt = (loss_at(h, alt, true) - loss_at(-h, alt, true)) / (4 * h)
    assert float(b_alt.mean()) < -10 * float(b_alt.std()) / math.sqrt(n)
    assert float(loss_at(1.0, alt, true).mean()) < float(loss_at(0.0, alt, true).mean())


@pytest.mark.parametrize("likelihood_weighting", [False, True], ids=["std2", "g2"])
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_gaussian_data_irreducible_loss(name, likelihood_weighting):
    """Data ``N(mu, s0^2 I)`` with the exact score: ``E ||s score + z||^2 = D (1 - s^2 / v)``.

    With ``x_t = m x0 + s z`` and ``v = m^2 s0^2 + s^2`` the exact score is ``-(x_t - m mu) / v``,
    so ``s score + z = (1 - s^2/v) z - (s m / v)(x0 - mu)``, whose expected square is
    ``D [(m^2 s0^2 / v)^2 + s^2 m^2 s0^2 / v^2] = D m^2 s0^2 / v = D (1 - s^2 / v)``. The
    likelihood weighting multiplies it by ``g^2 / s^2``. ``reduce="mean"`` divides by ``D``.
    """
    sde = SDES[name]
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    s0 = 0.7
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s0], dtype=F64))
    n = 20_000
    gen = torch.Generator().manual_seed(2)
    for t_val in (0.01, 0.1, 0.5, 1.0):
        t = torch.full((n,), t_val, dtype=F64)
        x0 = gauss.sample(n, generator=gen)
        loss = dsm_loss(sde, mixture_score_fn(sde, gauss), x0, t=t,
                        likelihood_weighting=likelihood_weighting, generator=gen)
        m, s = (float(v[0]) for v in sde.marginal_coeffs(t[:1]))
        expected = 1 - s**2 / (m**2 * s0**2 + s**2)
        if likelihood_weighting:
            expected *= float(sde.diffusion(t[:1])[0]) ** 2 / s**2
        se = float(loss.std()) / math.sqrt(n)
        assert abs(float(loss.mean()) - expected) < 4 * se, (t_val, float(loss.mean()), expected)


def test_given_t_and_z_reproduce_the_generator_draw_and_the_formula():
    sde = VPSDE()
    x0 = MIX.sample(6, generator=torch.Generator().manual_seed(0))
    score_fn = mixture_score_fn(sde, MIX)
    eps = 1e-3
    drawn = dsm_loss(sde, score_fn, x0, eps=eps, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    t = torch.rand(6, generator=gen, dtype=F64) * (1 - eps) + eps
    z = torch.randn(x0.shape, generator=gen, dtype=F64)
    given = dsm_loss(sde, score_fn, x0, t=t, z=z, generator=torch.Generator().manual_seed(123))
    assert torch.equal(drawn, given)
    m, s = (v[:, None] for v in sde.marginal_coeffs(t))
    by_hand = ((score_fn(m * x0 + s * z, t) * s + z) ** 2).mean(1)
    torch.testing.assert_close(given, by_hand, rtol=1e-12, atol=0)
    g2 = sde.diffusion(t)[:, None] ** 2
    lw = dsm_loss(sde, score_fn, x0, t=t, z=z, likelihood_weighting=True)
    by_hand_lw = ((score_fn(m * x0 + s * z, t) + z / s) ** 2 * g2).mean(1)
    torch.testing.assert_close(lw, by_hand_lw, rtol=1e-12, atol=0)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_reduce_sum_is_half_the_sum(likelihood_weighting):
    sde = VESDE()
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 3, 4, 4, generator=gen, dtype=F64)
    t = torch.rand(5, generator=gen, dtype=F64)
    z = torch.randn(x0.shape, generator=gen, dtype=F64)

    def score_fn(x, t):
        return -x / (1 + t[:, None, None, None])

    kw = {"t": t, "z": z, "likelihood_weighting": likelihood_weighting}
    mean = dsm_loss(sde, score_fn, x0, reduce="mean", **kw)
    total = dsm_loss(sde, score_fn, x0, reduce="sum", **kw)
    assert mean.shape == total.shape == (5,)
    torch.testing.assert_close(total, 0.5 * 48 * mean, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="reduce"):
        dsm_loss(sde, score_fn, x0, reduce="max", **kw)


def test_dsm_default_draws_t_in_eps_to_t_max():
    """Zero score: loss = mean(z^2) s^2-weighted is 1 in expectation; t stays in [eps, T]."""
    sde = VESDE()
    seen = []

    def score_fn(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x0 = torch.zeros(4000, 2, dtype=F64)
    loss = dsm_loss(sde, score_fn, x0, eps=0.2, generator=torch.Generator().manual_seed(0))
    t = seen[0]
    assert float(t.min()) >= 0.2 and float(t.max()) <= 1.0
    assert abs(float(t.mean()) - 0.6) < 4 * 0.8 / math.sqrt(12 * 4000)
    assert abs(float(loss.mean()) - 1.0) < 4 * math.sqrt(1.0 / 4000)


# --------------------------------------------------------------------------------------------
# The discrete losses, by hand at a fixed generator
# --------------------------------------------------------------------------------------------


class Model:
    """A deterministic stand-in network that records its labels."""

    def __init__(self):
        self.labels = None

    def __call__(self, x, labels):
        self.labels = labels
        return torch.tanh(x) * 0.7 - 0.1 * x**2


def test_smld_loss_by_hand():
    """NCSN: ``1/2 sum ((score + z / sigma)^2) sigma^2`` at a uniformly drawn ``sigma_i``."""
    sde = VESDE()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 2, 3, generator=gen, dtype=F64)
    model = Model()
    loss = smld_loss(sde, make_score_fn(model, sde, continuous=False), x0,
                     generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 1000, (8,), generator=gen)
    z = torch.randn(x0.shape, generator=gen, dtype=F64)
    sigma = sde.discrete_sigmas.double()[idx][:, None, None]
    # NCSN indexes scales from the largest: the network sees N - 1 - i for the i-th smallest
    assert torch.equal(model.labels, 999 - idx)
    score = model(x0 + sigma * z, None)
    by_hand = 0.5 * ((score + z / sigma) ** 2 * sigma**2).sum((1, 2))
    torch.testing.assert_close(loss, by_hand, rtol=1e-10, atol=0)
    mean = smld_loss(sde, make_score_fn(model, sde, continuous=False), x0, reduce="mean",
                     generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(mean, by_hand * 2 / 6, rtol=1e-10, atol=0)


def test_ddpm_loss_by_hand():
    """DDPM: ``mean (eps_theta(sqrt(ab_i) x0 + sqrt(1 - ab_i) z, i) - z)^2``."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 2, 3, generator=gen, dtype=F64)
    model = Model()
    loss = ddpm_loss(sde, make_score_fn(model, sde, continuous=False), x0,
                     generator=torch.Generator().manual_seed(6))
    gen = torch.Generator().manual_seed(6)
    idx = torch.randint(0, 1000, (8,), generator=gen)
    z = torch.randn(x0.shape, generator=gen, dtype=F64)
    ab = torch.cumprod(1 - torch.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=F64), 0)[idx]
    ab = ab[:, None, None]
    torch.testing.assert_close(model.labels, idx.to(F64), rtol=0, atol=1e-9)
    eps_theta = model(ab.sqrt() * x0 + (1 - ab).sqrt() * z, None)
    by_hand = ((eps_theta - z) ** 2).mean((1, 2))
    # the package's alpha_bar table is float32 (official); its rounding moves x_t by ~1e-7
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-7)
