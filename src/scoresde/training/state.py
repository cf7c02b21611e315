"""The training state and one optimisation step.

:class:`TrainState` holds everything a run needs to continue bit-exactly: the network, its
EMA, the optimiser, the step, and every random stream (noise, data order; torch's global
generator, which dropout draws from, is kept by the loop). :func:`train_step` takes one
:class:`Batch` (data and an optional condition, such as class labels) and makes one step of
denoising score matching (eq. 7) with warmup, gradient clipping and the EMA update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.build import LossFn
from scoresde.config import Config, TrainConfig
from scoresde.data.pipeline import Batch
from scoresde.training.ema import EMA


@dataclass
class TrainState:
    """What a training run is at a step boundary.

    Attributes:
        model: the network being trained.
        score_model: ``model`` seen as ``score_fn(x, t, **condition)``
            (:class:`scoresde.ScoreModel`).
        ema: the exponential moving average of ``model``'s weights.
        optimizer: Adam (:func:`scoresde.training.optim.make_optimizer`).
        step: optimisation steps taken so far.
        noise: the generator of the loss's time and noise draws and of dequantization (on the
            training device).
    """

    model: nn.Module
    score_model: Any
    ema: EMA
    optimizer: torch.optim.Optimizer
    step: int
    noise: torch.Generator

    def rng_state(self) -> dict[str, list[int]]:
        """The noise generator's state as a JSON-able list (for the checkpoint)."""
        return {"noise": self.noise.get_state().tolist()}

    def load_rng_state(self, state: dict[str, list[int]]) -> None:
        """Inverse of :meth:`rng_state` (a missing entry keeps its fresh seed)."""
        if "noise" in state:
            self.noise.set_state(torch.tensor(state["noise"], dtype=torch.uint8))


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """Linear warmup ``lr min(1, (step + 1) / warmup)`` (the official code starts at 0)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def train_step(state: TrainState, batch: Batch, loss_fn: LossFn, tc: TrainConfig) -> Tensor:
    """One optimisation step on ``batch``; returns the mean loss (a detached 0-dim tensor).

    The condition in ``batch.labels`` reaches the network as ``class_labels``. Sets the
    warmed-up learning rate, clips the gradient norm at ``tc.grad_clip`` (``< 0``: off),
    steps the optimiser, updates the EMA and advances ``state.step``.
    """
    if batch.labels is None:
        score_fn = state.score_model
    else:

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return state.score_model(x, t, class_labels=batch.labels)

    for group in state.optimizer.param_groups:
        group["lr"] = warmup_lr(state.step, tc.lr, tc.warmup)
    loss = loss_fn(score_fn, batch.data, state.noise).mean()
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip >= 0:
        nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    state.optimizer.step()
    state.ema.update(state.model)
    state.step += 1
    return loss.detach()


def conditional(cfg: Config) -> bool:
    """Whether the run trains a class-conditional model (``model.num_classes > 0``)."""
    return cfg.model.num_classes > 0
