"""One sampler interface: ``sample(sde, score_fn, x_T, method=...)`` and the table behind it.

Every sampler is a plain function of one shape,

    sampler(sde, score_fn, x_T, *, generator, project, callback, progress, **options)
        -> (x_0 (B, ...), info)

with ``info["nfe"]`` the number of score evaluations it made. :data:`SAMPLERS` maps a method
name to its sampler; later methods are new entries, not new code paths. Samplers that step on
a time grid apply ``project(x, t)`` after every step (inverse problems, see
:mod:`scoresde.inverse`); a black-box solve refuses ``project``. Every sampler calls
``callback(i, t, x)`` as it goes.

Method names, option names and the predictor/corrector names inside them are checked in one
place, :func:`check_sampler`, before any work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from scoresde.sampling.correctors import CORRECTORS
from scoresde.sampling.fast_ode import (
    ddim_sampler,
    dpmpp_2m_sampler,
    dpmpp_3m_sampler,
    heun_sampler,
)
from scoresde.sampling.fast_sde import adaptive_sde_sampler, edm_stochastic_sampler
from scoresde.sampling.ode import ode_sample
from scoresde.sampling.pc import Callback, Projection, pc_sample, resolve
from scoresde.sampling.predictors import PREDICTORS
from scoresde.sampling.scaled import check_grid
from scoresde.score import ScoreFn
from scoresde.sdes import SDE

Sampler = Callable[..., tuple[Tensor, dict[str, Any]]]


class _CountingScore:
    """``score_fn`` that counts its calls (the NFE a sampler reports)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)


def pc_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    predictor: Any = "reverse_diffusion",
    corrector: Any = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    num_steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    time_grid: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Predictor-corrector sampling (Algorithm 1): :func:`scoresde.pc_sample` as a table entry.

    ``info``: ``nfe`` (``num_steps (1 + n_steps) + denoise`` for the paper's steps) and
    ``num_steps``.
    """
    counted = _CountingScore(score_fn)
    x = pc_sample(
        sde,
        counted,
        x_T,
        predictor=predictor,
        corrector=corrector,
        snr=snr,
        n_steps=n_steps,
        num_steps=num_steps,
        eps=eps,
        denoise=denoise,
        generator=generator,
        time_grid=time_grid,
        project=project,
        progress=progress,
        callback=callback,
    )
    steps = len(time_grid) - 1 if time_grid is not None else num_steps or sde.N
    return x, {"nfe": counted.calls, "num_steps": steps}


def ode_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-3,
    denoise: bool = True,
    solver: str = "dopri5",
    num_steps: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Probability-flow ODE (section 4.3): :func:`scoresde.ode_sample` as a table entry.

    Deterministic given ``x_T`` (``generator`` is unused). The solve is a torchdiffeq black
    box, so ``project`` is refused; ``callback`` sees every solver evaluation. ``solver`` is the
    torchdiffeq method (fixed-step ones need ``num_steps``). ``info``: ``nfe``.
    """
    if project is not None:
        raise ValueError(
            "the 'ode' sampler is a black-box solve and cannot apply project(); "
            "use a sampler on a time grid such as 'pc'"
        )
    x, nfe = ode_sample(
        sde,
        score_fn,
        x_T,
        rtol=rtol,
        atol=atol,
        eps=eps,
        denoise=denoise,
        method=solver,
        num_steps=num_steps,
        callback=callback,
    )
    return x, {"nfe": nfe}


SAMPLERS: dict[str, Sampler] = {
    "pc": pc_sampler,
    "ode": ode_sampler,
    "ddim": ddim_sampler,
    "heun": heun_sampler,
    "dpmpp_2m": dpmpp_2m_sampler,
    "dpmpp_3m": dpmpp_3m_sampler,
    "edm": edm_stochastic_sampler,
    "adaptive": adaptive_sde_sampler,
}
"""Method name -> sampler; each takes ``(sde, score_fn, x_T, *, generator, project, callback,
progress, **options)`` and returns ``(x, info)``."""

_SHARED = ("generator", "project", "callback", "progress")


def sampler_options(method: str) -> tuple[str, ...]:
    """The option names a method takes beyond the shared ones (for messages and configs)."""
    check_sampler(method)
    params = inspect.signature(SAMPLERS[method]).parameters
    return tuple(
        name for name, p in params.items() if p.kind == p.KEYWORD_ONLY and name not in _SHARED
    )


def check_sampler(method: str, options: dict[str, Any] | None = None) -> Sampler:
    """The sampler called ``method``, after checking its options; one-line ``ValueError``s.

    Checks the method name, that every option is one the sampler takes, the predictor and
    corrector names of PC sampling (callables pass as they are) and the name of a ``grid``
    (:data:`scoresde.sampling.scaled.GRIDS`).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; choose from {sorted(SAMPLERS)}")
    sampler = SAMPLERS[method]
    options = options or {}
    allowed = sampler_options(method) if options else ()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"sampler {method!r} takes no option {unknown[0]!r}"
            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
            f"its options: {', '.join(allowed)}"
        )
    for kind, table in (("predictor", PREDICTORS), ("corrector", CORRECTORS)):
        if options.get(kind) is not None:
            resolve(options[kind], table, kind)
    if options.get("grid") is not None:
        check_grid(options["grid"])
    return sampler


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    method: str = "pc",
    generator: torch.Generator | Any | None = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    **options: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Sample from ``x_T`` (prior noise ``(B, ...)`` at time ``T``) with the sampler ``method``.

    Args:
        sde: the forward SDE.
        score_fn: ``score_fn(x (B, ...), t (B,)) -> (B, ...)``, e.g. a :class:`ScoreModel`.
        method: a name from :data:`SAMPLERS`: ``"pc"``, ``"ode"``, or the deterministic
            few-step ODE samplers ``"ddim"``, ``"heun"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``
            (:mod:`scoresde.sampling.fast_ode`), and the stochastic ``"edm"`` (churn) and
            ``"adaptive"`` (adaptive-step SDE solver) of :mod:`scoresde.sampling.fast_sde`.
        generator: the source of every random draw: a ``torch.Generator`` or a
            :class:`scoresde.seeding.SampleStreams` (one stream per example, which makes each
            example independent of the batch it is drawn in).
        project: ``project(x, t) -> x`` after every step (``t=None`` after denoising);
            samplers that cannot project refuse it.
        callback: ``callback(i, t, x)`` as the sampler goes.
        progress: show a progress bar where the sampler has one.
        options: the sampler's own options (e.g. ``num_steps``, ``snr`` for ``"pc"``;
            ``rtol``, ``atol`` for ``"ode"``; ``num_steps``, ``grid``, ``rho`` for the
            few-step ODE samplers); see :func:`sampler_options`.

    Returns:
        ``(samples (B, ...), info)`` with ``info["nfe"]`` the number of score evaluations.
    """
    sampler = check_sampler(method, options)
    return sampler(
        sde,
        score_fn,
        x_T,
        generator=generator,
        project=project,
        callback=callback,
        progress=progress,
        **options,
    )
