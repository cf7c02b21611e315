"""Shared set-up for the benchmark scripts: the demo network and a timing helper."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from scoresde.build import build_model, build_score_fn, build_sde
from scoresde.data.pipeline import data_shape
from scoresde.presets import get_preset


def demo_network(sde_kind: str = "subvp", batch: int = 64, seed: int = 0):
    """The demo's untrained U-Net, its SDE and score function, and a batch of noise."""
    torch.manual_seed(seed)
    cfg = get_preset(f"digits_{sde_kind}")
    sde = build_sde(cfg.sde)
    model = build_model(cfg).eval()
    score_fn = build_score_fn(model, sde, cfg.model)
    x = sde.prior_sampling((batch, *data_shape(cfg.data)), torch.Generator().manual_seed(seed))
    return cfg, sde, model, score_fn, x


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
