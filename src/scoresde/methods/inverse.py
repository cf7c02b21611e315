"""Controllable generation with one unconditional model (Song et al., 2021, section 5, app. I).

Every inverse problem here is one mechanism (:func:`linear_inverse`): an ordinary sampler (PC by
default; any entry of :data:`scoresde.SAMPLERS` that steps on a time grid) with a projection
after every step that replaces the measured part of ``x(t)`` by the measurement perturbed to the
current time, ``m(t) y + s(t) z`` (app. I.2, the official ``get_inpaint_update_fn``). The
measurement operator says what "the measured part" is: a mask (:class:`MaskOperator`,
inpainting) or a mask in an orthonormal basis (:class:`OrthogonalOperator`; colorization is the
paper's orthonormal decoupling of app. I.3, where grey is one coordinate).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.core._tensor import randn_like
from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE
from scoresde.methods.sampling.api import sample


class MaskOperator:
    """``A x = m * x`` for a 0/1 mask ``m`` broadcastable to ``x`` (inpainting, app. I.2)."""

    def __init__(self, mask: Tensor):
        self.mask = mask

    def forward(self, x: Tensor) -> Tensor:
        """The measurement of ``x`` ``(B, ...)``: ``(B, ...)``, zero where unmeasured."""
        return x * self.mask

    def project(self, x_t: Tensor, y_t: Tensor) -> Tensor:
        """``x_t`` with its measured entries replaced by ``y_t``: ``x_t (1 - m) + y_t m``."""
        return x_t * (1 - self.mask) + y_t * self.mask


class OrthogonalOperator:
    """``A x = m * (U x)``: a mask ``m`` in the orthonormal basis ``U`` (an orthogonal projection).

    ``U`` ``(C, C)`` acts on axis 1 of ``x`` ``(B, C, ...)``; ``m`` broadcasts to ``(B, C, ...)``
    (e.g. ``(C,)`` for flat data, ``(C, 1, 1)`` for images). Colorization is ``U`` the
    decoupling matrix of app. I.3 with ``m = (1, 0, 0)``.
    """

    def __init__(self, basis: Tensor, mask: Tensor):
        self.basis = basis
        self.mask = mask

    def to_basis(self, x: Tensor) -> Tensor:
        """``U x`` along axis 1, ``(B, C, ...)``."""
        return torch.einsum("ij,bj...->bi...", self.basis.to(x), x)

    def from_basis(self, z: Tensor) -> Tensor:
        """``U^T z`` along axis 1 (the inverse of :meth:`to_basis`), ``(B, C, ...)``."""
        return torch.einsum("ji,bj...->bi...", self.basis.to(z), z)

    def forward(self, x: Tensor) -> Tensor:
        """The measurement ``m * (U x)``, ``(B, C, ...)`` in the ``U`` basis."""
        return self.to_basis(x) * self.mask

    def project(self, x_t: Tensor, y_t: Tensor) -> Tensor:
        """Replace the measured coordinates of ``U x_t`` by ``y_t`` and map back to ``x``."""
        z = self.to_basis(x_t)
        return self.from_basis(z * (1 - self.mask) + y_t * self.mask)


def perturb_measurement(
    sde: SDE, y: Tensor, t: Tensor | None, *, generator: torch.Generator | None = None
) -> Tensor:
    """``y`` ``(B, ...)`` perturbed to time ``t`` ``(B,)``: ``m(t) y + s(t) z`` (``t=None``: ``y``).

    Valid for measurements in an orthonormal basis because the paper's perturbation kernels are
    isotropic, so ``U z`` is again standard normal.
    """
    if t is None:
        return y
    return sde.perturb(y, t, randn_like(y, generator))


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
    known = perturb_measurement(sde, data, t, generator=generator)
    return MaskOperator(mask).project(x, known)


def linear_inverse(
    sde: SDE,
    score_fn: ScoreFn,
    y: Tensor,
    operator: MaskOperator | OrthogonalOperator,
    *,
    method: str = "pc",
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    **options,
) -> Tensor:
    """Sample ``x ~ p(x | A x = y)`` for a linear measurement given as a mask or a masked
    orthonormal basis (app. I): after every sampler step the measured part of ``x(t)`` is
    replaced by ``y`` perturbed to ``t`` (``operator.project``).

    Args:
        y: the measurement ``operator.forward(x0)``, shaped like ``x`` ``(B, ...)`` (zero where
            unmeasured), in the model's scale.
        operator: an object with ``forward(x)`` and ``project(x_t, y_t)``, e.g.
            :class:`MaskOperator` or :class:`OrthogonalOperator`.
        method: a sampler that can project (``"pc"``; the black-box ``"ode"`` refuses).
        generator: a ``torch.Generator`` or :class:`scoresde.core.seeding.SampleStreams`.
        x_T: starting noise ``(B, ...)`` (default: a prior draw from ``generator``).
        options: passed to :func:`scoresde.sample` (``progress``, ``callback`` and the
            sampler's options: predictor, corrector, snr, num_steps, ...).

    Returns:
        ``(B, ...)`` samples whose measured part equals ``y`` (to rounding).
    """
    if x_T is None:
        x_T = sde.prior_sampling(y.shape, generator, device=y.device, dtype=y.dtype)
    t_T = torch.full((y.shape[0],), sde.T, device=y.device, dtype=y.dtype)
    x_T = operator.project(x_T, perturb_measurement(sde, y, t_T, generator=generator))

    def project(x: Tensor, t: Tensor | None) -> Tensor:
        return operator.project(x, perturb_measurement(sde, y, t, generator=generator))

    x, _ = sample(
        sde, score_fn, x_T, method=method, generator=generator, project=project, **options
    )
    return x


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
    """Fill in the entries of ``data`` where ``mask == 0`` by conditional sampling (app. I.2):
    :func:`linear_inverse` with a :class:`MaskOperator`.

    Args:
        data: ``(B, ...)`` in the model's scale; only the known entries are used.
        mask: 1 where known, 0 where to inpaint; broadcastable to ``data``.
        method, generator, x_T, options: as for :func:`linear_inverse`.

    Returns:
        ``(B, ...)`` completions that equal ``data`` where ``mask == 1``.
    """
    operator = MaskOperator(mask)
    return linear_inverse(
        sde,
        score_fn,
        operator.forward(data),
        operator,
        method=method,
        generator=generator,
        x_T=x_T,
        **options,
    )


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

    :func:`linear_inverse` with an :class:`OrthogonalOperator`: the grey level fixes the first
    coordinate ``sqrt(3) gray`` of the orthonormal decoupling (app. I.3); the two chroma
    coordinates are sampled. Works for SDEs whose perturbation is isotropic, which all of the
    paper's are, since an orthonormal change of basis keeps the noise isotropic.
    ``method`` and ``options`` are as for :func:`inpaint`. Returns ``(B, 3, H, W)`` in the
    model's scale.
    """
    gray3 = gray.expand(-1, 3, -1, -1) if gray.shape[1] == 1 else gray
    grey_only = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1).to(gray3)
    operator = OrthogonalOperator(_COLOR_BASIS, grey_only)
    return linear_inverse(
        sde, score_fn, operator.forward(gray3), operator, method=method, generator=generator,
        **options,
    )
