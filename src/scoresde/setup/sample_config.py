"""The sampling section of a run's config: the sampler's name and its own options.

This module imports no torch; :mod:`scoresde.setup.config` re-exports :class:`SampleConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from scoresde.core.config_errors import ConfigError
from scoresde.core.names import COMPUTE_DTYPE_NAMES
from scoresde.core.sampler_options import OPTIONS, OptionError, make_options, option_names

__all__ = ["SAMPLE_FIELDS", "SampleConfig"]


LEGACY_SAMPLE_KEYS = {
    # the flat sample section before the options of each sampler had their own class:
    # key -> {method: option name}
    **{k: dict.fromkeys(("pc",), k) for k in ("predictor", "corrector", "snr", "n_steps")},
    "num_steps": dict.fromkeys(("pc", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "edm"), "num_steps"),
    "eps": dict.fromkeys(OPTIONS, "eps"),
    "denoise": dict.fromkeys(OPTIONS, "denoise"),
    "grid": dict.fromkeys(("ddim", "heun", "dpmpp_2m", "dpmpp_3m"), "grid"),
    "rho": dict.fromkeys(("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "edm"), "rho"),
    "s_churn": {"edm": "s_churn"},
    "s_noise": {"edm": "s_noise"},
    "ode_rtol": {"ode": "rtol"},
    "ode_atol": {"ode": "atol"},
    "adaptive_rtol": {"adaptive": "rtol"},
    "adaptive_atol": {"adaptive": "atol"},
}
"""How the flat ``sample`` keys of older ``config.json`` files and checkpoints map to the
options of their ``method`` (keys another sampler's were dropped, as they were then unused)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True, init=False)
class SampleConfig:
    """Sampling: ``method`` names the sampler (:data:`scoresde.SAMPLERS`: ``"pc"``, Algorithm 1;
    ``"ode"``, the probability flow; ``"ddim"``, ``"heun"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``,
    the few-step ODE samplers; ``"edm"``, EDM's stochastic sampler; ``"adaptive"``, the
    adaptive-step SDE solver), ``options`` its own options: the fields of its class in
    :data:`scoresde.core.sampler_options.OPTIONS` that differ from the sampler's defaults (e.g.
    ``{"num_steps": 1000, "snr": 0.16}`` for PC; ``--set sample.num_steps=500`` sets one).
    An option the sampler does not take is refused, naming the ones it does.

    The options belong to ``method``: another sampler asked for (``--method``, ``--set
    sample.method=``, ``generate(method=...)``) starts from its own defaults, about 20 score
    evaluations for the fast samplers (:meth:`updated`). ``batch_size`` only splits the work:
    each sample's noise comes from its own stream ``(seed, index)``, so samples do not depend
    on it. ``compute_dtype`` (``"float32"`` or ``"bfloat16"``: the network under bf16
    autocast, the score and the sampler in float32) and ``compile`` (``torch.compile`` of the
    network) set how the network runs when sampling (``sample``, ``evaluate``, the hooks).
    """

    method: str = "pc"
    num_samples: int = 64
    batch_size: int = 256
    compute_dtype: str = "float32"
    compile: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        method: str = "pc",
        num_samples: int = 64,
        batch_size: int = 256,
        compute_dtype: str = "float32",
        compile: bool = False,
        options: dict[str, Any] | None = None,
        **option_values: Any,
    ) -> None:
        """The fields, and the sampler's options given either as ``options`` or by name
        (``SampleConfig(method="edm", num_steps=12, s_churn=5.0)``; the older flat names such
        as ``adaptive_rtol`` map to their sampler's option)."""
        merged = dict(options or {})
        for name, value in option_values.items():
            if name in ("grid", "adaptive_atol") and not value:
                continue  # the older "" (the sampler's own grid) and 0 (the default tolerance)
            merged[LEGACY_SAMPLE_KEYS.get(name, {}).get(method, name)] = value
        for name, value in (("method", method), ("num_samples", num_samples),
                            ("batch_size", batch_size), ("compute_dtype", compute_dtype),
                            ("compile", compile), ("options", merged)):
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, f"sample.num_samples must be >= 1, got {self.num_samples}")
        _check(self.batch_size >= 1, f"sample.batch_size must be >= 1, got {self.batch_size}")
        _check(
            self.compute_dtype in COMPUTE_DTYPE_NAMES,
            f"sample.compute_dtype must be one of {', '.join(COMPUTE_DTYPE_NAMES)}, "
            f"got {self.compute_dtype!r}",
        )
        _check(self.method in OPTIONS,
               f"unknown sampling method {self.method!r}; choose from {sorted(OPTIONS)}")
        _check("time_grid" not in self.options,
               "sample.time_grid is for the Python API (a tensor); set sample.grid and "
               "sample.num_steps instead")
        self.sampler_options()

    def sampler_options(self) -> Any:
        """The options of :attr:`method` as its frozen options class (checked)."""
        try:
            return make_options(self.method, OPTIONS[self.method], self.options)
        except OptionError as e:
            raw = getattr(e, "raw", "")
            named = raw.split(" ")[0] in option_names(OPTIONS[self.method])
            message = f"sample.{raw} ({self.method})" if named else f"sample: {e}"
            _check(False, message)

    def __getattr__(self, name: str) -> Any:
        """An option of :attr:`method` as it will be used (set, or the sampler's default):
        ``cfg.sample.num_steps``."""
        state = self.__dict__
        if name.startswith("_") or "options" not in state or "method" not in state:
            raise AttributeError(name)
        options = self.sampler_options()
        if not hasattr(options, name):
            raise AttributeError(f"sampler {self.method!r} has no option {name!r}")
        return getattr(options, name)

    def updated(self, **changes: Any) -> SampleConfig:
        """This config with ``changes``: its own fields (``method``, ``num_samples``,
        ``batch_size``, ``compute_dtype``, ``compile``), ``options`` (a dict merged in) and
        option names (e.g. ``num_steps=500``). A new ``method`` drops the old method's options
        first: it starts from its own defaults, then the options given with it."""
        method = changes.pop("method", None) or self.method
        options = dict(self.options) if method == self.method else {}
        options.update(changes.pop("options", None) or {})
        own = {k: changes.pop(k) for k in list(changes) if k in SAMPLE_FIELDS}
        options.update(changes)
        return replace(self, method=method, options=options, **own)


SAMPLE_FIELDS = ("num_samples", "batch_size", "compute_dtype", "compile")
"""The fields of :class:`SampleConfig` besides ``method`` and ``options``."""
