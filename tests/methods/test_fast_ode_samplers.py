"""The few-step ODE samplers ``ddim``, ``heun``, ``dpmpp_2m``, ``dpmpp_3m``: convergence orders
against the closed-form flow of Gaussian data, exact NFE counts, Gaussian-mixture mode weights,
projections, callbacks, grids, option checks, configs and batch independence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import scoresde
from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.cli import main
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.methods.sampling import (
    GRIDS,
    check_sampler,
    ddim_sampler,
    dpmpp_2m_sampler,
    dpmpp_3m_sampler,
    edm_time_grid,
    heun_sampler,
    log_snr_time_grid,
)
from scoresde.methods.sampling import SAMPLERS as RULES
from scoresde.methods.sampling.fast_ode import multistep_orders
from scoresde.setup.build import sampler_config
from scoresde.setup.config import ConfigError, SampleConfig

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=20.0), "VP": VPSDE(), "subVP": SubVPSDE()}
SAMPLERS = {
    "ddim": ddim_sampler,
    "heun": heun_sampler,
    "dpmpp_2m": dpmpp_2m_sampler,
    "dpmpp_3m": dpmpp_3m_sampler,
}
EVALS_PER_STEP = {"ddim": 1, "heun": 2, "dpmpp_2m": 1, "dpmpp_3m": 1}

# Gaussian data N(MU, C^2 I) in D = 3.
MU = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
C = 0.5
GAUSS = GaussianMixture(torch.ones(1, dtype=F64), MU[None], torch.tensor([C], dtype=F64))

MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)
MIX32 = GaussianMixture(MIX.weights.float(), MIX.means.float(), MIX.stds.float())


def prior(sde, n=4, d=3, seed=0, dtype=F64):
    return sde.prior_sampling((n, d), torch.Generator().manual_seed(seed), dtype=dtype)


def gaussian_flow(sde, x_T, t):
    """The probability-flow solution for data ``N(MU, C^2 I)`` at time ``t``, in closed form.

    In the scaled state ``y = x / m`` the flow is ``dy/dsigma = (y - D) / sigma`` with
    ``D = MU + C^2 (y - MU) / (C^2 + sigma^2)``, so
    ``y(sigma) = MU + (y_T - MU) sqrt(C^2 + sigma^2) / sqrt(C^2 + sigma_T^2)``; returns
    ``m(t) y(sigma(t))``.
    """
    ends = torch.tensor([sde.T, t], dtype=F64)
    (m_T, m_t), _ = sde.marginal_coeffs(ends)
    sigma_T, sigma_t = sde.sigma(ends)
    y = MU + (x_T / m_T - MU) * torch.sqrt(C**2 + sigma_t**2) / torch.sqrt(C**2 + sigma_T**2)
    return m_t * y


def endpoint_error(sde, method, num_steps, **options):
    x_T = prior(sde)
    x, _ = SAMPLERS[method](sde, mixture_score_fn(sde, GAUSS), x_T, num_steps=num_steps,
                            denoise=False, **options)
    return float((x - gaussian_flow(sde, x_T, 1e-3)).abs().max())


# ---- 1. convergence to the closed-form flow ------------------------------------------------

NOMINAL_ORDER = {"ddim": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}
ORDER_GRID = {"ddim": "uniform", "heun": "edm", "dpmpp_2m": "log_snr", "dpmpp_3m": "edm"}


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_observed_convergence_order(method, name):
    """``log2(err(32) / err(64))`` at ``t = eps``, from the same ``x_T``, within 0.35 of the
    nominal order. Measured (VE, VP, sub-VP): ddim (uniform grid) 0.98, 0.97, 0.97; heun (edm)
    2.03, 2.05, 2.06; dpmpp_2m (log_snr) 1.98, 1.96, 1.92; dpmpp_3m (edm) 3.06, 3.16, 3.07.

    dpmpp_3m is measured on the EDM grid: on the log-SNR grid (equal steps ``h``) Gaussian data
    make its leading error term integrate to almost nothing (it is ``h^3`` times the integral of
    ``f f'''`` with ``f = 1 / sqrt(C^2 + sigma^2)``, nearly a pure boundary term), and the
    observed order there is 4.0-4.7 (asserted as at least the nominal one). With the
    ``D''`` weight of k-diffusion's / DPM-Solver's 3M (half of eq. 3's) it measures 2.0 on
    both grids.
    """
    sde = SDES[name]
    grid = ORDER_GRID[method]
    order = math.log2(endpoint_error(sde, method, 32, grid=grid)
                      / endpoint_error(sde, method, 64, grid=grid))
    assert abs(order - NOMINAL_ORDER[method]) < 0.35, order
    if method == "dpmpp_3m":
        order = math.log2(endpoint_error(sde, method, 32, grid="log_snr")
                          / endpoint_error(sde, method, 64, grid="log_snr"))
        assert order > 3 - 0.35, order


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_converges_on_every_grid(method, name):
    """From 16 to 128 steps the error falls at least five-fold on each grid (measured: at least
    7.3-fold, ddim on sub-VP; up to 5000-fold, dpmpp_3m on VE). On the uniform-in-t grid of
    VP/sub-VP, whose log-SNR steps are very unequal, the multistep errors fall monotonically
    only from about 32 steps on, hence the wide bracket."""
    sde = SDES[name]
    for grid in GRIDS:
        coarse = endpoint_error(sde, method, 16, grid=grid)
        fine = endpoint_error(sde, method, 128, grid=grid)
        assert fine < coarse / 5, (grid, coarse, fine)


def test_first_order_steps_agree():
    """DPM-Solver++ of one step (and 2 steps of 3M with lower_order_final: orders 1, 1) is DDIM."""
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, GAUSS)
    x_T = prior(sde)
    for steps, sampler in ((1, dpmpp_2m_sampler), (2, dpmpp_3m_sampler)):
        expected, _ = ddim_sampler(sde, score_fn, x_T, num_steps=steps, grid="log_snr")
        got, _ = sampler(sde, score_fn, x_T, num_steps=steps)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_multistep_orders():
    assert multistep_orders(10, 3, True) == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert multistep_orders(10, 2, True) == [1, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    assert multistep_orders(10, 3, False) == [1, 2, *[3] * 8]
    assert multistep_orders(15, 3, True) == [1, 2, *[3] * 13]
    assert multistep_orders(1, 3, True) == [1]


# ---- 2. exact NFE ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SAMPLERS))
@pytest.mark.parametrize("denoise", [True, False])
def test_nfe_is_exact(method, denoise):
    sde = SDES["VP"]
    base = mixture_score_fn(sde, GAUSS)
    calls = []

    def counting(x, t):
        calls.append(1)
        return base(x, t)

    for n in (1, 7, 16):
        calls.clear()
        _, info = scoresde.sample(sde, counting, prior(sde), method=method, num_steps=n,
                                  denoise=denoise)
        assert info == {"nfe": EVALS_PER_STEP[method] * n + denoise, "num_steps": n}
        assert len(calls) == info["nfe"]


# ---- 3. Gaussian-mixture mode weights --------------------------------------------------------

MIXTURE_GRID = {"ddim": "log_snr", "heun": "edm", "dpmpp_2m": "log_snr", "dpmpp_3m": "log_snr"}
# (weight, mean, std) allowances for the sampler's bias at 20 steps, above 4 Monte-Carlo
# standard errors; the biases measured with 20000 samples (VE sigma_max = 50, VP) are
# ddim: 0.022, 0.095, 0.024; heun: 0.004, 0.030, 0.056; dpmpp_2m: 0.008, 0.024, 0.045;
# dpmpp_3m: 0.004, 0.020, 0.051.
MIXTURE_BIAS = {
    "ddim": (0.03, 0.12, 0.05),
    "heun": (0.01, 0.05, 0.08),
    "dpmpp_2m": (0.015, 0.05, 0.08),
    "dpmpp_3m": (0.01, 0.05, 0.08),
}


@pytest.mark.parametrize("name", ["VE", "VP"])
@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_twenty_steps_sample_the_mixture(method, name, check_mixture):
    sde = VESDE(sigma_max=50.0) if name == "VE" else VPSDE()
    x_T = prior(sde, n=4000, d=2)
    x, info = scoresde.sample(sde, mixture_score_fn(sde, MIX), x_T, method=method,
                              num_steps=20, grid=MIXTURE_GRID[method])
    assert info["nfe"] == EVALS_PER_STEP[method] * 20 + 1
    weight, mean, std = MIXTURE_BIAS[method]
    check_mixture(x, MIX, weight_bias=weight, mean_bias=mean, std_bias=std)


# ---- 4. project, callback, grids, options ----------------------------------------------------


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_project_and_callback_see_every_step_in_x_space(method):
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, GAUSS)
    x_T = prior(sde)
    n = 64
    times = GRIDS[ORDER_GRID[method]](sde, n, 1e-3, 7.0)
    projected, seen = [], []

    def project(x, t):
        projected.append(None if t is None else float(t[0]))
        return torch.cat([x[:, :2], torch.full_like(x[:, 2:], 0.25)], dim=1)

    x, _ = scoresde.sample(sde, score_fn, x_T, method=method, num_steps=n,
                           grid=ORDER_GRID[method], project=project,
                           callback=lambda i, t, x: seen.append((i, float(t[0]), x)))
    assert projected == [*times[1:].tolist(), None]
    assert [i for i, _, _ in seen] == list(range(n + 1))
    assert [t for _, t, _ in seen] == [*times[1:].tolist(), 1e-3]
    assert torch.all(x[:, 2] == 0.25) and seen[-1][2] is x
    # Without projection the callback's states are x (not y = x / m) on the closed-form flow.
    seen.clear()
    scoresde.sample(sde, score_fn, x_T, method=method, num_steps=n, grid=ORDER_GRID[method],
                    callback=lambda i, t, x: seen.append((i, float(t[0]), x)))
    for _, t, x_t in seen[:-1]:
        torch.testing.assert_close(x_t, gaussian_flow(sde, x_T, t), rtol=0, atol=0.15)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_a_time_grid_tensor_equals_the_named_grid(method):
    sde = SDES["subVP"]
    score_fn = mixture_score_fn(sde, GAUSS)
    x_T = prior(sde)
    for grid, times in (("edm", edm_time_grid(sde, 10, eps=1e-3, rho=5.0, dtype=F64)),
                        ("log_snr", log_snr_time_grid(sde, 10, eps=1e-3, dtype=F64))):
        named, info = scoresde.sample(sde, score_fn, x_T, method=method, num_steps=10,
                                      grid=grid, rho=5.0)
        custom, custom_info = scoresde.sample(sde, score_fn, x_T, method=method,
                                              num_steps=3, time_grid=times)
        assert torch.equal(named, custom) and info == custom_info
        assert custom_info["num_steps"] == 10


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_unknown_grids_and_bad_time_grids_are_refused(method):
    sde, score_fn, x_T = SDES["VP"], lambda x, t: -x, torch.zeros(2, 3)
    message = r"unknown time grid 'karras'; choose from \['edm', 'log_snr', 'uniform'\]"
    with pytest.raises(ValueError, match=message):
        check_sampler(method, {"grid": "karras"})
    with pytest.raises(ValueError, match=message):
        SAMPLERS[method](sde, score_fn, x_T, grid="karras")
    with pytest.raises(ValueError, match="strictly decreasing"):
        scoresde.sample(sde, score_fn, x_T, method=method,
                        time_grid=torch.tensor([0.5, 1.0, 0.1]))
    with pytest.raises(ValueError, match="sigma = s/m = 0"):
        scoresde.sample(sde, score_fn, x_T, method=method, time_grid=torch.tensor([1.0, 0.0]))


def test_sample_heun_equals_the_sampler():
    sde = SDES["VE"]
    score_fn = mixture_score_fn(sde, GAUSS)
    x_T = prior(sde)
    direct, info = heun_sampler(sde, score_fn, x_T, num_steps=9)
    via, via_info = scoresde.sample(sde, score_fn, x_T, method="heun", num_steps=9,
                                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(direct, via) and info == via_info == {"nfe": 19, "num_steps": 9}
    assert set(scoresde.SAMPLERS) >= set(SAMPLERS)


@pytest.mark.parametrize("method, options, message", [
    ("heun", {"snr": 0.1}, "sampler 'heun' takes no option 'snr'"),
    ("ddim", {"lower_order_final": False}, "sampler 'ddim' takes no option 'lower_order_final'"),
    ("dpmpp_2m", {"rtol": 1e-3}, "sampler 'dpmpp_2m' takes no option 'rtol'"),
    ("dpmpp_3m", {"grid": "log-snr"}, "unknown time grid 'log-snr'"),
])
def test_options_are_checked(method, options, message):
    with pytest.raises(ValueError, match=message):
        check_sampler(method, options)
    assert check_sampler(method, {"num_steps": 5, "grid": "edm", "rho": 3.0})


def test_the_sampling_config_maps_to_the_options():
    method, options = sampler_config(SampleConfig(method="heun", num_steps=18))
    assert (method, options) == ("heun", {"num_steps": 18})
    assert SampleConfig(method="heun", num_steps=18).sampler_options() == RULES["heun"].options(
        num_steps=18, eps=1e-3, denoise=True, rho=7.0, grid="log_snr")
    _, options = sampler_config(SampleConfig(method="dpmpp_3m", grid="log_snr", rho=3.0))
    assert options == {"grid": "log_snr", "rho": 3.0}
    _, options = sampler_config(SampleConfig(grid="log_snr", rho=3.0), "dpmpp_3m")
    assert options == {}  # another sampler: its own defaults
    with pytest.raises(ConfigError, match=r"unknown time grid 'karras'; choose from"):
        SampleConfig(grid="karras")
    with pytest.raises(ConfigError, match=r"sample\.rho must be > 0, got 0\.0"):
        SampleConfig(rho=0.0)


def test_cli_samples_with_heun(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--no-progress", "--device", "cpu", "--threads", "1", "--set", "model.hidden=16",
            "--set", "model.depth=1", "--set", "train.batch_size=16"]
    assert main(["train", "--preset", "toy_gmm", "--out", str(run), "--steps", "2", *tiny]) == 0
    capsys.readouterr()
    code = main(["sample", "--checkpoint", str(run / "checkpoint.safetensors"),
                 "--out", str(tmp_path / "s"), "--method", "heun", "--num-samples", "6",
                 "--no-progress", "--threads", "1", "--set", "sample.num_steps=4",
                 "--set", "sample.grid=log_snr"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["method"], info["nfe"], info["num_steps"]) == ("heun", 9, 4)
    assert "pc_steps" not in info
    assert np.isfinite(np.load(tmp_path / "s" / "samples.npy")).all()


# ---- 5. batch independence -------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_samples_do_not_depend_on_the_batch(method):
    sde = VPSDE()
    score_fn = mixture_score_fn(sde, MIX32)
    x_T = prior(sde, n=5, d=2, dtype=torch.float32)
    together, _ = scoresde.sample(sde, score_fn, x_T, method=method, num_steps=12)
    alone = torch.cat([scoresde.sample(sde, score_fn, x_T[i:i + 1], method=method,
                                       num_steps=12)[0] for i in range(5)])
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-6)
