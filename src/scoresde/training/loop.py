"""The training loop: denoising score matching with Adam, warmup, clipping and EMA.

A run lives in one folder: ``config.json`` (the resolved config) and ``checkpoint.safetensors``
(weights, EMA, optimiser, step and every random stream). Running the same command again resumes
it bit-exactly; a run folder is never reused for another config (:mod:`scoresde.rundir`).
Ctrl-C or SIGTERM saves a checkpoint at the next step boundary and raises
:class:`TrainingInterruptedError`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from scoresde.build import build_loss, build_model, build_score_fn, build_sde, resolve_device
from scoresde.config import Config, config_to_dict, load_config, save_config
from scoresde.data.pipeline import data_shape, to_model_scale, train_batches
from scoresde.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    RESUMABLE_KEYS,
    OutputExistsError,
    check_output_dir,
    config_differences,
    describe_differences,
)
from scoresde.seeding import derive_seed, global_rng_state, private_global_rng, stream
from scoresde.threads import tune_num_threads
from scoresde.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from scoresde.training.ema import EMA
from scoresde.training.optim import make_optimizer


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


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """Linear warmup ``lr min(1, (step + 1) / warmup)`` (the official code starts at 0)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    tune_threads: bool = False,
) -> TrainResult:
    """Train a score model as ``cfg`` says, writing ``config.json`` and a checkpoint to ``workdir``.

    Training runs for ``cfg.train.steps`` steps, or until ``cfg.train.minutes`` of wall time
    (0: no cap) have passed. Everything random (initial weights, data order, noise, dropout)
    comes from streams derived from ``cfg.seed``, so the same config gives bit-identical
    weights on the same machine; the caller's global RNG state is left untouched.

    A ``workdir`` that already holds a run is resumed bit-exactly from its checkpoint when
    ``resume`` is set and its config differs from ``cfg`` only in :data:`RESUMABLE_KEYS` (length,
    logging and checkpoint cadence, device); any other difference is refused before any work.
    ``overwrite`` discards an existing run instead. ``tune_threads`` picks the faster of 1 and
    all CPU threads for this model (:func:`scoresde.threads.tune_num_threads`).

    Raises:
        OutputExistsError: ``workdir`` is a file, or holds another run (or a run and not
            ``resume``), and ``overwrite`` is false.
        TrainingInterruptedError: SIGINT or SIGTERM arrived; the checkpoint holds the last step.
    """
    workdir = Path(workdir)
    device = resolve_device(cfg.device)
    previous = _previous_run(workdir, cfg, resume=resume, overwrite=overwrite)
    ckpt_path = workdir / CHECKPOINT_NAME
    tc = cfg.train
    sde = build_sde(cfg.sde)
    model = build_model(cfg).to(device)
    ema = EMA(model, tc.ema_decay)
    optimizer = make_optimizer(model.parameters(), tc)
    loss_fn = build_loss(cfg, sde)
    score_fn = build_score_fn(model, sde, cfg.model)
    noise = stream(cfg.seed, "noise", device=device)
    data_order = stream(cfg.seed, "data")
    batches = train_batches(cfg.data, tc.batch_size, generator=data_order)
    step, global_state = 0, None
    if previous is not None:
        step, global_state = _restore(previous, model, ema, optimizer, noise, data_order)
    if step >= tc.steps:
        return TrainResult(model.eval(), ema, ckpt_path, step, 0.0, [], "already complete", step)

    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir / CONFIG_NAME)
    if overwrite and previous is None:
        ckpt_path.unlink(missing_ok=True)
    if tune_threads:
        probe = torch.zeros(tc.batch_size, *data_shape(cfg.data), device=device)
        t = torch.full((tc.batch_size,), 0.5, device=device)
        model.eval()  # no dropout draws while timing
        tune_num_threads(lambda: score_fn(probe, t).square().mean().backward(), device=device)
        optimizer.zero_grad(set_to_none=True)

    def save(at_step: int) -> None:
        rng = {
            "noise": noise.get_state().tolist(),
            "data": data_order.get_state().tolist(),
            "global": global_rng_state(device),
        }
        save_checkpoint(
            ckpt_path,
            model=model.state_dict(),
            ema=ema.state_dict(),
            optimizer=optimizer.state_dict(),
            step=at_step,
            config=config_to_dict(cfg),
            extra={"rng": rng},
        )

    first_step = step
    losses: list[tuple[int, float]] = []
    window_sum, window_len = torch.zeros((), device=device), 0
    stopped_by = "steps"
    start = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, desc="training", disable=not progress)
    dropout_seed = derive_seed(cfg.seed, "global")
    with private_global_rng(dropout_seed, device, state=global_state), _stop_signals() as stop:
        model.train()
        while step < tc.steps:
            # One optimisation step on a fresh minibatch.
            x0 = to_model_scale(next(batches).to(device), cfg.data, generator=noise)
            for group in optimizer.param_groups:
                group["lr"] = warmup_lr(step, tc.lr, tc.warmup)
            loss = loss_fn(score_fn, x0, noise).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip >= 0:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            ema.update(model)
            step += 1
            bar.update(1)
            window_sum, window_len = window_sum + loss.detach(), window_len + 1
            if tc.minutes and time.perf_counter() - start > 60 * tc.minutes:
                stopped_by = "time cap"
            ending = step == tc.steps or stopped_by != "steps" or bool(stop)
            # Log the mean loss since the last log; .item() is a device sync, so only now and then.
            if step % tc.log_every == 0 or ending:
                losses.append((step, (window_sum / window_len).item()))
                window_sum, window_len = torch.zeros((), device=device), 0
                bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
            if stop:
                save(step)
                bar.close()
                raise TrainingInterruptedError(stop[0], step, ckpt_path)
            if ending or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                save(step)
            if stopped_by != "steps":
                break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(model, ema, ckpt_path, step, seconds, losses, stopped_by, first_step)


def _previous_run(
    workdir: Path, cfg: Config, *, resume: bool, overwrite: bool
) -> Checkpoint | None:
    """The checkpoint to resume from, or ``None`` for a fresh run; refuses anything unsafe.

    A folder with a ``config.json`` but no checkpoint yet (a run stopped before its first save)
    must have the same config too.
    """
    check_output_dir(workdir, [], what="a run")
    if overwrite or not workdir.is_dir():
        return None
    ckpt_path, config_path = workdir / CHECKPOINT_NAME, workdir / CONFIG_NAME
    if not ckpt_path.exists() and not config_path.exists():
        return None
    if not resume:
        raise OutputExistsError(
            f"{workdir} already holds a run; choose a new --out, or pass --overwrite to replace it"
        )
    if ckpt_path.exists():
        previous = load_checkpoint(ckpt_path)
        old = previous.config
    else:
        previous, old = None, config_to_dict(load_config(config_path))
    new = config_to_dict(cfg)
    differing = config_differences(old, new, ignore=RESUMABLE_KEYS)
    if differing:
        changes = describe_differences(old, new, differing)
        raise OutputExistsError(
            f"{workdir} holds a run with another config ({changes}); only train.steps, "
            "minutes, log_every, checkpoint_every and device may change on resume: use a new --out"
        )
    return previous


def _restore(
    ckpt: Checkpoint,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
    data_order: torch.Generator,
) -> tuple[int, dict | None]:
    """Load weights, EMA, optimiser and random streams; returns ``(step, global RNG state)``."""
    model.load_state_dict(ckpt.model)
    if ckpt.ema is not None:
        ema.load_state_dict(ckpt.ema)
    if ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    rng = (ckpt.extra or {}).get("rng", {})
    for generator, name in ((noise, "noise"), (data_order, "data")):
        if name in rng:
            generator.set_state(torch.tensor(rng[name], dtype=torch.uint8))
    return ckpt.step, rng.get("global")


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
