"""Exponential moving average of model weights, as in the official score_sde code.

After each optimizer step, ``shadow <- decay_eff * shadow + (1 - decay_eff) * weights`` for every
trainable parameter, where, with warmup, ``decay_eff = min(decay, (1 + n) / (10 + n))`` and ``n``
counts the updates including the current one (the official ``ExponentialMovingAverage``
increments ``num_updates`` before using it, so the first update uses ``2 / 11``). Frozen
parameters and buffers are copied. The shadow is a frozen deep copy of the model in eval mode,
ready for sampling.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from scoresde.infra.checkpoint import EMA_SHADOW_PREFIX, ema_model_state_dict

_NUM_UPDATES_KEY = "num_updates"


class EMA:
    """Exponential moving average of a module's weights.

    Args:
        model: the module being trained; it is deep-copied into :attr:`shadow`.
        decay: the EMA decay in ``[0, 1]`` (e.g. 0.999 or 0.9999).
        warmup: cap the decay at ``(1 + n) / (10 + n)`` for the ``n``-th update.

    Attributes:
        shadow: the averaged module (eval mode, ``requires_grad`` off).
        num_updates: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current weights (call after each optimizer step).

        The trained floating-point parameters move in one ``torch._foreach_lerp_`` call (one
        fused kernel per dtype and device instead of one per parameter); the others and the
        buffers are copied.
        """
        decay = self.current_decay()
        params = dict(model.named_parameters())
        shadow_params = dict(self.shadow.named_parameters())
        if params.keys() != shadow_params.keys():
            raise ValueError("model parameters do not match the EMA shadow's")
        targets, sources = [], []
        for name, param in params.items():
            target = shadow_params[name]
            if param.requires_grad and param.is_floating_point():
                targets.append(target)
                sources.append(param.detach())
            else:
                target.copy_(param)
        if targets:
            torch._foreach_lerp_(targets, sources, 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, buffer in self.shadow.named_buffers():
            buffer.copy_(buffers[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensor state: the shadow's ``state_dict`` under ``"shadow."`` and ``"num_updates"``.

        Being a plain ``dict[str, Tensor]``, it can be passed as ``ema=`` to ``save_checkpoint``.
        """
        state = {EMA_SHADOW_PREFIX + k: v for k, v in self.shadow.state_dict().items()}
        state[_NUM_UPDATES_KEY] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Restore the shadow weights and ``num_updates`` from :meth:`state_dict`'s output."""
        if _NUM_UPDATES_KEY not in state_dict:
            raise KeyError(f"EMA state dict has no {_NUM_UPDATES_KEY!r} entry")
        self.shadow.load_state_dict(ema_model_state_dict(state_dict))
        self.num_updates = int(state_dict[_NUM_UPDATES_KEY])
