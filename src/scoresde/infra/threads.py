"""Choosing the number of CPU threads for small networks.

With small tensors (the demo's 8x8 digits) every operator is a short parallel region. On an idle
2-core machine two threads are about twice as fast as one; on a machine where another process
keeps a core busy, each region waits for a descheduled thread and two threads can be 20x
*slower* than one. :func:`tune_num_threads` times a representative call with each candidate and
keeps the fastest. It only changes anything on CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def tune_num_threads(
    fn: Callable[[], object],
    *,
    device: torch.device,
    candidates: tuple[int, ...] | None = None,
    repeats: int = 3,
) -> int:
    """Set ``torch.set_num_threads`` to the candidate for which ``fn()`` runs fastest.

    Args:
        fn: a representative workload, e.g. one network forward at the working batch size.
        device: the device the work runs on; on anything but CPU nothing is changed.
        candidates: thread counts to try (default: 1 and the current count).
        repeats: timed calls per candidate (the median is used), after one warm-up call.

    Returns:
        The thread count now in effect.
    """
    current = torch.get_num_threads()
    if device.type != "cpu":
        return current
    candidates = candidates or tuple(sorted({1, current}))
    timings = {}
    for n in candidates:
        torch.set_num_threads(n)
        timings[n] = median_seconds(fn, repeats=repeats)
    best = min(timings, key=timings.__getitem__)
    torch.set_num_threads(best)
    return best


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tune_for_score_fn(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    *,
    backward: bool = False,
) -> int:
    """:func:`tune_num_threads` on one ``score_fn`` call at ``batch_size`` examples of ``shape``.

    ``backward`` times a gradient as well: the input gradient likelihoods need, and the weight
    gradient of a training step. Returns the thread count now in effect.
    """
    x = torch.zeros(batch_size, *shape, device=device)
    t = torch.full((batch_size,), 0.5, device=device)

    def call() -> None:
        if not backward:
            with torch.no_grad():
                score_fn(x, t)
            return
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            score_fn(xr, t).square().mean().backward()

    return tune_num_threads(call, device=device)
