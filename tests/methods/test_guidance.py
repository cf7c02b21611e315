"""Classifier(-free) guidance with the exact score and classifier of a Gaussian mixture.

With the mixture's components as classes, ``p_t(y = k | x)`` is closed form
(:func:`mixture_class_log_prob_fn`), and the conditional score of eq. 14 is that of the single
perturbed component ``N(m mu_k, (m^2 sigma_k^2 + s^2) I)``. So the guided score is checked
exactly, and guided sampling must reproduce component ``k`` (mean and std within Monte-Carlo
error plus a 0.05 allowance for sampler bias; measured below 0.03 on means and 3.5% on stds).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, sample
from scoresde.core.mixture import GaussianMixture, mixture_class_log_prob_fn, mixture_score_fn
from scoresde.methods.guidance import classifier_free_guidance, classifier_guidance

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}

MIX = GaussianMixture(
    torch.tensor([0.2, 0.5, 0.3], dtype=F64),
    torch.tensor([[-3.0, 1.5], [2.0, 2.0], [0.5, -2.5]], dtype=F64),
    torch.tensor([0.4, 0.5, 0.3], dtype=F64),
)


def component_score(sde, k):
    """Exact score of component ``k``'s marginal ``N(m mu_k, (m^2 sigma_k^2 + s^2) I)``."""

    def score_fn(x, t):
        m, s = sde.marginal_coeffs(t)
        var = m**2 * MIX.stds[k] ** 2 + s**2
        return -(x - m[:, None] * MIX.means[k]) / var[:, None]

    return score_fn


def random_points(sde, n, seed):
    gen = torch.Generator().manual_seed(seed)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(n, generator=gen, dtype=F64)
    m, s = sde.marginal_coeffs(t)
    x0 = MIX.sample(n, generator=gen)
    x = m[:, None] * x0 + s[:, None] * 1.5 * torch.randn(n, 2, generator=gen, dtype=F64)
    return x, t


def guided(sde, labels, scale=1.0):
    return classifier_guidance(mixture_score_fn(sde, MIX), mixture_class_log_prob_fn(sde, MIX),
                               labels, scale)


def nearest_mode(x):
    return torch.cdist(x, MIX.means).argmin(1)


def check_component(x, k, tol=0.05):
    """Mean and std of ``x`` match component ``k``, and nearly all samples are nearest to it."""
    n = x.shape[0]
    assert torch.isfinite(x).all()
    sd = float(MIX.stds[k])
    assert float((nearest_mode(x) == k).double().mean()) > 0.99
    err = float((x.mean(0) - MIX.means[k]).abs().max())
    assert err < 4 * sd / math.sqrt(n) + tol, x.mean(0)
    std = x.std(0)
    assert float((std / sd - 1).abs().max()) < 4 / math.sqrt(2 * n) + tol, std


@pytest.mark.parametrize("name", list(SDES))
def test_class_log_prob_is_normalised_bayes(name):
    sde = SDES[name]
    x, t = random_points(sde, 64, 1)
    logp = mixture_class_log_prob_fn(sde, MIX)(x, t)
    assert logp.shape == (64, 3)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(64, dtype=F64))
    m, s = sde.marginal_coeffs(t)
    # p(y=k|x) p(x) = w_k N_k(x): the joint's log-sum over classes is the marginal log-density
    var = m[:, None] ** 2 * MIX.stds**2 + s[:, None] ** 2
    logn = (-((x[:, None] - m[:, None, None] * MIX.means) ** 2).sum(-1) / (2 * var)
            - torch.log(2 * math.pi * var))
    expected = torch.log(MIX.weights) + logn
    torch.testing.assert_close(logp, expected - torch.logsumexp(expected, 1, keepdim=True))


@pytest.mark.parametrize("name", list(SDES))
def test_guided_score_is_the_exact_conditional_score(name):
    """Scale 1 gives ``grad log p_t(x | y = k)`` exactly, inside ``no_grad``, per-example labels."""
    sde = SDES[name]
    x, t = random_points(sde, 96, 2)
    labels = torch.arange(96) % 3
    with torch.no_grad():
        got = guided(sde, labels)(x, t)
    assert not got.requires_grad
    want = torch.empty_like(x)
    for k in range(3):
        sel = labels == k
        want[sel] = component_score(sde, k)(x[sel], t[sel])
        torch.testing.assert_close(guided(sde, k)(x[sel], t[sel]), want[sel], atol=1e-5, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_logits_work_and_scale_scales_the_gradient():
    sde = SDES["VP"]
    x, t = random_points(sde, 32, 3)
    log_prob = mixture_class_log_prob_fn(sde, MIX)
    score = mixture_score_fn(sde, MIX)
    offset = torch.randn(32, 1, generator=torch.Generator().manual_seed(4), dtype=F64)

    def logits(x, t):  # unnormalised, with an x-dependent shift shared by all classes
        return log_prob(x, t) + offset + (x**2).sum(1, keepdim=True)

    ref = guided(sde, 1)(x, t)
    torch.testing.assert_close(classifier_guidance(score, logits, 1)(x, t), ref)
    g = ref - score(x, t)
    torch.testing.assert_close(guided(sde, 1, scale=2.5)(x, t), score(x, t) + 2.5 * g)
    assert torch.equal(guided(sde, 1, scale=0)(x, t), score(x, t))


def test_scale_zero_skips_the_classifier():
    score = mixture_score_fn(SDES["VE"], MIX)

    def boom(x, t):
        raise AssertionError("the classifier must not be called at scale 0")

    assert classifier_guidance(score, boom, 0, scale=0.0) is score


@pytest.mark.parametrize(("name", "k"), [("VE", 0), ("VP", 2), ("subVP", 1)])
def test_pc_guided_samples_component(name, k):
    sde = SDES[name]
    gen = torch.Generator().manual_seed(10 + k)
    n = 1500
    x_T = sde.prior_sampling((n, 2), gen, dtype=F64)
    x, _ = sample(sde, guided(sde, k), x_T, method="pc", generator=gen,
                  predictor="reverse_diffusion", corrector="none", num_steps=300)
    check_component(x, k)


@pytest.mark.parametrize("name", ["VE", "VP"])
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("heun", {"num_steps": 30}),
        ("dpmpp_2m", {"num_steps": 30}),
        ("dpmpp_3m", {"num_steps": 30}),
        ("edm", {"num_steps": 40, "s_churn": 20.0}),
    ],
)
def test_the_fast_samplers_sample_the_guided_component(name, method, options):
    """A guided score is a score: every fast sampler samples component ``k`` with it."""
    sde = SDES[name]
    gen = torch.Generator().manual_seed(30)
    x_T = sde.prior_sampling((1500, 2), gen, dtype=F64)
    x, _ = sample(sde, guided(sde, 1), x_T, method=method, generator=gen, **options)
    check_component(x, 1)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_the_adaptive_sampler_samples_the_guided_component(name):
    """The adaptive SDE solver with a guided score. The mixture is padded to ``D = 16`` with
    zero means, so the std is measured on 16 coordinates per sample; the guided samples must
    be component 1: nearest to its mean, with its mean (4 Monte-Carlo errors + 0.05) and its
    std pooled over the 16 coordinates
    (4 Monte-Carlo errors + 5 %). Measured (VE, VP): largest mean error 0.036, 0.031 (4
    Monte-Carlo errors: 0.063); std 0.2 %, 0.1 % off."""
    sde, dim, k, n = SDES[name], 16, 1, 1000
    means = torch.zeros(3, dim, dtype=F64)
    means[:, :2] = MIX.means
    mix = GaussianMixture(MIX.weights, means, MIX.stds)
    score = classifier_guidance(mixture_score_fn(sde, mix), mixture_class_log_prob_fn(sde, mix),
                                k, 1.0)
    gen = torch.Generator().manual_seed(40)
    x_T = sde.prior_sampling((n, dim), gen, dtype=F64)
    x, _ = sample(sde, score, x_T, method="adaptive", generator=gen)
    assert torch.isfinite(x).all()
    assert float((nearest_mode(x[:, :2]) == k).double().mean()) > 0.99
    sd = float(MIX.stds[k])
    assert float((x.mean(0) - means[k]).abs().max()) < 4 * sd / math.sqrt(n) + 0.05
    pooled = float((x - means[k]).pow(2).mean().sqrt())
    assert abs(pooled / sd - 1) < 4 / math.sqrt(2 * n * dim) + 0.05, pooled / sd


def test_ode_guided_samples_component():
    sde = SDES["VP"]
    gen = torch.Generator().manual_seed(20)
    n = 1500
    x_T = sde.prior_sampling((n, 2), gen, dtype=F64)
    x, _ = sample(sde, guided(sde, 0), x_T, method="ode", rtol=1e-4, atol=1e-4)
    check_component(x, 0)


def test_scale_zero_samples_the_unconditional_mixture():
    sde = SDES["VP"]
    gen = torch.Generator().manual_seed(30)
    n = 3000
    x_T = sde.prior_sampling((n, 2), gen, dtype=F64)
    x, _ = sample(sde, guided(sde, 0, scale=0.0), x_T, method="pc", generator=gen,
                  predictor="reverse_diffusion", corrector="none", num_steps=300)
    frac = torch.bincount(nearest_mode(x), minlength=3).double() / n
    se = (MIX.weights * (1 - MIX.weights) / n).sqrt()
    assert ((frac - MIX.weights).abs() < 4 * se + 0.02).all(), frac


def test_classifier_free_guidance():
    sde = SDES["subVP"]
    x, t = random_points(sde, 32, 5)
    cond, uncond = component_score(sde, 2), mixture_score_fn(sde, MIX)
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0)(x, t), cond(x, t))
    assert torch.equal(classifier_free_guidance(cond, uncond, 0)(x, t), uncond(x, t))
    s_c, s_u = cond(x, t), uncond(x, t)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0)(x, t),
                               s_u + 3.0 * (s_c - s_u))
    # with exact scores, classifier-free == classifier guidance at the same scale
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 2.0)(x, t),
                               guided(sde, 2, scale=2.0)(x, t), atol=1e-5, rtol=0)


@pytest.mark.parametrize("labels", [torch.zeros(4, 2, dtype=torch.long), torch.zeros(4),
                                    "a", -1, True])
def test_bad_labels_raise(labels):
    with pytest.raises(ValueError, match="labels") as info:
        guided(SDES["VE"], labels)
    assert "\n" not in str(info.value)


def test_label_batch_mismatch_raises():
    x, t = random_points(SDES["VE"], 8, 6)
    with pytest.raises(ValueError, match="batch size 5") as info:
        guided(SDES["VE"], torch.zeros(5, dtype=torch.long))(x, t)
    assert "\n" not in str(info.value)
