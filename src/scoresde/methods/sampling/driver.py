"""The one loop around every sampler: a sampler is a step rule, :func:`integrate` does the rest.

Every SDE of the paper perturbs data as ``x_t = m(t) (x_0 + sigma(t) z)``, so a sampler steps
either the state ``x`` itself (PC: the reverse-SDE predictors and Langevin correctors) or the
scaled state ``y = x / m(t)`` against ``sigma(t) = s(t) / m(t)`` (the probability-flow solvers
of EDM and DPM-Solver). :func:`integrate` owns everything around the step:

- the time grid (a tensor of decreasing times, data like any other input),
- the path: ``y_0 = x_T / m(T)`` and ``x = m y`` after each step,
- ``project(x, t)`` after every step and ``callback(i, t, x)`` (inverse problems, progress),
- the final Tweedie step ``E[x_0 | x_eps]`` with its projection and callback,
- the count of score evaluations (``info["nfe"]``: every call of the score, whatever the rule).

A :class:`Rule` writes only its step: ``step(s, y, memory) -> (y_next, memory)`` from grid time
``s.t`` to ``s.t_next`` (``memory`` carries what a multistep rule keeps, ``None`` at first).
Rules that are one black-box solve (the probability-flow ODE by torchdiffeq, the adaptive-step
SDE solver with its per-example times) give ``solve`` instead and still get the count, the final
denoising, projection and callback here. Adding a sampler is one step function and one line of
:data:`scoresde.SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.core._tensor import append_dims
from scoresde.core.score import ScoreFn, tweedie_denoise
from scoresde.core.sdes import SDE

Projection = Callable[[Tensor, "Tensor | None"], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]


class CountingScore:
    """``score_fn`` that counts its calls: the NFE every sampler reports."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)


@dataclass
class Step:
    """What a rule sees at step ``i`` of ``n``, from ``t`` to ``t_next`` (both ``(B,)``).

    ``sigma``, ``sigma_next`` are ``s/m`` there, ``(B,)``; ``score(x, t)`` is the (counted)
    score and ``denoise(y, t)`` Tweedie's ``E[x_0 | x_t = m(t) y]`` on the scaled state (one
    score evaluation); ``project(x, t)`` lets a rule with sub-steps (PC's correctors) project
    between them (the driver projects after the step); ``prepared`` is what the rule's
    ``prepare`` computed once for the whole grid.
    """

    sde: SDE
    i: int
    n: int
    times: Tensor
    t: Tensor
    t_next: Tensor
    sigma: Tensor
    sigma_next: Tensor
    score: CountingScore
    options: Any
    generator: Any
    project: Projection
    prepared: Any

    def denoise(self, y: Tensor, t: Tensor) -> Tensor:
        m = self.sde.marginal_coeffs(t)[0]
        return tweedie_denoise(self.sde, self.score, append_dims(m, y.ndim) * y, t)


StepFn = Callable[[Step, Tensor, Any], tuple[Tensor, Any]]
SolveFn = Callable[..., tuple[Tensor, dict[str, Any]]]


@dataclass(frozen=True)
class Rule:
    """A sampler: its step (or black-box ``solve``), its options class, its default grid.

    Attributes:
        options: the frozen dataclass of its options (:mod:`scoresde.core.sampler_options`).
        step: ``step(s: Step, state, memory) -> (state, memory)``; ``None`` for a black box.
        space: ``"scaled"`` (the step maps ``y = x / m``) or ``"x"`` (it maps ``x``).
        prepare: ``prepare(sde, times, options, denoise) -> prepared`` once per run, or ``None``.
        solve: ``solve(sde, score, x_T, options, *, generator, project, callback, progress)
            -> (x_eps, info)`` for a rule that is one solve to ``eps`` (no grid).
        progress_name: the progress bar's label.
    """

    options: type
    step: StepFn | None = None
    space: str = "scaled"
    prepare: Callable[..., Any] | None = None
    solve: SolveFn | None = None
    progress_name: str = "sampling"

    @property
    def grid(self) -> str | None:
        """The rule's default time grid (``None`` for a black-box solve)."""
        return getattr(self.options, "grid", None) if self.step is not None else None


def integrate(
    rule: Rule,
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    times: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    progress: bool = False,
    options: Any = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Run ``rule`` from ``x_T`` ``(B, ...)`` at ``times[0]`` down the decreasing ``times``
    ``(n + 1,)`` (a black-box rule: to ``times[-1]``), then denoise there.

    After step ``i`` (ending at ``t_{i+1}``) the state in x-space is projected
    (``project(x, t_{i+1})``) and reported (``callback(i, t_{i+1}, x)``); with ``denoise``, the
    Tweedie estimate at the last time follows, then ``project(x, None)`` and
    ``callback(n, t_n, x)``. ``options`` is an instance of ``rule.options`` (default: its
    defaults).

    Returns:
        ``(x (B, ...), info)`` with ``info["nfe"]`` the score evaluations made and, on a grid,
        ``info["num_steps"] = n``; a black-box rule adds what its solve reports.
    """
    options = rule.options() if options is None else options
    score = CountingScore(score_fn)
    ones = torch.ones(x_T.shape[0], device=x_T.device, dtype=x_T.dtype)
    t_last = times[-1] * ones
    if rule.solve is not None:
        x, info = rule.solve(sde, score, x_T, options, generator=generator, project=project,
                             callback=callback, progress=progress)
        n = info.pop("iterations", 0)
    else:
        x, info, n = _steps(rule, sde, score, x_T, times, ones, generator, project, callback,
                            progress, options, denoise)
    if denoise:
        x = tweedie_denoise(sde, score, x, t_last)
        x = project(x, None) if project is not None else x
        if callback is not None:
            callback(n, t_last, x)
    return x, {"nfe": score.calls, **info}


def _steps(rule, sde, score, x_T, times, ones, generator, project, callback, progress, options,
           denoise):
    """The grid loop of :func:`integrate`: the state ``x`` at ``times[-1]`` and ``info``."""
    scaled = rule.space == "scaled"
    n = len(times) - 1
    sigmas = sde.sigma(times) if scaled else None

    def m(t: Tensor, ndim: int) -> Tensor:
        return append_dims(sde.marginal_coeffs(t)[0], ndim)

    def no_projection(x, t):
        return x

    prepared = rule.prepare(sde, times, options, denoise) if rule.prepare else None
    state = x_T / m(times[0] * ones, x_T.ndim) if scaled else x_T
    memory = None
    for i in tqdm(range(n), desc=rule.progress_name, disable=not progress, leave=False):
        t, t_next = times[i] * ones, times[i + 1] * ones
        step = Step(sde, i, n, times, t, t_next,
                    sigmas[i] * ones if scaled else None,
                    sigmas[i + 1] * ones if scaled else None,
                    score, options, generator, project or no_projection, prepared)
        state, memory = rule.step(step, state, memory)
        if project is None and callback is None:
            continue
        scale = m(t_next, state.ndim) if scaled else None
        x = scale * state if scaled else state
        if project is not None:
            x = project(x, t_next)
            state = x / scale if scaled else x
        if callback is not None:
            callback(i, t_next, x)
    x = m(times[-1] * ones, state.ndim) * state if scaled else state
    return x, {"num_steps": n}, n
