import math

import pytest
import torch

from scoresde.setup.data import toy
from scoresde.setup.data.toy import (
    TOY_DATASETS,
    TOY_NUM_CLASSES,
    sample_toy,
    sample_toy_labeled,
    toy_gmm,
)

N = 20_000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["gmm", "moons", "swissroll"])
def test_shape_dtype_and_determinism(name):
    state = torch.get_rng_state()
    a = sample_toy(name, 1000, generator=_gen(3))
    b = sample_toy(name, 1000, generator=_gen(3))
    c = sample_toy(name, 1000, generator=_gen(4))
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"
    assert torch.equal(TOY_DATASETS[name](1000, _gen(3)), a)


def test_registry_keys_and_unknown_name():
    assert set(TOY_DATASETS) == {"gmm", "moons", "swissroll"}
    with pytest.raises(ValueError, match=r"unknown toy dataset 'rings'.*gmm.*moons.*swissroll"):
        sample_toy("rings", 10)


def test_toy_gmm_parameters():
    gmm = toy_gmm()
    assert gmm.means.shape == (8, 2) and gmm.means.dtype == torch.float32
    torch.testing.assert_close(gmm.means.norm(dim=1), torch.full((8,), 4.0))
    torch.testing.assert_close(gmm.weights, torch.full((8,), 0.125))
    torch.testing.assert_close(gmm.stds, torch.full((8,), 0.3))
    torch.testing.assert_close(gmm.means[2], torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)
    # neighbouring modes are 2 * 4 * sin(pi / 8) = 3.06 apart: ten standard deviations
    gaps = (gmm.means - gmm.means.roll(1, dims=0)).norm(dim=1)
    torch.testing.assert_close(gaps, torch.full((8,), 8 * math.sin(math.pi / 8)))


def test_gmm_samples_match_the_mixture():
    gmm = toy_gmm()
    x = sample_toy("gmm", N, generator=_gen(0))
    nearest = torch.cdist(x, gmm.means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=8).float()
    assert (counts - N / 8).abs().max() < 5 * math.sqrt(N / 8)
    residual = x - gmm.means[nearest]
    torch.testing.assert_close(residual.std(dim=0), torch.full((2,), 0.3), atol=0.01, rtol=0)
    assert abs(gmm.log_prob(x).mean().item() - _gmm_entropy_estimate()) < 0.05


def _gmm_entropy_estimate() -> float:
    """Expected log-density of well-separated equal-weight isotropic Gaussians (std 0.3, D=2)."""
    return -math.log(8) - math.log(2 * math.pi * 0.09) - 1.0


def test_moons_are_centred_unit_spread_half_circles():
    x = sample_toy("moons", N, generator=_gen(1))
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(2), atol=0.03, rtol=0)
    assert abs(x.square().sum(dim=1).mean().item() - 2.0) < 0.05
    raw = x / toy._MOONS_SCALE + torch.tensor(toy._MOONS_CENTER)
    to_upper = (raw.norm(dim=1) - 1).abs()
    to_lower = ((raw - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    dist = torch.minimum(to_upper, to_lower)
    assert dist.mean().item() < 0.1  # noise std 0.1 -> mean |radial offset| ~ 0.08
    upper = to_upper < to_lower
    assert abs(upper.float().mean().item() - 0.5) < 0.02
    assert raw[upper, 1].mean().item() > 0.5 > raw[~upper, 1].mean().item()


def test_swissroll_is_a_centred_unit_spread_spiral():
    x = sample_toy("swissroll", N, generator=_gen(2))
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(2), atol=0.03, rtol=0)
    assert abs(x.square().sum(dim=1).mean().item() - 2.0) < 0.05
    raw = x / toy._SWISSROLL_SCALE + torch.tensor(toy._SWISSROLL_CENTER)
    radius = raw.norm(dim=1)
    assert radius.min().item() > 1.5 * math.pi - 3 and radius.max().item() < 4.5 * math.pi + 3
    # on the spiral the polar angle equals the radius up to the radial noise (std 0.5):
    # cos(r - angle) has median ~cos(0.34) = 0.94; a mirrored spiral or a blob gives ~0
    agreement = torch.cos(radius) * raw[:, 0] / radius + torch.sin(radius) * raw[:, 1] / radius
    assert agreement.median().item() > 0.9


@pytest.mark.parametrize("name", ["gmm", "moons"])
def test_labeled_points_are_bit_identical_and_draw_the_same(name):
    state = torch.get_rng_state()
    g_plain, g_labeled = _gen(7), _gen(7)
    plain = sample_toy(name, 3000, generator=g_plain)
    points, labels = sample_toy_labeled(name, 3000, generator=g_labeled)
    assert torch.equal(points, plain) and points.dtype == torch.float32
    assert labels.shape == (3000,) and labels.dtype == torch.int64
    assert labels.min().item() >= 0 and labels.max().item() == TOY_NUM_CLASSES[name] - 1
    # both consumed the generator alike: the next draws agree too
    assert torch.equal(torch.rand(5, generator=g_plain), torch.rand(5, generator=g_labeled))
    again, labels_again = sample_toy_labeled(name, 3000, generator=_gen(7))
    assert torch.equal(again, plain) and torch.equal(labels_again, labels)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"


def test_num_classes_and_unlabelled_toys():
    assert TOY_NUM_CLASSES == {"gmm": 8, "moons": 2}
    with pytest.raises(ValueError, match=r"^toy dataset 'swissroll' has no class labels") as err:
        sample_toy_labeled("swissroll", 10, generator=_gen(0))
    assert "\n" not in str(err.value) and "['gmm', 'moons']" in str(err.value)
    with pytest.raises(ValueError, match=r"unknown toy dataset 'rings'"):
        sample_toy_labeled("rings", 10)


def test_gmm_labels_are_the_components():
    gmm = toy_gmm()
    x, labels = sample_toy_labeled("gmm", N, generator=_gen(0))
    nearest = torch.cdist(x, gmm.means).argmin(dim=1)
    # modes 3.06 apart, std 0.3: a point is nearer another mode with probability ~1e-7
    assert (nearest == labels).float().mean().item() > 0.999
    counts = torch.bincount(labels, minlength=8).float()
    assert counts.shape == (8,) and counts.sum().item() == N
    assert (counts - N / 8).abs().max().item() < 5 * math.sqrt(N / 8 * (1 - 1 / 8))
    chi2 = ((counts - N / 8) ** 2 / (N / 8)).sum().item()
    assert chi2 < 30.0  # 7 degrees of freedom: P(chi2 > 30) ~ 1e-4
    residual = x - gmm.means[labels]
    torch.testing.assert_close(residual.std(dim=0), torch.full((2,), 0.3), atol=0.01, rtol=0)
    torch.testing.assert_close(residual.mean(dim=0), torch.zeros(2), atol=0.01, rtol=0)


def test_moons_labels_are_the_half_circles():
    x, labels = sample_toy_labeled("moons", N, generator=_gen(1))
    assert set(labels.unique().tolist()) == {0, 1}
    assert abs(labels.float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / N)
    upper, lower = x[labels == 0], x[labels == 1]
    # rescaled frame: the upper moon lies above and to the left of the lower one
    assert upper[:, 1].mean().item() > 0.5 > -0.5 > lower[:, 1].mean().item()
    assert upper[:, 0].mean().item() < 0 < lower[:, 0].mean().item()
    raw = x / toy._MOONS_SCALE + torch.tensor(toy._MOONS_CENTER)
    # raw frame: E[sin a] = 2 / pi, so the moons' mean heights are 0.637 and 0.5 - 0.637
    assert abs(raw[labels == 0, 1].mean().item() - 2 / math.pi) < 0.01
    assert abs(raw[labels == 1, 1].mean().item() - (0.5 - 2 / math.pi)) < 0.01
    to_upper = (raw.norm(dim=1) - 1).abs()
    to_lower = ((raw - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    own = torch.where(labels == 0, to_upper, to_lower)
    assert own.mean().item() < 0.1  # noise std 0.1 -> mean |radial offset| ~ 0.08
    # the circles cross, so near the crossings the nearer circle is the other one: ~94% agree
    assert ((to_upper < to_lower) == (labels == 0)).float().mean().item() > 0.9
