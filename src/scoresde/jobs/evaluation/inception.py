"""The Inception-v3 of FID, IS and KID, through torch-fidelity, from a local weights file.

:class:`InceptionV3Features` is the TF-ported Inception-v3 (``inception-2015-12-05``) of FID
(Heusel et al., 2017), IS (Salimans et al., 2016) and KID (Binkowski et al., 2018), as
torch-fidelity's ``FeatureExtractorInceptionV3``: its 2048 pool features for FID and KID, its
1008 ``logits_unbiased`` for IS, as torch-fidelity uses them. torch-fidelity is an optional
dependency (``pip install "scoresde[fid]"``; it needs a torchvision that matches torch). The
weights are a local file (nothing is downloaded); it is read without unpickling code
(safetensors, or ``torch.load(weights_only=True)``) and handed to torch-fidelity as a verified
private copy, since torch-fidelity itself loads it with ``weights_only=False``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde.jobs.evaluation.features import EvaluationError, MissingDependencyError, first_line

__all__ = [
    "INCEPTION_WEIGHTS_URL",
    "InceptionV3Features",
    "check_inception_available",
    "load_tensor_file",
    "to_uint8_rgb",
]

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
"""torch-fidelity's port of the TensorFlow ``inception-2015-12-05`` graph (the FID network)."""


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
                f"cannot read {path} as a safetensors file: {first_line(exc)}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError...
        raise EvaluationError(
            f"cannot load {path} safely with torch.load(weights_only=True) (a weights file must "
            f"hold only tensors): {first_line(exc)}"
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
                    f"(download {INCEPTION_WEIGHTS_URL}): {first_line(exc)}"
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
