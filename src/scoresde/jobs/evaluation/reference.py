"""Reference statistics of a dataset for FID and KID: an npz file or a folder of images.

:func:`load_reference` reads an ``.npz`` of ``mu``/``sigma`` (pytorch-fid, guided-diffusion) or
of raw activations (``pool_3`` in score_sde's ``cifar10_stats.npz``, or ``features``), or
extracts features from a folder of images; :func:`save_reference` writes ``mu``, ``sigma`` and
``features`` atomically.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scoresde.infra.rundir import atomic_save_arrays
from scoresde.jobs.evaluation.features import (
    EvaluationError,
    FeatureExtractor,
    first_line,
    run_extractor,
)
from scoresde.jobs.evaluation.metrics import FeatureStats, feature_statistics
from scoresde.setup.data.image_formats import decode_image, image_to_tensor, list_image_files

__all__ = ["Reference", "load_reference", "save_reference"]

REFERENCE_ACTIVATION_KEYS = ("pool_3", "features")
"""Keys of raw activations ``(N, D)`` in a reference ``.npz``, in the order they are tried."""


@dataclass
class Reference:
    """Statistics of a reference set (usually real data) to compare samples against.

    Attributes:
        stats: mean ``(D,)`` and covariance ``(D, D)`` of the reference features (for FID).
        features: the features themselves ``(N, D)`` (for KID), or ``None`` when the source
            holds only ``mu`` and ``sigma``.
        source: where they came from, for reports (e.g. ``"cifar10_stats.npz [pool_3]"``).
    """

    stats: FeatureStats
    features: Tensor | None
    source: str


def _check_dimension(d: int, extractor: FeatureExtractor | None, path: Path) -> None:
    """Raise unless the reference's feature width ``d`` is the extractor's ``num_features``."""
    if extractor is not None and d != extractor.num_features:
        raise EvaluationError(
            f"reference {path} has {d}-dim features but extractor {extractor.name!r} gives "
            f"{extractor.num_features}-dim ones"
        )


def _load_npz(path: Path, extractor: FeatureExtractor | None) -> Reference:
    """A :class:`Reference` from an ``.npz`` of activations and/or ``mu`` and ``sigma``."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = first_line(exc)
        raise EvaluationError(f"cannot read reference {path} as an .npz: {reason}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise EvaluationError(f"reference {path} is a single .npy array, not an .npz archive")
    with archive:
        keys = list(archive.files)
        try:
            activation_key = next((k for k in REFERENCE_ACTIVATION_KEYS if k in keys), None)
            activations = archive[activation_key] if activation_key else None
            mu = archive["mu"] if "mu" in keys and "sigma" in keys else None
            sigma = archive["sigma"] if mu is not None else None
        except ValueError as exc:  # object arrays need allow_pickle
            raise EvaluationError(f"cannot read reference {path}: {first_line(exc)}") from None
    if activations is None and mu is None:
        raise EvaluationError(
            f"reference {path} holds {keys or 'no arrays'}; expected 'mu' and 'sigma', or "
            f"activations under {' or '.join(repr(k) for k in REFERENCE_ACTIVATION_KEYS)}"
        )
    features = None
    if activations is not None:
        if activations.ndim != 2 or activations.shape[0] < 2:
            raise EvaluationError(
                f"reference {path}: {activation_key!r} has shape {activations.shape}, expected "
                "(N, D) activations with N >= 2"
            )
        if not np.issubdtype(activations.dtype, np.floating):
            raise EvaluationError(
                f"reference {path}: {activation_key!r} is {activations.dtype}, expected floats"
            )
        features = torch.from_numpy(np.ascontiguousarray(activations))
        _check_dimension(features.shape[1], extractor, path)
    if mu is not None and sigma is not None:
        d = mu.shape[0] if mu.ndim == 1 else -1
        if mu.ndim != 1 or sigma.shape != (d, d):
            raise EvaluationError(
                f"reference {path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)"
            )
        if features is not None and features.shape[1] != d:
            raise EvaluationError(
                f"reference {path}: {activation_key!r} has {features.shape[1]} columns but mu "
                f"has {d}"
            )
        _check_dimension(d, extractor, path)
        stats = FeatureStats(
            mu=torch.from_numpy(mu.astype(np.float64)),
            sigma=torch.from_numpy(sigma.astype(np.float64)),
            num=0 if features is None else int(features.shape[0]),
        )
        used = "mu, sigma" if features is None else f"mu, sigma, {activation_key}"
    else:
        assert features is not None
        stats = feature_statistics(features)
        used = str(activation_key)
    return Reference(stats=stats, features=features, source=f"{path} [{used}]")


def _read_image_batches(files: list[Path], folder: Path, batch_size: int) -> Iterator[Tensor]:
    """The images in ``files`` as float ``(B, 3, H, W)`` batches in ``[0, 1]``; all one size."""
    first = files[0]
    size = decode_image(first).size
    batch: list[Tensor] = []
    for file in files:
        img = decode_image(file)
        if img.size != size:
            raise EvaluationError(
                f"images in {folder} differ in size: {first.name} is {size[0]}x{size[1]}, "
                f"{file.name} is {img.size[0]}x{img.size[1]} (resize them to one size first)"
            )
        batch.append(image_to_tensor(img))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def _load_folder(
    folder: Path,
    extractor: FeatureExtractor | None,
    batch_size: int,
    device: torch.device | str | None,
) -> Reference:
    """A :class:`Reference` from the features of the images in ``folder``."""
    files = list_image_files(folder)
    if not files:
        raise EvaluationError(
            f"reference folder {folder} holds no images (expected png, jpg, jpeg, webp or bmp)"
        )
    if extractor is None:
        raise EvaluationError(
            f"computing reference statistics from the images in {folder} needs a feature extractor"
        )
    features = run_extractor(
        extractor, _read_image_batches(files, folder, batch_size), device=device
    )["features"]
    if features.shape[0] < 2:
        raise EvaluationError(f"reference folder {folder} holds one image; statistics need >= 2")
    return Reference(
        stats=feature_statistics(features),
        features=features,
        source=f"{folder} [{len(files)} images, {extractor.name}]",
    )


def load_reference(
    path: str | os.PathLike[str],
    extractor: FeatureExtractor | None = None,
    *,
    batch_size: int = 250,
    device: torch.device | str | None = None,
) -> Reference:
    """Reference statistics from an ``.npz`` file or a folder of images.

    * An ``.npz`` with ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` (pytorch-fid's and
      guided-diffusion's format): FID only, ``features`` is ``None``.
    * An ``.npz`` with raw activations ``(N, D)`` under ``pool_3`` (score_sde's
      ``cifar10_stats.npz``, which may also hold ``logits``) or ``features`` (what
      :func:`save_reference` writes): FID and KID. Stored ``mu``/``sigma`` are used as they are
      when present, otherwise they are computed from the activations.
    * A folder of images (png, jpg, jpeg, webp, bmp, searched recursively, sorted by path,
      decoded to RGB with Pillow, all of one size): their features under ``extractor``.

    Args:
        path: the ``.npz`` file or the image folder.
        extractor: required for a folder; for a file, its ``num_features`` is checked against
            the stored width.
        batch_size: images per extractor call (folders only).
        device: where batches are moved before the extractor call (folders only).

    Raises:
        FileNotFoundError: nothing at ``path``.
        EvaluationError: an unreadable ``.npz``, one without known keys, a feature width that is
            not the extractor's, an empty or mixed-size folder, or a folder without extractor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p = Path(path).expanduser()
    if p.is_dir():
        return _load_folder(p, extractor, batch_size, device)
    if not p.is_file():
        raise FileNotFoundError(
            f"reference statistics {str(p)!r} not found (expected an .npz with 'mu' and "
            "'sigma' or 'pool_3' activations, or a folder of images)"
        )
    return _load_npz(p, extractor)


def save_reference(path: str | os.PathLike[str], features: Tensor) -> Path:
    """Write ``mu``, ``sigma`` (float64) and ``features`` ``(N, D)`` to an ``.npz``, atomically.

    The file is written beside ``path`` under a temporary name and renamed into place
    (:func:`scoresde.infra.rundir.atomic_write`), so readers never see a partial file.
    :func:`load_reference` reads it back.

    Args:
        path: the ``.npz`` to write; missing parent folders are created.
        features: ``(N, D)`` with ``N >= 2``, stored as float32.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    stats = feature_statistics(features)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_arrays(
        target,
        mu=stats.mu.cpu().numpy(),
        sigma=stats.sigma.cpu().numpy(),
        features=features.detach().to("cpu", torch.float32).numpy(),
    )
    return target
