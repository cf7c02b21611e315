"""Safe loading of official ``score_sde_pytorch`` checkpoints and mapping of their weights.

Supported networks (official ``config.model.name`` -> our class): ``'ncsnpp'`` -> ``NCSNpp``
(NCSN++ and DDPM++), ``'ddpm'`` -> ``DDPM``, ``'ncsn'`` -> ``NCSN``, ``'ncsnv2_64'`` /
``'ncsnv2_128'`` / ``'ncsnv2_256'`` -> ``NCSNv2`` with ``variant`` 64 / 128 / 256. That mapping
(``official_network``) lives in :mod:`scoresde.interop.official_config` and is re-exported here.
A checkpoint becomes a scoresde run folder with :func:`scoresde.interop.convert.convert_official`.

Official checkpoints (``{'optimizer', 'model', 'ema', 'step'}``, written by its ``save_checkpoint``)
hold the network state dict under ``module.``-prefixed keys and the EMA as a list of
``shadow_params``, one per trainable parameter in ``parameters()`` order. Their Adam learning rate
is pickled as a numpy float64, so they are loaded with ``torch.load(weights_only=True)`` plus
exactly the numpy globals needed to rebuild numpy scalars (``scalar`` and a few plain numeric dtype
classes); full unpickling is never used. Every supported network keeps the official module layout
(NCSN++ and DDPM under ``all_modules``; NCSN/NCSNv2 under ``begin_conv``, ``res*``, ``refine*``,
...), so mapping a state dict only strips the prefix (``NIN.W`` is stored as ``(in, out)`` in
both).

Buffers and frozen parameters: ``sigmas`` (float64 noise levels of NCSN++, DDPM and NCSNv2) is a
buffer and the Fourier frequencies ``W`` of NCSN++ are a frozen parameter; neither has an EMA
shadow. NCSN/NCSNv2 have no other buffers (their instance norms keep no running statistics, their
norm weights are trainable parameters), so all their other entries have shadows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from scoresde.infra.checkpoint import FORMAT_NAME
from scoresde.infra.rundir import summarize
from scoresde.interop.official_config import (
    OfficialNetwork,
    from_official_config,
    official_network,
)

__all__ = [
    "OfficialCheckpointError",
    "OfficialNetwork",
    "check_official_file",
    "from_official_config",
    "load_official_checkpoint",
    "load_strict",
    "official_ema_state_dict",
    "official_network",
    "official_state_dict_to_ours",
]

_PREFIX = "module."
_FOURIER_KEY = "all_modules.0.W"
_NUMPY_DTYPES = (
    "float64",
    "float32",
    "float16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)
# Top-level state-dict names of the supported official networks (after ``module.``).
_KNOWN_KEY = re.compile(r"sigmas|(all_modules|begin_conv|normalizer|end_conv|res\d+|refine\d+)\..+")


class OfficialCheckpointError(ValueError):
    """A file is not a (safely loadable) official score_sde checkpoint, or does not fit its
    network."""


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals a pickled numpy scalar needs: ``scalar`` (both module spellings, numpy 1
    and 2) and the dtype classes of plain numeric types. None of them can run code."""
    scalar = np.float64(0.0).__reduce__()[0]
    dtype_classes = [type(np.dtype(name)) for name in _NUMPY_DTYPES]
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtype_classes,
    ]


def _one_line_reason(exc: BaseException) -> str:
    """The informative line of a loader error (torch's messages span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Can only build" in line:
            line = line.removeprefix("WeightsUnpickler error:").strip()
            return line.split(". Please")[0].rstrip(".")
    first = next((line for line in lines if "weights_only" not in line), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_official_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an official checkpoint safely (``weights_only=True``, numpy scalars allowed), on CPU.

    Returns the checkpoint dict: ``model`` (state dict, ``module.``-prefixed keys), ``ema``
    (``decay``, ``num_updates``, ``shadow_params``), ``step`` and usually ``optimizer``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OfficialCheckpointError: the file cannot be loaded with the restricted unpickler (for
            instance a pickle referencing any other global) or does not have the layout above.
    """
    path = check_official_file(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for foreign or damaged files
        raise OfficialCheckpointError(
            f"refusing {path}: not a safely loadable official checkpoint ({_one_line_reason(exc)})"
        ) from None
    problem = _layout_problem(checkpoint)
    if problem:
        raise OfficialCheckpointError(f"{path} is not an official score_sde checkpoint: {problem}")
    return checkpoint


def check_official_file(path: str | os.PathLike[str]) -> Path:
    """Cheap checks that ``path`` may be an official checkpoint, before anything is loaded.

    Raises:
        FileNotFoundError: no file at ``path``.
        OfficialCheckpointError: it is a safetensors file (a scoresde checkpoint, which needs no
            conversion, or a truncated or foreign one), not a PyTorch ``.pth`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    problem = _safetensors_problem(path)
    if problem:
        raise OfficialCheckpointError(f"{path} {problem}")
    return path


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path``, a safetensors file, cannot be converted; ``None`` if it is not one.

    A safetensors file starts with the 8-byte little-endian length of a JSON header; official
    checkpoints are PyTorch (zip or legacy pickle) files.
    """
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return None
    if int.from_bytes(head[:8], "little") + 8 > path.stat().st_size:
        return "is a truncated or corrupt safetensors file, not an official .pth checkpoint"
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # safetensors raises several types for malformed headers
        return "is a corrupt safetensors file, not an official .pth checkpoint"
    if metadata.get("format") == FORMAT_NAME:
        return (
            "is already a scoresde checkpoint: use it directly "
            "(scoresde sample --checkpoint PATH); nothing to convert"
        )
    return "is a safetensors file, not an official score_sde .pth checkpoint"


def _layout_problem(checkpoint: Any) -> str | None:
    """Why ``checkpoint`` is not an official checkpoint dict, or ``None`` if it is one."""
    if not isinstance(checkpoint, dict):
        return f"expected a dict, got {type(checkpoint).__name__}"
    missing = [key for key in ("model", "ema", "step") if key not in checkpoint]
    if missing:
        found = sorted(map(str, checkpoint))
        return f"missing keys {missing} (found {len(found)} keys: {summarize(found)})"
    model = checkpoint["model"]
    if not isinstance(model, Mapping) or not all(isinstance(v, Tensor) for v in model.values()):
        return "'model' is not a state dict of tensors"
    if not any(_KNOWN_KEY.fullmatch(str(key).removeprefix(_PREFIX)) for key in model):
        return "'model' has no entries of a supported network (NCSN++, DDPM, NCSN, NCSNv2)"
    ema = checkpoint["ema"]
    if not isinstance(ema, Mapping) or not isinstance(ema.get("shadow_params"), list | tuple):
        return "'ema' has no 'shadow_params' list"
    return None


def official_state_dict_to_ours(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an official state dict (any supported network) to our keys: only ``module.`` goes.

    Accepts prefixed (DataParallel) or bare keys; keys (including the ``sigmas`` buffer, where the
    network has one) and their order are otherwise unchanged.

    Raises:
        OfficialCheckpointError: a key belongs to none of the supported networks.
    """
    out = {key.removeprefix(_PREFIX): value for key, value in sd.items()}
    unknown = [key for key in out if not _KNOWN_KEY.fullmatch(key)]
    if unknown:
        raise OfficialCheckpointError(f"unexpected keys in official state dict: {unknown[:5]}")
    return out


def _trainable_keys(sd: Mapping[str, Tensor], model: nn.Module | None) -> list[str]:
    """State-dict keys of the trainable parameters, in ``parameters()`` order.

    From ``model`` if given (its ``requires_grad`` parameters, as the official EMA selects them);
    otherwise every entry except the ``sigmas`` buffer and the frozen NCSN++ Fourier ``W``.
    """
    if model is not None:
        return [name for name, p in model.named_parameters() if p.requires_grad]
    return [k for k in sd if k != "sigmas" and not (k == _FOURIER_KEY and sd[k].ndim == 1)]


def official_ema_state_dict(
    checkpoint: Mapping[str, Any], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """The EMA weights of an official checkpoint as a state dict of our network.

    The official EMA keeps ``shadow_params``, one tensor per trainable parameter in
    ``parameters()`` order; they replace those entries of ``checkpoint['model']``, the rest
    (``sigmas``, NCSN++'s Fourier ``W``) is taken from it unchanged.

    Args:
        checkpoint: an official checkpoint dict (``model``, ``ema``).
        model: the network the weights are for; its ``requires_grad`` parameters name the
            shadows. Without it the trainable entries are inferred from the keys (every entry
            except ``sigmas`` and ``all_modules.0.W``), which holds for all supported networks.

    Raises:
        OfficialCheckpointError: the shadow count or a shadow's shape does not match (one line).
    """
    sd = official_state_dict_to_ours(checkpoint["model"])
    shadow = list(checkpoint["ema"]["shadow_params"])
    trainable = _trainable_keys(sd, model)
    what = f"the {type(model).__name__} model" if model is not None else "the model"
    if len(trainable) != len(shadow):
        raise OfficialCheckpointError(
            f"EMA has {len(shadow)} shadow params but {what} has {len(trainable)} trainable ones"
        )
    absent = [key for key in trainable if key not in sd]
    if absent:
        raise OfficialCheckpointError(
            f"checkpoint 'model' lacks trainable parameters of {what}: {absent[:5]}"
        )
    for key, value in zip(trainable, shadow, strict=True):
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(sd[key].shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise OfficialCheckpointError(
                f"EMA shadow param for {key} has shape {got}, expected {tuple(sd[key].shape)}"
            )
        sd[key] = value
    return sd


def load_strict(model: nn.Module, sd: Mapping[str, Tensor]) -> None:
    """``model.load_state_dict(sd, strict=True)`` with a one-line error on any mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {items[:3]}{' ...' if len(items) > 3 else ''} ({len(items)})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        ]
        raise OfficialCheckpointError(
            f"checkpoint does not fit the config's {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True)
