"""The run's log: the statistics of the steps since the last line, every ``train.log_every`` steps.

The loop keeps each step's loss and gradient norm on the device and reads them only when the
ranks vote (:mod:`scoresde.jobs.training.step_window`); :class:`MetricsLog` receives those values,
already reduced over the ranks, and writes a line every ``every`` steps (and at the last step)
to the progress bar, ``<run>/metrics.jsonl`` and TensorBoard. Events that are not step
statistics (a change of precision on resume) are lines of their own with an ``"event"`` key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from scoresde.infra.rundir import atomic_write

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class StepStats:
    """One optimisation step as the ranks agreed on it: ``step`` (after the step), ``loss``
    (mean over the global batch), ``grad_norm`` (before clipping), ``lr`` and ``examples``
    (the global batch)."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    examples: int


class MetricsLog:
    """Every ``every`` steps (and at the last step) the mean loss, mean gradient norm, learning
    rate and images/s since the previous entry, on the progress bar, as one JSON line of
    ``<run>/metrics.jsonl`` and as TensorBoard scalars in ``<run>/tensorboard/`` (``train/loss``,
    ``train/grad_norm``, ``train/lr``, ``train/images_per_s``).

    Images/s is the wall time between two lines over the examples of their steps: a line is
    written right after the ranks' vote has read the device, so the GPU's queue is drained there
    and the figure is exact. ``losses`` holds ``(step, mean loss)``. On resume (``initial`` > 0)
    lines and TensorBoard events after ``initial`` (written after the checkpoint, by a run that
    was then killed) are dropped, since the resumed run recomputes those steps exactly.
    ``workdir=None`` (ranks other than 0) writes nothing.
    """

    def __init__(
        self,
        every: int,
        workdir: Path | None,
        *,
        progress: bool,
        total: int,
        initial: int,
        tensorboard: bool = True,
    ) -> None:
        self.every = every
        self.losses: list[tuple[int, float]] = []
        self._pending: list[StepStats] = []
        self._since = time.perf_counter()
        self._bar = tqdm(total=total, initial=initial, desc="training", disable=not progress)
        self._path = Path(workdir) / METRICS_NAME if workdir is not None else None
        self._writer = None
        if self._path is not None:
            _drop_lines_after(self._path, initial)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(
                    str(Path(workdir) / TENSORBOARD_DIR), purge_step=initial + 1
                )

    def start_clock(self) -> None:
        """Time the first line from here (the loop's start, after the set-up)."""
        self._since = time.perf_counter()

    def step_done(self) -> None:
        """One more step (the progress bar; no device read)."""
        self._bar.update(1)

    def record(self, stats: list[StepStats], last: bool) -> None:
        """The steps read at a vote; writes a line if the newest is a log step or ``last``."""
        self._pending += stats
        if not self._pending:
            return
        step = self._pending[-1].step
        if step % self.every and not last:
            return
        n = len(self._pending)
        now = time.perf_counter()
        examples = sum(s.examples for s in self._pending)
        line = {
            "step": step,
            "loss": sum(s.loss for s in self._pending) / n,
            "grad_norm": sum(s.grad_norm for s in self._pending) / n,
            "lr": self._pending[-1].lr,
            "images_per_s": examples / max(now - self._since, 1e-12),
        }
        self._pending, self._since = [], now
        self.losses.append((step, line["loss"]))
        self._bar.set_postfix(loss=f"{line['loss']:.4f}")
        self._write(line)
        if self._writer is not None:
            for key in ("loss", "grad_norm", "lr", "images_per_s"):
                self._writer.add_scalar(f"train/{key}", line[key], step)
            self._writer.flush()

    def event(self, step: int, event: str, **fields: Any) -> None:
        """An event line ``{"step", "event", ...fields}`` (e.g. a precision change on resume)."""
        self._write({"step": step, "event": event, **fields})

    def _write(self, line: dict[str, Any]) -> None:
        if self._path is not None:
            with self._path.open("a") as f:
                f.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _drop_lines_after(path: Path, step: int) -> None:
    """Keep only the JSON lines of ``path`` with ``"step" <= step`` (rewritten atomically)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        atomic_write(path, "".join(line + "\n" for line in kept))
