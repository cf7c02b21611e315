"""One-file safetensors checkpoints of trained and converted runs: no pickle, atomic writes.

A checkpoint is a single ``.safetensors`` file. Its tensors are

* ``model.<name>``: the model ``state_dict``;
* ``ema.<name>``: the EMA state (e.g. :meth:`scoresde.jobs.training.ema.EMA.state_dict`), if any;
* ``optim.state.<param_id>.<name>``: the optimizer's per-parameter tensor state (Adam's
  ``exp_avg``, ``exp_avg_sq``, ``step``, ...);
* ``optim.param_groups.<index>.<key>``: tensor-valued hyperparameters, which are rare.

Everything else lives in the string metadata of the safetensors header, JSON-encoded: the
format name and version, ``step``, ``config``, ``extra``, and the optimizer's ``param_groups`` and
non-tensor per-parameter state. JSON turns tuples into lists; optimizer hyperparameters other
than ``params`` that were tuples (Adam's ``betas``) come back as tuples.

Saving writes a temporary file in the target directory, flushes and fsyncs it and then
``os.replace``-s it over the target, so an interrupted save never damages an existing checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import Tensor

from scoresde.infra.rundir import atomic_write

FORMAT_NAME = "scoresde-checkpoint"
FORMAT_VERSION = 1

_MODEL = "model."
_EMA = "ema."
_OPTIM_STATE = "optim.state."
_OPTIM_GROUPS = "optim.param_groups."


EMA_SHADOW_PREFIX = "shadow."
"""Prefix of the averaged model's weights in an EMA state dict (``EMA.state_dict``)."""


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt, or not a scoresde checkpoint."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes:
        model: the model ``state_dict``.
        ema: the EMA state dict, or ``None`` if none was saved.
        optimizer: a state dict for ``torch.optim.Optimizer.load_state_dict``, or ``None``.
        step: the training step.
        config: the run configuration.
        extra: free-form JSON data, or ``None``.
    """

    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer: dict[str, Any] | None
    step: int
    config: dict[str, Any]
    extra: dict[str, Any] | None = None


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: dict[str, Tensor],
    ema: dict[str, Tensor] | None = None,
    optimizer: dict[str, Any] | None = None,
    step: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint to ``path`` (one safetensors file) and return the path.

    Args:
        path: target file, conventionally ending in ``.safetensors``; parent folders are created.
        model: the model ``state_dict``.
        ema: the EMA state (any ``dict[str, Tensor]``), or ``None``.
        optimizer: a torch optimizer ``state_dict()``, or ``None``.
        step: the training step.
        config: the run configuration; must be JSON-serializable.
        extra: more JSON-serializable data, or ``None``.

    Raises:
        TypeError: a value cannot be stored (non-tensor state entry, non-JSON config, ...).
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    _add_tensors(tensors, _MODEL, model, "model")
    if ema is not None:
        _add_tensors(tensors, _EMA, ema, "ema")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "step": str(int(step)),
        "has_ema": json.dumps(ema is not None),
        "config": _to_json(config, "config"),
        "extra": _to_json(extra, "extra"),
        "optimizer": _to_json(_split_optimizer(optimizer, tensors), "optimizer state"),
    }
    data = serialize(_unshare(tensors), metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, never unpickling anything.

    Args:
        path: the checkpoint file.
        map_location: device for the model and EMA tensors. Optimizer state stays on the CPU:
            ``Optimizer.load_state_dict`` moves it to each parameter's device itself (and keeps
            Adam's ``step`` on the CPU, as non-capturable Adam expects).

    Raises:
        CheckpointError: the file is missing, a directory, not a (complete) safetensors file, or
            not a scoresde checkpoint. The message is one line and names the path.
    """
    path = Path(path)
    metadata, tensors = _read(path, tensors=True)
    try:
        optimizer = _join_optimizer(json.loads(metadata["optimizer"]), tensors)
        model = _strip(tensors, _MODEL, map_location)
        ema = _strip(tensors, _EMA, map_location) if json.loads(metadata["has_ema"]) else None
        return Checkpoint(
            model=model,
            ema=ema,
            optimizer=optimizer,
            step=int(metadata["step"]),
            config=json.loads(metadata["config"]),
            extra=json.loads(metadata["extra"]),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"corrupt checkpoint metadata: {path}: {_one_line(err)}") from err


def ema_model_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The averaged model's own ``state_dict`` inside an EMA state dict (e.g. a checkpoint's
    ``ema``, written by :meth:`scoresde.jobs.training.ema.EMA.state_dict`), ready for
    ``model.load_state_dict`` on a fresh model."""
    n = len(EMA_SHADOW_PREFIX)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(EMA_SHADOW_PREFIX)}


def checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run config stored in a checkpoint, read from its header only (no tensors loaded).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    metadata, _ = _read(path, tensors=False)
    try:
        return json.loads(metadata["config"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint metadata: {path}: {_one_line(err)}") from err


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The checked header metadata of a checkpoint file and (if ``tensors``) its tensors."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            _check_format(path, metadata)
            names = f.keys() if tensors else []
            return metadata, {name: f.get_tensor(name) for name in names}
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises several types for malformed files
        raise CheckpointError(
            f"not a valid safetensors file (truncated or corrupt?): {path}: {_one_line(err)}"
        ) from err


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"not a scoresde checkpoint (no scoresde metadata): {path}")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format version {version!r} (this code reads up to "
            f"{FORMAT_VERSION}): {path}"
        )


def _add_tensors(
    out: dict[str, Tensor], prefix: str, tensors: dict[str, Tensor], what: str
) -> None:
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{what} entry {name!r} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value


def _split_optimizer(optimizer: dict[str, Any] | None, tensors: dict[str, Tensor]) -> Any:
    """Move an optimizer state dict's tensors into ``tensors``; return the JSON-able rest."""
    if optimizer is None:
        return None
    state = {}
    for param_id, param_state in optimizer["state"].items():
        if not isinstance(param_id, int):
            raise TypeError(f"optimizer state key {param_id!r} is not an int parameter id")
        scalars = {}
        for name, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"{_OPTIM_STATE}{param_id}.{name}"] = value
            else:
                scalars[name] = value
        state[str(param_id)] = {"keys": list(param_state), "scalars": scalars}
    groups = []
    for index, group in enumerate(optimizer["param_groups"]):
        values, tuples = {}, []
        for key, value in group.items():
            if isinstance(value, Tensor):
                tensors[f"{_OPTIM_GROUPS}{index}.{key}"] = value
                continue
            if isinstance(value, tuple):
                tuples.append(key)
            values[key] = value
        groups.append({"keys": list(group), "values": values, "tuples": tuples})
    return {"state": state, "param_groups": groups}


def _join_optimizer(meta: Any, tensors: dict[str, Tensor]) -> dict[str, Any] | None:
    """Inverse of :func:`_split_optimizer`."""
    if meta is None:
        return None
    state = {}
    for param_id, entry in meta["state"].items():
        prefix = f"{_OPTIM_STATE}{param_id}."
        state[int(param_id)] = {
            name: entry["scalars"][name] if name in entry["scalars"] else tensors[prefix + name]
            for name in entry["keys"]
        }
    param_groups = []
    for index, entry in enumerate(meta["param_groups"]):
        group = {}
        for key in entry["keys"]:
            if key in entry["values"]:
                value = entry["values"][key]
                group[key] = tuple(value) if key in entry["tuples"] else value
            else:
                group[key] = tensors[f"{_OPTIM_GROUPS}{index}.{key}"]
        param_groups.append(group)
    return {"state": state, "param_groups": param_groups}


def _strip(
    tensors: dict[str, Tensor], prefix: str, device: str | torch.device
) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}


def _unshare(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, cloned where they would share storage (safetensors
    refuses aliases, e.g. tied weights)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serializable: {err}") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
