"""Rules a whole config follows beyond each field's range, and each sampler's own step count.

:data:`SAMPLER_STEPS` is the one table of every grid sampler's default ``num_steps`` and time
grid; :func:`sample_for_method` applies it when a sampler other than ``sample.method`` is asked
for. :func:`config_problem` is what :class:`scoresde.config.Config` checks on top of its
sections: no float setting is NaN or infinite, and the seed lies in ``0 .. 2**63 - 1``. This
module imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SEED_LIMIT = 2**63
"""Seeds are integers ``0 <= seed < 2**63``: every random stream's seed is derived from the
config's seed and a name (:func:`scoresde.seeding.derive_seed`), so any such integer gives
its own streams; negative seeds are refused (``-1`` is not an alias of anything)."""

SAMPLER_STEPS: dict[str, tuple[int, str]] = {
    "pc": (1000, ""),
    "ddim": (19, "uniform"),
    "heun": (9, "log_snr"),
    "dpmpp_2m": (19, "log_snr"),
    "dpmpp_3m": (19, "log_snr"),
    "edm": (9, ""),
}
"""Each grid sampler's own ``(sample.num_steps, sample.grid)`` (``""``: the sampler's built-in
grid; PC and ``edm`` take none): PC the paper's 1000 steps (2001 score evaluations), the fast
samplers about 20 evaluations (``ddim``, ``dpmpp_2m``, ``dpmpp_3m``: 19 steps and the final
denoising step, 20 NFE; ``heun``, ``edm``: 9 steps of two evaluations and the denoising step,
19 NFE), the settings README.md and docs/fast_samplers.md recommend. ``ode`` and ``adaptive``
choose their own steps (``sample.ode_rtol``, ``sample.adaptive_rtol``)."""


def sample_for_method(sample: Any, method: str | None) -> Any:
    """The :class:`~scoresde.config.SampleConfig` ``sample`` for the sampler ``method``.

    A config's ``num_steps`` and ``grid`` belong to its own ``sample.method``: for ``None`` or
    that method ``sample`` comes back as it is; for another one, with ``method`` and that
    sampler's own ``num_steps`` and ``grid`` from :data:`SAMPLER_STEPS` (the other fields kept;
    ``ode`` and ``adaptive`` keep them too, unused). Settings given together with the method
    (``--set sample.num_steps=N``, ``generate(..., num_steps=N)``) are applied after this.
    """
    if method is None or method == sample.method:
        return sample
    steps, grid = SAMPLER_STEPS.get(method, (sample.num_steps, sample.grid))
    return dataclasses.replace(sample, method=method, num_steps=steps, grid=grid)


def sampler_defaults_text() -> str:
    """One line per grid sampler of :data:`SAMPLER_STEPS`, for ``--help``."""
    per_step = {"pc": 2, "heun": 2, "edm": 2}  # PC: one corrector step (sample.n_steps=1)
    lines = []
    for name, (steps, grid) in SAMPLER_STEPS.items():
        grid = grid or ("edm" if name == "edm" else "")
        where = f", {grid} grid" if grid else ""
        nfe = steps * per_step.get(name, 1) + 1
        lines.append(f"  {name:9s} {steps:4d} steps{where} ({nfe} NFE)")
    return "\n".join(lines)


def config_problem(cfg: Any) -> str | None:
    """What is wrong with the whole config ``cfg`` beyond its sections' own checks, as a
    one-line message, or ``None``: a NaN or infinite float field (``train.lr=nan``, an
    ``inf`` in a config file), a seed outside ``0 .. 2**63 - 1``."""
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(item, float) and not math.isfinite(item):
                return f"{section.name}.{f.name} must be a finite number, got {item}"
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        return f"seed must be an integer in 0 .. 2**63 - 1, got {seed!r}"
    return None
