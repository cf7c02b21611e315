"""Every sampler's options: one small frozen dataclass per sampler, name, default and check.

A sampler of :data:`scoresde.SAMPLERS` is a step rule plus one of these classes
(:mod:`scoresde.methods.sampling.driver`); :data:`OPTIONS` maps a method name to its class. The same
classes check the options given to :func:`scoresde.sample` and those of a config's ``sample``
section, so a name, its default and its check live here once. This module imports no torch
(the config imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from scoresde.core.config_errors import ConfigError
from scoresde.core.names import CORRECTOR_NAMES, ERROR_NORM_NAMES, GRID_NAMES, PREDICTOR_NAMES


class OptionError(ConfigError):
    """A sampler option that does not exist or has a bad value (one-line message)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value),
           f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class GridOptions:
    """A sampler on a decreasing time grid ``T = t_0 > ... > t_n = eps``.

    ``num_steps`` steps on the named ``grid`` (:data:`scoresde.core.names.GRID_NAMES`: equal steps
    in
    ``t``, EDM's rho-spaced noise levels with exponent ``rho``, equal steps in the log-SNR),
    or the times of ``time_grid`` (a tensor, from the Python API), then with ``denoise`` the
    Tweedie estimate ``E[x_0 | x_eps]`` (one more score evaluation).
    """

    num_steps: int | None = 20
    eps: float = 1e-3
    grid: str = "uniform"
    rho: float = 7.0
    denoise: bool = True
    time_grid: Any = None

    def __post_init__(self) -> None:
        _check(self.num_steps is None or self.num_steps >= 1,
               f"num_steps must be >= 1, got {self.num_steps}")
        _finite("eps", self.eps)
        _check(0 <= self.eps < 1, f"eps must be in [0, 1), got {self.eps}")
        _check(self.grid in GRID_NAMES,
               f"unknown time grid {self.grid!r}; choose from {sorted(GRID_NAMES)}")
        _finite("rho", self.rho)
        _check(self.rho > 0, f"rho must be > 0, got {self.rho}")


@dataclass(frozen=True)
class PCOptions(GridOptions):
    """Predictor-corrector sampling (Algorithm 1): ``num_steps`` predictor steps (``None``: the
    SDE's ``N``, the paper's 1000 for the default VP/sub-VP SDEs: 2001 NFE), each followed by
    ``n_steps`` corrector steps with signal-to-noise ratio ``snr``; ``predictor`` and
    ``corrector`` are names (:data:`scoresde.core.names.PREDICTOR_NAMES`,
    :data:`~scoresde.core.names.CORRECTOR_NAMES`) or step functions."""

    num_steps: int | None = None
    predictor: Any = "reverse_diffusion"
    corrector: Any = "langevin"
    snr: float = 0.16
    n_steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for kind, value, names in (("predictor", self.predictor, PREDICTOR_NAMES),
                                   ("corrector", self.corrector, CORRECTOR_NAMES)):
            _check(callable(value) or value in names,
                   f"unknown {kind} {value!r}; choose from {sorted(names)}")
        _finite("snr", self.snr)
        _check(self.snr >= 0, f"snr must be >= 0, got {self.snr}")
        _check(self.n_steps >= 0, f"n_steps must be >= 0, got {self.n_steps}")


@dataclass(frozen=True)
class DDIMOptions(GridOptions):
    """DDIM (first order): 19 steps on the uniform grid by default (20 NFE)."""

    num_steps: int | None = 19


@dataclass(frozen=True)
class HeunOptions(GridOptions):
    """EDM's Heun sampler (EDM's stochastic sampler without churn): 9 steps on the log-SNR grid
    by default (19 NFE). Every step here is corrected and the run ends with the Tweedie step,
    so EDM's CIFAR-10 setting (its 18 noise levels, 35 NFE) is ``num_steps=17`` here
    (2 x 17 + 1), on ``grid="edm"``."""

    num_steps: int | None = 9
    grid: str = "log_snr"


@dataclass(frozen=True)
class MultistepOptions(GridOptions):
    """DPM-Solver++ multistep: 19 steps on the log-SNR grid (20 NFE); ``lower_order_final``
    lowers the order of the last steps of runs under 15 steps."""

    num_steps: int | None = 19
    grid: str = "log_snr"
    lower_order_final: bool = True


@dataclass(frozen=True)
class EDMOptions(HeunOptions):
    """EDM's stochastic sampler (Algorithm 2): Heun steps with noise added ("churn") where
    ``s_tmin <= sigma <= s_tmax``: ``gamma = min(s_churn / N, sqrt(2) - 1)`` with ``N`` the
    number of noise levels (EDM's normalisation), ``s_noise`` the noise's scale; 9 steps on
    EDM's grid by default (19 NFE)."""

    grid: str = "edm"
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite("s_churn", self.s_churn)
        _finite("s_noise", self.s_noise)
        _check(self.s_churn >= 0 and self.s_noise >= 0,
               f"need s_churn >= 0 and s_noise >= 0, got {self.s_churn} and {self.s_noise}")
        _check(not math.isnan(self.s_tmin) and not math.isnan(self.s_tmax),
               "s_tmin and s_tmax must be numbers")


@dataclass(frozen=True)
class ODEOptions:
    """The probability-flow ODE by torchdiffeq to ``eps`` (adaptive ``solver`` with tolerances
    ``rtol``/``atol``, or a fixed-step one with ``num_steps``), then ``denoise``."""

    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-3
    denoise: bool = True
    solver: str = "dopri5"
    num_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "eps"):
            _finite(name, getattr(self, name))
        _check(self.rtol > 0 and self.atol > 0, "rtol and atol must be > 0")
        _check(0 <= self.eps < 1, f"eps must be in [0, 1), got {self.eps}")


@dataclass(frozen=True)
class AdaptiveOptions:
    """The adaptive-step SDE solver of Jolicoeur-Martineau et al. (2021): tolerances
    ``rtol``/``atol`` (``None``: 2/256),
    ``error_norm`` (:data:`scoresde.core.names.ERROR_NORM_NAMES`
    of the solver), the step controller's ``h_init``, ``safety``, ``r``, the guards
    ``max_steps`` and ``max_depth``, ``extrapolation``, to ``eps``, then ``denoise``."""

    eps: float = 1e-3
    rtol: float = 0.05
    atol: float | None = None
    error_norm: str = "l2"
    h_init: float = 0.01
    safety: float = 0.9
    r: float = 0.9
    max_steps: int = 100_000
    max_depth: int = 64
    extrapolation: bool = True
    denoise: bool = True

    def __post_init__(self) -> None:
        for name in ("eps", "rtol", "h_init", "safety", "r"):
            _finite(name, getattr(self, name))
        _check(self.atol is None or (math.isfinite(self.atol) and self.atol > 0),
               f"need atol > 0, got {self.atol}")
        _check(self.error_norm in ERROR_NORM_NAMES["adaptive"],
               f"unknown error_norm {self.error_norm!r}; choose from "
               f"{sorted(ERROR_NORM_NAMES['adaptive'])}")
        _check(
            self.h_init > 0 and self.rtol >= 0 and self.safety > 0 and self.r > 0
            and min(self.max_steps, self.max_depth) >= 1,
            f"need h_init > 0, rtol >= 0, safety > 0, r > 0, max_steps >= 1, max_depth >= 1; "
            f"got h_init={self.h_init}, rtol={self.rtol}, safety={self.safety}, r={self.r}, "
            f"max_steps={self.max_steps}, max_depth={self.max_depth}",
        )


OPTIONS: dict[str, type] = {
    "pc": PCOptions,
    "ode": ODEOptions,
    "ddim": DDIMOptions,
    "heun": HeunOptions,
    "dpmpp_2m": MultistepOptions,
    "dpmpp_3m": MultistepOptions,
    "edm": EDMOptions,
    "adaptive": AdaptiveOptions,
}
"""Method name -> its options class (the rules of :data:`scoresde.SAMPLERS` carry the same)."""


def option_names(options: type) -> tuple[str, ...]:
    """The fields of an options class, in order."""
    return tuple(f.name for f in fields(options))


def make_options(method: str, options: type, given: dict[str, Any]) -> Any:
    """``options(**given)``, refusing a name the class does not have with a one-line
    :class:`OptionError` that lists the valid ones (and any bad value the class refuses)."""
    allowed = option_names(options)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise OptionError(
            f"sampler {method!r} takes no option {unknown[0]!r}{more}; its options: "
            f"{', '.join(allowed)}"
        )
    try:
        return options(**given)
    except OptionError as e:
        error = OptionError(f"sampler {method!r}: {e}")
        error.raw = str(e)
        raise error from None
