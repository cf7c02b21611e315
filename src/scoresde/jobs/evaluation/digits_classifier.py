"""A small classifier of scikit-learn's 8x8 digits: the package's own Inception network.

Frechet Inception Distance and Inception Score need a pretrained network whose features and
class probabilities summarise an image. For the demo's 8x8 digits, Inception (trained on 299x299
photographs) is both unavailable offline and meaningless, so this module trains its own: a small
CNN (:class:`DigitsClassifier`), trained deterministically on the digits *training* split
(:func:`train_digits_classifier`, a few seconds on a CPU) and cached as a safetensors file on
first use (:func:`load_digits_classifier`). Its 128 penultimate activations play the role of
Inception's pool features for a Frechet distance, and its logits that of Inception's class
scores for an Inception-Score analogue and for checking class-conditional samples
(:func:`class_accuracy`).

This is the package's own yardstick. Its numbers are comparable between runs of this package
that use the same cached classifier, never with published FIDs or Inception Scores. The
reference value is the same metric computed on real digits at the same sample size (real test
images against real training images), which the evaluation code reports beside a model's value.
Training is bit-identical for the same seed, machine and torch thread count; elsewhere the
weights differ by float rounding (about 1e-6 between one and two threads), so metric values
move slightly. Keep the cache file to keep numbers exactly comparable.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import Tensor, nn

from scoresde.core.seeding import derive_seed, private_global_rng, stream
from scoresde.infra.rundir import atomic_write
from scoresde.setup.data.digits import DIGITS_SHAPE, load_digits_labeled_split

NUM_CLASSES = 10
NUM_FEATURES = 128

RECIPE_VERSION = 1
"""Version of the training recipe below; it is part of the cache file's name. Change it with any
change to the network, the data, or the training, so that old caches are not reused."""

DEFAULT_SEED = 0
DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 64
LEARNING_RATE = 1e-2
INPUT_NOISE_STD = 0.05
"""Standard deviation of the gaussian noise added to training inputs: generated samples are not
exactly on the 17 grey levels, and the classifier should not care."""

CACHE_FORMAT = "scoresde-digits-classifier"
_INFERENCE_CHUNK = 4096


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convolutions (16 and 32 channels, SiLU), a 2x2 average
    pool, a 128-unit feature layer (SiLU) and 10 logits; 72k parameters. No batch norm or
    dropout, so an image's outputs do not depend on the batch it is in, and train and eval modes
    compute the same thing.

    Inputs are float ``(B, 1, 8, 8)`` images in ``[0, 1]``. The weights are float32 on the CPU,
    whatever torch's default dtype and device; their initialisation draws from torch's global
    RNG, so construct it inside :func:`~scoresde.core.seeding.private_global_rng`.
    """

    def __init__(self) -> None:
        super().__init__()
        kw = {"device": "cpu", "dtype": torch.float32}
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, **kw)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, **kw)
        self.fc = nn.Linear(32 * 4 * 4, NUM_FEATURES, **kw)
        self.head = nn.Linear(NUM_FEATURES, NUM_CLASSES, **kw)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, ``(B, 1, 8, 8) -> (B, 128)``."""
        h = F.silu(self.conv1(x))
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, ``(B, 1, 8, 8) -> (B, 10)``."""
        return self.head(self.features(x))


def train_digits_classifier(
    *, seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on the digits training split, deterministically.

    The recipe: weights initialised inside ``private_global_rng(derive_seed(seed,
    "digits-classifier", "init"))``; minibatches of ``batch_size`` from a fresh permutation of
    the training split each epoch, drawn from ``stream(seed, "digits-classifier", "batch")``,
    as is the gaussian noise of standard deviation :data:`INPUT_NOISE_STD` added to each input
    (no other augmentation: the digits are centred and size-normalised, and one-pixel shifts of
    an 8x8 image cost accuracy); cross-entropy; Adam with a learning rate of
    :data:`LEARNING_RATE` decayed to zero over ``steps`` on a cosine. Float32 on the CPU,
    whatever devices the process has, so that the result does not depend on them. Torch's global
    RNG and thread settings are untouched.

    The split is :func:`~scoresde.setup.data.digits.load_digits_labeled_split` with its defaults
    (test fraction 0.2, seed 0); the test split is never seen. With the default arguments the
    classifier reaches about 99% accuracy on it (98.6-99.2% over training seeds), in a few
    seconds on one CPU thread.

    Returns:
        The trained classifier in eval mode, on the CPU.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    images, labels, _, _ = load_digits_labeled_split()
    with private_global_rng(derive_seed(seed, "digits-classifier", "init")):
        model = DigitsClassifier()
    gen = stream(seed, "digits-classifier", "batch")
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    n = images.shape[0]
    order = torch.empty(0, dtype=torch.int64, device="cpu")
    model.train()
    for step in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen, device="cpu")])
        idx, order = order[:batch_size], order[batch_size:]
        x = images[idx]
        x = x + INPUT_NOISE_STD * torch.randn(x.shape, generator=gen, dtype=x.dtype, device="cpu")
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


class DigitsFeatures:
    """The feature extractor of the evaluation code, backed by a :class:`DigitsClassifier`.

    ``extractor(images)`` takes float images ``(B, 1, 8, 8)`` in ``[0, 1]`` (not clamped: clamp
    samples first, as for saving them) on any device and returns ``{"features": (B, 128),
    "logits": (B, 10)}``, both float32 on the extractor's ``device``, computed without gradients
    in chunks, so ``B`` may be large.

    Attributes:
        name: ``"digits-classifier"``, for reports.
        num_features: ``F``, the width of ``features`` (128).
        num_classes: 10.
        model: the classifier, in eval mode.
        device: where it runs.
    """

    name = "digits-classifier"
    num_features = NUM_FEATURES
    num_classes = NUM_CLASSES

    def __init__(self, model: DigitsClassifier, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.model.requires_grad_(False)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """``(B, 1, 8, 8)`` float images -> ``{"features": (B, 128), "logits": (B, 10)}``."""
        x = self._check(images)
        features, logits = [], []
        with torch.no_grad():
            for chunk in x.split(_INFERENCE_CHUNK):
                f = self.model.features(chunk.to(self.device, torch.float32))
                features.append(f)
                logits.append(self.model.head(f))
        if not features:
            return {
                "features": torch.empty(0, NUM_FEATURES, device=self.device, dtype=torch.float32),
                "logits": torch.empty(0, NUM_CLASSES, device=self.device, dtype=torch.float32),
            }
        return {"features": torch.cat(features), "logits": torch.cat(logits)}

    def predict(self, images: Tensor) -> Tensor:
        """Predicted labels, ``(B, 1, 8, 8) -> (B,)`` int64 on the extractor's device."""
        return self(images)["logits"].argmax(1)

    def _check(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise ValueError(
                f"the digits classifier takes a tensor of images; got {type(images).__name__}"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(
                f"the digits classifier takes (B, 1, 8, 8) images; got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"the digits classifier takes float images in [0, 1]; got {images.dtype}"
            )
        return images


def default_cache_dir() -> Path:
    """``$SCORESDE_CACHE``, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``."""
    env = os.environ.get("SCORESDE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "scoresde"
    return Path.home() / ".cache" / "scoresde"


def cache_path(cache_dir: str | Path | None = None) -> Path:
    """The cache file of the default classifier: ``digits_classifier_v1_seed0.safetensors`` in
    ``cache_dir`` (default :func:`default_cache_dir`)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"digits_classifier_v{RECIPE_VERSION}_seed{DEFAULT_SEED}.safetensors"


def _recipe() -> str:
    return json.dumps(
        {
            "version": RECIPE_VERSION,
            "seed": DEFAULT_SEED,
            "steps": DEFAULT_STEPS,
            "batch_size": DEFAULT_BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "input_noise_std": INPUT_NOISE_STD,
        },
        sort_keys=True,
    )


def load_digits_classifier(
    *, cache_dir: str | Path | None = None, device: torch.device | str = "cpu"
) -> DigitsFeatures:
    """The package's digits classifier as a :class:`DigitsFeatures` on ``device``.

    Loads the cache file (:func:`cache_path` of ``cache_dir``); where it is missing, unreadable,
    or from another recipe, trains the classifier with :func:`train_digits_classifier` defaults
    (a few seconds) and writes it there atomically, replacing what was there. A cache that
    cannot be written is reported with a warning, and the freshly trained classifier is used.
    """
    path = cache_path(cache_dir)
    model = _read_cache(path)
    if model is None:
        model = train_digits_classifier()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            metadata = {"format": CACHE_FORMAT, "recipe": _recipe()}
            atomic_write(path, serialize(state, metadata=metadata))
        except OSError as err:
            warnings.warn(f"could not cache the digits classifier at {path}: {err}", stacklevel=2)
    return DigitsFeatures(model, device)


def _read_cache(path: Path) -> DigitsClassifier | None:
    """The classifier in the cache file, or ``None`` if it is absent, corrupt or stale."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT or metadata.get("recipe") != _recipe():
                return None
            names = f.keys()
            state = {name: f.get_tensor(name) for name in names}
        with private_global_rng(0):  # the initial weights are overwritten at once
            model = DigitsClassifier()
        model.load_state_dict(state, strict=True)
    except Exception:  # safetensors raises several types for malformed files; we retrain
        return None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return None
    return model.eval()


def class_accuracy(
    predicted: Tensor, target: Tensor, num_classes: int = NUM_CLASSES
) -> dict[int, float]:
    """Accuracy per target class: ``{c: share of the examples of class c predicted as c}``.

    Args:
        predicted: ``(N,)`` integer predicted labels (e.g. :meth:`DigitsFeatures.predict`).
        target: ``(N,)`` integer true (or conditioning) labels in ``0..num_classes-1``.
        num_classes: the number of classes.

    Returns:
        A dict from class to accuracy in ``[0, 1]``, sorted by class; classes absent from
        ``target`` are omitted (no NaN). Overall accuracy is :func:`accuracy`.
    """
    predicted, target = _check_labels(predicted, target, num_classes)
    correct = torch.bincount(target[predicted == target], minlength=num_classes)
    total = torch.bincount(target, minlength=num_classes)
    return {c: float(correct[c]) / float(total[c]) for c in range(num_classes) if int(total[c]) > 0}


def conditional_accuracy(samples: Tensor, labels: Tensor) -> dict[str, Any]:
    """How often the package's digits classifier (:func:`load_digits_classifier`, trained on
    real digits, independent of the model) recognises class-conditional samples as the class
    they were drawn for.

    Args:
        samples: ``(N, 1, 8, 8)`` digit samples in ``[0, 1]``; labels: ``(N,)`` their classes.

    Returns:
        ``{"per_class": {"k": accuracy}, "mean": accuracy}`` (rounded to 4 digits; chance is
        0.1).
    """
    predicted = load_digits_classifier().predict(samples)
    per_class = class_accuracy(predicted, labels)
    return {
        "per_class": {str(k): round(v, 4) for k, v in per_class.items()},
        "mean": round(accuracy(predicted, labels), 4),
    }


def accuracy(predicted: Tensor, target: Tensor) -> float:
    """Share of ``(N,)`` ``predicted`` labels equal to ``target``; NaN for ``N == 0``."""
    predicted, target = _check_labels(predicted, target, None)
    if target.numel() == 0:
        return math.nan
    return float((predicted == target).double().mean())


def _check_labels(
    predicted: Tensor, target: Tensor, num_classes: int | None
) -> tuple[Tensor, Tensor]:
    if predicted.dim() != 1 or predicted.shape != target.shape:
        raise ValueError(
            f"predicted and target must be (N,) label vectors of one length; got "
            f"{tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if predicted.is_floating_point() or target.is_floating_point():
        raise ValueError("predicted and target must be integer labels, not floats")
    target = target.to(torch.int64).cpu()
    predicted = predicted.to(torch.int64).cpu()
    if num_classes is not None and target.numel() > 0:
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target labels must be in 0..{num_classes - 1}; got values in {low}..{high}"
            )
    return predicted, target
