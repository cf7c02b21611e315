"""Shared set-up for the benchmark scripts: the demo network."""

from __future__ import annotations

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
    score_fn = build_score_fn(model, sde, cfg)
    x = sde.prior_sampling((batch, *data_shape(cfg.data)), torch.Generator().manual_seed(seed))
    return cfg, sde, model, score_fn, x
