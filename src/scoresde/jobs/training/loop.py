"""The training loop: denoising score matching with Adam, warmup, clipping and EMA.

A run lives in one folder: ``config.json`` (the resolved config), ``checkpoint.safetensors``
(weights, EMA, optimiser and step: the rolling preemption checkpoint), ``snapshots/``,
``metrics.jsonl`` and ``tensorboard/``. Running the same command again resumes it bit-exactly;
a run folder is never reused for another config (:mod:`scoresde.jobs.training.resume`). Ctrl-C or
SIGTERM
saves a checkpoint at the next vote of the ranks and raises :class:`TrainingInterruptedError`;
a NaN or infinite loss raises :class:`NonFiniteLossError` and saves nothing after it. The same
function runs one process or every process of a ``torchrun`` job
(:mod:`scoresde.infra.distributed`).
The state and its step live in :mod:`scoresde.jobs.training.state`, the step statistics kept on the
device until a vote in :mod:`scoresde.jobs.training.step_window`, the log in
:mod:`scoresde.jobs.training.metrics_log`, checkpoints, sample grids and evaluations in
:mod:`scoresde.jobs.training.hooks`; this module is the loop around them.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scoresde.core.sdes import SDE
from scoresde.core.seeding import BatchRows, derive_seed, stream
from scoresde.infra import distributed
from scoresde.infra.checkpoint import load_checkpoint
from scoresde.infra.rundir import (
    CONFIG_NAME,
)
from scoresde.jobs.training.ema import EMA
from scoresde.jobs.training.hooks import (
    Checkpointer,
    Hook,
    build_hooks,
    hook_due,
    record_precision_change,
    run_hooks,
)
from scoresde.jobs.training.metrics_log import MetricsLog, StepStats
from scoresde.jobs.training.objectives import Objective, build_objective
from scoresde.jobs.training.optim import make_optimizer
from scoresde.jobs.training.performance import prepare_network, tf32, to_memory_format
from scoresde.jobs.training.resume import check_resume, restore
from scoresde.jobs.training.state import (
    BatchLayout,
    MicroBatch,
    TrainState,
    batch_layout,
    train_step,
    warmup_lr,
)
from scoresde.jobs.training.step_window import StepWindow, resolve_sync_every, vote_due
from scoresde.setup.build import build_model, build_sde
from scoresde.setup.config import Config
from scoresde.setup.config_io import save_config
from scoresde.setup.data.feeding import device_batches
from scoresde.setup.data.pipeline import Batch, to_model_scale


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


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped without saving.

    ``step`` is the step whose loss or gradient norm was not finite; the ranks found it at their
    vote after step ``detected_at`` (``train.sync_every``), before any checkpoint.
    """

    def __init__(self, stats: StepStats, detected_at: int, checkpointer: Checkpointer):
        self.step, self.detected_at = stats.step, detected_at
        loss, grad_norm = stats.loss, stats.grad_norm
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        found = f" (found at the vote after step {detected_at})" * (detected_at != stats.step)
        saved = checkpointer.saved_step
        kept = (
            f"the last good checkpoint (step {saved}) is {checkpointer.path}"
            if saved is not None
            else "no checkpoint was written"
        )
        super().__init__(
            f"training stopped: {what} at step {stats.step}{found}; {kept}; try a lower "
            "train.lr, train.grad_clip or train.warmup longer"
        )


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
    comes from streams derived from ``cfg.seed`` and the step, so the same config gives
    bit-identical weights on the same machine; the caller's global RNG state is left untouched.
    A class-conditional model (``model.num_classes > 0``) gets each batch's labels.

    Under ``torchrun`` every process calls this: the network is wrapped in
    ``DistributedDataParallel``, each rank takes its rows of every global batch of
    ``train.batch_size`` (micro-batches of ``train.device_batch_size``, gradients accumulated)
    and only rank 0 writes. One step is the same computation on any number of ranks (to float
    rounding), so a run may resume on another number of devices.

    A ``workdir`` that already holds a run is resumed bit-exactly from its checkpoint when
    ``resume`` is set and its config differs from ``cfg`` only in
    :func:`~scoresde.setup.config.resumable_keys` (length, logging, checkpoint and sample cadence,
    devices, speed switches); any other difference is refused before any work. ``overwrite``
    discards an existing run instead.

    The loop itself only draws batches (on the device, one ahead:
    :func:`scoresde.setup.data.feeding.device_batches`) and calls :func:`train_step`. The step's
    loss and gradient norm stay on the device; every ``train.sync_every`` steps (0: 10 on
    CUDA, 1 on the CPU) and before every log line and hook the ranks vote: one collective and
    one host read (:class:`~scoresde.jobs.training.step_window.StepWindow`) that also decide a stop
    (signal, time cap, non-finite loss). Logging (progress bar, ``metrics.jsonl``,
    TensorBoard), checkpoints (every ``train.checkpoint_every`` steps, at the end and on a
    signal; snapshots every ``train.snapshot_every``), periodic sample grids
    (``train.sample_every``) and test likelihoods (``train.eval_every``, to ``eval.jsonl``)
    follow (:mod:`scoresde.jobs.training.hooks`: the grids and likelihoods shared out over the
    ranks, checkpoints on rank 0 with the others at a barrier that does not time out); the
    caller's own ``hooks`` run on rank 0 after every step, with ``stats`` ``None`` between
    votes.

    Raises:
        OutputExistsError: ``workdir`` is a file, or holds another run (or a run and not
            ``resume``), and ``overwrite`` is false.
        ValueError: the batch does not split over the devices, or another bad setting.
        TrainingInterruptedError: SIGINT or SIGTERM arrived; the checkpoint holds the last step.
        NonFiniteLossError: the loss or the gradient became NaN or infinite; nothing was saved
            after the last finite step.
    """
    workdir = Path(workdir)
    tc = cfg.train
    world = distributed.setup(cfg.device, timeout_minutes=tc.dist_timeout_minutes)
    device = world.device
    layout = batch_layout(tc, rank=world.rank, world_size=world.size)
    resuming = check_resume(workdir, cfg, resume=resume, overwrite=overwrite)
    if not resuming and tc.steps == 0:
        raise ValueError("train.steps=0: a new run needs at least one step (--steps N)")
    sde = build_sde(cfg.sde)
    objective = build_objective(cfg, sde)
    if objective.kind == "classifier" and tc.sample_every:
        raise ValueError("train.sample_every: a classifier run draws no samples; set it to 0")
    state = create_state(cfg, sde, device, objective, world_size=world.size)
    checkpointer = Checkpointer(workdir, cfg, tc.checkpoint_every, tc.snapshot_every)
    if resuming:
        restore(load_checkpoint(checkpointer.path), state)
        checkpointer.saved_step = state.step
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

    batches = device_batches(
        cfg.data,
        tc.batch_size,
        seed=derive_seed(cfg.seed, "data"),
        start=state.step,  # the data position: one batch per step
        with_labels=objective.uses_labels,
        rows=layout.rank_rows,
        device=device,
    )
    distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    log = MetricsLog(
        tc.log_every,
        workdir if world.is_main else None,
        progress=progress and world.is_main,
        total=tc.steps,
        initial=state.step,
        tensorboard=tc.tensorboard,
    )
    hooks_all = build_hooks(cfg, sde, objective.kind, workdir, world, checkpointer, hooks)
    if world.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        if resuming:
            record_precision_change(log, checkpointer.path, cfg, state.step)
        save_config(cfg, workdir / CONFIG_NAME)
        if overwrite:
            checkpointer.path.unlink(missing_ok=True)
    distributed.barrier()  # rank 0's set-up (folder, logs) is done before the first collective

    sync_every = resolve_sync_every(tc, device)
    window = StepWindow(sync_every, device, world.size)
    stopped_by = "steps"
    start = time.perf_counter()
    log.start_clock()
    try:
        with _stop_signals() as stop, tf32(tc.tf32):
            state.model.train()
            while state.step < tc.steps:
                rank_batch = next(batches)  # on the device, the next one on its way
                micro = micro_batches(cfg, layout, rank_batch, state.step, device)
                lr = warmup_lr(state.step, tc.lr, tc.warmup)
                loss, grad_norm = train_step(state, micro, objective.loss, tc)
                step = state.step
                window.add(step, loss, grad_norm, lr=lr, examples=tc.batch_size)
                log.step_done()
                final = step == tc.steps
                hook_acts = any(hook_due(h, step, final) for h in hooks_all if hasattr(h, "due"))
                stats, last, stopping = None, final, False
                if vote_due(step, sync_every=sync_every, log_every=tc.log_every, final=final,
                            hook_due=hook_acts):
                    timed_out = bool(tc.minutes) and time.perf_counter() - start > 60 * tc.minutes
                    vote = window.vote(stop=bool(stop), time_up=timed_out)
                    if vote.nonfinite is not None:
                        raise NonFiniteLossError(vote.nonfinite, step, checkpointer)
                    if vote.time_up:
                        stopped_by = "time cap"
                    # Stop on the ranks' common vote, never on a signal that arrived after
                    # this rank voted: every rank leaves at the same step.
                    stopping = vote.stop
                    last = final or vote.time_up or stopping
                    log.record(vote.stats, last)
                    stats = vote.stats[-1]
                run_hooks(hooks_all, state, stats, last, world)
                if stopping:
                    distributed.barrier()  # rank 0 has saved before anyone exits
                    signum = stop[0] if stop else signal.SIGTERM  # signalled rank: its own
                    raise TrainingInterruptedError(signum, state.step, checkpointer.path)
                if last:
                    break
    finally:
        log.close()
    distributed.barrier()
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


def micro_batches(
    cfg: Config, layout: BatchLayout, rank_batch: Batch, step: int, device: torch.device
) -> list[MicroBatch]:
    """This rank's micro-batches of step ``step``, in model scale, with their random streams.

    Every random draw of a micro-batch (dequantization, the loss's time and noise) takes the
    rows of the draws of one generator over the whole global batch,
    ``stream(seed, "noise", step)``, and its dropout the seed ``(seed, "dropout", step, chunk)``:
    a function of the seed, the step and the rows only.
    """
    micro = []
    offset = layout.rank_rows.start
    for chunk, rows in layout.chunks():
        local = slice(rows.start - offset, rows.stop - offset)
        noise = BatchRows(
            stream(cfg.seed, "noise", step, device=device),
            layout.global_batch,
            rows.start,
            rows.stop,
        )
        data = to_memory_format(
            to_model_scale(rank_batch.data[local], cfg.data, generator=noise), cfg.train
        )
        labels = rank_batch.labels[local] if rank_batch.labels is not None else None
        micro.append(
            MicroBatch(Batch(data, labels), noise, derive_seed(cfg.seed, "dropout", step, chunk))
        )
    return micro


def create_state(
    cfg: Config, sde: SDE, device: torch.device, objective: Objective, *, world_size: int = 1
) -> TrainState:
    """A fresh training state for ``cfg`` on ``device``: seeded weights, EMA, Adam; the
    network wrapped as ``objective`` says (a score model or a noise-conditional classifier).

    The config's speed switches are applied here: ``channels_last`` weights, activation
    checkpointing, ``DistributedDataParallel`` when ``world_size > 1``, ``torch.compile`` (of
    the wrapped network) and bf16 autocast in the score model or classifier. The weights
    trained and saved are always those of the plain network (``state.model``).
    """
    tc = cfg.train
    model = build_model(cfg).to(device)
    ddp: list[nn.parallel.DistributedDataParallel] = []

    def data_parallel(module: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        ddp.append(nn.parallel.DistributedDataParallel(module, device_ids=ids))
        return ddp[0]

    network = prepare_network(model, tc, wrap=data_parallel if world_size > 1 else None)
    no_sync = ddp[0].no_sync if ddp else None
    compute_dtype = torch.bfloat16 if tc.bf16 else None
    return TrainState(
        model=model,
        model_fn=objective.wrap(network, compute_dtype),
        ema=EMA(model, tc.ema_decay),
        optimizer=make_optimizer(model.parameters(), tc),
        step=0,
        no_sync=no_sync,
    )


@contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a request to stop at the ranks' next vote.

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
