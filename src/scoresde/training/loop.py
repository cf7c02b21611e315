"""The training loop: denoising score matching with Adam, warmup, clipping and EMA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from scoresde.build import build_loss, build_model, build_score_fn, build_sde, resolve_device
from scoresde.config import Config, config_from_dict, config_to_dict, save_config
from scoresde.data.pipeline import data_shape, to_model_scale, train_batches
from scoresde.threads import tune_num_threads
from scoresde.training.checkpoint import load_checkpoint, save_checkpoint
from scoresde.training.ema import EMA
from scoresde.training.optim import make_optimizer

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained network, its EMA and the loss curve.

    ``losses`` holds ``(step, mean loss over the steps since the previous entry)``.
    """

    model: nn.Module
    ema: EMA
    checkpoint: Path
    steps: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """Linear warmup ``lr min(1, (step + 1) / warmup)`` (the official code starts at 0)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
    tune_threads: bool = False,
) -> TrainResult:
    """Train a score model as ``cfg`` says, writing ``config.json`` and a checkpoint to ``workdir``.

    Training runs for ``cfg.train.steps`` steps or ``cfg.train.minutes`` of wall time, whichever
    comes first. With ``resume`` an existing checkpoint in ``workdir`` (from the same config)
    is continued bit-exactly from its step (in-memory data; image datasets restart their
    shuffled epoch). ``tune_threads`` picks the faster of 1 and all CPU threads for this model
    (:func:`scoresde.threads.tune_num_threads`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    tc = cfg.train
    sde = build_sde(cfg.sde)
    model = build_model(cfg).to(device)
    ema = EMA(model, tc.ema_decay)
    optimizer = make_optimizer(model.parameters(), tc)
    loss_fn = build_loss(cfg, sde)
    score_fn = build_score_fn(model, sde, cfg.model)
    # Two streams of randomness: data order (CPU, as data loaders need) and noise (on device).
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    data_generator = torch.Generator().manual_seed(cfg.seed + 1)
    ckpt_path = workdir / CHECKPOINT_NAME
    step = 0
    if resume and ckpt_path.exists():
        step = _restore(ckpt_path, cfg, model, ema, optimizer, generator, data_generator)
    batches = train_batches(cfg.data, tc.batch_size, generator=data_generator)
    save_config(cfg, workdir / "config.json")
    if tune_threads:
        probe = torch.zeros(tc.batch_size, *data_shape(cfg.data), device=device)
        t = torch.full((tc.batch_size,), 0.5, device=device)
        tune_num_threads(lambda: score_fn(probe, t).square().mean().backward(), device=device)
        optimizer.zero_grad(set_to_none=True)

    losses: list[tuple[int, float]] = []
    window_sum, window_len = torch.zeros((), device=device), 0
    start = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, desc="training", disable=not progress)
    model.train()
    while step < tc.steps:
        # One optimisation step on a fresh minibatch.
        x0 = to_model_scale(next(batches).to(device), cfg.data, generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = warmup_lr(step, tc.lr, tc.warmup)
        loss = loss_fn(score_fn, x0, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip >= 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        bar.update(1)
        window_sum, window_len = window_sum + loss.detach(), window_len + 1
        out_of_time = bool(tc.minutes) and time.perf_counter() - start > 60 * tc.minutes
        # Log the mean loss since the last log; .item() is a device sync, so only now and then.
        if step % tc.log_every == 0 or step == tc.steps or out_of_time:
            losses.append((step, (window_sum / window_len).item()))
            window_sum, window_len = torch.zeros((), device=device), 0
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            _save(ckpt_path, cfg, model, ema, optimizer, (generator, data_generator), step)
        if out_of_time:
            break
    bar.close()
    model.eval()
    _save(ckpt_path, cfg, model, ema, optimizer, (generator, data_generator), step)
    seconds = time.perf_counter() - start
    return TrainResult(model, ema, ckpt_path, step, seconds, losses)


def _save(path, cfg, model, ema, optimizer, generators, step) -> None:
    save_checkpoint(
        path,
        model=model.state_dict(),
        ema=ema.state_dict(),
        optimizer=optimizer.state_dict(),
        step=step,
        config=config_to_dict(cfg),
        extra={"rng_states": [g.get_state().tolist() for g in generators]},
    )


def _restore(path, cfg, model, ema, optimizer, *generators) -> int:
    ckpt = load_checkpoint(path)
    if config_from_dict(ckpt.config).model != cfg.model:
        raise ValueError(f"{path} was trained with another model config; use a new workdir")
    model.load_state_dict(ckpt.model)
    if ckpt.ema is not None:
        ema.load_state_dict(ckpt.ema)
    if ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    states = (ckpt.extra or {}).get("rng_states", [])
    for generator, state in zip(generators, states, strict=False):
        generator.set_state(torch.tensor(state, dtype=torch.uint8))
    return ckpt.step
