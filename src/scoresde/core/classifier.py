"""Noise-conditional classifiers ``p_t(y | x(t))`` for classifier guidance (Song et al., 2021,
section 5, eq. 14 and appendix I.1).

:class:`NoiseClassifier` is the one place where a classifier network's output becomes
``log p_t(y | x)``, the classifier-side counterpart of :class:`scoresde.ScoreModel`. It is a
``log_prob_fn(x (B, ...), t (B,)) -> (B, K)`` (logits; normalised by
:func:`scoresde.methods.guidance.classifier_guidance`), so it works for any SDE: the network sees
the
perturbed input scaled to about unit variance, ``x / sqrt(m(t)^2 + s(t)^2)``, and the SDE's
noise-to-signal ratio ``sigma(t) = s(t) / m(t)`` as its noise label (it embeds
``log sigma``: Fourier features, as the paper's Wide-ResNet does with the VE noise scale).

:func:`classifier_loss` is the training objective: cross-entropy on data perturbed by the SDE's
transition kernel at ``t ~ U(eps, T)``. :func:`accuracy_by_time` measures how well the classes
can be told apart at each noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scoresde.core._tensor import NoiseSource, append_dims, randn_like
from scoresde.core.score import call_in_precision, check_compute_dtype

if TYPE_CHECKING:
    from scoresde.core.sdes import SDE

LogProbFn = Callable[[Tensor, Tensor], Tensor]


class NoiseClassifier(nn.Module):
    """A classifier network with the conventions that make it a noise-conditional classifier.

    ``forward(x, t)`` returns the logits ``(B, K)`` of ``p_t(y | x)`` at perturbed data ``x``
    ``(B, ...)`` and times ``t`` ``(B,)``: ``net(x / sqrt(m^2 + s^2), s / m)`` with the SDE's
    marginal coefficients ``m(t), s(t)`` (so VE inputs of std up to ``sigma_max`` reach the
    network at unit scale). The network is the submodule ``net`` (state-dict keys ``"net."``).

    Args:
        net: called as ``net(x_scaled (B, ...), sigma (B,))`` and returning ``(B, K)`` logits,
            e.g. :class:`scoresde.nn.classifiers.NoiseConditionalWideResNet`.
        sde: the SDE whose perturbed data the classifier is trained on.
        compute_dtype: ``None`` or ``torch.bfloat16`` / ``torch.float16``: run the network under
            autocast; the logits are returned in at least float32.
    """

    def __init__(
        self,
        net: nn.Module | Callable[[Tensor, Tensor], Tensor],
        sde: SDE,
        *,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_compute_dtype(compute_dtype)
        self.net = net
        self.sde = sde
        self.compute_dtype = compute_dtype

    def network_inputs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x / sqrt(m(t)^2 + s(t)^2), s(t) / m(t))``: the scaled input ``(B, ...)`` and the
        noise-to-signal ratio ``(B,)`` the network is called with."""
        mean_coeff, std = self.sde.marginal_coeffs(t)
        scale = torch.rsqrt(mean_coeff**2 + std**2)
        return x * append_dims(scale, x.ndim).to(x.dtype), std / mean_coeff

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``p_t(y | x)``."""
        inputs, sigma = self.network_inputs(x, t)
        return call_in_precision(self.net, self.compute_dtype, inputs, sigma)


def perturb(
    sde: SDE, x0: Tensor, t: Tensor, generator: NoiseSource = None
) -> Tensor:
    """A draw of ``x(t) ~ p_0t(x(t) | x0) = N(m(t) x0, s(t)^2 I)``, shaped like ``x0``."""
    return sde.perturb(x0, t, randn_like(x0, generator))


def classifier_loss(
    sde: SDE,
    log_prob_fn: LogProbFn,
    x0: Tensor,
    labels: Tensor,
    *,
    eps: float = 1e-5,
    generator: NoiseSource = None,
    t: Tensor | None = None,
) -> Tensor:
    """Cross-entropy ``-log p_t(y | x(t))`` of a noise-conditional classifier, ``(B,)``.

    ``t ~ U(eps, T)`` (unless given) and ``x(t) ~ N(m(t) x0, s(t)^2 I)``; minimising its mean
    over the data makes ``log_prob_fn`` the Bayes posterior ``log p_t(y | x)`` of the perturbed
    data at every ``t`` (appendix I.1).

    Args:
        x0: clean data ``(B, ...)`` in model scale; labels: ``(B,)`` int64 classes.
        t: optional times ``(B,)``.
    """
    if t is None:
        t = sde.sample_times(x0.shape[0], generator, eps=eps, device=x0.device, dtype=x0.dtype)
    logits = log_prob_fn(perturb(sde, x0, t, generator), t)
    return F.cross_entropy(logits.float(), labels, reduction="none")


@torch.no_grad()
def accuracy_by_time(
    sde: SDE,
    log_prob_fn: LogProbFn,
    x0: Tensor,
    labels: Tensor,
    times: Sequence[float] | Tensor,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> Tensor:
    """Top-1 accuracy ``(len(times),)`` of ``log_prob_fn`` on ``x0`` ``(N, ...)`` (model scale)
    perturbed to each of ``times``: one draw of ``x(t)`` per example and time, from
    ``generator``. Accuracy falls from the clean-data accuracy at small ``t`` to chance near
    ``T``, where ``p_T`` no longer depends on the class."""
    out = []
    for value in torch.as_tensor(times, dtype=torch.float64).tolist():
        correct = 0
        for start in range(0, x0.shape[0], batch_size):
            x = x0[start : start + batch_size]
            t = torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)
            logits = log_prob_fn(perturb(sde, x, t, generator), t)
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
        out.append(correct / x0.shape[0])
    return torch.tensor(out, dtype=torch.float64)


def accuracy_times(sde: SDE, num: int = 11, eps: float = 1e-3) -> Tensor:
    """``num`` evenly spaced times from ``eps`` to ``T`` ``(num,)`` float64: the grid on which
    a classifier's accuracy against noise level is reported."""
    return torch.linspace(eps, float(sde.T), num, dtype=torch.float64)
