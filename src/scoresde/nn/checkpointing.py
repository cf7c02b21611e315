"""Activation checkpointing of the residual and attention blocks of the score networks.

Training stores, for the backward pass, every intermediate activation of the network: for the
CIFAR-10 U-Nets these dominate the memory of a step. With checkpointing a block keeps only its
inputs; its forward runs again, inside the backward pass, to rebuild the activations its
gradient needs. The trade: the activation memory of the checkpointed blocks (roughly all of it)
for about one extra forward pass per training step (some 30% more compute), with the same
numbers. The recomputation replays the random state of the first pass
(``torch.utils.checkpoint``'s ``preserve_rng_state``), so dropout masks, and hence the loss and
every gradient, are exactly those without checkpointing.

A block class opts in with the class attribute ``checkpointable = True``: the residual and
attention blocks of NCSN++ / DDPM++ and DDPM (:mod:`scoresde.nn.blocks`), of the small U-Net
(:mod:`scoresde.nn.unet`), the residual and refine blocks of NCSN / NCSNv2
(:mod:`scoresde.nn.refinenet`) and the Wide-ResNet blocks of the noise-conditional classifier
(:mod:`scoresde.nn.classifiers`). :class:`~scoresde.nn.mlp.ScoreMLP` has none (its residual layers
are plain ``nn.Linear`` modules, and it is small enough not to need it).

:func:`enable_activation_checkpointing` changes nothing a state dict, ``parameters()``, an
optimizer or a copy sees: each block keeps its class, submodules and names, and only its
``forward`` is replaced by a checkpointing one (an instance attribute, which ``nn.Module``'s call
prefers to the class's method). Checkpoints therefore load with or without it, and
``copy.deepcopy`` (e.g. the EMA copy of the weights) gives a model checkpointed in the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["enable_activation_checkpointing", "is_activation_checkpointed"]


class _CheckpointedForward:
    """The ``forward`` of a checkpointed block: its class's forward, run under
    ``torch.utils.checkpoint.checkpoint`` (non-reentrant, RNG state preserved) while gradients
    are enabled, and plainly otherwise (evaluation, sampling under ``no_grad``)."""

    __slots__ = ("block",)

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.block).forward.__get__(self.block)
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    def __repr__(self) -> str:
        return f"checkpointed forward of {type(self.block).__name__}"


def is_activation_checkpointed(module: nn.Module) -> bool:
    """Whether ``module``'s own forward runs under activation checkpointing."""
    return isinstance(module.__dict__.get("forward"), _CheckpointedForward)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every residual and attention block of ``model``, in place.

    Each submodule whose class has ``checkpointable = True`` gets a forward that, while
    ``torch.is_grad_enabled()``, runs under ``torch.utils.checkpoint.checkpoint(...,
    use_reentrant=False)``: the block stores only its inputs, and recomputes its activations in
    the backward pass. This trades the activation memory of the blocks for about one extra
    forward pass per training step; the outputs, the loss and all gradients are unchanged,
    dropout included (the random state of the first pass is replayed). Under ``no_grad`` the
    blocks run as before. Inputs and outputs keep their shapes, e.g. ``(B, C, H, W)`` images and
    ``(B, temb_dim)`` embeddings for the U-Net blocks.

    Blocks are not nested: the submodules of a checkpointed block are left alone (their
    activations are recomputed with it, so forward hooks registered on them run again in the
    backward pass). The state-dict keys, the parameters and their order do not change. Apply it
    before ``torch.compile``.

    Args:
        model: any module, e.g. a network of :mod:`scoresde.nn` or a
            :class:`~scoresde.ScoreModel` holding one.

    Returns:
        How many blocks this call wrapped: more than zero for every image network, zero for the
        MLP (no blocks), and zero when called again (idempotent).
    """
    if is_activation_checkpointed(model):
        return 0
    if getattr(type(model), "checkpointable", False):
        model.forward = _CheckpointedForward(model)
        return 1
    return sum(enable_activation_checkpointing(child) for child in model.children())
