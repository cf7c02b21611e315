"""Feature extractors (images to features and logits) and reference statistics.

* The extractor protocol (:class:`FeatureExtractor`): a callable ``extractor(images)`` taking
  float images ``(B, C, H, W)`` in ``[0, 1]`` and returning ``{"features": (B, D), "logits":
  (B, K)}`` (float32), with attributes ``name`` and ``num_features`` (``D``).
  :func:`extract_features` runs one over many images in batches.
* :class:`InceptionV3Features`: the TF-ported Inception-v3 (``inception-2015-12-05``) of FID
  (Heusel et al., 2017), IS (Salimans et al., 2016) and KID (Binkowski et al., 2018), through
  torch-fidelity's ``FeatureExtractorInceptionV3``: its 2048 pool features for FID and KID, its
  1008 ``logits_unbiased`` for IS, as torch-fidelity uses them. torch-fidelity is an optional
  dependency (``pip install "scoresde[fid]"``; it needs a torchvision that matches torch). The
  weights are a local file (nothing is downloaded); it is read without unpickling code
  (safetensors, or ``torch.load(weights_only=True)``) and handed to torch-fidelity as a
  verified private copy, since torch-fidelity itself loads it with ``weights_only=False``.
* Reference statistics (:class:`Reference`): :func:`load_reference` reads an ``.npz`` of
  ``mu``/``sigma`` (pytorch-fid, guided-diffusion) or of raw activations (``pool_3`` in
  score_sde's ``cifar10_stats.npz``, or ``features``), or extracts features from a folder of
  images; :func:`save_reference` writes ``mu``, ``sigma`` and ``features`` atomically.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.data.image_formats import decode_image, image_to_tensor, list_image_files
from scoresde.evaluation.metrics import FeatureStats, feature_statistics

__all__ = [
    "INCEPTION_WEIGHTS_URL",
    "EvaluationError",
    "FeatureExtractor",
    "InceptionV3Features",
    "MissingDependencyError",
    "Reference",
    "extract_features",
    "load_reference",
    "load_tensor_file",
    "save_reference",
    "to_uint8_rgb",
]

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
"""torch-fidelity's port of the TensorFlow ``inception-2015-12-05`` graph (the FID network)."""

REFERENCE_ACTIVATION_KEYS = ("pool_3", "features")
"""Keys of raw activations ``(N, D)`` in a reference ``.npz``, in the order they are tried."""


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


def _run_extractor(
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
    return _run_extractor(
        extractor,
        _batches(images, batch_size),
        device=device,
        total=images.shape[0],
        progress=progress,
    )


# ---- Inception-v3 through torch-fidelity --------------------------------------------------


def _inception_weights_file(weights_path: str | os.PathLike[str] | None) -> Path:
    """The existing weights file, else a ``FileNotFoundError`` that says how to get it."""
    hint = (
        f"download {INCEPTION_WEIGHTS_URL} (the same file as pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth) and set eval.inception_weights=PATH"
    )
    if weights_path is None or str(weights_path) == "":
        raise FileNotFoundError(f"FID/IS/KID need the Inception-v3 weights file: {hint}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception-v3 weights file {str(path)!r} not found: {hint}")
    return path


def _import_inception_class() -> Any:
    """torch-fidelity's ``FeatureExtractorInceptionV3``, else :class:`MissingDependencyError`.

    A torchvision built for another torch (e.g. PyPI's CUDA build beside a CPU-only torch) fails
    at import with a ``RuntimeError`` (``operator torchvision::nms does not exist``), not an
    ``ImportError``, so every exception of the import is turned into the same advice.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingDependencyError(
            "FID/IS/KID with Inception-v3 need torch-fidelity and a torchvision matching your "
            f'torch: pip install "scoresde[fid]" ({type(exc).__name__}: {reason})'
        ) from None
    return FeatureExtractorInceptionV3


def check_inception_available(weights_path: str | os.PathLike[str] | None) -> Path:
    """Cheap check that :class:`InceptionV3Features` can be built (the weights file exists and
    torch-fidelity imports), for callers that must refuse before any expensive work.

    Raises:
        FileNotFoundError, MissingDependencyError: as :class:`InceptionV3Features` does.
    """
    path = _inception_weights_file(weights_path)
    _import_inception_class()
    return path


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tensor_file(path: Path) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` dict from ``.safetensors`` or a ``.pth``, never unpickling code.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``, which refuses pickled objects other
    than tensors and plain containers; the result must then be a dict of str to tensors.

    Raises:
        EvaluationError: the file is unreadable, unsafe, or not a flat dict of tensors.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for malformed files
            raise EvaluationError(
                f"cannot read {path} as a safetensors file: {_first_line(exc)}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError...
        raise EvaluationError(
            f"cannot load {path} safely with torch.load(weights_only=True) (a weights file must "
            f"hold only tensors): {_first_line(exc)}"
        ) from None
    if not isinstance(state, dict) or not state:
        raise EvaluationError(
            f"{path} holds a {type(state).__name__}, not a dict of parameter names to tensors"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        value = state[bad[0]]
        raise EvaluationError(
            f"{path} is not a flat dict of parameter names to tensors: entry {bad[0]!r} is a "
            f"{type(value).__name__}"
        )
    return state


class InceptionV3Features:
    """Inception-v3 features and logits of FID / IS / KID (torch-fidelity's TF-exact port).

    ``extractor(images)`` takes float ``(B, C, H, W)`` in ``[0, 1]`` with ``C`` 1 or 3, any
    size; images are quantised as ``uint8 = round(255 x)`` clamped to ``[0, 255]`` (what saving
    them as PNG does), grey images repeated to RGB, and resized to 299x299 inside torch-fidelity
    with TF1's bilinear resize. It returns ``{"features": (B, 2048), "logits": (B, 1008)}``
    float32 on :attr:`device`: torch-fidelity's ``"2048"`` (pool3) and ``"logits_unbiased"``
    (the logits without the final bias, which torch-fidelity and the TF IS code use for IS).

    Attributes:
        name: ``"inception-v3-compat"`` (torch-fidelity's name for this network).
        num_features: 2048.
        num_classes: 1008.
        device: where the network runs; inputs are moved there.
    """

    name = "inception-v3-compat"
    num_features = 2048
    num_classes = 1008

    def __init__(
        self,
        weights_path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
    ) -> None:
        """Build the network from a local weights file.

        Args:
            weights_path: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
                (:data:`INCEPTION_WEIGHTS_URL`), or the same tensors as ``.safetensors``.
            device: where to run the network.

        Raises:
            FileNotFoundError: no weights file at ``weights_path`` (the message says where to
                download it).
            MissingDependencyError: torch-fidelity (or a matching torchvision) is not installed.
            EvaluationError: the file is not a safe flat dict of tensors, or not these weights.
        """
        path = _inception_weights_file(weights_path)
        network_class = _import_inception_class()
        state = load_tensor_file(path)
        with tempfile.TemporaryDirectory(prefix="scoresde-inception-") as folder:
            verified = Path(folder) / "inception-weights.pth"
            torch.save(state, verified)
            try:
                network = network_class(
                    self.name,
                    ["2048", "logits_unbiased"],
                    feature_extractor_weights_path=str(verified),
                )
            except RuntimeError as exc:  # load_state_dict: missing / unexpected / mis-shaped keys
                raise EvaluationError(
                    f"{path} does not hold torch-fidelity's Inception-v3 weights "
                    f"(download {INCEPTION_WEIGHTS_URL}): {_first_line(exc)}"
                ) from None
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """Features ``(B, 2048)`` and logits ``(B, 1008)`` of float images ``(B, C, H, W)``."""
        x = to_uint8_rgb(images).to(self.device)
        with torch.no_grad():
            features, logits = self.network(x)
        return {"features": features.float(), "logits": logits.float()}


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Float images ``(B, C, H, W)`` in ``[0, 1]``, ``C`` 1 or 3, as uint8 RGB ``(B, 3, H, W)``.

    ``round(255 x)`` clamped to ``[0, 255]`` (so values slightly outside ``[0, 1]`` saturate);
    one channel is repeated three times.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be (B, C, H, W) with 1 or 3 channels, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values (did sampling diverge?)")
    x = (images * 255).round().clamp(0, 255).to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


# ---- reference statistics -----------------------------------------------------------------


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
        reason = _first_line(exc)
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
            raise EvaluationError(f"cannot read reference {path}: {_first_line(exc)}") from None
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
    features = _run_extractor(
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

    The file is written beside ``path`` under a temporary name and moved into place with
    ``os.replace``, so readers never see a partial file. :func:`load_reference` reads it back.

    Args:
        path: the ``.npz`` to write; missing parent folders are created.
        features: ``(N, D)`` with ``N >= 2``, stored as float32.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    stats = feature_statistics(features)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                mu=stats.mu.cpu().numpy(),
                sigma=stats.sigma.cpu().numpy(),
                features=features.detach().to("cpu", torch.float32).numpy(),
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
