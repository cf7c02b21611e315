"""Safe loading and conversion of official ``score_sde_pytorch`` NCSN++ checkpoints.

Official checkpoints (``{'optimizer', 'model', 'ema', 'step'}``, written by its ``save_checkpoint``)
hold the network state dict under ``module.``-prefixed keys and the EMA as a list of
``shadow_params`` in parameter order. Their Adam learning rate is pickled as a numpy float64, so
they are loaded with ``torch.load(weights_only=True)`` plus exactly the numpy globals needed to
rebuild numpy scalars (``scalar`` and a few plain numeric dtype classes); full unpickling is never
used. Our ``NCSNpp`` keeps the official module layout, so mapping a state dict only strips the
prefix (``NIN.W`` is stored as ``(in, out)`` in both).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from scoresde.nn.ncsnpp import NCSNpp

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


class OfficialCheckpointError(ValueError):
    """A file is not a (safely loadable) official score_sde checkpoint."""


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise OfficialCheckpointError(
            f"refusing {path}: not a safely loadable official checkpoint ({_one_line_reason(exc)})"
        ) from None
    problem = _layout_problem(checkpoint)
    if problem:
        raise OfficialCheckpointError(f"{path} is not an official score_sde checkpoint: {problem}")
    return checkpoint


def _layout_problem(checkpoint: Any) -> str | None:
    """Why ``checkpoint`` is not an official checkpoint dict, or ``None`` if it is one."""
    if not isinstance(checkpoint, dict):
        return f"expected a dict, got {type(checkpoint).__name__}"
    missing = [key for key in ("model", "ema", "step") if key not in checkpoint]
    if missing:
        return f"missing keys {missing} (found {sorted(map(str, checkpoint))})"
    model = checkpoint["model"]
    if not isinstance(model, Mapping) or not all(isinstance(v, Tensor) for v in model.values()):
        return "'model' is not a state dict of tensors"
    if not any(".all_modules." in f".{key}" for key in model):
        return "'model' has no 'all_modules' entries (not an NCSN++ state dict)"
    ema = checkpoint["ema"]
    if not isinstance(ema, Mapping) or not isinstance(ema.get("shadow_params"), list | tuple):
        return "'ema' has no 'shadow_params' list"
    return None


def official_state_dict_to_ours(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an official NCSN++ state dict to ``NCSNpp`` keys: only the ``module.`` prefix goes.

    Accepts prefixed (DataParallel) or bare keys; keys and order are otherwise unchanged.
    """
    out = {key.removeprefix(_PREFIX): value for key, value in sd.items()}
    unknown = [key for key in out if key != "sigmas" and not key.startswith("all_modules.")]
    if unknown:
        raise OfficialCheckpointError(
            f"unexpected keys in official NCSN++ state dict: {unknown[:5]}"
        )
    return out


def official_ema_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The EMA weights of an official checkpoint as an ``NCSNpp`` state dict.

    The official EMA keeps ``shadow_params``, one tensor per trainable parameter in
    ``parameters()`` order: every state-dict entry except the ``sigmas`` buffer and the fixed
    Fourier frequencies ``all_modules.0.W``. Those two are taken from ``checkpoint['model']``.
    """
    sd = official_state_dict_to_ours(checkpoint["model"])
    shadow = list(checkpoint["ema"]["shadow_params"])
    trainable = [k for k in sd if k != "sigmas" and not (k == _FOURIER_KEY and sd[k].ndim == 1)]
    if len(trainable) != len(shadow):
        raise OfficialCheckpointError(
            f"EMA has {len(shadow)} shadow params but the model has {len(trainable)} trainable ones"
        )
    for key, value in zip(trainable, shadow, strict=True):
        if tuple(value.shape) != tuple(sd[key].shape):
            raise OfficialCheckpointError(
                f"EMA shadow param for {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(sd[key].shape)}"
            )
        sd[key] = value
    return sd


def from_official_config(
    model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """``NCSNpp`` keyword arguments from the official ``config.model`` and ``config.data`` dicts."""
    name = model_cfg.get("name", "ncsnpp")
    if name != "ncsnpp":
        raise ValueError(f"only the official 'ncsnpp' network is supported, config has {name!r}")
    for field, expected in (
        ("normalization", "GroupNorm"),
        ("conv_size", 3),
        ("attention_type", "ddpm"),
    ):
        if model_cfg.get(field, expected) != expected:
            raise ValueError(f"unsupported {field}={model_cfg[field]!r} (NCSN++ uses {expected!r})")
    return {
        "image_size": int(data_cfg["image_size"]),
        "num_channels": int(data_cfg["num_channels"]),
        "nf": int(model_cfg["nf"]),
        "ch_mult": tuple(int(m) for m in model_cfg["ch_mult"]),
        "num_res_blocks": int(model_cfg["num_res_blocks"]),
        "attn_resolutions": tuple(int(r) for r in model_cfg["attn_resolutions"]),
        "dropout": float(model_cfg["dropout"]),
        "resamp_with_conv": bool(model_cfg["resamp_with_conv"]),
        "resblock_type": str(model_cfg["resblock_type"]).lower(),
        "fir": bool(model_cfg["fir"]),
        "fir_kernel": tuple(float(k) for k in model_cfg["fir_kernel"]),
        "skip_rescale": bool(model_cfg["skip_rescale"]),
        "progressive": str(model_cfg["progressive"]).lower(),
        "progressive_input": str(model_cfg["progressive_input"]).lower(),
        "progressive_combine": str(model_cfg["progressive_combine"]).lower(),
        "embedding_type": str(model_cfg["embedding_type"]).lower(),
        "fourier_scale": float(model_cfg["fourier_scale"]),
        "init_scale": float(model_cfg["init_scale"]),
        "conditional": bool(model_cfg["conditional"]),
        "scale_by_sigma": bool(model_cfg["scale_by_sigma"]),
        "centered": bool(data_cfg["centered"]),
        "sigma_min": float(model_cfg["sigma_min"]),
        "sigma_max": float(model_cfg["sigma_max"]),
        "num_scales": int(model_cfg["num_scales"]),
        "nonlinearity": str(model_cfg["nonlinearity"]).lower(),
    }


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_official_checkpoint(
    src_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Convert an official checkpoint into ``out_dir/model.safetensors`` + ``out_dir/config.json``.

    Args:
        src_path: official checkpoint (``.pth``), loaded with ``load_official_checkpoint``.
        out_dir: output directory (created if needed); both files are written atomically.
        use_ema: store the EMA weights (what the paper samples with) instead of the raw ones.
        config: the official config as a nested dict (needs ``model`` and ``data``); by default
            read from the JSON file next to the checkpoint, ``<src_path stem>.config.json``.

    Returns:
        ``out_dir``. ``config.json`` holds ``network`` (the ``NCSNpp`` kwargs), ``official_config``,
        ``step`` and ``weights`` (``'ema'`` or ``'model'``); ``load_converted`` rebuilds the model.
    """
    src_path, out_dir = Path(src_path), Path(out_dir)
    checkpoint = load_official_checkpoint(src_path)
    if config is None:
        config_path = src_path.with_suffix(".config.json")
        if not config_path.is_file():
            raise FileNotFoundError(
                f"no config for {src_path}: pass config= or create {config_path}"
            )
        config = json.loads(config_path.read_text())
    kwargs = from_official_config(config["model"], config["data"])
    sd = (
        official_ema_state_dict(checkpoint)
        if use_ema
        else official_state_dict_to_ours(checkpoint["model"])
    )
    model = NCSNpp(**kwargs)
    model.load_state_dict(sd, strict=True)
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    meta = {
        "network": kwargs,
        "official_config": config,
        "step": int(checkpoint["step"]),
        "weights": "ema" if use_ema else "model",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        out_dir / "model.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    text = json.dumps(meta, indent=1, sort_keys=True, default=str)
    _atomic_write(out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))
    return out_dir


def load_converted(out_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> NCSNpp:
    """Rebuild an ``NCSNpp`` from a ``convert_official_checkpoint`` directory (eval mode)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "config.json").read_text())
    model = NCSNpp(**meta["network"])
    model.load_state_dict(load_file(out_dir / "model.safetensors", device=str(device)), strict=True)
    return model.to(device).eval()
