"""Outputs that must be finite: a sampler's samples, an inverse problem's solutions, latents.

A NaN or an infinity in what a job made (a guidance scale of 1e6, a diverged checkpoint, a
sampler too coarse for its SDE) is refused with :class:`NonFiniteSamplesError`, whose one-line
message says how many outputs are affected and the likely cause, before anything is written.
:func:`scoresde.jobs.runs.generate` (``scoresde sample``, ``evaluate``, the demo) and the image jobs
of :mod:`scoresde.jobs.image_jobs` (``inpaint``, ``colorize``, ``encode``, ``interpolate``) check
through :func:`check_finite`; the command line exits with status 1 (the inputs were valid, the
result is not: 2 stays for bad inputs refused before any work).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NonFiniteSamplesError(RuntimeError):
    """A job made NaN or infinite outputs; the message is one line (how many, the likely
    cause). Nothing of the job has been written."""


def weights_are_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite (a diverged run's are not)."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def likely_cause(model: nn.Module, *, guidance: float = 1.0, method: str = "") -> str:
    """The most likely reason for non-finite outputs of ``model`` sampled with ``method`` at
    guidance scale ``guidance``, as advice on what to change."""
    if not weights_are_finite(model):
        return (
            "the checkpoint's weights hold NaN or infinite values (a diverged run): use an "
            "earlier checkpoint or a snapshot"
        )
    if guidance > 1.0:
        return f"the guidance scale {guidance:g} is too large: try a smaller --guidance"
    advice = "more steps (--set sample.num_steps=N) or another --method"
    if method == "pc":
        advice += ", or a smaller sample.snr"
    if method == "ode":
        advice = "tighter tolerances (sample.ode_rtol, sample.ode_atol) or another --method"
    return f"the sampler diverged on this model: try {advice}"


def check_finite(
    x: Tensor,
    model: nn.Module,
    *,
    what: str = "samples",
    method: str = "",
    guidance: float = 1.0,
    first_index: int = 0,
) -> None:
    """Raise :class:`NonFiniteSamplesError` when any of the outputs ``x`` ``(B, ...)`` (of
    ``model``, numbered from ``first_index``) holds a NaN or an infinity."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    count = int(bad.sum())
    if not count:
        return
    first = first_index + int(bad.nonzero()[0])
    how = f" by {method}" if method else ""
    raise NonFiniteSamplesError(
        f"{count} of {x.shape[0]} {what} made{how} are NaN or infinite (the first is "
        f"{what.removesuffix('s')} {first}); "
        f"likely cause: {likely_cause(model, guidance=guidance, method=method)}; nothing was "
        "written"
    )
