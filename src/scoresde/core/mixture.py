"""Isotropic Gaussian mixtures: data whose perturbed scores and densities are closed form.

Every SDE of the paper has a Gaussian transition kernel ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``
(Song et al., 2021, section 3.4 and appendix B). If the data is the mixture
``sum_k w_k N(mu_k, sigma_k^2 I)``, the marginal at time ``t`` is again a mixture with means
``m(t) mu_k`` and variances ``m(t)^2 sigma_k^2 + s(t)^2``. So its score and log-density are exact,
which is what the tests check samplers, losses and likelihoods against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.core._tensor import append_dims


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of isotropic Gaussians over flat vectors ``(B, D)``.

    Attributes:
        weights: ``(K,)`` mixture weights summing to one.
        means: ``(K, D)`` component means.
        stds: ``(K,)`` component standard deviations.
    """

    weights: Tensor
    means: Tensor
    stds: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples, ``(n, D)``, using only ``generator`` for randomness."""
        return self.sample_with_components(n, generator=generator)[0]

    def sample_with_components(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples with the component each came from.

        The samples are exactly those of :meth:`sample` for the same ``generator`` state (the
        same draws in the same order: the components, then the Gaussian noise).

        Returns:
            ``(x, k)``: samples ``(n, D)`` and their component indices, int64 ``(n,)`` in
            ``0..K-1``, both on the device of :attr:`means`.
        """
        dev = self.means.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=dev, dtype=self.means.dtype)
        return self.means[k] + append_dims(self.stds[k], 2) * z, k

    def _component_log_probs(self, x: Tensor, mean_coeff: Tensor, std: Tensor) -> tuple:
        """Per-component log ``w_k N(x; m mu_k, (m^2 sigma_k^2 + s^2) I)``: ``(B, K)``."""
        x = x.reshape(x.shape[0], -1)
        m = mean_coeff.reshape(-1, 1)
        var = m**2 * self.stds[None, :] ** 2 + std.reshape(-1, 1) ** 2  # (B, K)
        diff = x[:, None, :] - m[:, :, None] * self.means[None]  # (B, K, D)
        sq = (diff**2).sum(-1)
        logn = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logn + torch.log(self.weights)[None, :], diff, var

    def log_prob(
        self, x: Tensor, mean_coeff: Tensor | float = 1.0, std: Tensor | float = 0.0
    ) -> Tensor:
        """Log-density ``(B,)`` of ``x`` under the mixture pushed through ``x -> m x0 + s z``.

        Args:
            x: ``(B, D)`` points (any trailing shape flattening to ``D``).
            mean_coeff: ``m(t)``, a float or ``(B,)`` tensor.
            std: ``s(t)``, a float or ``(B,)`` tensor.
        """
        m, s = self._coeffs(x, mean_coeff, std)
        logp, _, _ = self._component_log_probs(x, m, s)
        return torch.logsumexp(logp, dim=1)

    def score(
        self, x: Tensor, mean_coeff: Tensor | float = 1.0, std: Tensor | float = 0.0
    ) -> Tensor:
        """Score ``grad_x log p(x)`` with the same arguments as :meth:`log_prob`; shape of ``x``."""
        m, s = self._coeffs(x, mean_coeff, std)
        logp, diff, var = self._component_log_probs(x, m, s)
        resp = torch.softmax(logp, dim=1)  # (B, K) posterior responsibilities
        score = -(resp[:, :, None] * diff / var[:, :, None]).sum(1)
        return score.reshape(x.shape)

    def _coeffs(self, x: Tensor, mean_coeff, std) -> tuple[Tensor, Tensor]:
        def as_batch(v):
            v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
            return v.expand(x.shape[0]) if v.ndim == 0 else v

        return as_batch(mean_coeff), as_batch(std)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """Return a copy with every tensor moved to ``dtype``/``device``."""
        return GaussianMixture(
            *(v.to(dtype=dtype, device=device) for v in (self.weights, self.means, self.stds))
        )


def mixture_score_fn(sde, mixture: GaussianMixture):
    """The exact score function ``score_fn(x, t)`` of the SDE's marginals for mixture data."""

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        mean_coeff, std = sde.marginal_coeffs(t)
        return mixture.score(x, mean_coeff, std)

    return score_fn


def mixture_log_prob(sde, mixture: GaussianMixture, x: Tensor, t: Tensor) -> Tensor:
    """Exact log-density ``(B,)`` of the SDE's marginal ``p_t`` at ``x`` for mixture data."""
    mean_coeff, std = sde.marginal_coeffs(t)
    return mixture.log_prob(x, mean_coeff, std)


def mixture_class_log_prob_fn(sde, mixture: GaussianMixture):
    """The exact noise-conditional classifier ``log p_t(y = k | x)`` of the mixture's components.

    With the components as classes (prior ``w_k``), Bayes' rule on the perturbed marginal gives
    ``log w_k + log N(x; m(t) mu_k, (m(t)^2 sigma_k^2 + s(t)^2) I) - logsumexp_j (...)``, with
    ``(m(t), s(t))`` from ``sde.marginal_coeffs`` as in :func:`mixture_score_fn`. This is the
    ``p_t(y | x(t))`` of the paper's conditional reverse SDE (Song et al., 2021, eq. 14).

    Returns:
        ``log_prob_fn(x (B, D), t (B,)) -> (B, K)`` normalised log-probabilities, differentiable
        in ``x`` (for :func:`scoresde.methods.guidance.classifier_guidance`).
    """

    def log_prob_fn(x: Tensor, t: Tensor) -> Tensor:
        mean_coeff, std = sde.marginal_coeffs(t)
        m, s = mixture._coeffs(x, mean_coeff, std)
        logp, _, _ = mixture._component_log_probs(x, m, s)
        return torch.log_softmax(logp, dim=1)

    return log_prob_fn
