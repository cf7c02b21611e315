"""Resuming a run: whether a folder holds a run to continue, and loading its state.

A run folder is continued only with the config it was started with, up to
:func:`scoresde.setup.config.resumable_keys` (length, cadence, devices, speed switches); anything
else
is refused before any work. Every random stream of a run is a function of its seed and the step,
so the checkpoint's weights, EMA, optimiser and step are all a resumed run needs.
"""

from __future__ import annotations

from pathlib import Path

from scoresde.infra.checkpoint import Checkpoint, checkpoint_config
from scoresde.infra.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    OutputExistsError,
    check_output_dir,
    config_differences,
    describe_differences,
)
from scoresde.jobs.training.state import TrainState
from scoresde.setup.config import Config, resumable_keys
from scoresde.setup.config_io import config_from_dict, config_to_dict, load_config

__all__ = ["check_resume", "restore"]


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
    if has_checkpoint:  # read through the config class: older layouts compare as they are now
        old = config_to_dict(config_from_dict(checkpoint_config(ckpt_path)))
    else:
        old = config_to_dict(load_config(config_path))
    new = config_to_dict(cfg)
    differing = config_differences(old, new, ignore=resumable_keys())
    if differing:
        changes = describe_differences(old, new, differing)
        raise OutputExistsError(
            f"{workdir} holds a run with another config ({changes}); only the length, cadence, "
            "devices and speed switches may change on resume (scoresde train --help lists "
            "them): use a new --out"
        )
    return has_checkpoint


def restore(ckpt: Checkpoint, state: TrainState) -> None:
    """Load weights, EMA, optimiser and step (every random stream is a function of the step)."""
    state.model.load_state_dict(ckpt.model)
    if ckpt.ema is not None:
        state.ema.load_state_dict(ckpt.ema)
    if ckpt.optimizer is not None:
        state.optimizer.load_state_dict(ckpt.optimizer)
    state.step = ckpt.step
