"""Feature extractors: images to features and logits, for FID, IS and KID.

An extractor (:class:`FeatureExtractor`) is a callable ``extractor(images)`` taking float images
``(B, C, H, W)`` in ``[0, 1]`` and returning ``{"features": (B, D), "logits": (B, K)}``
(float32), with attributes ``name`` and ``num_features`` (``D``); :func:`extract_features` runs
one over many images in batches. The extractors: the Inception-v3 of FID
(:mod:`scoresde.jobs.evaluation.inception`) and the digits classifier
(:mod:`scoresde.jobs.evaluation.digits_classifier`); reference statistics:
:mod:`scoresde.jobs.evaluation.reference`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "EvaluationError",
    "FeatureExtractor",
    "MissingDependencyError",
    "extract_features",
    "first_line",
    "run_extractor",
]


class EvaluationError(ValueError):
    """A user-fixable problem with evaluation inputs: weights, reference statistics, images."""


class MissingDependencyError(EvaluationError, ImportError):
    """An optional dependency (torch-fidelity, or the torchvision it needs) is missing."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images to features: ``extractor(images) -> {"features": (B, D), "logits": (B, K)}``.

    ``images`` are float ``(B, C, H, W)`` in ``[0, 1]``; the outputs are float32 on any device.

    Attributes:
        name: identifies the network in reports (e.g. ``"inception-v3-compat"``).
        num_features: ``D``, the width of ``features``.
    """

    name: str
    num_features: int

    def __call__(self, images: Tensor) -> dict[str, Tensor]: ...


def _batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive slices of ``images`` along dim 0, ``batch_size`` rows each (the last fewer)."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def run_extractor(
    extractor: FeatureExtractor,
    batches: Iterable[Tensor],
    *,
    device: torch.device | str | None,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Run ``extractor`` on each batch under ``no_grad``; outputs concatenated as float32 on CPU."""
    outputs: dict[str, list[Tensor]] = {}
    bar = tqdm(total=total, desc="features", unit="img", disable=not progress)
    with torch.no_grad(), bar:
        for batch in batches:
            x = batch if device is None else batch.to(device)
            result = extractor(x)
            if "features" not in result:
                raise EvaluationError(
                    f"feature extractor {extractor.name!r} returned {sorted(result)}, "
                    "without 'features'"
                )
            feats = result["features"]
            if tuple(feats.shape) != (x.shape[0], extractor.num_features):
                raise EvaluationError(
                    f"feature extractor {extractor.name!r} returned features of shape "
                    f"{tuple(feats.shape)} for {x.shape[0]} images; expected "
                    f"({x.shape[0]}, {extractor.num_features})"
                )
            for key, value in result.items():
                outputs.setdefault(key, []).append(value.detach().to("cpu", torch.float32))
            bar.update(x.shape[0])
    if not outputs:
        raise EvaluationError("no images to extract features from")
    return {key: torch.cat(values) for key, values in outputs.items()}


def extract_features(
    extractor: FeatureExtractor,
    images: Tensor,
    *,
    batch_size: int = 250,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Features (and logits) of many images, computed in batches under ``torch.no_grad()``.

    Args:
        extractor: a :class:`FeatureExtractor`.
        images: float ``(N, C, H, W)`` in ``[0, 1]``, ``N >= 1``, on any device.
        batch_size: images per call of ``extractor``.
        device: where each batch is moved before the call; ``None`` leaves it where it is (an
            extractor such as :class:`InceptionV3Features` moves its input to its own device).
        progress: show a progress bar.

    Returns:
        What the extractor returns, concatenated over batches as float32 on the CPU: at least
        ``"features"`` ``(N, D)``, and ``"logits"`` ``(N, K)`` for extractors that give them.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.shape[0] == 0:
        raise EvaluationError("no images to extract features from")
    return run_extractor(
        extractor,
        _batches(images, batch_size),
        device=device,
        total=images.shape[0],
        progress=progress,
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
