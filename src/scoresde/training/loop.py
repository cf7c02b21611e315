"""The training loop: denoising score matching with Adam, warmup, clipping and EMA.

A run lives in one folder: ``config.json`` (the resolved config) and ``checkpoint.safetensors``
(weights, EMA, optimiser, step and every random stream). Running the same command again resumes
it bit-exactly; a run folder is never reused for another config (:mod:`scoresde.rundir`).
Ctrl-C or SIGTERM saves a checkpoint at the next step boundary and raises
:class:`TrainingInterruptedError`. The state and its step live in
:mod:`scoresde.training.state`, logging, checkpoints and sample grids in
:mod:`scoresde.training.hooks`; this module is the loop around them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scoresde.build import build_loss, build_model, build_score_fn, build_sde, resolve_device
from scoresde.checkpoint import Checkpoint, checkpoint_config, load_checkpoint
from scoresde.config import Config, config_to_dict, load_config, save_config
from scoresde.data.pipeline import to_model_scale, train_batches
from scoresde.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    RESUMABLE_KEYS,
    OutputExistsError,
    check_output_dir,
    config_differences,
    describe_differences,
)
from scoresde.sdes import SDE
from scoresde.seeding import derive_seed, private_global_rng, stream
from scoresde.training.ema import EMA
from scoresde.training.hooks import Checkpointer, Evaluation, Hook, LossLog, SampleGrid
from scoresde.training.optim import make_optimizer
from scoresde.training.state import TrainState, conditional, train_step


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained network, its EMA and the loss curve.

    ``losses`` holds ``(step, mean loss over the steps since the previous entry)`` for the steps
    of this call. ``stopped_by`` says why training ended: ``"steps"`` (reached
    ``train.steps``), ``"time cap"`` (``train.minutes`` ran out) or ``"already complete"`` (a
    finished run was resumed; nothing was trained or written).
    """

    model: nn.Module
    ema: EMA
    checkpoint: Path
    steps: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_by: str = "steps"
    resumed_from: int = 0


class TrainingInterruptedError(Exception):
    """Training was stopped by a signal; a checkpoint of the last finished step was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} at step {step}; saved {checkpoint}; "
            "run the same command again to resume"
        )


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train a score model as ``cfg`` says, writing ``config.json`` and a checkpoint to ``workdir``.

    Training runs for ``cfg.train.steps`` steps, or until ``cfg.train.minutes`` of wall time
    (0: no cap) have passed. Everything random (initial weights, data order, noise, dropout)
    comes from streams derived from ``cfg.seed``, so the same config gives bit-identical
    weights on the same machine; the caller's global RNG state is left untouched. A
    class-conditional model (``model.num_classes > 0``) gets each batch's labels.

    A ``workdir`` that already holds a run is resumed bit-exactly from its checkpoint when
    ``resume`` is set and its config differs from ``cfg`` only in :data:`RESUMABLE_KEYS` (length,
    logging, checkpoint and sample cadence, device); any other difference is refused before any
    work. ``overwrite`` discards an existing run instead.

    The loop itself only draws batches and calls :func:`train_step`; logging, checkpoints
    (every ``train.checkpoint_every`` steps and at the end), periodic sample grids
    (``train.sample_every``), test likelihoods (``train.eval_every``, to ``eval.jsonl``) and
    the caller's own ``hooks`` run after each step
    (:mod:`scoresde.training.hooks`).

    Raises:
        OutputExistsError: ``workdir`` is a file, or holds another run (or a run and not
            ``resume``), and ``overwrite`` is false.
        TrainingInterruptedError: SIGINT or SIGTERM arrived; the checkpoint holds the last step.
    """
    workdir = Path(workdir)
    device = resolve_device(cfg.device)
    resuming = check_resume(workdir, cfg, resume=resume, overwrite=overwrite)
    tc = cfg.train
    sde = build_sde(cfg.sde)
    state = create_state(cfg, sde, device)
    loss_fn = build_loss(cfg, sde)
    checkpointer = Checkpointer(workdir / CHECKPOINT_NAME, cfg, tc.checkpoint_every, device)
    global_state = _restore(load_checkpoint(checkpointer.path), state) if resuming else None
    first_step = state.step
    if state.step >= tc.steps:
        state.model.eval()
        return TrainResult(
            state.model,
            state.ema,
            checkpointer.path,
            state.step,
            0.0,
            [],
            "already complete",
            first_step,
        )

    batches = train_batches(
        cfg.data,
        tc.batch_size,
        seed=derive_seed(cfg.seed, "data"),
        start=state.step,  # the data position: one batch per step
        with_labels=conditional(cfg),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir / CONFIG_NAME)
    if overwrite:
        checkpointer.path.unlink(missing_ok=True)
    log = LossLog(tc.log_every, progress=progress, total=tc.steps, initial=state.step)
    all_hooks: list[Hook] = [log, checkpointer]
    if tc.sample_every:
        all_hooks.append(SampleGrid(tc.sample_every, workdir / "samples", cfg, sde))
    if tc.eval_every:
        all_hooks.append(Evaluation(tc.eval_every, workdir / "eval.jsonl", cfg, sde))
    all_hooks += list(hooks)

    stopped_by = "steps"
    start = time.perf_counter()
    dropout_seed = derive_seed(cfg.seed, "global")
    with private_global_rng(dropout_seed, device, state=global_state), _stop_signals() as stop:
        state.model.train()
        while state.step < tc.steps:
            batch = next(batches).to(device)
            batch.data = to_model_scale(batch.data, cfg.data, generator=state.noise)
            loss = train_step(state, batch, loss_fn, tc)
            if tc.minutes and time.perf_counter() - start > 60 * tc.minutes:
                stopped_by = "time cap"
            last = state.step == tc.steps or stopped_by != "steps" or bool(stop)
            for hook in all_hooks:
                hook(state, loss, last)
            if stop:
                log.close()
                raise TrainingInterruptedError(stop[0], state.step, checkpointer.path)
            if last:
                break
    log.close()
    state.model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(
        state.model,
        state.ema,
        checkpointer.path,
        state.step,
        seconds,
        log.losses,
        stopped_by,
        first_step,
    )


def create_state(cfg: Config, sde: SDE, device: torch.device) -> TrainState:
    """A fresh training state for ``cfg`` on ``device``: seeded weights, EMA, Adam, noise."""
    model = build_model(cfg).to(device)
    return TrainState(
        model=model,
        score_model=build_score_fn(model, sde, cfg),
        ema=EMA(model, cfg.train.ema_decay),
        optimizer=make_optimizer(model.parameters(), cfg.train),
        step=0,
        noise=stream(cfg.seed, "noise", device=device),
    )


def check_resume(
    workdir: str | Path, cfg: Config, *, resume: bool = True, overwrite: bool = False
) -> bool:
    """Whether ``workdir`` holds a checkpoint to resume from; refuses anything unsafe.

    Cheap (it reads the folder's config or the checkpoint's header, builds and loads nothing),
    so callers can check a run folder before any expensive work. A folder with a
    ``config.json`` but no checkpoint yet (a run stopped before its first save) must have the
    same config too.

    Raises:
        OutputExistsError: as :func:`train` says.
    """
    workdir = Path(workdir)
    check_output_dir(workdir, [], what="a run")
    if overwrite or not workdir.is_dir():
        return False
    ckpt_path, config_path = workdir / CHECKPOINT_NAME, workdir / CONFIG_NAME
    has_checkpoint = ckpt_path.exists()
    if not has_checkpoint and not config_path.exists():
        return False
    if not resume:
        raise OutputExistsError(
            f"{workdir} already holds a run; choose a new --out, or pass --overwrite to replace it"
        )
    if has_checkpoint:
        old = checkpoint_config(ckpt_path)
    else:
        old = config_to_dict(load_config(config_path))
    new = config_to_dict(cfg)
    differing = config_differences(old, new, ignore=RESUMABLE_KEYS)
    if differing:
        changes = describe_differences(old, new, differing)
        allowed = ", ".join(sorted(RESUMABLE_KEYS))
        raise OutputExistsError(
            f"{workdir} holds a run with another config ({changes}); only {allowed} may change "
            "on resume: use a new --out"
        )
    return has_checkpoint


def _restore(ckpt: Checkpoint, state: TrainState) -> dict | None:
    """Load weights, EMA, optimiser, step and streams; returns the global RNG state."""
    state.model.load_state_dict(ckpt.model)
    if ckpt.ema is not None:
        state.ema.load_state_dict(ckpt.ema)
    if ckpt.optimizer is not None:
        state.optimizer.load_state_dict(ckpt.optimizer)
    state.step = ckpt.step
    rng = (ckpt.extra or {}).get("rng", {})
    state.load_rng_state(rng)
    return rng.get("global")


@contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a request to stop at the next step boundary.

    Yields a list that receives the signal number; a second signal interrupts at once
    (``KeyboardInterrupt``). Outside the main thread signals cannot be caught and nothing
    changes.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
