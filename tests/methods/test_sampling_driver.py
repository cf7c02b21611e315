"""The one sampler loop: every rule's NFE and projection, options refused by name, a new rule
written here alone, EDM's churn normalisation, and one list of names for every table."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.core.names import (
    CORRECTOR_NAMES,
    ERROR_NORM_NAMES,
    FIXED_STEP_METHODS,
    GRID_NAMES,
    PREDICTOR_NAMES,
    SAMPLER_NAMES,
)
from scoresde.core.sampler_options import GridOptions, OptionError
from scoresde.methods.sampling import (
    CORRECTORS,
    GRIDS,
    PREDICTORS,
    SAMPLERS,
    Rule,
    integrate,
    sample,
)
from scoresde.methods.sampling.fast_sde import ERROR_NORMS, edm_prepare
from scoresde.methods.sampling.scaled import sampler_times

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
MIX = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-1.0, 0.5], [1.2, -0.4]],
                      dtype=F64), torch.tensor([0.3, 0.5], dtype=F64))
N = 6
GRID_RULES = ["pc", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "edm"]
NFE = {  # score evaluations of N steps, without the final denoising step
    "pc": 2 * N,  # predictor + one corrector step
    "ddim": N,
    "heun": 2 * N,
    "dpmpp_2m": N,
    "dpmpp_3m": N,
    "edm": 2 * N,
}


def _setup(sde=None, batch=5):
    sde = sde or VPSDE()
    x_T = sde.prior_sampling((batch, 2), torch.Generator().manual_seed(0), dtype=F64)
    return sde, mixture_score_fn(sde, MIX), x_T


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("method", GRID_RULES)
def test_every_grid_rule_counts_its_score_evaluations_and_projects_after_every_step(
    method, denoise
):
    sde, score_fn, x_T = _setup()
    calls = {"score": 0}

    def counted(x, t):
        calls["score"] += 1
        return score_fn(x, t)

    projected, reported = [], []

    def project(x, t):
        projected.append(None if t is None else round(float(t[0]), 9))
        return x

    options = {"num_steps": N, "denoise": denoise}
    if method == "edm":
        options["s_churn"] = 2.0
    x, info = sample(sde, counted, x_T, method=method, generator=torch.Generator().manual_seed(1),
                     project=project, callback=lambda i, t, x: reported.append(i), **options)
    assert info["nfe"] == calls["score"] == NFE[method] + denoise
    assert info["num_steps"] == N and torch.isfinite(x).all()
    times = sampler_times(sde, x_T, num_steps=N, eps=1e-3, grid=SAMPLERS[method].grid,
                          rho=7.0, time_grid=None, scaled=method != "pc").tolist()
    after_steps = [round(t, 9) for t in times[1:]]
    if method == "pc":  # and between the predictor and the corrector
        after_steps = [t for t in after_steps for _ in range(2)]
    assert projected == after_steps + ([None] if denoise else [])
    assert reported == list(range(N + denoise))


def test_the_black_box_rules_count_and_finish_like_the_others():
    sde, score_fn, x_T = _setup()
    calls = {"score": 0}

    def counted(x, t):
        calls["score"] += 1
        return score_fn(x, t)

    seen = []
    x, info = sample(sde, counted, x_T, method="ode", rtol=1e-3, atol=1e-3,
                     callback=lambda i, t, x: seen.append(i))
    assert info["nfe"] == calls["score"] == len(seen) and seen == list(range(info["nfe"]))
    with pytest.raises(ValueError, match="'ode' sampler is a black-box solve"):
        sample(sde, score_fn, x_T, method="ode", project=lambda x, t: x)
    calls["score"] = 0
    x, info = sample(sde, counted, x_T, method="adaptive", rtol=0.1,
                     generator=torch.Generator().manual_seed(0))
    iterations = (info["nfe"] - 1) // 2
    assert info["nfe"] == calls["score"] == 2 * iterations + 1 and iterations > 3
    assert info["accepted"] >= 1 and torch.isfinite(x).all()


@pytest.mark.parametrize("method", SAMPLER_NAMES)
def test_options_are_refused_by_name_with_the_valid_ones(method):
    sde, score_fn, x_T = _setup()
    valid = next(name for name in ("num_steps", "rtol", "eps") if name in _names(method))
    with pytest.raises(ValueError, match=rf"sampler '{method}' takes no option 'num_stepz'; "
                       rf"its options: .*\b{valid}\b"):
        sample(sde, score_fn, x_T, method=method, num_stepz=3)
    with pytest.raises(OptionError, match=r"eps must be a finite number, got nan"):
        sample(sde, score_fn, x_T, method=method, eps=float("nan"))


def _names(method):
    from scoresde.core.sampler_options import option_names

    return option_names(SAMPLERS[method].options)


def _euler_step(s, y, memory):
    """Euler's method on EDM's ODE dy/dsigma = (y - D) / sigma: written here alone."""
    d = (y - s.denoise(y, s.t)) / s.sigma[:, None]
    return y + (s.sigma_next - s.sigma)[:, None] * d, memory


@pytest.mark.parametrize("sde", [VESDE(sigma_max=20.0), VPSDE(), SubVPSDE()], ids=str)
def test_a_new_rule_is_one_step_function(sde):
    # Euler in sigma is DDIM (y_{i+1} = D + sigma_{i+1} / sigma_i (y - D)): a rule written in
    # the test gets the grid, the scaled path, the final denoising and the count from the driver.
    sde, score_fn, x_T = _setup(sde)
    euler = Rule(GridOptions, _euler_step)
    times = sampler_times(sde, x_T, num_steps=8, eps=1e-3, grid="log_snr", rho=7.0,
                          time_grid=None)
    x, info = integrate(euler, sde, score_fn, x_T, times)
    ddim, _ = sample(sde, score_fn, x_T, method="ddim", num_steps=8, grid="log_snr")
    assert info == {"nfe": 9, "num_steps": 8}
    torch.testing.assert_close(x, ddim, rtol=1e-10, atol=1e-10)


def test_edm_churn_is_normalised_by_the_number_of_noise_levels_as_in_edm():
    # EDM's gamma = min(S_churn / N, sqrt(2) - 1), N its noise levels: our n steps plus the
    # final denoising step (EDM's last step, to sigma = 0).
    sde = VPSDE()
    times = sampler_times(sde, torch.zeros(1, 2, dtype=F64), num_steps=17, eps=1e-3,
                          grid="edm", rho=7.0, time_grid=None)
    options = SAMPLERS["edm"].options(num_steps=17, s_churn=5.0, s_tmin=0.05, s_tmax=50.0)
    plan = edm_prepare(sde, times, options, denoise=True)
    sigmas = sde.sigma(times)[:-1].tolist()
    assert plan.gammas == [5.0 / 18 * (0.05 <= s <= 50.0) for s in sigmas]
    assert 0 < sum(g > 0 for g in plan.gammas) < 17
    plan = edm_prepare(sde, times, SAMPLERS["edm"].options(s_churn=80.0), denoise=False)
    assert plan.gammas == [math.sqrt(2) - 1] * 17  # EDM's cap: at most double the variance
    assert edm_prepare(sde, times, SAMPLERS["heun"].options(), denoise=True).gammas == [0.0] * 17


def test_every_table_is_keyed_by_the_one_list_of_names():
    from scoresde.methods.likelihood import ERROR_NORMS as LIKELIHOOD_NORMS
    from scoresde.methods.sampling.ode import FIXED_STEP_METHODS as ODE_FIXED

    assert tuple(SAMPLERS) == SAMPLER_NAMES
    assert tuple(GRIDS) == GRID_NAMES
    assert tuple(PREDICTORS) == PREDICTOR_NAMES
    assert tuple(CORRECTORS) == CORRECTOR_NAMES
    assert tuple(ERROR_NORMS) == ERROR_NORM_NAMES["adaptive"]
    assert tuple(LIKELIHOOD_NORMS) == ERROR_NORM_NAMES["likelihood"]
    assert tuple(ODE_FIXED) == FIXED_STEP_METHODS
