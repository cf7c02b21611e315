"""Two-dimensional toy distributions for quick score-model experiments.

Every sampler takes ``(n, generator)`` and returns ``(n, 2)`` float32 points on the generator's
device (CPU without one), drawing randomness only from ``generator``. The moons and swiss roll
are centred and scaled to roughly unit spread; the 8-Gaussian mixture keeps its radius of 4 so
that its modes are well separated, and :func:`toy_gmm` exposes it with exact scores.

The toys with natural classes (:data:`TOY_NUM_CLASSES`: the 8 mixture components, the 2 moons)
also come with int64 labels ``(n,)`` from :func:`sample_toy_labeled`, whose points are those of
:func:`sample_toy` for the same generator state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core.mixture import GaussianMixture

GMM_COMPONENTS = 8
GMM_RADIUS = 4.0
GMM_STD = 0.3

# Exact centres and scales of the raw moons (unit half circles, noise std 0.1) and swiss roll
# (angle a ~ U[1.5 pi, 4.5 pi], noise std 0.5): after ``(p - centre) * scale`` the points have
# mean 0 and mean squared norm 2 (unit variance per axis on average).
_MOONS_NOISE = 0.1
_MOONS_CENTER = (0.5, 0.25)
_MOONS_SCALE = 1.0 / math.sqrt((1.3125 - 1.0 / math.pi + 2 * _MOONS_NOISE**2) / 2)
_SWISSROLL_NOISE = 0.5
_SWISSROLL_CENTER = (2.0, 2.0 / (3.0 * math.pi))  # (E[a cos a], E[a sin a])
_SWISSROLL_SCALE = 1.0 / math.sqrt(
    (9.75 * math.pi**2 + 2 * _SWISSROLL_NOISE**2 - sum(c**2 for c in _SWISSROLL_CENTER)) / 2
)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def toy_gmm() -> GaussianMixture:
    """The ``"gmm"`` toy: 8 equally weighted isotropic Gaussians (std 0.3) on a circle of radius 4.

    Component ``k`` has mean ``4 (cos(2 pi k / 8), sin(2 pi k / 8))``. Returns float32 CPU tensors;
    use :meth:`GaussianMixture.to` to move them.
    """
    angles = torch.arange(GMM_COMPONENTS, dtype=torch.float64) * (2 * math.pi / GMM_COMPONENTS)
    means = GMM_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(
        weights=torch.full((GMM_COMPONENTS,), 1.0 / GMM_COMPONENTS),
        means=means.float(),
        stds=torch.full((GMM_COMPONENTS,), GMM_STD),
    )


def sample_gmm_labeled(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``n`` points ``(n, 2)`` from :func:`toy_gmm` and their components, int64 ``(n,)`` in
    ``0..7``; the points are exactly :func:`sample_gmm`'s for the same ``generator`` state."""
    return toy_gmm().to(device=_device(generator)).sample_with_components(n, generator=generator)


def sample_gmm(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points ``(n, 2)`` from :func:`toy_gmm`."""
    return sample_gmm_labeled(n, generator)[0]


def sample_moons_labeled(
    n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` points ``(n, 2)`` from :func:`sample_moons` with the moon each came from.

    Returns:
        ``(points, labels)``: the points are exactly :func:`sample_moons`'s for the same
        ``generator`` state; labels int64 ``(n,)`` are 0 for the upper moon, 1 for the lower.
    """
    dev = _device(generator)
    angle = torch.rand(n, generator=generator, device=dev) * math.pi
    lower = torch.rand(n, generator=generator, device=dev) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(angle), torch.cos(angle))
    y = torch.where(lower, 0.5 - torch.sin(angle), torch.sin(angle))
    points = torch.stack([x, y], dim=1)
    points = points + _MOONS_NOISE * torch.randn(n, 2, generator=generator, device=dev)
    points = (points - torch.tensor(_MOONS_CENTER, device=dev)) * _MOONS_SCALE
    return points, lower.long()


def sample_moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points ``(n, 2)`` from two interleaved half circles with Gaussian noise.

    Each point picks a moon with probability 1/2: the upper one ``(cos a, sin a)`` or the lower
    one ``(1 - cos a, 1/2 - sin a)`` with ``a ~ U[0, pi]``, then gets ``N(0, 0.1^2 I)`` noise
    (the layout of scikit-learn's ``make_moons``), and is centred and rescaled.
    """
    return sample_moons_labeled(n, generator)[0]


def sample_swissroll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points ``(n, 2)`` from a 2-D swiss roll (spiral) with Gaussian noise.

    The angle is ``a ~ U[1.5 pi, 4.5 pi]`` and the point ``(a cos a, a sin a) + N(0, 0.5^2 I)``
    (scikit-learn's ``make_swiss_roll`` seen along its axis), then centred and rescaled.
    """
    dev = _device(generator)
    angle = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, device=dev))
    points = torch.stack([angle * torch.cos(angle), angle * torch.sin(angle)], dim=1)
    points = points + _SWISSROLL_NOISE * torch.randn(n, 2, generator=generator, device=dev)
    return (points - torch.tensor(_SWISSROLL_CENTER, device=dev)) * _SWISSROLL_SCALE


TOY_DATASETS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "gmm": sample_gmm,
    "moons": sample_moons,
    "swissroll": sample_swissroll,
}


def sample_toy(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` float32 points ``(n, 2)`` from the toy distribution ``name``.

    Raises:
        ValueError: ``name`` is not one of :data:`TOY_DATASETS`.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, generator)


LabeledSampler = Callable[[int, torch.Generator | None], tuple[Tensor, Tensor]]

TOY_LABELED_DATASETS: dict[str, LabeledSampler] = {
    "gmm": sample_gmm_labeled,
    "moons": sample_moons_labeled,
}

# Number of classes of the toys that have natural ones: the mixture components of "gmm" and
# the two half circles of "moons" (0 upper, 1 lower); "swissroll" has none.
TOY_NUM_CLASSES = {"gmm": GMM_COMPONENTS, "moons": 2}


def sample_toy_labeled(
    name: str, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` points from the toy ``name`` with their class labels.

    Returns:
        ``(points, labels)``: float32 points ``(n, 2)``, exactly those of
        :func:`sample_toy` for the same ``generator`` state, and int64 labels ``(n,)`` in
        ``0..TOY_NUM_CLASSES[name]-1`` (the "gmm" component; the "moons" moon, 0 = upper).

    Raises:
        ValueError: ``name`` is unknown or has no class labels (``"swissroll"``).
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    if name not in TOY_LABELED_DATASETS:
        raise ValueError(
            f"toy dataset {name!r} has no class labels; labelled toys: {sorted(TOY_NUM_CLASSES)}"
        )
    return TOY_LABELED_DATASETS[name](n, generator)
