"""The SDEs' noise schedules in the fast samplers' variables, and the time grids built on them.

``sigma(t) = s(t) / m(t)`` and ``lambda(t) = log(m^2 / s^2)`` are checked against the perturbation
kernel ``marginal_coeffs`` (appendix B), their inverses by round trips, and the EDM (Karras et al.,
2022, eq. 5) and log-SNR (DPM-Solver, Lu et al., 2022) grids against their defining formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.methods.sampling import edm_time_grid, log_snr_time_grid, uniform_time_grid

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SDES = {
    "VE": VESDE(sigma_min=0.01, sigma_max=50.0),
    "VP": VPSDE(),
    "subVP": SubVPSDE(),
    "VP-constant-beta": VPSDE(beta_min=5.0, beta_max=5.0),
}
NAMES = list(SDES)


def times(lo: float, dtype=F64):
    """Log- and linearly spaced times in ``[lo, 1]``, ``(2002,)``."""
    return torch.cat(
        [
            torch.logspace(math.log10(lo), 0.0, 1001, dtype=F64),
            torch.linspace(lo, 1.0, 1001, dtype=F64),
        ]
    ).to(dtype)


def kernel_sigma(sde, t):
    m, s = sde.marginal_coeffs(t)
    return s / m


def kernel_log_snr(sde, t):
    m, s = sde.marginal_coeffs(t)
    return torch.log(m**2 / s**2)


def sigma_derivative(name, sde, t):
    """``d sigma / dt`` by hand: VE ``sigma log(sigma_max / sigma_min)``; VP, with
    ``sigma^2 = exp(L) - 1`` and ``dL/dt = beta``, ``beta exp(L) / (2 sigma)``; sub-VP, with
    ``sigma = 2 sinh(L / 2)``, ``beta cosh(L / 2)``."""
    if name == "VE":
        return sde.sigma(t) * math.log(sde.sigma_max / sde.sigma_min)
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    L = beta_integral(sde, t)
    if name == "subVP":
        return beta * torch.cosh(L / 2)
    return beta * torch.exp(L) / (2 * torch.sqrt(torch.expm1(L)))


def beta_integral(sde, t):
    """``int_0^t beta = t^2 (beta_max - beta_min) / 2 + t beta_min``."""
    return 0.5 * t**2 * (sde.beta_max - sde.beta_min) + t * sde.beta_min


# --------------------------------------------------------------------------------------------
# sigma, log_snr and their inverses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sigma_is_the_noise_to_signal_ratio_of_the_kernel(name):
    sde, t = SDES[name], times(1e-4)
    sigma = sde.sigma(t)
    assert sigma.shape == t.shape and sigma.dtype == F64
    torch.testing.assert_close(sigma, kernel_sigma(sde, t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_is_log_of_m2_over_s2(name):
    sde, t = SDES[name], times(1e-4)
    lam = sde.log_snr(t)
    assert lam.shape == t.shape and lam.dtype == F64
    # lambda crosses zero (sigma = 1): an absolute tolerance at the scale of |lambda| <= 30
    torch.testing.assert_close(lam, kernel_log_snr(sde, t), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lam, -2 * torch.log(sde.sigma(t)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_round_trips_in_float64(name):
    sde, t = SDES[name], times(1e-4)
    torch.testing.assert_close(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_round_trips_in_float32(name):
    sde, t = SDES[name], times(1e-3, torch.float32)
    back_sigma, back_lam = sde.t_from_sigma(sde.sigma(t)), sde.t_from_log_snr(sde.log_snr(t))
    assert back_sigma.dtype == back_lam.dtype == torch.float32
    # VP family: relative accuracy ~1e-6 down to t = 1e-3. VE is ill-conditioned at small t:
    # lambda ~ 9.2 carries an ulp of 1e-6, i.e. dt = 1e-6 / (2 log 5000) ~ 6e-8 absolute, a
    # relative 3e-5 at t = 1e-3 (and sigma ~ sigma_min carries t only in sigma / sigma_min - 1).
    atol = 1e-7 if name == "VE" else 0.0
    torch.testing.assert_close(back_sigma, t, rtol=1e-5, atol=atol)
    torch.testing.assert_close(back_lam, t, rtol=1e-5, atol=atol)


def test_ve_sigma_is_unchanged():
    sde, t = SDES["VE"], times(1e-4)
    for tt in (t, t.float()):
        assert torch.equal(sde.sigma(tt), sde.marginal_coeffs(tt)[1])
        assert torch.equal(sde.sigma(tt), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** tt)


@pytest.mark.parametrize("name", NAMES)
def test_sigma_increases_and_log_snr_decreases(name):
    sde = SDES[name]
    t = torch.linspace(1e-4, 1.0, 2001, dtype=F64)
    assert torch.all(torch.diff(sde.sigma(t)) > 0)
    assert torch.all(torch.diff(sde.log_snr(t)) < 0)


@pytest.mark.parametrize("name", NAMES)
def test_sigma_derivative_by_finite_differences(name):
    sde, h = SDES[name], 1e-6
    t = torch.linspace(1e-3, 1.0 - 1e-3, 201, dtype=F64)
    fd = (sde.sigma(t + h) - sde.sigma(t - h)) / (2 * h)
    assert torch.all(fd > 0)
    # central differences: truncation h^2 sigma''' / 6, a relative 1.3e-7 for VP at t = 1e-3
    torch.testing.assert_close(fd, sigma_derivative(name, sde, t), rtol=1e-6, atol=0)


def test_closed_forms_by_hand():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    ve = SDES["VE"]
    torch.testing.assert_close(
        ve.t_from_sigma(torch.tensor([0.01, 50.0], dtype=F64)),
        torch.tensor([0.0, 1.0], dtype=F64),
        rtol=0,
        atol=1e-15,
    )
    vp, sub = SDES["VP"], SDES["subVP"]
    L = beta_integral(vp, t)
    torch.testing.assert_close(vp.sigma(t), torch.sqrt(torch.exp(L) - 1), rtol=1e-12, atol=0)
    torch.testing.assert_close(sub.sigma(t), 2 * torch.sinh(L / 2), rtol=1e-12, atol=0)
    assert vp.t_from_sigma(torch.zeros(1, dtype=F64)).item() == 0.0
    assert sub.t_from_sigma(torch.zeros(1, dtype=F64)).item() == 0.0
    assert vp.log_snr(torch.zeros(1, dtype=F64)).item() == math.inf
    torch.testing.assert_close(
        vp.t_from_log_mean_coeff(vp.log_mean_coeff(t)), t, rtol=1e-14, atol=0
    )
    const = SDES["VP-constant-beta"]
    torch.testing.assert_close(const.t_from_log_mean_coeff(-2.5 * t), t, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------
# The EDM and log-SNR time grids
# --------------------------------------------------------------------------------------------

GRIDS = {"edm": edm_time_grid, "log_snr": log_snr_time_grid}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_steps", [1, 2, 18, 100])
def test_grid_shape_ends_and_order(grid, name, num_steps):
    sde = SDES[name]
    t = GRIDS[grid](sde, num_steps, eps=1e-3, dtype=F64)
    assert t.shape == (num_steps + 1,) and t.dtype == F64
    assert t[0].item() == sde.T and t[-1].item() == 1e-3
    assert torch.all(torch.diff(t) < 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_edm_grid_follows_karras_eq5(name, rho):
    sde, n, eps = SDES[name], 40, 1e-3
    t = edm_time_grid(sde, n, eps=eps, rho=rho, dtype=F64)
    ends = torch.tensor([sde.T, eps], dtype=F64)
    s_max, s_min = kernel_sigma(sde, ends) ** (1 / rho)
    i = torch.arange(n + 1, dtype=F64)
    expected = (s_max + i / n * (s_min - s_max)) ** rho
    torch.testing.assert_close(kernel_sigma(sde, t), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_edm_grid_tends_to_the_log_snr_grid_as_rho_grows(name):
    # (a + i/n (b - a))^rho with a, b = sigma^(1/rho) -> geometric in sigma, i.e. uniform in
    # lambda = -2 log sigma, with an error O(1 / rho)
    sde = SDES[name]
    target = log_snr_time_grid(sde, 20, dtype=F64)
    errs = [(edm_time_grid(sde, 20, rho=rho, dtype=F64) - target).abs().max() for rho in (1e3, 1e5)]
    assert errs[1] < 1e-4 and 50 < errs[0] / errs[1] < 200


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_grid_has_equal_lambda_steps(name):
    sde = SDES[name]
    t = log_snr_time_grid(sde, 50, eps=1e-3, dtype=F64)
    dlam = torch.diff(kernel_log_snr(sde, t))
    assert torch.all(dlam > 0)
    assert (dlam.std() / dlam.mean()).item() < 1e-9
    lam_ends = kernel_log_snr(sde, torch.tensor([sde.T, 1e-3], dtype=F64))
    torch.testing.assert_close(dlam.sum(), lam_ends[1] - lam_ends[0], rtol=1e-12, atol=0)


def test_ve_log_snr_grid_is_uniform_in_time():
    # VE's lambda is affine in t, so equal lambda steps are equal time steps
    sde = SDES["VE"]
    torch.testing.assert_close(
        log_snr_time_grid(sde, 10, dtype=F64),
        uniform_time_grid(10, dtype=F64),
        rtol=1e-12,
        atol=1e-15,
    )


@pytest.mark.parametrize("grid", list(GRIDS))
def test_grid_dtype_and_device(grid):
    sde = SDES["VP"]
    default = GRIDS[grid](sde, 8)
    assert default.dtype == torch.float32 and default.device.type == "cpu"
    exact = GRIDS[grid](sde, 8, dtype=F64)
    assert torch.equal(default, exact.float())
    assert default[0].item() == 1.0 and default[-1].item() == torch.tensor(1e-3).item()
    meta = GRIDS[grid](sde, 8, device="meta", dtype=torch.float16)
    assert meta.device.type == "meta" and meta.dtype == torch.float16 and meta.shape == (9,)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize(
    "kwargs", [{"num_steps": 0}, {"eps": 0.0}, {"eps": -1e-3}, {"eps": 1.0}, {"eps": 2.0}]
)
def test_grid_errors(grid, kwargs):
    args = {"num_steps": 10} | kwargs
    with pytest.raises(ValueError, match=r"num_steps|eps"):
        GRIDS[grid](SDES["VP"], args.pop("num_steps"), **args)


@pytest.mark.parametrize("rho", [0.0, -1.0, math.nan])
def test_edm_grid_rejects_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        edm_time_grid(SDES["VE"], 10, rho=rho)
