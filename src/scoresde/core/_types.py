"""The package's one ``ScoreFn`` type (imported from here, or from :mod:`scoresde.core.score`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x (B, ...), t (B,)) -> score (B, ...)``: all that samplers, losses, likelihoods
and inverse problems need of a model (a :class:`scoresde.ScoreModel` is one)."""
