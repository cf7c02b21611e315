"""Rules a whole config follows beyond each field's range, and each sampler's own step count.

:func:`sample_for_method` gives a sampler other than ``sample.method`` its own defaults
(the one table of them is :data:`scoresde.core.sampler_options.OPTIONS`). :func:`config_problem`
is what :class:`scoresde.setup.config.Config` checks on top of its sections: no float setting is NaN
or infinite, the seed lies in ``0 .. 2**63 - 1``, the loss suits the model's time
(:func:`scoresde.core.names.loss_problem`) and an EDM-preconditioned model has a network that
can take its labels (:func:`edm_problem`). This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scoresde.core.names import NETWORK_CONVENTIONS, loss_problem

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
    return sample if method is None else sample.updated(method=method)


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
    t = cfg.train
    return loss_problem(
        t.loss, continuous=cfg.model.continuous, likelihood_weighting=t.likelihood_weighting,
        importance_sampling=t.importance_sampling,
    ) or edm_problem(cfg)


EDM_NETWORKS = ("unet", "mlp", "ncsnpp", "ddpm")
"""The score networks that can take EDM's real-valued labels ``c_noise = ln(sigma) / 4``
(negative below ``sigma = 1``) in a positional embedding; NCSN and NCSNv2 index noise levels."""


def parametrization(cfg: Any) -> str:
    """The network output of ``cfg``: ``model.parametrization``, or the SDE family's
    (:data:`scoresde.core.names.NETWORK_CONVENTIONS`) when empty."""
    return cfg.model.parametrization or NETWORK_CONVENTIONS[cfg.sde.kind][0]


def edm_problem(cfg: Any) -> str | None:
    """What stops an EDM-preconditioned score model (:func:`parametrization` ``"edm"``), as a
    one-line message, or ``None``: discrete time, a network outside :data:`EDM_NETWORKS`, or
    one that takes ``log`` of its labels (``embedding_type=fourier``) or divides by them
    (``scale_by_sigma``): EDM's labels are ``ln(sigma) / 4``, not ``sigma``."""
    m = cfg.model
    if parametrization(cfg) != "edm" or m.name in ("wideresnet", "mlp_classifier"):
        return None
    why = f"model.parametrization=edm (sde.kind={cfg.sde.kind})"
    if not m.continuous:
        return f"{why} is continuous-time: it needs model.continuous=true"
    if m.name not in EDM_NETWORKS:
        return f"{why} needs a network with a positional embedding: {', '.join(EDM_NETWORKS)}"
    if m.embedding_type != "positional" or m.scale_by_sigma:
        return (f"{why} labels the network with ln(sigma) / 4: it needs "
                "model.embedding_type=positional and model.scale_by_sigma=false")
    return None
