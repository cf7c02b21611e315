"""Rules a whole config follows beyond each field's range, and each sampler's own step count.

:func:`sample_for_method` gives a sampler other than ``sample.method`` its own defaults
(the one table of them is :data:`scoresde.core.sampler_options.OPTIONS`). :func:`config_problem`
is what :class:`scoresde.setup.config.Config` checks on top of its sections: no float setting is NaN
or infinite, and the seed lies in ``0 .. 2**63 - 1``. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SEED_LIMIT = 2**63
"""Seeds are integers ``0 <= seed < 2**63``: every random stream's seed is derived from the
config's seed and a name (:func:`scoresde.core.seeding.derive_seed`), so any such integer gives
its own streams; negative seeds are refused (``-1`` is not an alias of anything)."""

def sample_for_method(sample: Any, method: str | None) -> Any:
    """The :class:`~scoresde.setup.config.SampleConfig` ``sample`` for the sampler ``method``.

    A config's sampler options belong to its own ``sample.method``: for ``None`` or that method
    ``sample`` comes back as it is; for another one, with ``method`` and none of the old
    options, so that sampler starts from its own defaults
    (:data:`scoresde.core.sampler_options.OPTIONS`; about 20 NFE for the fast samplers). Options
    given together with the method (``--set sample.num_steps=N``, ``generate(...,
    num_steps=N)``) are applied after this.
    """
    if method is None or method == sample.method:
        return sample
    return sample.updated(method=method)


def sampler_defaults_text() -> str:
    """One line per grid sampler of its default steps, grid and NFE, for ``--help``."""
    from scoresde.core.sampler_options import OPTIONS, GridOptions, PCOptions

    per_step = {"pc": 2, "heun": 2, "edm": 2}  # PC: one corrector step (sample.n_steps=1)
    lines = []
    for name, options in OPTIONS.items():
        if not issubclass(options, GridOptions):
            continue
        o = options()
        if options is PCOptions:
            lines.append(f"  {name:9s} the SDE's N steps (1000 in the paper's presets: 2001 NFE)")
            continue
        nfe = o.num_steps * per_step.get(name, 1) + 1
        lines.append(f"  {name:9s} {o.num_steps:4d} steps, {o.grid} grid ({nfe} NFE)")
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
