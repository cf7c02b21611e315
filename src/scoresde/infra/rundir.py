"""Output folders that never lose a user's work.

Every command that writes files checks its output location first, before any expensive work:
``--out`` must not be an existing file, and files that a command would replace are only replaced
when the user asked for it (``overwrite=True``, ``--overwrite`` on the command line). Resuming a
training run compares the whole resolved config and continues only where nothing but the run's
length and bookkeeping differ (the fields marked resumable,
:func:`scoresde.setup.config.resumable_keys`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = "checkpoint.safetensors"
CONFIG_NAME = "config.json"

class OutputExistsError(ValueError):
    """An output location holds something the command would overwrite (one-line message)."""


def check_output_dir(
    out: str | Path, names: Iterable[str], *, overwrite: bool = False, what: str = "output"
) -> Path:
    """Check that ``out`` can be used as a folder into which ``names`` are written.

    Raises:
        OutputExistsError: ``out`` exists and is not a folder, or it already holds one of
            ``names`` and ``overwrite`` is false. The message names the files and says how to
            proceed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is an existing file, not a folder; choose a folder")
    if overwrite or not out.is_dir():
        return out
    present = [name for name in names if (out / name).exists()]
    if present:
        raise OutputExistsError(
            f"{out} already holds {what} ({summarize(present)}); choose a new --out, or pass "
            "--overwrite to replace it"
        )
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists and tuples compare as lists)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


def config_differences(
    old: dict[str, Any], new: dict[str, Any], *, ignore: Iterable[str] = ()
) -> list[str]:
    """The dotted keys on which two config dicts differ, leaving out ``ignore``; sorted."""
    a, b = flatten(old), flatten(new)
    skip = set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k, ...) != b.get(k, ...))


def describe_differences(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    """A short ``key: old -> new`` list of the first few ``keys`` and how many there are."""
    a, b = flatten(old), flatten(new)
    shown = [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys[:3]]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return "; ".join(shown) + more + f" ({len(keys)} key{'s' if len(keys) != 1 else ''})"


def summarize(items: list[str], limit: int = 3) -> str:
    """``a, b, c and 4 more`` for a long list: messages stay one readable line."""
    head = ", ".join(items[:limit])
    return f"{head} and {len(items) - limit} more" if len(items) > limit else head


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to a temporary sibling of ``path``, fsync it, then rename it over ``path``.

    An interrupted write (a crash, ``kill -9``, a full disk) leaves the previous file intact
    and no partial file under ``path``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save_arrays(path: str | Path, *args: Any, **arrays: Any) -> Path:
    """Write numpy arrays atomically (:func:`atomic_write`): one array as ``.npy``
    (``atomic_save_arrays(path, array)``), named arrays as ``.npz``
    (``atomic_save_arrays(path, name=array, ...)``)."""
    import io

    import numpy as np

    if len(args) > 1 or bool(args) == bool(arrays):
        raise TypeError("atomic_save_arrays takes one array, or named arrays, not both")
    buffer = io.BytesIO()
    if args:
        np.save(buffer, args[0])
    else:
        np.savez(buffer, **arrays)
    return atomic_write(path, buffer.getvalue())


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable where directories can be fsynced (POSIX); a no-op elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
