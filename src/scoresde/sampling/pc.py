"""Predictor-corrector sampling (Song et al., 2021, section 4.2, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.sampling.correctors import CORRECTORS, Corrector
from scoresde.sampling.grids import uniform_time_grid
from scoresde.sampling.predictors import PREDICTORS, Predictor
from scoresde.score import ScoreFn, tweedie_denoise
from scoresde.sdes import SDE

Projection = Callable[[Tensor, "Tensor | None"], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]


def resolve(choice, table: Mapping[str, Callable], kind: str) -> Callable:
    """Return ``choice`` if callable, else look it up in ``table`` with a clear error."""
    if callable(choice):
        return choice
    if choice not in table:
        raise ValueError(f"unknown {kind} {choice!r}; choose from {sorted(table)}")
    return table[choice]


def pc_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    predictor: str | Predictor = "reverse_diffusion",
    corrector: str | Corrector = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    num_steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    time_grid: Tensor | None = None,
    project: Projection | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Sample by predictor-corrector steps from ``x_T`` at time ``T`` down to ``eps``.

    Each of the ``num_steps`` steps runs the predictor from ``t_i`` to ``t_{i+1}``, then
    ``n_steps`` corrector steps at ``t_{i+1}`` (Algorithm 1's order; the official code runs the
    corrector at ``t_i`` before the predictor, which shifts the correctors by one time point).
    With ``denoise`` a final Tweedie step ``E[x_0 | x_eps]`` removes the remaining noise.

    Args:
        sde: the forward SDE.
        score_fn: ``score_fn(x (B, ...), t (B,)) -> (B, ...)``.
        x_T: starting noise ``(B, ...)``, e.g. ``sde.prior_sampling(shape, generator)``.
        predictor, corrector: a name from ``PREDICTORS``/``CORRECTORS`` or a step function.
        snr: the corrector's signal-to-noise ratio ``r``.
        n_steps: corrector steps per noise level.
        num_steps: predictor steps; default ``sde.N``. Ignored if ``time_grid`` is given.
        eps: the last time of the uniform grid.
        denoise: take the final denoising step.
        generator: the source of every random draw.
        time_grid: decreasing times ``(num_steps + 1,)`` to use instead of the uniform grid.
        project: ``project(x, t) -> x`` applied after every step (inverse problems, e.g.
            :func:`scoresde.inverse.inpaint`); called with ``t=None`` after the denoising step.
        progress: show a progress bar.
        callback: ``callback(i, t, x)`` after step ``i`` (predictor and correctors) with the
            step's end time ``t`` ``(B,)`` and state ``x``, and once more after denoising
            (``i = num_steps``); for progress reports or trajectories.

    Returns:
        Samples ``(B, ...)``. The cost is ``num_steps * (1 + n_steps) + denoise`` score calls.
    """
    predictor_fn = resolve(predictor, PREDICTORS, "predictor")
    corrector_fn = resolve(corrector, CORRECTORS, "corrector")
    if time_grid is None:
        time_grid = uniform_time_grid(
            num_steps or sde.N, T=sde.T, eps=eps, device=x_T.device, dtype=x_T.dtype
        )
    ones = torch.ones(x_T.shape[0], device=x_T.device, dtype=x_T.dtype)
    x = x_T
    for i in tqdm(range(len(time_grid) - 1), desc="PC sampling", disable=not progress):
        t, t_next = time_grid[i] * ones, time_grid[i + 1] * ones
        # Predictor: one reverse-SDE step t -> t_next.
        x, _ = predictor_fn(sde, score_fn, x, t, t_next, generator=generator)
        x = project(x, t_next) if project else x
        # Corrector: Langevin-type MCMC at t_next.
        for _ in range(n_steps):
            x, _ = corrector_fn(sde, score_fn, x, t_next, snr=snr, generator=generator)
            x = project(x, t_next) if project else x
        if callback is not None:
            callback(i, t_next, x)
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, time_grid[-1] * ones)
        x = project(x, None) if project else x
        if callback is not None:
            callback(len(time_grid) - 1, time_grid[-1] * ones, x)
    return x
