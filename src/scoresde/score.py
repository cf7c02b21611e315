"""The one place where a network's output becomes a score ``score_fn(x, t)``.

Everything outside the networks (losses, samplers, likelihood, inverse problems) sees only a
function ``score_fn(x, t) -> score`` with ``x`` ``(B, ...)`` and ``t`` ``(B,)``. The conventions
are those of the official code (Song et al., 2021, appendix H):

- the network is called as ``model(x, labels, **model_kwargs)`` with ``labels =
  sde.network_labels(t, continuous=...)``: ``sigma(t)`` for continuous VE models, the NCSN noise
  index for discrete VE models, ``999 t`` for continuous VP/sub-VP models and the DDPM step index
  ``(N - 1) t`` for discrete VP models;
- ``parametrization="score"``: the output is the score (VE networks, with ``scale_by_sigma``
  inside the network); ``"eps"``: the output predicts the noise, ``score = -eps / s(t)``, with
  ``s(t)`` the marginal std (continuous) or DDPM's ``sqrt(1 - alpha_bar_i)`` (discrete).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from scoresde._tensor import append_dims
from scoresde.sdes import SDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]

PARAMETRIZATIONS = ("score", "eps")


def make_score_fn(
    model: nn.Module | Callable[..., Tensor],
    sde: SDE,
    *,
    continuous: bool = True,
    parametrization: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ScoreFn:
    """Wrap ``model`` as ``score_fn(x, t)`` for ``sde``.

    Args:
        model: called as ``model(x, labels, **model_kwargs)`` and returning a tensor like ``x``.
        sde: the SDE the model was trained with; gives the labels and the marginal std.
        continuous: whether the model was trained in continuous time.
        parametrization: ``"score"`` or ``"eps"``; ``None`` takes ``sde.default_parametrization``
            (``"score"`` for VE, ``"eps"`` for VP and sub-VP).
        model_kwargs: extra keyword arguments for every call, e.g. ``{"class_labels": y}``.

    Returns:
        ``score_fn(x (B, ...), t (B,)) -> (B, ...)``.
    """
    param = parametrization or sde.default_parametrization
    if param not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {param!r}; choose from {PARAMETRIZATIONS}")
    kwargs = dict(model_kwargs or {})

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        out = model(x, sde.network_labels(t, continuous=continuous), **kwargs)
        if param == "score":
            return out
        std = sde.marginal_coeffs(t)[1] if continuous else sde.discrete_std(t)
        return -out / append_dims(std, x.ndim)

    return score_fn


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula ``E[x_0 | x_t] = (x_t + s(t)^2 score(x_t, t)) / m(t)`` (appendix G).

    The final noise-free step of the samplers: one score evaluation, shape of ``x``.
    """
    mean_coeff, std = sde.marginal_coeffs(t)
    return (x + append_dims(std**2, x.ndim) * score_fn(x, t)) / append_dims(mean_coeff, x.ndim)
