"""Shared set-up for the benchmark scripts: the demo network."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch

from scoresde.setup.build import build_model, build_score_fn, build_sde
from scoresde.setup.data.pipeline import data_shape
from scoresde.setup.presets import get_preset


def demo_network(sde_kind: str = "subvp", batch: int = 64, seed: int = 0):
    """The demo's untrained U-Net, its SDE and score function, and a batch of noise."""
    torch.manual_seed(seed)
    cfg = get_preset(f"digits_{sde_kind}")
    sde = build_sde(cfg.sde)
    model = build_model(cfg).eval()
    score_fn = build_score_fn(model, sde, cfg)
    x = sde.prior_sampling((batch, *data_shape(cfg.data)), torch.Generator().manual_seed(seed))
    return cfg, sde, model, score_fn, x


class CompileTimeoutError(Exception):
    """A first call (``torch.compile``'s compilation) ran past its time limit."""


@contextlib.contextmanager
def compile_alarm(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`CompileTimeoutError` inside the block after ``seconds`` (0: no limit)."""
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise CompileTimeoutError(f"{what} took more than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def timeout_in_chain(e: BaseException | None) -> CompileTimeoutError | None:
    """The :class:`CompileTimeoutError` behind ``e`` (``torch.compile`` wraps it), if any."""
    while e is not None and not isinstance(e, CompileTimeoutError):
        e = e.__cause__ or e.__context__
    return e
