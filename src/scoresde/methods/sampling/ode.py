"""Sampling with the probability-flow ODE (Song et al., 2021, section 4.3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from scoresde.core._tensor import batch_time
from scoresde.core.names import FIXED_STEP_METHODS
from scoresde.core.score import ScoreFn, tweedie_denoise
from scoresde.core.sdes import SDE, probability_flow_drift


class TimeProgress:
    """A progress bar in integration time for black-box ODE solves (the solver's steps are not
    known in advance): ``parts`` solves from ``t0`` to ``t1`` (e.g. one per batch), the bar at
    ``part + fraction of [t0, t1] reached`` with the time and the NFE beside it. The adaptive
    solvers' stages may step back (a rejected step); the bar keeps the furthest time reached.
    Disabled unless ``enabled``; a context manager that closes the bar.
    """

    def __init__(
        self, t0: float, t1: float, *, desc: str, enabled: bool = True, parts: int = 1
    ) -> None:
        self.t0, self.span = float(t0), float(t1) - float(t0)
        self.part, self.done, self.nfe = 0, 0.0, 0
        self.bar = tqdm(
            total=parts,
            desc=desc,
            disable=not enabled,
            bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}{postfix}]",
        )

    def __enter__(self) -> TimeProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, t: float | Tensor) -> None:
        """One evaluation at time ``t`` of the current solve (read only when the bar shows)."""
        self.nfe += 1
        if self.bar.disable:
            return
        t = float(t)
        fraction = min(max((t - self.t0) / self.span, 0.0), 1.0) if self.span else 1.0
        self.bar.set_postfix_str(f"t={t:.3g}, nfe={self.nfe}", refresh=False)
        if fraction > self.done:
            self.done = fraction
            self._move_to(self.part + fraction)

    def next_part(self) -> None:
        """The current solve is done: move to the start of the next one."""
        self.part, self.done = self.part + 1, 0.0
        if not self.bar.disable:
            self._move_to(self.part)

    def _move_to(self, position: float) -> None:
        position = min(position, self.bar.total)
        if position > self.bar.n:
            self.bar.n = position  # set, not added: float sums would overshoot the total
            self.bar.update(0)

    def close(self) -> None:
        self.bar.close()


def solve_probability_flow(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    num_steps: int | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    progress: bool | str | TimeProgress = False,
) -> tuple[Tensor, int]:
    """Integrate the probability-flow ODE (eq. 13) from ``t0`` to ``t1``; returns ``(x_t1, nfe)``.

    The solver (torchdiffeq; adaptive Dormand-Prince RK45 ``"dopri5"`` by default) runs on the
    tensor's own device and dtype. Fixed-step methods (``"euler"``, ``"midpoint"``, ``"rk4"``,
    ``"heun3"``) take ``num_steps`` equal steps. ``callback(i, t, x)`` sees the solver's
    ``i``-th evaluation point (the solver is a black box: these are its stages, not steps).
    ``progress`` shows a bar in integration time (:class:`TimeProgress`; a string names it; pass
    a bar to share it between solves, which then moves it to its next part at the end).
    """
    nfe = 0
    bar = progress if isinstance(progress, TimeProgress) else None
    own = bar is None and bool(progress)
    if own:
        desc = progress if isinstance(progress, str) else "probability flow"
        bar = TimeProgress(t0, t1, desc=desc)

    def velocity(t: Tensor, x_t: Tensor) -> Tensor:
        nonlocal nfe
        t_batch = batch_time(t, x_t)
        if callback is not None:
            callback(nfe, t_batch, x_t)
        if bar is not None:
            bar.update(t)
        nfe += 1
        return probability_flow_drift(sde, score_fn, x_t, t_batch)

    ts = torch.tensor([t0, t1], device=x.device, dtype=x.dtype)
    options = solver_options(ts, method, num_steps)
    try:
        x_end = odeint(velocity, x, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    finally:
        if own:
            bar.close()
    if bar is not None and not own:
        bar.next_part()
    return x_end, nfe


def solver_options(ts: Tensor, method: str, num_steps: int | None = None) -> dict:
    """torchdiffeq options that keep every evaluation inside ``[t0, t1]``.

    Adaptive solvers would otherwise step past ``t1`` and interpolate back, evaluating the score
    outside the SDE's time range (for VP/sub-VP a negative time gives NaN); ``step_t`` makes the
    last step land on ``t1``. Fixed-step methods get a grid of exactly ``num_steps`` equal steps
    from ``ts[0]`` to ``ts[-1]`` (torchdiffeq's ``step_size`` option rounds ``|t1 - t0| /
    step_size`` up and can add a tiny extra step).
    """
    if method in FIXED_STEP_METHODS:
        if num_steps is None:
            raise ValueError(f"method {method!r} is fixed-step: give num_steps")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return {"grid_constructor": _uniform_grid(num_steps)}
    return {"step_t": ts[-1:]}


def _uniform_grid(num_steps: int):
    """torchdiffeq ``grid_constructor``: ``num_steps + 1`` equally spaced times from ``t[0]`` to
    ``t[-1]``, both ends exact."""

    def grid(func, y0, t: Tensor) -> Tensor:
        fractions = torch.arange(num_steps + 1, dtype=t.dtype, device=t.device) / num_steps
        times = t[0] + (t[-1] - t[0]) * fractions
        times[0], times[-1] = t[0], t[-1]
        return times

    return grid


def ode_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-3,
    denoise: bool = True,
    method: str = "dopri5",
    num_steps: int | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    progress: bool | str | TimeProgress = False,
) -> tuple[Tensor, int]:
    """Sample by solving the probability-flow ODE from ``T`` to ``eps``, then denoise.

    Args:
        x_T: prior noise ``(B, ...)``; each sample is a deterministic function of it.
        rtol, atol: tolerances of the adaptive solver.
        eps: the end time of the ODE solve.
        denoise: take a final Tweedie step ``E[x_0 | x_eps]`` (one more score call).
        method, num_steps, callback, progress: see :func:`solve_probability_flow`.

    Returns:
        ``(samples (B, ...), nfe)``; ``nfe`` counts every score evaluation, the denoising one
        included (the official code leaves it out).
    """
    x, nfe = solve_probability_flow(
        sde,
        score_fn,
        x_T,
        sde.T,
        eps,
        rtol=rtol,
        atol=atol,
        method=method,
        num_steps=num_steps,
        callback=callback,
        progress=progress,
    )
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, batch_time(eps, x))
        nfe += 1
    return x, nfe
