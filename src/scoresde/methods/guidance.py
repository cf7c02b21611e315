"""Conditional generation from one unconditional score model (Song et al., 2021, section 5).

The conditional reverse SDE (eq. 14) needs ``grad_x log p_t(x | y)``, and Bayes' rule splits it,

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x),

into the unconditional score and the input gradient of a noise-conditional classifier
``p_t(y | x(t))`` (appendix I.1). The functions here combine score functions into a new
:data:`~scoresde.core._types.ScoreFn` ``(x (B, ...), t (B,)) -> (B, ...)``, so every sampler
(:func:`scoresde.sample` with ``"pc"`` or ``"ode"``, and the inverse-problem solvers) samples the
conditional unchanged: pass the guided score where the unconditional one would go.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde.core._types import ScoreFn

LogProbFn = Callable[[Tensor, Tensor], Tensor]
"""``log_prob_fn(x (B, ...), t (B,)) -> (B, K)``: a noise-conditional classifier's
log-probabilities or logits over ``K`` classes."""


def _check_labels(labels: Tensor | int) -> Tensor | int:
    if isinstance(labels, bool) or not isinstance(labels, (int, Tensor)):
        raise ValueError(f"labels must be an int or an int64 tensor of shape (B,), got {labels!r}")
    if isinstance(labels, int):
        if labels < 0:
            raise ValueError(f"labels must be non-negative class indices, got {labels}")
        return labels
    if labels.ndim > 1:
        raise ValueError(f"labels must have shape (B,) or be a scalar, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.long()


def _batch_labels(labels: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """Labels as ``(B, 1)`` int64 on ``device``, broadcasting an int or a 0-dim tensor."""
    lab = torch.as_tensor(labels, dtype=torch.long, device=device)
    if lab.ndim == 0:
        lab = lab.expand(batch)
    elif lab.shape[0] != batch:
        raise ValueError(f"labels have batch size {lab.shape[0]} but x has batch size {batch}")
    return lab[:, None]


def classifier_guidance(
    score_fn: ScoreFn,
    log_prob_fn: LogProbFn,
    labels: Tensor | int,
    scale: float = 1.0,
) -> ScoreFn:
    """Classifier-guided score ``s(x, t) + scale * grad_x log p_t(y | x)`` (eq. 14, app. I.1).

    At ``scale = 1`` this is exactly the conditional score ``grad_x log p_t(x | y)`` of the
    paper's conditional reverse SDE (eq. 14); other scales sample (approximately) from
    ``p_t(x) p_t(y | x)^scale`` (classifier guidance with a temperature); ``scale = 0`` returns
    the unconditional score itself, without calling the classifier.

    Args:
        score_fn: the unconditional score ``(x (B, ...), t (B,)) -> (B, ...)``.
        log_prob_fn: a noise-conditional classifier ``(x (B, ...), t (B,)) -> (B, K)`` giving
            log-probabilities or logits (they are passed through ``log_softmax``, so both work).
            It must be differentiable in ``x``.
        labels: the target classes: an int, or an integer tensor of shape ``()`` or ``(B,)``
            (one class per example; a scalar is broadcast over the batch). Indices must lie in
            ``[0, K)``.
        scale: the guidance weight on the classifier gradient.

    Returns:
        ``guided(x (B, ...), t (B,)) -> (B, ...)``, a score function. The classifier gradient is
        taken with ``torch.autograd.grad`` under ``torch.enable_grad()`` on a detached copy of
        ``x``, so it works inside the samplers' ``torch.no_grad()``; the result carries no graph.

    Raises:
        ValueError: (one line) for labels that are not an int or an integer tensor of shape
            ``()`` / ``(B,)``, or whose batch size differs from ``x``'s.
    """
    labels = _check_labels(labels)
    scale = float(scale)
    if scale == 0.0:
        return score_fn

    def guided(x: Tensor, t: Tensor) -> Tensor:
        lab = _batch_labels(labels, x.shape[0], x.device)
        score = score_fn(x, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = log_prob_fn(xg, t.detach())
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(
                    f"log_prob_fn must return (B, K) = ({x.shape[0]}, K), got {tuple(logits.shape)}"
                )
            selected = torch.log_softmax(logits, dim=1).gather(1, lab).sum()
            (grad,) = torch.autograd.grad(selected, xg, allow_unused=True)
        if grad is None:  # the classifier ignores x
            return score
        return score + scale * grad.to(score.dtype).detach()

    return guided


def classifier_free_guidance(
    cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float
) -> ScoreFn:
    """Classifier-free guidance ``s_u + scale * (s_c - s_u)``: interpolating conditional scores.

    Convention: ``guided = uncond + scale * (cond - uncond)``, so ``scale = 1`` is the
    conditional model ``grad_x log p_t(x | y)`` (the score of eq. 14), ``scale = 0`` the
    unconditional one ``grad_x log p_t(x)``, and ``scale > 1`` extrapolates towards the
    condition. (In the "``(1 + w) s_c - w s_u``" convention, ``w = scale - 1``.) Because
    ``s_c - s_u = grad_x log p_t(y | x)`` for exact scores, this equals
    :func:`classifier_guidance` with the implicit classifier and the same ``scale``. At ``scale``
    0 or 1 the matching score function is returned itself (the other is not evaluated).

    Args:
        cond_score_fn: the conditional score ``(x (B, ...), t (B,)) -> (B, ...)``, already bound
            to its labels (e.g. ``lambda x, t: model(x, t, y)``).
        uncond_score_fn: the unconditional score, same signature.
        scale: the guidance weight.

    Returns:
        ``guided(x (B, ...), t (B,)) -> (B, ...)``, a score function.
    """
    scale = float(scale)
    if scale == 1.0:
        return cond_score_fn
    if scale == 0.0:
        return uncond_score_fn

    def guided(x: Tensor, t: Tensor) -> Tensor:
        uncond = uncond_score_fn(x, t)
        return uncond + scale * (cond_score_fn(x, t) - uncond)

    return guided
