"""Sample-quality metrics on feature tensors: Frechet distance, Inception Score and KID.

Pure math on features that an extractor (:mod:`scoresde.jobs.evaluation.features`) produced; all
arithmetic is in float64, on the device of the inputs.

* :func:`feature_statistics` / :class:`FeatureStats`: the mean and unbiased covariance of a set
  of features, the summary behind the Frechet distance.
* :func:`frechet_distance`: the Frechet distance between two Gaussians, which is FID when the
  features are Inception-v3's 2048 pool features (Heusel et al., 2017).
* :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` over contiguous splits (Salimans et
  al., 2016).
* :func:`kernel_inception_distance`: the unbiased MMD^2 with a cubic polynomial kernel, averaged
  over random subsets (Binkowski et al., 2018).

The conventions (unbiased covariance, contiguous IS splits, population standard deviations over
splits and subsets, the KID kernel and its defaults) are those of the original TensorFlow code
and of torch-fidelity, so the numbers are comparable with published ones when the features are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "FeatureStats",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
]


@dataclass(frozen=True)
class FeatureStats:
    """The first two moments of a set of features.

    Attributes:
        mu: the mean, ``(D,)`` float64.
        sigma: the unbiased covariance (divided by ``N - 1``), ``(D, D)`` float64.
        num: ``N``, the number of feature vectors summarised; 0 when unknown (statistics read
            from a file that stores only ``mu`` and ``sigma``).
    """

    mu: Tensor
    sigma: Tensor
    num: int


def _check_features(features: Tensor, what: str, minimum: int) -> None:
    """Raise ``ValueError`` unless ``features`` is finite ``(N, D)`` with ``N >= minimum``."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{what} must be a 2-D tensor (N, D), got {shape}")
    if features.shape[0] < minimum:
        raise ValueError(f"{what} needs at least {minimum} rows, got {features.shape[0]}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{what} contain NaN or infinite values (did sampling diverge?)")


def feature_statistics(features: Tensor) -> FeatureStats:
    """The mean and unbiased covariance of ``features``, as the reference FID code computes them.

    ``mu = mean_i x_i`` and ``sigma = sum_i (x_i - mu)(x_i - mu)^T / (N - 1)`` (``numpy.cov``
    with ``rowvar=False``, as in TTUR's ``calculate_activation_statistics`` and pytorch-fid).

    Args:
        features: ``(N, D)`` with ``N >= 2``, any float dtype and device.

    Returns:
        :class:`FeatureStats` with float64 ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` on the
        device of ``features``, and ``num = N``.
    """
    _check_features(features, "features", 2)
    x = features.to(torch.float64)
    mu = x.mean(dim=0)
    centered = x - mu
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return FeatureStats(mu=mu, sigma=(sigma + sigma.T) / 2, num=int(x.shape[0]))


def _check_stats(stats: FeatureStats, what: str) -> None:
    """Raise ``ValueError`` unless ``stats`` holds a ``(D,)`` mean and a ``(D, D)`` covariance."""
    d = stats.mu.shape[0] if stats.mu.dim() == 1 else -1
    if stats.mu.dim() != 1 or tuple(stats.sigma.shape) != (d, d):
        raise ValueError(
            f"{what} must hold mu (D,) and sigma (D, D), got {tuple(stats.mu.shape)} and "
            f"{tuple(stats.sigma.shape)}"
        )


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric PSD matrix ``(D, D)``.

    Eigenvalues below ``D * eps * max|lambda|`` (the eigensolver's round-off level, the tolerance
    of ``numpy.linalg.matrix_rank``) are set to 0, so a singular matrix gets an exactly singular
    root instead of ``sqrt(round-off) ~ 1e-8`` along its null space.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    tol = matrix.shape[0] * torch.finfo(matrix.dtype).eps * eigenvalues.abs().max()
    roots = torch.where(eigenvalues > tol, eigenvalues, 0).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Frechet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)``.

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau, 1982); with
    Inception-v3 pool features this is FID (Heusel et al., 2017, eq. 6).

    ``Tr (S1 S2)^{1/2}`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which
    are those of the symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2} = A^T A`` with
    ``A = S2^{1/2} S1^{1/2}``: the sum of the singular values of ``A`` (its nuclear norm). The
    symmetric roots come from an eigensolver, the singular values from an SVD, all in float64;
    taking singular values of ``A`` instead of square roots of the eigenvalues of ``A^T A``
    keeps round-off at ``eps`` rather than ``sqrt(eps)``, so singular covariances (fewer samples
    than dimensions) need no ``eps * I`` offset, unlike ``scipy.linalg.sqrtm`` on the
    non-symmetric ``S1 S2`` in pytorch-fid.

    Args:
        a: statistics of the first set, ``mu (D,)``, ``sigma (D, D)``.
        b: statistics of the second set, same ``D``; moved to ``a``'s device.

    Returns:
        The squared distance ``d^2`` (what FID reports). It is ``>= 0`` up to round-off, which
        can leave a value around ``-1e-12`` for identical statistics.
    """
    _check_stats(a, "the first statistics")
    _check_stats(b, "the second statistics")
    if a.mu.shape != b.mu.shape:
        raise ValueError(
            f"cannot compare statistics of {a.mu.shape[0]}-dim and {b.mu.shape[0]}-dim features"
        )
    device = a.mu.device
    mu1, s1 = a.mu.to(torch.float64), a.sigma.to(torch.float64)
    mu2 = b.mu.to(device=device, dtype=torch.float64)
    s2 = b.sigma.to(device=device, dtype=torch.float64)
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    trace_sqrt = torch.linalg.svdvals(_psd_sqrt(s2) @ _psd_sqrt(s1)).sum()
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return float(value)


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """The Inception Score ``exp(E_x KL(p(y|x) || p(y)))``, its mean and std over splits.

    Salimans et al. (2016): ``p(y|x) = softmax(logits)``; within each split, ``p(y)`` is the
    mean of ``p(y|x)`` over the split. The ``N`` rows are cut into ``splits`` contiguous chunks
    ``[i N // splits, (i + 1) N // splits)`` as in the original code and torch-fidelity's
    ``isc_features_to_metric`` (which by default shuffles the rows first; shuffle them before
    calling this to match that). The std is the population std (``numpy.std``).

    Args:
        logits: ``(N, K)`` unnormalised class scores (Inception-v3's ``logits_unbiased`` for the
            standard IS), ``N >= splits``.
        splits: the number of chunks, ``>= 1``.

    Returns:
        ``(mean, std)`` of the per-split scores; each score lies in ``[1, K]``.
    """
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
    _check_features(logits, "logits", splits)
    log_p = logits.to(torch.float64).log_softmax(dim=1)
    p = log_p.exp()
    n = logits.shape[0]
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        marginal = p_chunk.mean(dim=0, keepdim=True)
        kl = (p_chunk * log_p_chunk).sum(dim=1) - torch.xlogy(p_chunk, marginal).sum(dim=1)
        scores.append(kl.mean().exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(correction=0))


def _polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """``k(x, y) = (x . y / D + 1)^3`` for all pairs of rows: ``(n, D), (m, D) -> (n, m)``."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _unbiased_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """The MMD^2 estimate of Binkowski et al. (2018) for ``x, y`` of shape ``(m, D)``.

    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2``: the ``mmd_est="unbiased"`` of their ``compute_scores.py``
    (and torch-fidelity's ``mmd2``).
    """
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    off_diagonal = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    a: Tensor,
    b: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """The Kernel Inception Distance: the unbiased MMD^2 with a cubic kernel, over subsets.

    Binkowski et al. (2018), "Demystifying MMD GANs": kernel ``k(x, y) = (x . y / D + 1)^3``;
    each of ``subsets`` rounds draws ``m = min(subset_size, N, M)`` rows without replacement
    from each set and computes the unbiased MMD^2 estimate (see :func:`_unbiased_mmd2`). The
    defaults (100 subsets of 1000) are torch-fidelity's. Unlike torch-fidelity, a set smaller
    than ``subset_size`` shrinks the subsets instead of failing.

    Args:
        a: ``(N, D)`` features of the first set.
        b: ``(M, D)`` features of the second set, same ``D``; moved to ``a``'s device.
        subsets: the number of random subsets, ``>= 1``.
        subset_size: the largest subset size, ``>= 2``.
        generator: the source of the subsets' indices (a CPU generator); ``None`` uses a fresh
            generator seeded with 0, so results are reproducible either way.

    Returns:
        ``(mean, std)`` over the subsets (population std, as torch-fidelity). The mean can be
        slightly negative for sets from the same distribution: the estimate is unbiased.
    """
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be an integer >= 1, got {subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    _check_features(a, "the first features", 2)
    _check_features(b, "the second features", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot compare {a.shape[1]}-dim and {b.shape[1]}-dim features")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x_all = a.to(torch.float64)
    y_all = b.to(device=a.device, dtype=torch.float64)
    n, m_total = x_all.shape[0], y_all.shape[0]
    m = min(subset_size, n, m_total)
    values = []
    for _ in range(subsets):
        idx_x = torch.randperm(n, generator=generator, device=generator.device)[:m]
        idx_y = torch.randperm(m_total, generator=generator, device=generator.device)[:m]
        values.append(_unbiased_mmd2(x_all[idx_x.to(a.device)], y_all[idx_y.to(a.device)]))
    mmds = torch.stack(values)
    return float(mmds.mean()), float(mmds.std(correction=0))
