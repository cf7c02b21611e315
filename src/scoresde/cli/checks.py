"""Checks every command makes before any work: option values, ``--out``, data paths, configs.

Each raises a ``ValueError`` (or :class:`~scoresde.infra.checkpoint.CheckpointError`) with a
one-line
message, which the command line prints and exits with status 2. They are cheap: no network is
built, no dataset decoded (CIFAR-10's tarball is checked by its first member's header), no
sampler run; a checkpoint's config is read from its header only.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from scoresde.setup.config_rules import SEED_LIMIT


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def guidance_scale(text: str) -> float:
    """argparse type of ``--guidance``: a finite scale ``W >= 0`` (0: the unconditional model,
    1: the conditional one, > 1 sharper); a negative scale, which would steer away from the
    class, is refused."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"the guidance scale must be >= 0 (0: unconditional, 1: the class), got {text}"
        )
    return value


def seed_value(text: str) -> int:
    """argparse type of ``--seed``: an integer in ``0 .. 2**63 - 1``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed is an integer in 0 .. 2**63 - 1, got {text}")
    return value


def check_out(
    out: str | Path, names: Iterable[str] = (), *, overwrite: bool = False, what: str = "output"
) -> Path:
    """``--out`` as :func:`scoresde.infra.rundir.check_output_dir` checks it (not a file, no earlier
    output unless ``overwrite``), and that it can be created or written to: a folder whose
    nearest existing parent is not a writable folder (``/proc/x``, a read-only disk) is refused
    now, not after the work. Nothing is left behind."""
    from scoresde.infra.rundir import check_output_dir

    out = check_output_dir(out, list(names), overwrite=overwrite, what=what)
    path = out.absolute()
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"--out {out}: the folder is not writable")
        return out
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"--out {out} cannot be created: {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be created: {path} is not writable")
    # A trial folder of a name of its own in the nearest existing parent, never --out itself:
    # under torchrun every rank checks at once, and none may see another's trial.
    try:
        trial = tempfile.mkdtemp(prefix=".scoresde-check-", dir=path)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be created: {e.strerror or e}") from None
    with contextlib.suppress(OSError):
        os.rmdir(trial)
    return out


def check_file(path: str | Path | None, option: str) -> None:
    """An input file option (``--mask``, ``--config``) names an existing file."""
    if path is None:
        return
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{option} {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder, not a file")


def run_config(checkpoint: str | Path, overrides: Iterable[str] = (), *, classifier=False):
    """The config of the run ``checkpoint`` (a checkpoint file or its run folder) from the
    checkpoint's header, with ``overrides`` applied: what a command checks before it loads the
    network. A classifier's run where a score model is wanted (or the reverse, for
    ``classifier``) is refused as :func:`scoresde.jobs.runs.load_trained` refuses it."""
    from scoresde.infra.checkpoint import CheckpointError, checkpoint_config
    from scoresde.jobs.run_models import check_run_kind, checkpoint_file
    from scoresde.setup.config import ConfigError
    from scoresde.setup.config_io import apply_overrides, config_from_dict

    path = checkpoint_file(checkpoint)
    try:
        cfg = config_from_dict(checkpoint_config(path))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: its config cannot be read: {e}") from None
    check_run_kind(cfg, path, classifier=classifier)
    return apply_overrides(cfg, list(overrides))


def header_run(cfg):
    """What :func:`scoresde.jobs.conditioning.check_conditioning` reads of a run (``cfg``, ``sde``,
    ``shape``, ``num_classes``), from its config alone: no network."""
    from types import SimpleNamespace

    from scoresde.setup.build import build_sde
    from scoresde.setup.data.pipeline import data_shape

    return SimpleNamespace(
        cfg=cfg, sde=build_sde(cfg.sde), shape=data_shape(cfg.data),
        num_classes=cfg.model.num_classes,
    )


def check_data(cfg, splits: Iterable[str]) -> None:
    """The data of ``cfg`` (a :class:`~scoresde.setup.config.Config`) can be read for ``splits``:
    digits and the 2-D toys always can; an image dataset's ``data.root`` must exist in its
    format (CIFAR-10: the tarball's first member or the batch files; folders, CelebA, LSUN:
    their image files are listed, none decoded)."""
    from scoresde.setup.data.pipeline import data_shape, image_dataset, is_image_data

    data = cfg.data
    data_shape(data)
    if not is_image_data(data) or data.dataset == "digits":
        return
    if not data.root:
        raise ValueError(f"dataset {data.dataset!r} is read from disk: set data.root=PATH")
    for split in dict.fromkeys(splits):
        if data.dataset == "cifar10":
            _check_cifar10(Path(data.root), split)
        else:
            image_dataset(data, split)


def _check_cifar10(root: Path, split: str) -> None:
    from scoresde.setup.data.cifar import (
        CIFAR10_BATCHES,
        CIFAR10_DIR,
        CIFAR10_LAYOUT,
        CIFAR10_TARBALL,
    )
    from scoresde.setup.data.image_formats import DatasetError

    if not root.exists():
        raise DatasetError(f"data.root {root} does not exist; {CIFAR10_LAYOUT}")
    if root.is_dir():
        names = CIFAR10_BATCHES.get(split, ())
        for folder in (root, root / CIFAR10_DIR):
            if all((folder / name).is_file() for name in names):
                return
        if not (root / CIFAR10_TARBALL).is_file():
            raise DatasetError(f"no CIFAR-10 {split} batches in {root}; {CIFAR10_LAYOUT}")
        root = root / CIFAR10_TARBALL
    try:
        with tarfile.open(root, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(
            f"data.root {root} is not a readable CIFAR-10 tarball ({e}); {CIFAR10_LAYOUT}"
        ) from None
    if first is None or not first.name.removeprefix("./").startswith(CIFAR10_DIR):
        raise DatasetError(
            f"data.root {root} is a tar file without {CIFAR10_DIR}/; {CIFAR10_LAYOUT}"
        )
