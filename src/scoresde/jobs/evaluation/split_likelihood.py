"""A split's likelihood shared out over the ``torchrun`` ranks by example index.

Example ``i`` is scored by rank ``i mod W`` from its own random streams, so the values do not
depend on the number of ranks; the per-example values are gathered on the host-side group
(:func:`scoresde.infra.distributed.gather_objects`), on which a rank may wait for a slower one
without
tripping the step's timeout. ``scoresde evaluate`` and the training loop's evaluation hook both
measure through here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scoresde.infra import distributed
from scoresde.infra.distributed import World
from scoresde.jobs.runs import TrainedModel, evaluate_likelihood


def likelihood_on_ranks(
    run: TrainedModel,
    data: Tensor,
    world: World,
    *,
    seed: int,
    repeats: int = 1,
    progress: bool = False,
    score=evaluate_likelihood,
) -> dict[str, Any]:
    """The negative log-likelihood of ``data`` ``(N, ...)`` (data scale) shared out over the
    ranks: example ``i`` is scored by rank ``i mod W``, ``repeats`` times with independent
    dequantizations (each from its own stream, so the values do not depend on ``W``); the mean
    over examples of each example's mean over repeats, with its standard error, on every rank.
    ``score`` is :func:`~scoresde.jobs.runs.evaluate_likelihood` (the ODE) or
    :func:`~scoresde.jobs.runs.evaluate_bound` (the variational bound). Used by ``scoresde
    evaluate`` and by the training loop's evaluation hook.

    Returns:
        ``{"mean", "stderr", "num_examples", "repeats", "nfe", "per_example"}``.
    """
    mine = world.shard(data.shape[0])
    values = torch.zeros(len(mine), repeats)
    nfes = []
    for r in range(repeats):
        if not len(mine):
            break
        found = score(
            run,
            data[mine.start :: mine.step],
            seed=seed,
            indices=mine,
            repeat=r,
            progress=progress and world.is_main,
        )
        values[:, r] = torch.tensor(found["per_example"])
        nfes.append(found["nfe"])
    gathered = distributed.gather_objects((list(mine), values.tolist(), nfes))
    per_example = torch.zeros(data.shape[0], repeats)
    all_nfes = []
    for indices, rows, rank_nfes in gathered:
        per_example[indices] = torch.tensor(rows).reshape(len(indices), repeats)
        all_nfes += rank_nfes
    means = per_example.mean(dim=1).double()
    n = means.numel()
    stderr = means.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return {
        "mean": means.mean().item(),
        "stderr": stderr,
        "num_examples": n,
        "repeats": repeats,
        "nfe": float(np.mean(all_nfes)),
        "per_example": means.tolist(),
    }
