"""Exact likelihood with the probability-flow ODE (Song et al., 2021, section 4.3, appendix D.2).

Along the ODE ``dx/dt = f~(x, t)`` the log-density obeys
``d log p_t(x(t)) / dt = -div f~(x(t), t)`` (the instantaneous change of variables of neural ODEs),
so ``log p_eps(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt`` with ``z = x(T)``. The divergence is
exact (one vector-Jacobian product per dimension, for low-dimensional data) or the unbiased
Skilling-Hutchinson estimate ``E[v^T (d f~/dx) v]`` with a Rademacher or Gaussian probe ``v`` drawn
once per solve.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchdiffeq import odeint

from scoresde.core._tensor import NoiseSource, batch_time, flat_sum, randn
from scoresde.core.names import ERROR_NORM_NAMES
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE, probability_flow_drift
from scoresde.core.transforms import uniform_dequantize
from scoresde.methods.sampling.ode import FIXED_STEP_METHODS, TimeProgress, solver_options
from scoresde.methods.sampling.scaled import GRIDS, check_grid

TRACE_ESTIMATORS = ("hutchinson-rademacher", "hutchinson-gaussian", "exact")
ERROR_NORMS = ERROR_NORM_NAMES["likelihood"]
"""How the adaptive solver measures the scaled error ``e / (atol + rtol |y|)`` of the augmented
state ``(x, delta)``: ``"per-part"`` takes the RMS of the ``x`` part and of the ``delta`` part and
the larger of the two (torchdiffeq's default, so ``log p`` is controlled on its own);
``"joint"`` one RMS over all ``B (D + 1)`` numbers (scipy's, as in the official code, where
``delta`` weighs ``1 / (D + 1)``); ``"per-example"`` the RMS over each example's ``D + 1`` numbers
and the largest over the batch (every example meets the tolerance, as if solved alone, with the
batch's common steps)."""


def _probe(x: Tensor, trace: str, generator: NoiseSource) -> Tensor | None:
    """The Hutchinson probe ``v`` like ``x`` (``None`` for the exact trace)."""
    if trace == "exact":
        return None
    v = randn(x.shape, generator, device=x.device, dtype=x.dtype)
    return v if trace == "hutchinson-gaussian" else torch.sign(v)


def _divergence(drift: Tensor, x: Tensor, probe: Tensor | None) -> Tensor:
    """``div_x drift`` per example ``(B,)``: exact (``probe=None``) or ``probe^T J probe``."""
    if probe is not None:
        (vjp,) = torch.autograd.grad(drift, x, probe)
        return flat_sum(vjp * probe)
    flat = drift.reshape(drift.shape[0], -1)
    div = torch.zeros(drift.shape[0], device=x.device, dtype=x.dtype)
    for i in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        div = div + grad.reshape(grad.shape[0], -1)[:, i]
    return div


def _joint_rms(state: tuple[Tensor, Tensor]) -> Tensor:
    x, delta = state
    return ((x.square().sum() + delta.square().sum()) / (x.numel() + delta.numel())).sqrt()


def _per_example_rms(state: tuple[Tensor, Tensor]) -> Tensor:
    x, delta = state
    flat = x.reshape(x.shape[0], -1)
    return ((flat.square().sum(1) + delta.square()) / (flat.shape[1] + 1)).sqrt().max()


_NORMS = {"joint": _joint_rms, "per-example": _per_example_rms}


def _forward_grid(sde: SDE, grid: str, num_steps: int, eps: float, rho: float):
    """torchdiffeq ``grid_constructor``: the named sampler grid (:data:`GRIDS`) run from ``eps``
    up to ``T`` (``num_steps + 1`` times, both ends exact)."""

    def construct(func, y0, t: Tensor) -> Tensor:
        times = GRIDS[grid](sde, num_steps, eps, rho).flip(0).to(device=t.device, dtype=t.dtype)
        times[0], times[-1] = t[0], t[-1]
        return times

    return construct


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "hutchinson-rademacher",
    eps: float = 1e-5,
    generator: NoiseSource = None,
    method: str = "dopri5",
    num_steps: int | None = None,
    error_norm: str = "per-part",
    grid: str = "uniform",
    rho: float = 7.0,
    progress: bool | TimeProgress = False,
) -> tuple[Tensor, Tensor, int]:
    """Log-density of ``x`` under the model's probability-flow ODE.

    Args:
        x: data ``(B, ...)`` in the model's scale (use float64 for tight tolerances).
        rtol, atol: tolerances of the adaptive ODE solver (torchdiffeq, on ``x``'s device);
            unused by the fixed-step methods.
        trace: one of ``"hutchinson-rademacher"``, ``"hutchinson-gaussian"``, ``"exact"``.
        eps: the ODE starts at time ``eps`` (the density is that of ``p_eps``).
        generator: draws the Hutchinson probe.
        method: a torchdiffeq method name: adaptive (``"dopri5"``, the default, ``"bosh3"``,
            ...) or fixed-step (``"euler"``, ``"midpoint"``, ``"rk4"``, ``"heun3"``).
        num_steps: the number of steps from ``eps`` to ``T`` of a fixed-step method (on ``grid``)
            (required there; ignored by the adaptive ones, as in
            :func:`scoresde.methods.sampling.ode.ode_sample`). The solve then costs exactly
            ``num_steps``
            times the method's stages in drift evaluations: ``nfe = num_steps`` (euler),
            ``2 num_steps`` (midpoint), ``3 num_steps`` (heun3), ``4 num_steps`` (rk4).
        error_norm: how an adaptive method weighs the error of ``x`` and of ``log p``
            (:data:`ERROR_NORMS`); ignored by the fixed-step ones.
        grid, rho: the times of a fixed-step method, a sampler grid of
            :data:`scoresde.methods.sampling.scaled.GRIDS` traversed from ``eps`` to ``T``:
            ``"uniform"`` (equal steps in ``t``), ``"log_snr"`` (equal steps in the log-SNR) or
            ``"edm"`` (noise levels spaced with exponent ``rho``); ignored by the adaptive
            methods. Accuracy per cost of each choice: ``docs/likelihood_cost.md``.
        progress: a bar in integration time from ``eps`` to ``T`` with the NFE
            (:class:`scoresde.methods.sampling.ode.TimeProgress`; pass one to share it between
            batches: it moves to its next part when this solve ends).

    Returns:
        ``(logp, z, nfe)``: ``logp`` ``(B,)`` in nats, the ODE's endpoint ``z = x(T)`` like
        ``x``, and the number of drift evaluations (each one score call plus one
        vector-Jacobian product; ``D`` products for the exact trace).
    """
    if trace not in TRACE_ESTIMATORS:
        raise ValueError(f"unknown trace {trace!r}; choose from {TRACE_ESTIMATORS}")
    if method in FIXED_STEP_METHODS and num_steps is None:
        raise ValueError(
            f"method {method!r} is a fixed-step solver: give log_likelihood num_steps (the number "
            "of equal steps from eps to T)"
        )
    if error_norm not in ERROR_NORMS:
        raise ValueError(f"unknown error_norm {error_norm!r}; choose from {ERROR_NORMS}")
    check_grid(grid)
    if method in FIXED_STEP_METHODS and grid != "uniform":
        if not 0 < eps < sde.T:
            raise ValueError(f"need 0 < eps < T for the {grid!r} grid, got eps={eps}")
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
    probe = _probe(x, trace, generator)
    nfe = 0
    bar = progress if isinstance(progress, TimeProgress) else None
    own = bar is None and bool(progress)
    if own:
        bar = TimeProgress(eps, sde.T, desc="likelihood")

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        if bar is not None:
            bar.update(t)
        with torch.enable_grad():
            x_t = state[0].detach().requires_grad_(True)
            drift = probability_flow_drift(sde, score_fn, x_t, batch_time(t, x_t))
            div = _divergence(drift, x_t, probe)
        return drift.detach(), div.detach()

    ts = torch.tensor([eps, sde.T], device=x.device, dtype=x.dtype)
    delta0 = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    options = solver_options(ts, method, num_steps)
    if method in FIXED_STEP_METHODS:
        if grid != "uniform":
            options["grid_constructor"] = _forward_grid(sde, grid, num_steps, eps, rho)
    elif error_norm in _NORMS:
        options["norm"] = _NORMS[error_norm]
    try:
        solution = odeint(
            augmented, (x, delta0), ts, rtol=rtol, atol=atol, method=method, options=options
        )
    finally:
        if own:
            bar.close()
    if bar is not None and not own:
        bar.next_part()
    z, delta = solution[0][-1], solution[1][-1]
    return sde.prior_logp(z) + delta, z, nfe


def bits_per_dim(
    logp: Tensor, num_dims: int, *, levels: int = 256, centered: bool = False
) -> Tensor:
    """Bits per dimension of quantised data from the model's log-density of its dequantization.

    The model's density ``p_y`` is over ``y = a u + b`` with ``u`` the uniformly dequantized data in
    ``[0, 1)^D`` (:func:`uniform_dequantize`); ``a = 2, b = -1`` for data centred to ``[-1, 1]``,
    ``a = 1, b = 0`` for ``[0, 1]``. The density of ``u`` is ``p_u(u) = a^D p_y(y)``, and each
    discrete value owns a cell of volume ``levels^-D``, so the dequantization bound
    ``log P(k) >= E[log p_u(u)] - D log(levels)`` gives

        bpd = -log p_y(y) / (D ln 2) - log2(a) + log2(levels).

    For 8-bit data this is ``+ 8`` (``[0, 1]``) or ``+ 7`` (centred): the official code's offset.

    Args:
        logp: ``(B,)`` log-density in nats of the model at ``y`` (from :func:`log_likelihood`).
        num_dims: ``D``, the number of data dimensions per example.
        levels: quantisation levels per dimension.
        centered: whether the model sees data in ``[-1, 1]`` (else ``[0, 1]``).

    Returns:
        ``(B,)`` bits per dimension (an upper bound on the discrete data's).
    """
    scale = 2.0 if centered else 1.0
    return -logp / (num_dims * math.log(2)) - math.log2(scale) + math.log2(levels)


def dequantized_bpd(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    levels: int = 256,
    centered: bool = False,
    generator: NoiseSource = None,
    **likelihood_kwargs,
) -> tuple[Tensor, int]:
    """Dequantize quantised data ``x`` in ``[0, 1]``, scale it and return ``(bpd (B,), nfe)``.

    ``likelihood_kwargs`` go to :func:`log_likelihood` (``rtol``, ``atol``, ``trace``, ``eps``,
    ``method``, ``error_norm``, ``progress``, and ``num_steps``, ``grid``, ``rho`` for a
    fixed-step ``method``).
    """
    u = uniform_dequantize(x, levels=levels, generator=generator)
    y = 2 * u - 1 if centered else u
    logp, _, nfe = log_likelihood(sde, score_fn, y, generator=generator, **likelihood_kwargs)
    return bits_per_dim(logp, x[0].numel(), levels=levels, centered=centered), nfe
