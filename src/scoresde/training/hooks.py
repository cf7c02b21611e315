"""What the training loop does besides stepping: each is a hook called after every step.

A hook is any callable ``hook(state, loss, last)``: ``state`` is the
:class:`~scoresde.training.state.TrainState` after the step, ``loss`` that step's mean loss
(a 0-dim tensor on the training device; reading it is a device sync, so hooks read it only now
and then) and ``last`` whether this is the last step of the call (the run's end, a time cap
or an interrupt). Hooks act every so many steps; the loop knows nothing of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.build import sampler_config
from scoresde.checkpoint import save_checkpoint
from scoresde.config import Config, config_to_dict
from scoresde.data.pipeline import is_image_data, load_split
from scoresde.runs import TrainedModel, evaluate_likelihood, generate
from scoresde.sdes import SDE
from scoresde.seeding import derive_seed, global_rng_state
from scoresde.training.state import TrainState

Hook = Callable[[TrainState, Tensor, bool], None]


class LossLog:
    """The loss curve: the mean loss over each ``every`` steps (and up to the last step), shown
    on a progress bar. ``losses`` holds ``(step, mean loss)``."""

    def __init__(self, every: int, *, progress: bool, total: int, initial: int) -> None:
        self.every = every
        self.losses: list[tuple[int, float]] = []
        self._sum: Tensor | None = None
        self._count = 0
        self._bar = tqdm(total=total, initial=initial, desc="training", disable=not progress)

    def __call__(self, state: TrainState, loss: Tensor, last: bool) -> None:
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        self._bar.update(1)
        if state.step % self.every == 0 or last:
            self.losses.append((state.step, (self._sum / self._count).item()))
            self._sum, self._count = None, 0
            self._bar.set_postfix(loss=f"{self.losses[-1][1]:.4f}")

    def close(self) -> None:
        self._bar.close()


class Checkpointer:
    """Saves the whole state atomically every ``every`` steps (0: only at the end) and at the
    last step: weights, EMA, optimiser, step, the config and every random stream (including
    torch's global generator on ``device``, which dropout draws from)."""

    def __init__(self, path: Path, cfg: Config, every: int, device: torch.device) -> None:
        self.path, self.cfg, self.every, self.device = Path(path), cfg, every, device

    def __call__(self, state: TrainState, loss: Tensor, last: bool) -> None:
        if last or (self.every and state.step % self.every == 0):
            self.save(state)

    def save(self, state: TrainState) -> Path:
        rng = {**state.rng_state(), "global": global_rng_state(self.device)}
        return save_checkpoint(
            self.path,
            model=state.model.state_dict(),
            ema=state.ema.state_dict(),
            optimizer=state.optimizer.state_dict(),
            step=state.step,
            config=config_to_dict(self.cfg),
            extra={"rng": rng},
        )


def _ema_run(cfg: Config, sde: SDE, state: TrainState) -> TrainedModel:
    """The EMA model of ``state`` as a :class:`~scoresde.runs.TrainedModel` (no copy)."""
    device = next(state.model.parameters()).device
    return TrainedModel(cfg, sde, state.ema.shadow, device, state.step)


class SampleGrid:
    """Every ``every`` steps, samples of the EMA model as ``folder/step_<N>.png`` (and
    ``.npy``): a visual check of a long run. Uses the config's sampler and the per-sample
    streams ``(seed, i)`` of ``scoresde sample`` (:func:`scoresde.runs.generate`), so sample
    ``i`` of every grid starts from the same noise, and nothing is drawn from the training
    streams."""

    def __init__(
        self, every: int, folder: Path, cfg: Config, sde: SDE, *, num_samples: int = 64
    ) -> None:
        self.every, self.folder, self.cfg, self.sde = every, Path(folder), cfg, sde
        self.num_samples = min(num_samples, cfg.sample.num_samples)
        sampler_config(cfg.sample)  # a bad sampler fails before training starts

    def __call__(self, state: TrainState, loss: Tensor, last: bool) -> None:
        if state.step % self.every:
            return
        from scoresde.viz import save_image_grid, save_scatter

        x, _ = generate(_ema_run(self.cfg, self.sde, state), self.num_samples, seed=self.cfg.seed)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"step_{state.step:07d}"
        np.save(name.with_suffix(".npy"), x.numpy())
        if is_image_data(self.cfg.data):
            save_image_grid(x, name.with_suffix(".png"), nrow=8)
        else:
            save_scatter(x, name.with_suffix(".png"), title=f"step {state.step}")


class Evaluation:
    """Every ``every`` steps, the test-split negative log-likelihood of the EMA model (bits/dim
    for images, nats for vectors; ``eval.*`` settings, e.g. ``eval.num_examples``), appended as
    one JSON line ``{"step": N, "bpd" | "nll_nats": value, "nfe": ...}`` to ``path``.

    It uses its own generator (seeded by the config's seed and the step), so it draws nothing
    from the training streams; ``results`` keeps the lines of this call.
    """

    def __init__(self, every: int, path: Path, cfg: Config, sde: SDE) -> None:
        self.every, self.path, self.cfg, self.sde = every, Path(path), cfg, sde
        self.data = load_split(cfg.data, "test", limit=cfg.eval.num_examples)
        self.results: list[dict] = []

    def __call__(self, state: TrainState, loss: Tensor, last: bool) -> None:
        if state.step % self.every:
            return
        run = _ema_run(self.cfg, self.sde, state)
        result = evaluate_likelihood(run, self.data, seed=derive_seed(self.cfg.seed, state.step))
        result.pop("per_example")
        line = {"step": state.step, **result}
        self.results.append(line)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
