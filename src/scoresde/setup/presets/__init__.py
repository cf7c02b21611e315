"""Experiment presets: small functions returning a :class:`~scoresde.setup.config.Config`.

``PRESETS`` maps each name to its function; ``scoresde presets`` lists them. The small ones
(digits, toys) are in :mod:`.small`; the paper's experiments, one per official config file, in
:mod:`.paper`; EDM's CIFAR-10 recipe in :mod:`.edm`. Their networks' keyword arguments, as in
the official configs, are the tables of :mod:`.networks_ncsnpp` (NCSN++ / DDPM++) and
:mod:`.networks_baselines` (DDPM, NCSN, NCSNv2).
"""

from __future__ import annotations

from collections.abc import Callable

from scoresde.setup.config import Config
from scoresde.setup.presets.edm import EDM_PRESETS
from scoresde.setup.presets.paper import PAPER_PRESETS
from scoresde.setup.presets.small import SMALL_PRESETS

PRESETS: dict[str, Callable[[], Config]] = {**SMALL_PRESETS, **PAPER_PRESETS, **EDM_PRESETS}


def get_preset(name: str) -> Config:
    """The preset called ``name`` (``ValueError`` listing the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; see `scoresde presets` for the choices")
    return PRESETS[name]()
