"""Cheaper exact likelihoods: the adaptive solver's error norms and fixed grids
(``docs/likelihood_cost.md``, ``benchmarks/likelihood_cost.py``)."""

from __future__ import annotations

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, dequantized_bpd, log_likelihood, make_score_fn
from scoresde.core.mixture import GaussianMixture, mixture_log_prob, mixture_score_fn
from scoresde.methods.likelihood import _joint_rms, _per_example_rms
from scoresde.methods.sampling.grids import edm_time_grid, log_snr_time_grid

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
EPS = 1e-5
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)


def points() -> torch.Tensor:
    x = MIX.sample(12, generator=torch.Generator().manual_seed(1))
    return torch.cat([x, torch.tensor([[0.0, 0.0], [-3.0, 2.0]], dtype=F64)])


def model_log_prob(sde, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The exact density the ODE gives ``x``: ``log p_eps(x) - log p_T(z) + log prior(z)``."""
    n = x.shape[0]
    closed = mixture_log_prob(sde, MIX, x, torch.full((n,), EPS, dtype=F64))
    return closed - mixture_log_prob(sde, MIX, z, torch.ones(n, dtype=F64)) + sde.prior_logp(z)


def test_error_norms_are_the_stated_rms():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=F64)
    delta = torch.tensor([12.0, 1.0], dtype=F64)
    assert _joint_rms((x, delta)).item() == pytest.approx((171 / 6) ** 0.5, rel=1e-15)
    assert _per_example_rms((x, delta)).item() == pytest.approx(13 / 3**0.5, rel=1e-15)


def test_per_example_norm_does_not_depend_on_the_rest_of_the_batch():
    """Each example's error is measured on its own, so copies of an easy example do not change
    the steps (the batch's largest error sets them) and the hard example's answer is the same
    to float rounding. With the joint norm the copies dilute the RMS, the steps change and so
    does the hard example's answer."""
    sde, score_fn = SDES["VP"], mixture_score_fn(SDES["VP"], MIX)
    hard, easy = torch.tensor([[-3.0, 2.0]], dtype=F64), torch.tensor([[1.2, -0.6]], dtype=F64)
    opts = dict(trace="exact", eps=EPS, rtol=1e-3, atol=1e-3)
    results = {}
    for norm in ("per-example", "joint"):
        for copies in (1, 6):
            x = torch.cat([hard, easy.expand(copies, 2)])
            results[norm, copies] = log_likelihood(sde, score_fn, x, error_norm=norm, **opts)
    one, many = results["per-example", 1], results["per-example", 6]
    assert one[2] == many[2]
    torch.testing.assert_close(one[0][0], many[0][0], rtol=1e-12, atol=1e-12)
    joint_change = (results["joint", 1][0][0] - results["joint", 6][0][0]).abs().item()
    assert joint_change > 1e-8


@pytest.mark.parametrize("norm", ["joint", "per-example"])
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_adaptive_norms_reach_the_closed_form_density(name, norm):
    """At ``rtol = atol = 1e-4`` every norm is within 0.02 nats of the exact model density."""
    sde = SDES[name]
    x = points()
    logp, z, nfe = log_likelihood(
        sde, mixture_score_fn(sde, MIX), x, trace="exact", eps=EPS, rtol=1e-4, atol=1e-4,
        error_norm=norm,
    )
    assert float((logp - model_log_prob(sde, x, z)).abs().max()) < 0.02
    assert nfe < 400


def test_fixed_grid_is_the_sampler_grid_run_forward():
    """rk4 evaluates the drift at each step's start: exactly the sampler grid, reversed."""
    sde = SDES["VP"]
    seen: list[float] = []
    base = mixture_score_fn(sde, MIX)

    def score_fn(x, t):
        seen.append(float(t[0]))
        return base(x, t)

    for grid, expected in [
        ("log_snr", log_snr_time_grid(sde, 5, eps=EPS, dtype=F64)),
        ("edm", edm_time_grid(sde, 5, eps=EPS, rho=3.0, dtype=F64)),
    ]:
        seen.clear()
        _, _, nfe = log_likelihood(
            sde, score_fn, points(), trace="exact", eps=EPS, method="rk4", num_steps=5,
            grid=grid, rho=3.0,
        )
        assert nfe == 20 and len(seen) == 20
        starts = torch.tensor([*seen[::4], seen[-1]], dtype=F64)
        torch.testing.assert_close(starts, expected.flip(0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "name, method, grid, steps, bound",
    [("VE", "rk4", "edm", 32, 0.05), ("VP", "rk4", "uniform", 64, 0.015),
     ("subVP", "rk4", "uniform", 64, 0.03)],
)
def test_fixed_grid_reaches_the_closed_form_density(name, method, grid, steps, bound):
    """A fixed grid costs exactly its stages times its steps and is within ``bound`` nats."""
    sde = SDES[name]
    x = points()
    logp, z, nfe = log_likelihood(
        sde, mixture_score_fn(sde, MIX), x, trace="exact", eps=EPS, method=method,
        num_steps=steps, grid=grid,
    )
    assert nfe == 4 * steps
    assert float((logp - model_log_prob(sde, x, z)).abs().max()) < bound


def test_bad_options_are_refused_before_solving():
    sde = SDES["VP"]

    def never(x, t):
        raise AssertionError("solved")

    x = points()
    with pytest.raises(ValueError, match="error_norm"):
        log_likelihood(sde, never, x, error_norm="l2")
    with pytest.raises(ValueError, match="time grid"):
        log_likelihood(sde, never, x, method="rk4", num_steps=4, grid="cosine")
    with pytest.raises(ValueError, match="rho"):
        log_likelihood(sde, never, x, method="rk4", num_steps=4, grid="edm", rho=0.0)
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(sde, never, x, method="rk4", num_steps=4, grid="log_snr", eps=0.0)
    with pytest.raises(ValueError, match="error_norm"):
        dequantized_bpd(sde, never, torch.zeros(2, 1, 2, 2), error_norm="max")


# bits/dim of the 8 examples of the VE problem of benchmarks/likelihood_cost.py, converged:
# dopri5, joint norm, rtol = atol = 1e-7, float64 network and state (7526 evaluations)
VE_CONVERGED = [14.712672, 14.749995, 14.644527, 15.05357, 14.77557, 14.973075, 14.904808,
                14.991278]


def test_tiny_ve_reference_net_reaches_the_converged_bpd_at_a_third_of_the_cost(reference_path):
    """rk4 on 64 equal steps: 256 evaluations (the official code spends 1976 at its default
    tolerance; the goal is at most a third, 658) and every example within 0.01 bits/dim of the
    converged answer (measured: 3.8e-3). Same data, dequantization and probe as the benchmark;
    float64 state, float32 network."""
    from scoresde.interop.official import from_official_config, official_state_dict_to_ours
    from scoresde.nn.ncsnpp import NCSNpp

    ref = torch.load(reference_path("ncsnpp_ve_tiny.pt"), weights_only=True)
    net = NCSNpp(**from_official_config(ref["config"]["model"], ref["config"]["data"]))
    net.load_state_dict(official_state_dict_to_ours(ref["state_dict"]))
    sde = VESDE()
    net_score = make_score_fn(net.eval(), sde)

    def score_fn(x, t):
        return net_score(x.float(), t.float()).double()

    u = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    bpd, nfe = dequantized_bpd(
        sde, score_fn, torch.round(u * 255) / 255, levels=256, centered=False,
        generator=torch.Generator().manual_seed(1), method="rk4", num_steps=64, grid="uniform",
    )
    assert nfe == 256
    assert float((bpd - torch.tensor(VE_CONVERGED, dtype=F64)).abs().max()) < 0.01
