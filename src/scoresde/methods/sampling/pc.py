"""Predictor-corrector sampling (Song et al., 2021, section 4.2, Algorithm 1) as a step rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from scoresde.core.sdes import SDE
from scoresde.methods.sampling.correctors import CORRECTORS
from scoresde.methods.sampling.driver import Callback, Projection, Step
from scoresde.methods.sampling.predictors import PREDICTORS

__all__ = ["Callback", "Projection", "pc_prepare", "pc_step", "resolve"]


def resolve(choice, table: Mapping[str, Callable], kind: str) -> Callable:
    """Return ``choice`` if callable, else look it up in ``table`` with a clear error."""
    if callable(choice):
        return choice
    if choice not in table:
        raise ValueError(f"unknown {kind} {choice!r}; choose from {sorted(table)}")
    return table[choice]


def pc_prepare(sde: SDE, times: Tensor, options: Any, denoise: bool) -> tuple[Callable, Callable]:
    """The predictor and corrector step functions of ``options`` (names or functions)."""
    return (
        resolve(options.predictor, PREDICTORS, "predictor"),
        resolve(options.corrector, CORRECTORS, "corrector"),
    )


def pc_step(s: Step, x: Tensor, memory: Any) -> tuple[Tensor, Any]:
    """One step of Algorithm 1 on ``x`` ``(B, ...)``: the predictor from ``t_i`` to
    ``t_{i+1}``, then ``n_steps`` corrector steps at ``t_{i+1}`` (Algorithm 1's order; the
    official code runs the corrector at ``t_i`` before the predictor, which shifts the
    correctors by one time point). ``project`` is applied after the predictor and after every
    corrector step but the last (the driver's projection follows the step). The cost is
    ``1 + n_steps`` score evaluations (the ``none`` predictor or corrector: none)."""
    predictor, corrector = s.prepared
    x, _ = predictor(s.sde, s.score, x, s.t, s.t_next, generator=s.generator)
    for _ in range(s.options.n_steps):
        x = s.project(x, s.t_next)
        x, _ = corrector(s.sde, s.score, x, s.t_next, snr=s.options.snr, generator=s.generator)
    return x, memory
