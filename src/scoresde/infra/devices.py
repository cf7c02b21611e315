"""Device names from configs and command lines, checked against what this machine has."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """The device called ``name``, checked to exist here; ``"auto"`` picks CUDA when available.

    Raises:
        ValueError: an unknown name, or a device this machine or PyTorch build does not have
            (the message lists the ones it has).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {name!r}; available here: {available_devices()}"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (device.index is None or device.index < count):
            return device
        why = (
            "this PyTorch build has no CUDA support"
            if torch.version.cuda is None
            else (f"{count} CUDA device(s) visible")
        )
        raise ValueError(
            f"device {name!r} is not available ({why}); available: {available_devices()}"
        )
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ValueError(f"device {name!r} is not available; available: {available_devices()}")


def available_devices() -> str:
    """The devices this process can use, e.g. ``"cpu, cuda:0, cuda:1"``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)
