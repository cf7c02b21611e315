"""The steps since the ranks last voted: their statistics stay on the device until the vote.

Reading a CUDA tensor on the host waits for the GPU's queue to drain, and a collective waits for
every rank; doing either every step keeps the CPU from queueing the next step while the GPU
runs this one. So :class:`StepWindow` writes each step's ``(loss, grad_norm)`` into a row of a
device buffer (one copy kernel, no sync) and :meth:`StepWindow.vote` reads them all at once:
one ``all_reduce`` of the rows and the stop flags, one host read. The loop votes every
``train.sync_every`` steps and before every log line, checkpoint, snapshot, sample grid and
evaluation (:func:`vote_due`), so a NaN is found at the first vote after it, before any
checkpoint could hold weights from after it, and the error still names the step it happened at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.infra import distributed
from scoresde.jobs.training.metrics_log import StepStats
from scoresde.setup.config import TrainConfig

SYNC_EVERY_CUDA = 10
"""``train.sync_every=0`` on CUDA: a vote every 10 steps."""


def resolve_sync_every(tc: TrainConfig, device: torch.device) -> int:
    """``train.sync_every``, or for 0 the device's default: 10 on CUDA, 1 elsewhere (a CPU step
    is not queued ahead of the host, so there is nothing to gain)."""
    if tc.sync_every:
        return tc.sync_every
    return SYNC_EVERY_CUDA if device.type == "cuda" else 1


@dataclass(frozen=True)
class Vote:
    """What the ranks agreed at a vote: the steps since the previous vote (``stats``, means
    over the ranks), the first non-finite one of them (``None`` if all are finite), and whether
    any rank was signalled to stop or ran out of time."""

    stats: list[StepStats]
    nonfinite: StepStats | None
    stop: bool
    time_up: bool


class StepWindow:
    """Per-step ``(loss, grad_norm)`` of up to ``capacity`` steps, kept on ``device``.

    Args:
        capacity: the most steps between two votes (``train.sync_every``, or more when the
            loop votes only at its own schedule).
        device: where the step's tensors live.
        world_size: the number of ranks; the reduced rows are divided by it (means).
    """

    def __init__(self, capacity: int, device: torch.device, world_size: int) -> None:
        self.rows = torch.zeros(capacity, 2, dtype=torch.float32, device=device)
        self.world_size = world_size
        self._steps: list[tuple[int, float, int]] = []  # (step, lr, examples) of each row

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, loss: Tensor, grad_norm: Tensor, *, lr: float, examples: int) -> None:
        """Keep step ``step``'s 0-dim ``loss`` and ``grad_norm`` (device tensors; not read)."""
        i = len(self._steps)
        if i == self.rows.shape[0]:
            raise RuntimeError(f"more than {i} steps without a vote")
        self.rows[i].copy_(torch.stack([loss.detach().float(), grad_norm.detach().float()]))
        self._steps.append((step, lr, examples))

    def vote(self, *, stop: bool, time_up: bool) -> Vote:
        """Reduce the kept rows and the flags over the ranks (one collective, one host read) and
        start a new window. Every rank must call it at the same step."""
        n = len(self._steps)
        flags = torch.tensor([float(stop), float(time_up)], device=self.rows.device)
        payload = torch.cat([self.rows[:n].flatten(), flags])
        values = distributed.all_reduce_sum(payload).tolist()
        stats, nonfinite = [], None
        for k, (step, lr, examples) in enumerate(self._steps):
            loss, norm = (v / self.world_size for v in values[2 * k : 2 * k + 2])
            stats.append(StepStats(step, loss, norm, lr, examples))
            if nonfinite is None and not (math.isfinite(loss) and math.isfinite(norm)):
                nonfinite = stats[-1]
        self._steps = []
        return Vote(stats, nonfinite, stop=values[-2] > 0, time_up=values[-1] > 0)


def vote_due(step: int, *, sync_every: int, log_every: int, final: bool, hook_due: bool) -> bool:
    """Whether the ranks vote after step ``step``: every ``sync_every`` steps, at every log
    line, at the run's last step, and whenever a hook (a checkpoint, snapshot, sample grid or
    evaluation) acts at this step. Every rank computes the same answer from the step alone."""
    return final or hook_due or step % sync_every == 0 or step % log_every == 0
