"""One sampler interface: ``sample(sde, score_fn, x_T, method=...)`` and the table behind it.

:data:`SAMPLERS` maps a method name to its :class:`~scoresde.methods.sampling.driver.Rule`: a step
(or
one black-box solve), a frozen options class (:mod:`scoresde.core.sampler_options`) and a default
time grid. :func:`sample` checks the options against the rule's class (an unknown or misspelt
name is refused with the valid ones), turns the grid options into times
(:func:`~scoresde.methods.sampling.scaled.sampler_times`) and hands everything to
:func:`~scoresde.methods.sampling.driver.integrate`, the one loop. Adding a sampler is one step
function and one line below.

The functions ``ddim_sampler``, ``heun_sampler``, ... (one per method, :func:`sampler_function`)
are ``sample`` with the method fixed, for callers who prefer a function per sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from scoresde.core.names import SAMPLER_NAMES
from scoresde.core.sampler_options import OPTIONS, make_options, option_names
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE
from scoresde.methods.sampling.driver import Callback, Projection, Rule, integrate
from scoresde.methods.sampling.fast_ode import (
    ddim_step,
    dpmpp_2m_step,
    dpmpp_3m_step,
    multistep_prepare,
)
from scoresde.methods.sampling.fast_sde import adaptive_solve, edm_prepare, edm_step
from scoresde.methods.sampling.ode import solve_probability_flow
from scoresde.methods.sampling.pc import pc_prepare, pc_step
from scoresde.methods.sampling.scaled import sampler_times


def ode_solve(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    options: Any,
    *,
    generator: Any = None,
    project: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """The probability-flow ODE (section 4.3) from ``T`` to ``eps`` by torchdiffeq
    (:func:`~scoresde.methods.sampling.ode.solve_probability_flow`): deterministic given ``x_T``.

    The solve is a black box, so ``project`` is refused; ``callback`` sees every solver
    evaluation (its stages, not steps), ``i = 0 .. nfe - 1``, then the denoised sample;
    ``progress`` is a bar in integration time.
    """
    if project is not None:
        raise ValueError(
            "the 'ode' sampler is a black-box solve and cannot apply project(); "
            "use a sampler on a time grid such as 'pc'"
        )
    x, nfe = solve_probability_flow(
        sde, score_fn, x_T, sde.T, options.eps, rtol=options.rtol, atol=options.atol,
        method=options.solver, num_steps=options.num_steps, callback=callback,
        progress="ODE sampling" if progress else False,
    )
    return x, {"iterations": nfe}


SAMPLERS: dict[str, Rule] = {
    "pc": Rule(OPTIONS["pc"], pc_step, space="x", prepare=pc_prepare,
               progress_name="PC sampling"),
    "ode": Rule(OPTIONS["ode"], solve=ode_solve),
    "ddim": Rule(OPTIONS["ddim"], ddim_step, progress_name="DDIM"),
    "heun": Rule(OPTIONS["heun"], edm_step, prepare=edm_prepare, progress_name="Heun"),
    "dpmpp_2m": Rule(OPTIONS["dpmpp_2m"], dpmpp_2m_step, prepare=multistep_prepare(2),
                     progress_name="DPM-Solver++(2M)"),
    "dpmpp_3m": Rule(OPTIONS["dpmpp_3m"], dpmpp_3m_step, prepare=multistep_prepare(3),
                     progress_name="DPM-Solver++(3M)"),
    "edm": Rule(OPTIONS["edm"], edm_step, prepare=edm_prepare, progress_name="EDM sampling"),
    "adaptive": Rule(OPTIONS["adaptive"], solve=adaptive_solve),
}
"""Method name -> its rule (:data:`scoresde.core.names.SAMPLER_NAMES`, in that order)."""

_SHARED = ("generator", "project", "callback", "progress")


def sampler_options(method: str) -> tuple[str, ...]:
    """The option names a method takes beyond the shared ones (for messages and configs)."""
    return option_names(check_sampler(method).options)


def check_sampler(method: str, options: dict[str, Any] | None = None) -> Rule:
    """The rule called ``method``, after checking its options (names and values, as its
    options class does); one-line ``ValueError``s."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; choose from {sorted(SAMPLERS)}")
    rule = SAMPLERS[method]
    if options:
        make_options(method, rule.options, options)
    return rule


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
        method: a name from :data:`SAMPLERS`: ``"pc"``, ``"ode"``, the deterministic few-step
            ODE samplers ``"ddim"``, ``"heun"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``
            (:mod:`scoresde.methods.sampling.fast_ode`), and the stochastic ``"edm"`` (churn) and
            ``"adaptive"`` (adaptive-step SDE solver) of :mod:`scoresde.methods.sampling.fast_sde`.
        generator: the source of every random draw: a ``torch.Generator`` or a
            :class:`scoresde.core.seeding.SampleStreams` (one stream per example, which makes each
            example independent of the batch it is drawn in).
        project: ``project(x, t) -> x`` after every step (``t=None`` after denoising);
            the ``ode`` sampler refuses it.
        callback: ``callback(i, t, x)`` after every step and after denoising.
        progress: show a progress bar.
        options: the sampler's own options, the fields of its class in
            :data:`scoresde.core.sampler_options.OPTIONS` (e.g. ``num_steps``, ``grid``, ``snr``
            for ``"pc"``; ``rtol``, ``atol`` for ``"ode"``); :func:`sampler_options`.

    Returns:
        ``(samples (B, ...), info)`` with ``info["nfe"]`` the number of score evaluations
        and, on a time grid, ``info["num_steps"]``.
    """
    rule = check_sampler(method)
    opts = make_options(method, rule.options, options)
    if rule.step is not None:
        times = sampler_times(
            sde, x_T, num_steps=opts.num_steps or sde.N, eps=opts.eps, grid=opts.grid,
            rho=opts.rho, time_grid=opts.time_grid, scaled=rule.space == "scaled",
        )
    else:
        times = torch.tensor([sde.T, opts.eps], device=x_T.device, dtype=x_T.dtype)
    return integrate(
        rule, sde, score_fn, x_T, times, generator=generator, project=project,
        callback=callback, denoise=opts.denoise, progress=progress, options=opts,
    )


def sampler_function(method: str) -> Callable[..., tuple[Tensor, dict[str, Any]]]:
    """:func:`sample` with ``method`` fixed: ``f(sde, score_fn, x_T, **kwargs)``."""
    check_sampler(method)

    def sampler(sde: SDE, score_fn: ScoreFn, x_T: Tensor, **kwargs: Any):
        return sample(sde, score_fn, x_T, method=method, **kwargs)

    sampler.__name__ = sampler.__qualname__ = f"{method}_sampler"
    sampler.__doc__ = (
        f"``scoresde.sample(sde, score_fn, x_T, method={method!r}, **kwargs)``; options: "
        f"{', '.join(option_names(SAMPLERS[method].options))}."
    )
    return sampler


def pc_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    generator: torch.Generator | Any | None = None,
    project: Projection | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """Predictor-corrector samples ``(B, ...)`` from ``x_T`` at time ``T`` down to ``eps``:
    ``scoresde.sample(..., method="pc")`` without its ``info``.

    Options (:class:`scoresde.core.sampler_options.PCOptions`): ``predictor``, ``corrector`` (names
    from ``PREDICTORS``/``CORRECTORS`` or step functions), ``snr``, ``n_steps`` (corrector steps
    per noise level), ``num_steps`` (predictor steps; default ``sde.N``), ``eps``, ``grid``,
    ``rho``, ``time_grid`` (decreasing times instead of a named grid), ``denoise`` (a final
    Tweedie step ``E[x_0 | x_eps]``). ``project(x, t)`` after every step (``t=None`` after
    denoising); ``callback(i, t, x)`` after step ``i`` and once more after denoising. The cost
    is ``num_steps * (1 + n_steps) + denoise`` score calls.
    """
    x, _ = sample(sde, score_fn, x_T, method="pc", generator=generator, project=project,
                  callback=callback, progress=progress, **options)
    return x


ddim_sampler = sampler_function("ddim")
heun_sampler = sampler_function("heun")
dpmpp_2m_sampler = sampler_function("dpmpp_2m")
dpmpp_3m_sampler = sampler_function("dpmpp_3m")
edm_stochastic_sampler = sampler_function("edm")
adaptive_sde_sampler = sampler_function("adaptive")

assert tuple(SAMPLERS) == SAMPLER_NAMES
