"""Controllable generation with one unconditional model (Song et al., 2021, section 5, app. I).

Inpainting and colorization run an ordinary sampler (PC by default; any entry of
:data:`scoresde.SAMPLERS` that steps on a time grid) with a projection after every step: known
coordinates are replaced by the data perturbed to the current time, ``m(t) y + s(t) z`` (the
official ``get_inpaint_update_fn``). Colorization does the same in an orthonormal colour basis
where the grey channel is one coordinate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde._tensor import append_dims, randn_like
from scoresde.sampling.api import sample
from scoresde.score import ScoreFn
from scoresde.sdes import SDE


def project_known(
    sde: SDE,
    x: Tensor,
    t: Tensor | None,
    data: Tensor,
    mask: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace the known entries (``mask == 1``) of ``x`` by ``data`` perturbed to time ``t``.

    ``t=None`` puts back the clean data. Shapes: ``x``, ``data`` ``(B, ...)``; ``mask``
    broadcastable to them.
    """
    if t is None:
        known = data
    else:
        mean, std = sde.marginal_prob(data, t)
        known = mean + append_dims(std, data.ndim) * randn_like(data, generator)
    return x * (1 - mask) + known * mask


def inpaint(
    sde: SDE,
    score_fn: ScoreFn,
    data: Tensor,
    mask: Tensor,
    *,
    method: str = "pc",
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    **options,
) -> Tensor:
    """Fill in the entries of ``data`` where ``mask == 0`` by conditional sampling.

    Args:
        data: ``(B, ...)`` in the model's scale; only the known entries are used.
        mask: 1 where known, 0 where to inpaint; broadcastable to ``data``.
        method: a sampler that can project (``"pc"``; the black-box ``"ode"`` refuses).
        generator: a ``torch.Generator`` or :class:`scoresde.seeding.SampleStreams`.
        x_T: starting noise (default: a prior draw from ``generator``).
        options: passed to :func:`scoresde.sample` (``progress``, ``callback`` and the
            sampler's options: predictor, corrector, snr, num_steps, ...).

    Returns:
        ``(B, ...)`` completions that equal ``data`` where ``mask == 1``.
    """
    if x_T is None:
        x_T = sde.prior_sampling(data.shape, generator, device=data.device, dtype=data.dtype)
    t_T = torch.full((data.shape[0],), sde.T, device=data.device, dtype=data.dtype)
    x_T = project_known(sde, x_T, t_T, data, mask, generator=generator)

    def project(x: Tensor, t: Tensor | None) -> Tensor:
        return project_known(sde, x, t, data, mask, generator=generator)

    x, _ = sample(
        sde, score_fn, x_T, method=method, generator=generator, project=project, **options
    )
    return x


# An orthonormal colour basis whose first axis is the grey level (R + G + B) / sqrt(3).
_COLOR_BASIS = torch.tensor(
    [
        [1 / math.sqrt(3)] * 3,
        [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
        [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
    ],
    dtype=torch.float64,
)


def decouple(x: Tensor) -> Tensor:
    """RGB ``(B, 3, H, W)`` to the orthonormal basis with grey first (``couple`` inverts it)."""
    return torch.einsum("ij,bjhw->bihw", _COLOR_BASIS.to(x), x)


def couple(x: Tensor) -> Tensor:
    """Inverse of :func:`decouple` (the basis is orthonormal, so its transpose)."""
    return torch.einsum("ji,bjhw->bihw", _COLOR_BASIS.to(x), x)


def colorize(
    sde: SDE,
    score_fn: ScoreFn,
    gray: Tensor,
    *,
    method: str = "pc",
    generator: torch.Generator | None = None,
    **options,
) -> Tensor:
    """Colour grey images ``(B, 1, H, W)`` (or ``(B, 3, H, W)`` with equal channels).

    The grey level fixes the first decoupled coordinate ``sqrt(3) gray``; the two chroma
    coordinates are sampled. Works for SDEs whose perturbation is isotropic, which all of the
    paper's are, since an orthonormal change of basis keeps the noise isotropic.
    ``method`` and ``options`` are as for :func:`inpaint`. Returns ``(B, 3, H, W)`` in the
    model's scale.
    """
    gray3 = gray.expand(-1, 3, -1, -1) if gray.shape[1] == 1 else gray
    data = decouple(gray3)
    mask = torch.zeros_like(data)
    mask[:, 0] = 1.0

    def decoupled_score(y: Tensor, t: Tensor) -> Tensor:
        return decouple(score_fn(couple(y), t))

    y = inpaint(sde, decoupled_score, data, mask, method=method, generator=generator, **options)
    return couple(y)
