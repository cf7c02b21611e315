"""The performance switches of :class:`~scoresde.setup.config.TrainConfig` applied to a network.

``channels_last``, ``activation_checkpointing`` and ``compile`` act on the network
(:func:`prepare_network`) and on its input batches (:func:`to_memory_format`); ``tf32`` is a pair
of process-global flags, set for a block of code by :func:`tf32`. ``bf16`` lives elsewhere: it is
the ``compute_dtype`` of :class:`~scoresde.ScoreModel` (the network under autocast, the loss in
float32). None of them changes the parameters or the state-dict keys of the network, so a
checkpoint written with any combination loads with any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.nn.checkpointing import enable_activation_checkpointing
from scoresde.setup.config import TrainConfig

__all__ = ["prepare_network", "tf32", "to_memory_format"]


def prepare_network(
    model: nn.Module,
    tc: TrainConfig,
    *,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """The module the training forward should call, with ``tc``'s switches applied.

    In this order: ``channels_last`` converts the 4-D parameters and buffers of ``model`` (the
    convolution weights) to the channels-last layout, in place; ``activation_checkpointing``
    checkpoints its residual and attention blocks, in place
    (:func:`~scoresde.nn.checkpointing.enable_activation_checkpointing`); ``wrap`` (e.g.
    ``DistributedDataParallel``, which must see the final memory layout) wraps it; ``compile``
    returns ``torch.compile`` of the result, which shares ``model``'s parameters (an optimizer,
    the EMA and checkpoints keep using ``model`` and its unchanged state dict; the compiled
    module's own state-dict keys carry an ``_orig_mod.`` prefix). Compilation happens at the
    first call.

    Args:
        model: the network, e.g. from :func:`scoresde.setup.build.build_model`, on its device.
        tc: the training config; only its ``channels_last``, ``activation_checkpointing`` and
            ``compile`` switches are read.
        wrap: applied to ``model`` after the in-place switches and before compilation.

    Returns:
        ``model`` itself unless ``wrap`` or ``compile`` is given, else the wrapped module.
    """
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    network = wrap(model) if wrap is not None else model
    if tc.compile:
        return torch.compile(network)
    return network


def to_memory_format(x: Tensor, tc: TrainConfig) -> Tensor:
    """A batch in the layout of ``tc``: a 4-D ``(B, C, H, W)`` batch in channels-last layout
    (same shape and values, NHWC strides) when ``tc.channels_last``; anything else unchanged."""
    if tc.channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _read(getter: Callable[[], Any]) -> Any:
    """A flag's value, or ``None`` where PyTorch refuses to read it (a mix of its legacy and new
    precision APIs was used to set the flags)."""
    try:
        return getter()
    except RuntimeError:
        return None


def _precision_settings() -> list[Any]:
    """The per-operator float32 precision settings of PyTorch's newer API (``fp32_precision``,
    torch >= 2.9) that the legacy flags below write through to; empty on older versions."""
    backends = torch.backends
    candidates = [
        getattr(backends.cuda, "matmul", None),
        getattr(backends.mkldnn, "matmul", None),
        getattr(backends.cudnn, "conv", None),
        getattr(backends.cudnn, "rnn", None),
    ]
    return [c for c in candidates if c is not None and hasattr(c, "fp32_precision")]


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Allow TF32 (``enabled``) or strict float32 in CUDA matmuls and cuDNN convolutions inside
    the block: sets ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` to ``enabled``, and restores them on exit, exceptions
    included.

    Both are process-global: the previous float32 matmul precision
    (``torch.get_float32_matmul_precision``, which ``matmul.allow_tf32`` sets), the previous
    ``cudnn.allow_tf32`` and, on PyTorch versions that have them, the per-operator
    ``fp32_precision`` settings they write through to are put back as they were. TF32 has an
    effect only on NVIDIA GPUs from Ampere on; elsewhere the flags are set and restored, nothing
    else. Note that PyTorch's default is ``cudnn.allow_tf32 = True``: ``tf32(False)`` also makes
    convolutions strict float32.
    """
    matmul_precision = _read(torch.get_float32_matmul_precision)
    cudnn_tf32 = _read(lambda: torch.backends.cudnn.allow_tf32)
    settings = [(obj, obj.fp32_precision) for obj in _precision_settings()]
    try:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        yield
    finally:
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        if cudnn_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
        for obj, value in settings:
            obj.fp32_precision = value
