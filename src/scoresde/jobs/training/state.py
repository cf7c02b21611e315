"""The training state and one optimisation step.

:class:`TrainState` holds everything a run needs to continue bit-exactly: the network, its
EMA, the optimiser and the step. Every random draw of a step is a function of the config's seed,
the step and the rows of the batch (:class:`MicroBatch`), so nothing random needs saving and a
step computes the same on one device or many. :func:`train_step` makes one step of denoising
score matching (eq. 7) over one or more micro-batches (gradient accumulation; under
``DistributedDataParallel`` the gradients of all ranks are averaged at the last one), with
warmup, gradient clipping and the EMA update. :class:`BatchLayout` says which rows of the
global batch each rank and micro-batch takes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.core._tensor import NoiseSource
from scoresde.core.seeding import private_global_rng
from scoresde.jobs.training.ema import EMA
from scoresde.jobs.training.objectives import BatchLoss
from scoresde.setup.config import TrainConfig
from scoresde.setup.data.pipeline import Batch


@dataclass
class TrainState:
    """What a training run is at a step boundary.

    Attributes:
        model: the network being trained (its ``state_dict`` is what checkpoints hold).
        model_fn: the network as the function the loss calls, over ``model`` or a wrapper of
            it that shares its parameters (``DistributedDataParallel``, ``torch.compile``): a
            score ``score_fn(x, t, **condition)`` (:class:`scoresde.ScoreModel`) or a
            classifier ``log_prob_fn(x, t)`` (:class:`scoresde.core.classifier.NoiseClassifier`);
            :mod:`scoresde.jobs.training.objectives`.
        ema: the exponential moving average of ``model``'s weights.
        optimizer: Adam (:func:`scoresde.jobs.training.optim.make_optimizer`).
        step: optimisation steps taken so far.
        no_sync: ``DistributedDataParallel.no_sync`` when gradients are averaged over ranks
            (skipped for all but the last micro-batch of a step), else ``None``.
    """

    model: nn.Module
    model_fn: Any
    ema: EMA
    optimizer: torch.optim.Optimizer
    step: int
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass
class MicroBatch:
    """One forward/backward pass of a step: data in model scale with its condition, the noise it
    draws from (rows of the whole batch's draws, :class:`scoresde.core.seeding.BatchRows`) and the
    seed of the dropout masks (the global generator, forked, is seeded with it)."""

    batch: Batch
    noise: NoiseSource
    dropout_seed: int


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch of ``global_batch`` examples is split over ``world_size`` ranks and
    micro-batches of ``device_batch`` examples.

    The global batch is cut into ``world_size * accumulation`` chunks of ``device_batch`` rows;
    rank ``r`` takes the contiguous chunks ``r * accumulation ... (r + 1) * accumulation - 1``.
    A chunk's index names its dropout stream, so the same ``device_batch`` gives the same step
    on any number of ranks.
    """

    global_batch: int
    device_batch: int
    world_size: int
    rank: int

    @property
    def accumulation(self) -> int:
        """Micro-batches per rank and step."""
        return self.global_batch // (self.world_size * self.device_batch)

    @property
    def rank_rows(self) -> slice:
        """The rows of the global batch this rank takes."""
        per_rank = self.accumulation * self.device_batch
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def chunks(self) -> list[tuple[int, slice]]:
        """``(chunk index, rows of the global batch)`` of this rank's micro-batches."""
        first = self.rank * self.accumulation
        b = self.device_batch
        return [(c, slice(c * b, (c + 1) * b)) for c in range(first, first + self.accumulation)]


def batch_layout(tc: TrainConfig, *, rank: int = 0, world_size: int = 1) -> BatchLayout:
    """The layout of ``tc.batch_size`` over ``world_size`` ranks (checked before any work).

    Raises:
        ValueError: the global batch is not a whole number of micro-batches per rank.
    """
    device_batch = tc.device_batch_size or tc.batch_size // world_size
    if device_batch < 1 or tc.batch_size % (world_size * device_batch):
        per_device = (
            f"train.device_batch_size={tc.device_batch_size}"
            if (tc.device_batch_size)
            else "one micro-batch per device"
        )
        raise ValueError(
            f"train.batch_size={tc.batch_size} does not split over {world_size} device(s) with "
            f"{per_device}: choose a train.device_batch_size that divides "
            f"{tc.batch_size} / {world_size}"
        )
    return BatchLayout(tc.batch_size, device_batch, world_size, rank)


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """Linear warmup ``lr min(1, (step + 1) / warmup)`` (the official code starts at 0)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def train_step(
    state: TrainState, micro_batches: Sequence[MicroBatch], loss_fn: BatchLoss, tc: TrainConfig
) -> tuple[Tensor, Tensor]:
    """One optimisation step over ``micro_batches``; returns ``(mean loss, gradient norm)`` as
    detached 0-dim tensors (reading them is a device sync, left to the caller).

    The gradient is the mean over all examples of all micro-batches (and, under
    ``DistributedDataParallel``, all ranks): each micro-batch's mean loss is divided by their
    number, and ranks synchronise only at the last one. ``loss_fn(state.model_fn, batch,
    noise) -> (B,)`` is the run's objective (:mod:`scoresde.jobs.training.objectives`: denoising
    score matching, label conditional or not, or a classifier's cross-entropy). Dropout draws
    from torch's global generator, forked and seeded with each micro-batch's ``dropout_seed``,
    so the caller's global RNG is untouched. Sets the warmed-up learning rate, clips the
    gradient norm at ``tc.grad_clip`` (``< 0``: off; the norm is returned either way), steps
    the optimiser, updates the EMA and advances ``state.step``.
    """
    for group in state.optimizer.param_groups:
        group["lr"] = warmup_lr(state.step, tc.lr, tc.warmup)
    state.optimizer.zero_grad(set_to_none=True)
    parameters = [p for p in state.model.parameters() if p.requires_grad]
    device = parameters[0].device
    total = torch.zeros((), device=device)
    n = len(micro_batches)
    for i, micro in enumerate(micro_batches):
        last_micro = i == n - 1
        sync = state.no_sync() if state.no_sync is not None and not last_micro else nullcontext()
        with sync, private_global_rng(micro.dropout_seed, device):
            loss = loss_fn(state.model_fn, micro.batch, micro.noise).mean() / n
            loss.backward()
        total = total + loss.detach()
    max_norm = tc.grad_clip if tc.grad_clip >= 0 else math.inf
    grad_norm = nn.utils.clip_grad_norm_(parameters, max_norm)
    state.optimizer.step()
    state.ema.update(state.model)
    state.step += 1
    return total, grad_norm.detach()
