"""What the training loop does besides stepping: each is a hook called after every step.

A hook is any callable ``hook(state, stats, last)``: ``state`` is the
:class:`~scoresde.training.state.TrainState` after the step, ``stats`` that step's
:class:`StepStats` (the loss and gradient norm averaged over all ranks, the learning rate, the
global batch and the wall time) and ``last`` whether this is the last step of the call (the
run's end, a time cap or an interrupt). Hooks act every so many steps; the loop knows nothing
of them. Under ``torchrun`` they run on rank 0 only, except :class:`MetricsLog`, which every
rank keeps (rank 0 alone writes and shows it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scoresde.build import sampler_config
from scoresde.checkpoint import save_checkpoint
from scoresde.config import Config
from scoresde.config_io import config_to_dict
from scoresde.data.pipeline import is_image_data, load_split
from scoresde.rundir import CHECKPOINT_NAME, atomic_write
from scoresde.runs import (
    TrainedClassifier,
    TrainedModel,
    classifier_accuracy,
    evaluate_likelihood,
    generate,
)
from scoresde.sdes import SDE
from scoresde.seeding import derive_seed
from scoresde.training.state import TrainState

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class StepStats:
    """One optimisation step as the loop saw it: ``loss`` (mean over the global batch),
    ``grad_norm`` (before clipping), ``lr``, ``examples`` (the global batch) and ``seconds``
    (wall time of the step, data included)."""

    loss: float
    grad_norm: float
    lr: float
    examples: int
    seconds: float


Hook = Callable[[TrainState, StepStats, bool], None]


class MetricsLog:
    """The run's log: every ``every`` steps (and at the last step) the mean loss, mean gradient
    norm, learning rate and images/s since the previous entry, on the progress bar, as one JSON
    line of ``<run>/metrics.jsonl`` and as TensorBoard scalars in ``<run>/tensorboard/``
    (``train/loss``, ``train/grad_norm``, ``train/lr``, ``train/images_per_s``).

    ``losses`` holds ``(step, mean loss)``. On resume (``initial`` > 0) lines and TensorBoard
    events after ``initial`` (written after the checkpoint, by a run that was then killed) are
    dropped, since the resumed run recomputes those steps exactly. ``workdir=None`` (ranks other
    than 0) writes nothing.
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
        self._sums = {"loss": 0.0, "grad_norm": 0.0, "examples": 0.0, "seconds": 0.0}
        self._count = 0
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

    def __call__(self, state: TrainState, stats: StepStats, last: bool) -> None:
        self._sums["loss"] += stats.loss
        self._sums["grad_norm"] += stats.grad_norm
        self._sums["examples"] += stats.examples
        self._sums["seconds"] += stats.seconds
        self._count += 1
        self._bar.update(1)
        if state.step % self.every and not last:
            return
        n = self._count
        line = {
            "step": state.step,
            "loss": self._sums["loss"] / n,
            "grad_norm": self._sums["grad_norm"] / n,
            "lr": stats.lr,
            "images_per_s": self._sums["examples"] / max(self._sums["seconds"], 1e-12),
        }
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._count = 0
        self.losses.append((state.step, line["loss"]))
        self._bar.set_postfix(loss=f"{line['loss']:.4f}")
        if self._path is not None:
            with self._path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        if self._writer is not None:
            for key in ("loss", "grad_norm", "lr", "images_per_s"):
                self._writer.add_scalar(f"train/{key}", line[key], state.step)
            self._writer.flush()

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


class Checkpointer:
    """The rolling preemption checkpoint ``<run>/checkpoint.safetensors``, replaced atomically
    every ``every`` steps (0: only at the end) and at the last step (the end, a time cap or a
    signal), and snapshots ``<run>/snapshots/step_<N>.safetensors`` kept every
    ``snapshot_every`` steps (0: none). Each holds the weights, EMA, optimiser, step and config;
    every random stream of a run is a function of its seed and the step, so that is all a
    resumed run needs. ``saved_step`` is the step of the last checkpoint on disk."""

    def __init__(self, workdir: Path, cfg: Config, every: int, snapshot_every: int = 0) -> None:
        self.path = Path(workdir) / CHECKPOINT_NAME
        self.snapshots = Path(workdir) / SNAPSHOT_DIR
        self.cfg, self.every, self.snapshot_every = cfg, every, snapshot_every
        self.saved_step: int | None = None

    def __call__(self, state: TrainState, stats: StepStats, last: bool) -> None:
        saved = last or (self.every and state.step % self.every == 0)
        if saved:
            self.save(state)
        if self.snapshot_every and state.step % self.snapshot_every == 0:
            snapshot = self.snapshots / f"step_{state.step:07d}.safetensors"
            if snapshot.exists():  # the same step of the same run: the same weights
                return
            if saved:  # the checkpoint of this very step: copy it, do not serialise again
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(snapshot, self.path.read_bytes())
            else:
                self.save(state, snapshot)

    def save(self, state: TrainState, path: Path | None = None) -> Path:
        written = save_checkpoint(
            path or self.path,
            model=state.model.state_dict(),
            ema=state.ema.state_dict(),
            optimizer=state.optimizer.state_dict(),
            step=state.step,
            config=config_to_dict(self.cfg),
            extra={"data_position": state.step},
        )
        if path is None:
            self.saved_step = state.step
        return written


def _ema_run(cfg: Config, sde: SDE, state: TrainState) -> TrainedModel:
    """The EMA model of ``state`` as a :class:`~scoresde.runs.TrainedModel` (no copy)."""
    device = next(state.model.parameters()).device
    return TrainedModel(cfg, sde, state.ema.shadow, device, state.step)


class SampleGrid:
    """Every ``every`` steps, samples of the EMA model as ``folder/step_<N>.png`` (and
    ``.npy``): a visual check of a long run. Uses the config's sampler and the per-sample
    streams ``(seed, i)`` of ``scoresde sample`` (:func:`scoresde.runs.generate`), so sample
    ``i`` of every grid starts from the same noise, and nothing is drawn from the training
    streams. A label-conditional model draws class ``i mod K`` for sample ``i``."""

    def __init__(
        self, every: int, folder: Path, cfg: Config, sde: SDE, *, num_samples: int = 64
    ) -> None:
        self.every, self.folder, self.cfg, self.sde = every, Path(folder), cfg, sde
        self.num_samples = min(num_samples, cfg.sample.num_samples)
        sampler_config(cfg.sample)  # a bad sampler fails before training starts

    def __call__(self, state: TrainState, stats: StepStats, last: bool) -> None:
        if state.step % self.every:
            return
        from scoresde.viz import save_image_grid, save_scatter

        classes = self.cfg.model.num_classes
        labels = torch.arange(self.num_samples) % classes if classes else None
        run = _ema_run(self.cfg, self.sde, state)
        x, _ = generate(run, self.num_samples, seed=self.cfg.seed, labels=labels)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"step_{state.step:07d}"
        np.save(name.with_suffix(".npy"), x.numpy())
        if is_image_data(self.cfg.data):
            save_image_grid(x, name.with_suffix(".png"), nrow=8)
        else:
            save_scatter(x, name.with_suffix(".png"), title=f"step {state.step}")


class _PeriodicEvaluation:
    """Every ``every`` steps, ``measure(state)`` of the EMA weights appended as one JSON line
    ``{"step": N, ...}`` to ``path``; ``results`` keeps the lines of this call. Measurements
    draw from streams of the config's seed and the step, never from the training streams."""

    def __init__(self, every: int, path: Path, cfg: Config, sde: SDE) -> None:
        self.every, self.path, self.cfg, self.sde = every, Path(path), cfg, sde
        self.results: list[dict] = []

    def measure(self, state: TrainState) -> dict:
        raise NotImplementedError

    def __call__(self, state: TrainState, stats: StepStats, last: bool) -> None:
        if state.step % self.every:
            return
        line = {"step": state.step, **self.measure(state)}
        self.results.append(line)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


class Evaluation(_PeriodicEvaluation):
    """Every ``every`` steps, the test-split negative log-likelihood of the EMA model (bits/dim
    for images, nats for vectors; ``eval.*`` settings, e.g. ``eval.num_examples``), appended as
    one JSON line ``{"step": N, "bpd" | "nll_nats": value, "nfe": ...}`` to ``path``.

    It uses its own generator (seeded by the config's seed and the step), so it draws nothing
    from the training streams; ``results`` keeps the lines of this call.
    """

    def __init__(self, every: int, path: Path, cfg: Config, sde: SDE) -> None:
        super().__init__(every, path, cfg, sde)
        self.data = load_split(cfg.data, "test", limit=cfg.eval.num_examples)

    def measure(self, state: TrainState) -> dict:
        run = _ema_run(self.cfg, self.sde, state)
        result = evaluate_likelihood(run, self.data, seed=derive_seed(self.cfg.seed, state.step))
        result.pop("per_example")
        return result


class ClassifierEvaluation(_PeriodicEvaluation):
    """Every ``every`` steps, the test-split accuracy of the EMA classifier against noise level
    (:func:`scoresde.runs.classifier_accuracy` on the first ``eval.num_examples`` examples),
    appended as one JSON line ``{"step": N, "times": [...], "accuracy": [...], ...}`` to
    ``path``; its draws come from streams of the config's seed and the step."""

    def measure(self, state: TrainState) -> dict:
        device = next(state.model.parameters()).device
        run = TrainedClassifier(self.cfg, self.sde, state.ema.shadow, device, state.step)
        seed = derive_seed(self.cfg.seed, state.step)
        return classifier_accuracy(run, seed=seed, num_examples=self.cfg.eval.num_examples)
