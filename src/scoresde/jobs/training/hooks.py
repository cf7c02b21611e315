"""What the training loop does besides stepping: each is a hook called after every step.

A hook is any callable ``hook(state, stats, last)``: ``state`` is the
:class:`~scoresde.jobs.training.state.TrainState` after the step, ``stats`` the step's
:class:`~scoresde.jobs.training.metrics_log.StepStats` when the ranks voted at this step (the loss
and gradient norm averaged over all ranks; ``None`` at the steps between votes, whose values
are still on the device) and ``last`` whether this is the last step of the call (the run's end,
a time cap or an interrupt). Hooks act every so many steps; the loop knows nothing of them.

Under ``torchrun`` no rank waits for another in a collective that can time out while a hook
works (:mod:`scoresde.infra.distributed`). The built-in hooks say when they act (``due(step,
last)``; the loop votes before, so no checkpoint is written after a non-finite step) and where
(``all_ranks``): :class:`SampleGrid` and :class:`Evaluation` run on every rank and share their
work out by sample or example index; :class:`Checkpointer` and :class:`ClassifierEvaluation`
run on rank 0 while the others wait at the host-side barrier, which does not time out before the
work is done. A caller's own hooks run on rank 0, fenced the same way after every step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from scoresde.core.sdes import SDE
from scoresde.core.seeding import derive_seed
from scoresde.infra import distributed
from scoresde.infra.checkpoint import checkpoint_config, save_checkpoint
from scoresde.infra.distributed import World
from scoresde.infra.rundir import CHECKPOINT_NAME, atomic_write
from scoresde.jobs.evaluation.split_likelihood import likelihood_on_ranks
from scoresde.jobs.runs import (
    TrainedClassifier,
    TrainedModel,
    classifier_accuracy,
    generate,
)
from scoresde.jobs.training.metrics_log import MetricsLog, StepStats
from scoresde.jobs.training.state import TrainState
from scoresde.setup.build import sampler_config
from scoresde.setup.config import Config
from scoresde.setup.config_io import config_to_dict
from scoresde.setup.data.pipeline import data_shape, is_image_data, load_split

SNAPSHOT_DIR = "snapshots"

Hook = Callable[[TrainState, "StepStats | None", bool], None]


def hook_due(hook: Hook, step: int, last: bool) -> bool:
    """Whether ``hook`` acts after step ``step``: its ``due`` method, else every step."""
    due = getattr(hook, "due", None)
    return True if due is None else bool(due(step, last))


def runs_on_all_ranks(hook: Hook) -> bool:
    """Whether ``hook`` runs on every rank (sharing its work), else on rank 0 alone."""
    return bool(getattr(hook, "all_ranks", False))


def build_hooks(
    cfg: Config,
    sde: SDE,
    kind: str,
    workdir: Path,
    world: World,
    checkpointer: Checkpointer,
    extra: Sequence[Hook],
) -> list[Hook]:
    """The run's hooks, the same list on every rank (each knows where it runs): checkpoints,
    sample grids, evaluations (``kind``: the objective's, ``"score"`` or ``"classifier"``),
    then the caller's own."""
    tc = cfg.train
    found: list[Hook] = [checkpointer]
    if tc.sample_every:
        found.append(SampleGrid(tc.sample_every, workdir / "samples", cfg, sde, world=world))
    if tc.eval_every:
        evaluation = ClassifierEvaluation if kind == "classifier" else Evaluation
        found.append(evaluation(tc.eval_every, workdir / "eval.jsonl", cfg, sde, world=world))
    return found + list(extra)


def run_hooks(
    hooks: Sequence[Hook],
    state: TrainState,
    stats: StepStats | None,
    last: bool,
    world: World,
) -> None:
    """Every hook where it runs; then, if a rank-0 hook acted, every rank waits at the
    host-side barrier (no timeout before rank 0 is done) before the next step's collectives."""
    fenced = False
    for hook in hooks:
        if runs_on_all_ranks(hook):
            hook(state, stats, last)
            continue
        if world.is_main:
            hook(state, stats, last)
        fenced = fenced or hook_due(hook, state.step, last)
    if fenced:
        distributed.barrier()


def record_precision_change(log: MetricsLog, checkpoint: Path, cfg: Config, step: int) -> None:
    """A ``metrics.jsonl`` event when a resumed run changes ``train.tf32`` or ``train.bf16``."""
    if not checkpoint.exists():
        return
    old = checkpoint_config(checkpoint).get("train", {})
    now = {"tf32": cfg.train.tf32, "bf16": cfg.train.bf16}
    before = {key: old.get(key, False) for key in now}
    if before != now:
        log.event(step, "precision", **now, previous=before)


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

    all_ranks = False

    def due(self, step: int, last: bool) -> bool:
        """A checkpoint or a snapshot is written after ``step``."""
        saved = last or bool(self.every and step % self.every == 0)
        return saved or bool(self.snapshot_every and step % self.snapshot_every == 0)

    def __call__(self, state: TrainState, stats: StepStats | None, last: bool) -> None:
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


def _ema_run(
    cfg: Config, sde: SDE, state: TrainState, compiled: dict | None = None
) -> TrainedModel:
    """The EMA model of ``state`` as a :class:`~scoresde.jobs.runs.TrainedModel` (no copy);
    ``compiled`` keeps its ``torch.compile`` (``sample.compile``) from one call to the next."""
    device = next(state.model.parameters()).device
    run = TrainedModel(cfg, sde, state.ema.shadow, device, state.step)
    if compiled is not None:
        run.compiled_cache = compiled
    return run


class SampleGrid:
    """Every ``every`` steps, samples of the EMA model as ``folder/step_<N>.png`` (and
    ``.npy``): a visual check of a long run. Uses the config's sampler and the per-sample
    streams ``(seed, i)`` of ``scoresde sample`` (:func:`scoresde.jobs.runs.generate`), so sample
    ``i`` of every grid starts from the same noise, and nothing is drawn from the training
    streams. A label-conditional model draws class ``i mod K`` for sample ``i``.

    Every rank draws a contiguous share of the indices; rank 0 gathers and writes them. The
    samples are those of one process, except with samplers that couple a batch (the batch-mean
    ``langevin`` corrector, the adaptive ODE solver's shared steps)."""

    all_ranks = True

    def __init__(
        self,
        every: int,
        folder: Path,
        cfg: Config,
        sde: SDE,
        *,
        num_samples: int = 64,
        world: World | None = None,
    ) -> None:
        self.every, self.folder, self.cfg, self.sde = every, Path(folder), cfg, sde
        self.num_samples = min(num_samples, cfg.sample.num_samples)
        self.world = world or World(0, 1, torch.device("cpu"))
        self._compiled: dict = {}  # the EMA network compiled once (sample.compile)
        sampler_config(cfg.sample)  # a bad sampler fails before training starts

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0

    def __call__(self, state: TrainState, stats: StepStats | None, last: bool) -> None:
        if not self.due(state.step, last):
            return
        n, world = self.num_samples, self.world
        per_rank = -(-n // world.size)
        first = min(world.rank * per_rank, n)
        count = min(per_rank, n - first)
        classes = self.cfg.model.num_classes
        part = np.zeros((0, *data_shape(self.cfg.data)), dtype=np.float32)
        if count > 0:
            labels = torch.arange(first, first + count) % classes if classes else None
            run = _ema_run(self.cfg, self.sde, state, self._compiled)
            # A grid is a look at the run, not a verdict on it: non-finite samples are kept
            # (a NaN in training itself stops the run at the vote).
            x, _ = generate(run, count, seed=self.cfg.seed, labels=labels, first_index=first,
                            check_finite_samples=False)
            part = x.numpy()
        parts = distributed.gather_objects(part)
        if not world.is_main:
            return
        from scoresde.infra.viz import save_image_grid, save_scatter

        samples = torch.from_numpy(np.concatenate(parts))
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"step_{state.step:07d}"
        np.save(name.with_suffix(".npy"), samples.numpy())
        if is_image_data(self.cfg.data):
            save_image_grid(samples, name.with_suffix(".png"), nrow=8)
        else:
            save_scatter(samples, name.with_suffix(".png"), title=f"step {state.step}")


class _PeriodicEvaluation:
    """Every ``every`` steps, ``measure(state)`` of the EMA weights appended by rank 0 as one
    JSON line ``{"step": N, ...}`` to ``path``; ``results`` keeps the lines of this call.
    Measurements draw from streams of the config's seed and the step, never from the training
    streams."""

    all_ranks = False

    def __init__(
        self, every: int, path: Path, cfg: Config, sde: SDE, *, world: World | None = None
    ) -> None:
        self.every, self.path, self.cfg, self.sde = every, Path(path), cfg, sde
        self.world = world or World(0, 1, torch.device("cpu"))
        self.results: list[dict] = []

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0

    def measure(self, state: TrainState) -> dict:
        raise NotImplementedError

    def __call__(self, state: TrainState, stats: StepStats | None, last: bool) -> None:
        if not self.due(state.step, last):
            return
        line = {"step": state.step, **self.measure(state)}
        if not self.world.is_main:
            return
        self.results.append(line)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


class Evaluation(_PeriodicEvaluation):
    """Every ``every`` steps, the test-split negative log-likelihood of the EMA model (bits/dim
    for images, nats for vectors; ``eval.*`` settings, e.g. ``eval.num_examples``), appended as
    one JSON line ``{"step": N, "bpd" | "nll_nats": value, "stderr", "nfe", "num_examples"}``
    to ``path``.

    Every rank scores the examples ``i`` with ``i mod W`` its rank
    (:func:`scoresde.jobs.evaluation.split_likelihood.likelihood_on_ranks`), each from its own
    stream of the config's seed and the step, so it draws nothing from the training streams and
    the values do not depend on the number of ranks (up to the adaptive solver's tolerance,
    whose steps depend on the batch); ``results`` keeps the lines of this call.
    """

    all_ranks = True

    def __init__(
        self, every: int, path: Path, cfg: Config, sde: SDE, *, world: World | None = None
    ) -> None:
        super().__init__(every, path, cfg, sde, world=world)
        self.data = load_split(cfg.data, "test", limit=cfg.eval.num_examples)

    def measure(self, state: TrainState) -> dict:
        run = _ema_run(self.cfg, self.sde, state)
        seed = derive_seed(self.cfg.seed, state.step)
        found = likelihood_on_ranks(run, self.data, self.world, seed=seed)
        key = "bpd" if is_image_data(self.cfg.data) else "nll_nats"
        return {
            key: found["mean"],
            "stderr": found["stderr"],
            "nfe": found["nfe"],
            "num_examples": found["num_examples"],
        }


class ClassifierEvaluation(_PeriodicEvaluation):
    """Every ``every`` steps, the test-split accuracy of the EMA classifier against noise level
    (:func:`scoresde.jobs.runs.classifier_accuracy` on the first ``eval.num_examples`` examples),
    appended as one JSON line ``{"step": N, "times": [...], "accuracy": [...], ...}`` to
    ``path``; its draws come from streams of the config's seed and the step. It runs on rank 0
    (one perturbation stream over the whole split) while the other ranks wait at the fence."""

    def measure(self, state: TrainState) -> dict:
        device = next(state.model.parameters()).device
        run = TrainedClassifier(self.cfg, self.sde, state.ema.shadow, device, state.step)
        seed = derive_seed(self.cfg.seed, state.step)
        return classifier_accuracy(run, seed=seed, num_examples=self.cfg.eval.num_examples)
