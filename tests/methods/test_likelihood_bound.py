"""The variational bound on the negative log-likelihood, checked against exact answers.

For Gaussian-mixture data and the exact score the bound's expectation is known in closed form
(:mod:`scoresde.methods.likelihood_bound`): ``E_data[bound] = H(p_data * N(0, sigma_e^2 I)) +
KL(p_T || pi)`` with ``sigma_e = s(eps) / m(eps)``. Both terms are evaluated here with the
mixture's exact densities, independently of the bound's code, on SDEs whose prior mismatch is
large enough (``sigma_max = 1.5``, ``beta_max = 2``) for the gap to stand many standard errors
above zero. A wrong score adds exactly ``1/2 int g^2 E||error||^2 dt``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from scoresde.cli import main
from scoresde.core.mixture import GaussianMixture, mixture_log_prob, mixture_score_fn
from scoresde.core.sdes import VESDE, VPSDE, SubVPSDE
from scoresde.core.seeding import SampleStreams, derive_seed
from scoresde.jobs.evaluation.evaluate import evaluate
from scoresde.jobs.runs import evaluate_bound, load_trained
from scoresde.jobs.training.loop import train
from scoresde.methods.importance import time_proposal
from scoresde.methods.likelihood import bits_per_dim
from scoresde.methods.likelihood_bound import bound_bpd, likelihood_bound
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.pipeline import load_split, to_model_scale
from scoresde.setup.presets import get_preset

F64 = torch.float64
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-1.5, 0.5], [1.0, -1.0]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)
CASES = [
    (VESDE(sigma_min=0.1, sigma_max=1.5), 1e-5),
    (VPSDE(beta_max=2.0), 1e-2),
    (SubVPSDE(beta_max=2.0), 1e-2),
]
IDS = ["ve", "vp", "subvp"]
Z_SE = 4.0


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def _predicted_gap(sde, eps, x, gen) -> tuple[float, float]:
    """``E[bound] - H(p_data)`` from the mixture's densities: blur entropy plus prior KL."""
    m_e, s_e = sde.marginal_coeffs(torch.tensor([eps], dtype=F64))
    sigma_e = (s_e / m_e).item()
    y = x + sigma_e * torch.randn(x.shape, generator=gen, dtype=F64)
    blur = -MIX.log_prob(y, 1.0, sigma_e) + MIX.log_prob(x)
    t_end = torch.full((x.shape[0],), sde.T, dtype=F64)
    m_T, s_T = sde.marginal_coeffs(t_end)
    x_T = m_T[:, None] * x + s_T[:, None] * torch.randn(x.shape, generator=gen, dtype=F64)
    kl = mixture_log_prob(sde, MIX, x_T, t_end) - sde.prior_logp(x_T)
    (b, b_se), (k, k_se) = _mean_se(blur), _mean_se(kl)
    return b + k, math.hypot(b_se, k_se)


@pytest.mark.parametrize(("sde", "eps"), CASES, ids=IDS)
def test_bound_exceeds_the_exact_nll_by_the_predicted_gap(sde, eps, single_thread):
    """200k examples, one draw of ``(t, z)`` each: ``bound - (-log p_data)`` is positive
    beyond 4 standard errors and equals the closed-form gap within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    x = MIX.sample(200_000, generator=gen)
    bound = likelihood_bound(sde, mixture_score_fn(sde, MIX), x, eps=eps, generator=gen)
    gap, se = _mean_se(bound + MIX.log_prob(x))
    predicted, predicted_se = _predicted_gap(sde, eps, x, gen)
    assert gap > Z_SE * se
    assert abs(gap - predicted) < Z_SE * math.hypot(se, predicted_se)
    assert 0.1 < predicted < 0.3  # small next to the NLL itself (about 2.3 nats)


@pytest.mark.parametrize(("sde", "eps"), CASES, ids=IDS)
def test_a_wrong_score_raises_the_bound_by_its_score_matching_error(sde, eps, single_thread):
    """Score error ``a u / s(t)`` (``u`` a unit vector): the bound grows by exactly
    ``1/2 int g^2 a^2 / s^2 dt = a^2 Z / 2`` (same draws for both scores)."""
    exact, a = mixture_score_fn(sde, MIX), 0.2
    u = torch.tensor([0.6, 0.8], dtype=F64)

    def wrong(x, t):
        return exact(x, t) + a * u / sde.marginal_coeffs(t)[1][:, None]

    x = MIX.sample(50_000, generator=torch.Generator().manual_seed(1))
    right, bad = (
        likelihood_bound(sde, fn, x, eps=eps, generator=torch.Generator().manual_seed(2))
        for fn in (exact, wrong)
    )
    growth, se = _mean_se(bad - right)
    expected = a**2 * time_proposal(sde, eps).normalizer / 2
    assert growth > Z_SE * se
    assert abs(growth - expected) < Z_SE * se


@pytest.mark.parametrize(("sde", "eps"), CASES[1:], ids=IDS[1:])
def test_uniform_times_estimate_the_same_bound(sde, eps, single_thread):
    """``importance_sampling=False`` (``t ~ U(eps, T)``, weight ``(T - eps) g^2 / s^2``):
    the same mean within 4 standard errors, at a larger variance."""
    fn = mixture_score_fn(sde, MIX)
    x = MIX.sample(100_000, generator=torch.Generator().manual_seed(3))
    est = {
        flag: likelihood_bound(
            sde,
            fn,
            x,
            eps=eps,
            importance_sampling=flag,
            generator=torch.Generator().manual_seed(4),
        )
        for flag in (True, False)
    }
    (m1, se1), (m0, se0) = _mean_se(est[True]), _mean_se(est[False])
    assert abs(m1 - m0) < Z_SE * math.hypot(se1, se0)
    assert se0 > se1


def test_bound_is_per_example_reproducible_with_streams(single_thread):
    sde = VPSDE()
    fn = mixture_score_fn(sde, MIX)
    x = MIX.sample(6, generator=torch.Generator().manual_seed(5))
    whole = likelihood_bound(sde, fn, x, num_times=3, generator=SampleStreams(7, range(6)))
    part = likelihood_bound(sde, fn, x[2:4], num_times=3, generator=SampleStreams(7, range(2, 4)))
    torch.testing.assert_close(part, whole[2:4], rtol=1e-12, atol=0)
    other = likelihood_bound(sde, fn, x, num_times=3, generator=SampleStreams(8, range(6)))
    assert not torch.allclose(other, whole)


def test_bound_bpd_dequantizes_and_converts_like_the_ode_bpd(single_thread):
    """Draws: the dequantization, then ``(t, z)``; then ``bits_per_dim`` of ``-bound``."""
    sde = VPSDE()
    x = torch.randint(0, 17, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0)) / 16.0
    x = x.to(F64)

    def fn(y, t):
        return -y / sde.marginal_coeffs(t)[1][:, None, None, None] ** 2

    bpd = bound_bpd(sde, fn, x, levels=17, centered=True, generator=SampleStreams(1, range(5)))
    streams = SampleStreams(1, range(5))
    k = torch.round(x * 16)
    y = 2 * (k + streams.rand(x.shape, dtype=F64)) / 17 - 1
    nll = likelihood_bound(sde, fn, y, generator=streams)
    torch.testing.assert_close(bpd, bits_per_dim(-nll, 4, levels=17, centered=True))


def test_bad_arguments_are_refused():
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="num_times"):
        likelihood_bound(VPSDE(), lambda y, t: y, x, num_times=0)
    with pytest.raises(ValueError, match="0 < eps < T"):
        likelihood_bound(VPSDE(), lambda y, t: y, x, eps=0.0)


# --------------------------------------------------------------------------------------------
# End to end: the bound of a trained run, beside the ODE likelihood
# --------------------------------------------------------------------------------------------

TINY = ["train.checkpoint_every=0", "train.tensorboard=false", "device=cpu"]


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    cfg = apply_overrides(
        get_preset("toy_gmm"),
        [*TINY, "train.steps=3", "train.batch_size=32", "model.hidden=16", "model.depth=1"],
    )
    return train(cfg, tmp_path_factory.mktemp("toy_run"), progress=False).checkpoint


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    cfg = apply_overrides(
        get_preset("digits_subvp"), [*TINY, "train.steps=2", "train.batch_size=16", "model.nf=8"]
    )
    return train(cfg, tmp_path_factory.mktemp("digits_run"), progress=False).checkpoint


def test_run_bound_follows_the_stream_protocol(toy_checkpoint, single_thread):
    """Example ``i`` is ``likelihood_bound`` of its own stream ``(derive_seed(seed, "bound",
    repeat), i)``, in any batch and any shard."""
    run = load_trained(toy_checkpoint, device="cpu")
    data = load_split(run.cfg.data, "test", limit=6)
    found = evaluate_bound(run, data, seed=3, batch_size=4, bound_times=5)
    assert set(found) == {"bound_nll_nats", "per_example", "nfe", "num_examples"}
    assert found["nfe"] == 5 and found["num_examples"] == 6
    streams = SampleStreams(derive_seed(3, "bound", 0), range(6))
    y = to_model_scale(data, run.cfg.data, generator=streams)
    with torch.no_grad():
        direct = likelihood_bound(
            run.sde, run.score_fn, y, eps=run.cfg.eval.eps, num_times=5, generator=streams
        )
    assert found["per_example"] == pytest.approx(direct.tolist(), rel=1e-5)
    shard = evaluate_bound(run, data[1::2], seed=3, indices=range(1, 6, 2), bound_times=5)
    assert shard["per_example"] == pytest.approx(found["per_example"][1::2], rel=1e-5)
    assert found["bound_nll_nats"] == pytest.approx(sum(found["per_example"]) / 6)


def test_evaluate_writes_the_bound_beside_the_bpd(digits_checkpoint, tmp_path, single_thread):
    """``eval.metrics=bpd,bound`` on 8 test digits: both in results.json with the same
    fields; on this (two-step) model the bound lies above the ODE's bits/dim (a measurement:
    the two are bounds for two different models, the reverse SDE's and the ODE's)."""
    run = load_trained(digits_checkpoint, device="cpu")
    sets = [
        "eval.metrics=bpd,bound",
        "eval.num_examples=8",
        "eval.bound_times=16",
        "eval.rtol=1e-3",
        "eval.atol=1e-3",
    ]
    run = replace(run, cfg=apply_overrides(run.cfg, sets))
    results = evaluate(run, tmp_path / "e")
    on_disk = json.loads((tmp_path / "e" / "results.json").read_text())
    bound, bpd = on_disk["bound_bpd"], on_disk["bpd"]
    assert set(bound) == set(bpd) and bound["num_examples"] == 8 and bound["nfe"] == 16
    assert bound == results["bound_bpd"]
    direct = evaluate_bound(run, load_split(run.cfg.data, "test", limit=8))
    assert bound["per_example"] == pytest.approx(direct["per_example"], rel=1e-6)
    assert 8 < bpd["mean"] < bound["mean"] < 16  # measured 11.66 and 11.97


def test_cli_likelihood_bound(toy_checkpoint, capsys, single_thread):
    """``scoresde likelihood --bound`` prints the bound; a bad ``eval.bound_times`` is one line."""
    argv = ["likelihood", "--checkpoint", str(toy_checkpoint), "--bound", "--num-examples", "4"]
    assert main([*argv, "--no-progress", "--threads", "1", "--set", "eval.bound_times=3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_examples"] == 4 and printed["nfe"] == 3
    assert math.isfinite(printed["bound_nll_nats"])
    assert main([*argv, "--set", "eval.bound_times=0"]) != 0
    assert capsys.readouterr().err.strip() == (
        "scoresde likelihood: error: eval.bound_times must be >= 1, got 0"
    )
