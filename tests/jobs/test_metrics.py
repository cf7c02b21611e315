"""FID, Inception Score and KID math against closed forms and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde.jobs.evaluation.metrics import (
    FeatureStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _stats(mu, sigma) -> FeatureStats:
    return FeatureStats(
        mu=torch.as_tensor(mu, dtype=torch.float64),
        sigma=torch.as_tensor(sigma, dtype=torch.float64),
        num=0,
    )


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root of ``S1 S2``."""
    mu1, s1, mu2, s2 = (np.asarray(v, dtype=np.float64) for v in (mu1, s1, mu2, s2))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    )


# ---- feature_statistics -------------------------------------------------------------------


def test_feature_statistics_matches_numpy_mean_and_unbiased_cov():
    x = torch.randn(50, 6, generator=_gen(0)) * 3 + 1
    stats = feature_statistics(x)
    ref = x.double().numpy()
    assert stats.num == 50
    assert stats.mu.dtype == torch.float64 and stats.sigma.dtype == torch.float64
    np.testing.assert_allclose(stats.mu.numpy(), ref.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.sigma.numpy(), np.cov(ref, rowvar=False), rtol=0, atol=1e-12)
    assert torch.equal(stats.sigma, stats.sigma.T)


def test_feature_statistics_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))


# ---- frechet_distance ---------------------------------------------------------------------


def test_frechet_distance_identical_stats_is_zero():
    sigma = _random_spd(32, 1)
    a = _stats(torch.randn(32, generator=_gen(2), dtype=torch.float64), sigma)
    assert abs(frechet_distance(a, a)) < 1e-10


def test_frechet_distance_identical_singular_stats_is_zero():
    # 10 samples in 40 dimensions: a rank-9 covariance, where sqrtm of S1 S2 is ill-posed.
    stats = feature_statistics(torch.randn(10, 40, generator=_gen(3)))
    assert abs(frechet_distance(stats, stats)) < 1e-10


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = 1 + 0 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0  # ||dmu||^2 + sum (sqrt s1 - sqrt s2)^2
    got = frechet_distance(_stats(mu1, torch.diag(s1)), _stats(mu2, torch.diag(s2)))
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == 10


def test_frechet_distance_commuting_closed_form():
    d = 8
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(4), dtype=torch.float64))
    e1 = torch.rand(d, generator=_gen(5), dtype=torch.float64) * 3 + 0.1
    e2 = torch.rand(d, generator=_gen(6), dtype=torch.float64) * 3 + 0.1
    s1, s2 = q @ torch.diag(e1) @ q.T, q @ torch.diag(e2) @ q.T
    mu1 = torch.randn(d, generator=_gen(7), dtype=torch.float64)
    mu2 = torch.randn(d, generator=_gen(8), dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((e1.sqrt() - e2.sqrt()) ** 2).sum())
    assert frechet_distance(_stats(mu1, s1), _stats(mu2, s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_non_commuting_2x2_against_scipy_sqrtm():
    mu1, s1 = [0.5, -1.0], [[2.0, 0.3], [0.3, 0.5]]
    mu2, s2 = [0.0, 0.0], [[1.0, -0.7], [-0.7, 1.5]]
    s1_t, s2_t = torch.tensor(s1, dtype=torch.float64), torch.tensor(s2, dtype=torch.float64)
    assert not torch.allclose(s1_t @ s2_t, s2_t @ s1_t)
    expected = _scipy_fd(mu1, s1, mu2, s2)
    assert frechet_distance(_stats(mu1, s1), _stats(mu2, s2)) == pytest.approx(expected, rel=1e-10)
    # And symmetric in its arguments.
    assert frechet_distance(_stats(mu2, s2), _stats(mu1, s1)) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(2.1281586324, rel=1e-9)


def test_frechet_distance_random_full_covariances_against_scipy_sqrtm():
    d = 24
    s1, s2 = _random_spd(d, 9), _random_spd(d, 10)
    mu1 = torch.randn(d, generator=_gen(11), dtype=torch.float64)
    mu2 = torch.randn(d, generator=_gen(12), dtype=torch.float64)
    expected = _scipy_fd(mu1, s1, mu2, s2)
    got = frechet_distance(_stats(mu1, s1), _stats(mu2, s2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_converges_to_closed_form():
    n, d = 40_000, 3
    mu1, mu2 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, -0.5, 0.0])
    l1 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.7]])
    l2 = torch.diag(torch.tensor([1.5, 0.5, 1.0]))
    x = torch.randn(n, d, generator=_gen(13), dtype=torch.float64) @ l1.T.double() + mu1
    y = torch.randn(n, d, generator=_gen(14), dtype=torch.float64) @ l2.T.double() + mu2
    expected = _scipy_fd(mu1, l1 @ l1.T, mu2, l2 @ l2.T)
    got = frechet_distance(feature_statistics(x), feature_statistics(y))
    assert expected == pytest.approx(2.0746725710, rel=1e-9)
    # The Monte-Carlo error of the moments at n = 40k is about 1e-2 here.
    assert got == pytest.approx(expected, abs=0.05)


def test_frechet_distance_rejects_mismatched_dimensions():
    a = _stats(torch.zeros(3), torch.eye(3))
    b = _stats(torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="3-dim and 4-dim"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match=r"sigma \(D, D\)"):
        frechet_distance(a, _stats(torch.zeros(3), torch.eye(4)))


# ---- inception_score ----------------------------------------------------------------------


def test_inception_score_uniform_logits_is_one():
    mean, std = inception_score(torch.zeros(100, 7))
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_confident_balanced_predictions_is_num_classes():
    k, per_split, splits = 5, 20, 10
    labels = torch.arange(per_split * splits) % k  # every split holds each class equally
    logits = torch.nn.functional.one_hot(labels, k).double() * 60.0
    mean, std = inception_score(logits, splits=splits)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_two_class_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    # p(y|x) = (3/4, 1/4) and (1/4, 3/4); p(y) = (1/2, 1/2);
    # KL = 3/4 log(3/2) + 1/4 log(1/2) for both images.
    expected = math.exp(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert mean == pytest.approx(1.1397535285, rel=1e-9)
    assert std == 0.0


def test_inception_score_uses_contiguous_splits_and_population_std():
    # First half uninformative (score 1), second half confident over 2 classes (score 2).
    uniform = torch.zeros(4, 2)
    confident = torch.tensor([[80.0, 0.0], [0.0, 80.0], [80.0, 0.0], [0.0, 80.0]])
    mean, std = inception_score(torch.cat([uniform, confident]), splits=2)
    assert mean == pytest.approx(1.5, rel=1e-12)
    assert std == pytest.approx(0.5, rel=1e-12)


def test_inception_score_rejects_bad_splits():
    with pytest.raises(ValueError, match="at least 10 rows"):
        inception_score(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="splits must be"):
        inception_score(torch.zeros(5, 3), splits=0)


# ---- kernel_inception_distance ------------------------------------------------------------


def _mmd_by_loops(x: list[list[float]], y: list[list[float]]) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / D + 1)^3, written out with plain loops."""
    m, d = len(x), len(x[0])

    def k(u, v):
        return (sum(ui * vi for ui, vi in zip(u, v, strict=True)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_full_subset_equals_hand_computed_mmd():
    x = [[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [2.0, 0.0, 0.0], [-1.0, 0.5, 1.0]]
    y = [[0.5, 0.5, 0.5], [1.0, 2.0, -1.0], [0.0, 0.0, 1.0], [3.0, 1.0, 0.0]]
    expected = _mmd_by_loops(x, y)
    mean, std = kernel_inception_distance(
        torch.tensor(x), torch.tensor(y), subsets=5, generator=_gen(0)
    )
    # Every "subset" is all 4 rows (in some order), so all 5 estimates are equal.
    assert mean == pytest.approx(expected, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    assert expected == pytest.approx(-0.24609375, rel=1e-9)


def test_kid_identical_sets_equals_hand_computed_mmd():
    x = [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]
    expected = _mmd_by_loops(x, x)
    # = -2 * (off-diagonal mean - full mean) for identical sets: negative, as it is unbiased.
    mean, _ = kernel_inception_distance(torch.tensor(x), torch.tensor(x), subsets=2)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert expected < 0


def test_kid_shifted_distributions_is_positive_and_reproducible():
    x = torch.randn(300, 16, generator=_gen(1))
    y = torch.randn(300, 16, generator=_gen(2)) + 0.5
    same = torch.randn(300, 16, generator=_gen(3))
    kwargs = {"subsets": 20, "subset_size": 100}
    shifted, shifted_std = kernel_inception_distance(x, y, generator=_gen(7), **kwargs)
    close, _ = kernel_inception_distance(x, same, generator=_gen(7), **kwargs)
    # E k-shift: for a mean shift delta, MMD^2 grows like 9 ||delta||^2 / D^2 * ... > 0.
    assert shifted > 10 * shifted_std / math.sqrt(20) > 0
    assert shifted > 10 * abs(close)
    assert kernel_inception_distance(x, y, generator=_gen(7), **kwargs) == (shifted, shifted_std)
    assert kernel_inception_distance(x, y, generator=_gen(8), **kwargs)[0] != shifted
    # generator=None is a fixed seed, not the global RNG.
    assert kernel_inception_distance(x, y, **kwargs) == kernel_inception_distance(x, y, **kwargs)


def test_kid_subset_is_drawn_without_replacement_from_each_set():
    x = torch.randn(6, 3, generator=_gen(4))
    y = torch.randn(4, 3, generator=_gen(5))
    # m = min(1000, 6, 4) = 4: y is used whole, x through one of its 4-row subsets.
    mean, std = kernel_inception_distance(x, y, subsets=1, generator=_gen(6))
    assert std == 0.0
    rows = x.tolist()
    candidates = [
        _mmd_by_loops([rows[i] for i in range(6) if i not in (p, q)], y.tolist())
        for p in range(6)
        for q in range(p + 1, 6)
    ]
    assert min(abs(mean - c) for c in candidates) < 1e-9


def test_kid_rejects_bad_input():
    x = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="3-dim and 4-dim"):
        kernel_inception_distance(x, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets"):
        kernel_inception_distance(x, x, subsets=0)
