"""The digits classifier behind the package's sample-quality metrics: deterministic training,
held-out accuracy, the safetensors cache, the feature-extractor interface, and features that
tell real digits from noise. Every cache lives under pytest's tmp_path, never the user's home."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde.jobs.evaluation import digits_classifier as dc
from scoresde.setup.data.digits import load_digits_labeled_split

CACHE_NAME = "digits_classifier_v1_seed0.safetensors"

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: threads only add overhead


@pytest.fixture(scope="module")
def digits():
    """``(train_images, train_labels, test_images, test_labels)`` of the default split."""
    return load_digits_labeled_split()


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """``(cache_dir, extractor)``: the default classifier, trained once and cached in a fresh
    folder by the real first-use path of ``load_digits_classifier`` (one thread: small tensors)."""
    cache_dir = tmp_path_factory.mktemp("digits-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        extractor = dc.load_digits_classifier(cache_dir=cache_dir)
        print(f"\ntrained and cached the digits classifier in {time.perf_counter() - start:.1f}s")
    finally:
        torch.set_num_threads(threads)
    return cache_dir, extractor


@pytest.fixture
def fast_training(monkeypatch):
    """Replace the default training with a 5-step one; returns the list of calls made."""
    calls = []
    real = dc.train_digits_classifier

    def train(**kwargs):
        calls.append(kwargs)
        return real(steps=5)

    monkeypatch.setattr(dc, "train_digits_classifier", train)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    def train(**kwargs):
        raise AssertionError("the classifier was retrained instead of loaded from the cache")

    monkeypatch.setattr(dc, "train_digits_classifier", train)


def test_training_is_deterministic_and_leaves_global_rng_alone():
    rng = torch.get_rng_state()
    a = dc.train_digits_classifier(steps=30).state_dict()
    assert torch.equal(torch.get_rng_state(), rng)
    b = dc.train_digits_classifier(steps=30).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values())
    other = dc.train_digits_classifier(seed=1, steps=30).state_dict()
    assert not torch.equal(a["head.weight"], other["head.weight"])
    assert torch.equal(torch.get_rng_state(), rng)


def test_held_out_accuracy(cached, digits):
    _, extractor = cached
    _, _, test_images, test_labels = digits
    predicted = extractor.predict(test_images)
    acc = dc.accuracy(predicted, test_labels)
    per_class = dc.class_accuracy(predicted, test_labels)
    print(f"\nheld-out accuracy {acc:.4f} on {len(test_labels)} test digits")
    print("per class: " + ", ".join(f"{c}: {a:.3f}" for c, a in per_class.items()))
    assert acc >= 0.97
    assert sorted(per_class) == list(range(10))
    assert min(per_class.values()) >= 0.9


def test_first_load_writes_the_cache_atomically(cached):
    cache_dir, _ = cached
    assert dc.cache_path(cache_dir) == cache_dir / CACHE_NAME
    assert [p.name for p in cache_dir.iterdir()] == [CACHE_NAME]  # no temporary file left


def test_second_load_reads_the_cache(cached, digits, tmp_path, no_training):
    cache_dir, first = cached
    (tmp_path / CACHE_NAME).write_bytes((cache_dir / CACHE_NAME).read_bytes())
    rng = torch.get_rng_state()
    second = dc.load_digits_classifier(cache_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    images = digits[2][:64]
    a, b = first(images), second(images)
    assert torch.equal(a["features"], b["features"])
    assert torch.equal(a["logits"], b["logits"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other-recipe"])
def test_a_corrupt_or_stale_cache_is_retrained_and_replaced(
    cached, tmp_path, fast_training, monkeypatch, damage
):
    cache_dir, _ = cached
    good = (cache_dir / CACHE_NAME).read_bytes()
    path = tmp_path / CACHE_NAME
    if damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(good)
        monkeypatch.setattr(dc, "LEARNING_RATE", dc.LEARNING_RATE / 2)
    retrained = dc.load_digits_classifier(cache_dir=tmp_path)
    assert len(fast_training) == 1
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = retrained(images)
    monkeypatch.setattr(dc, "train_digits_classifier", None)  # a retraining would fail
    reloaded = dc.load_digits_classifier(cache_dir=tmp_path)(images)
    assert torch.equal(reloaded["logits"], expected["logits"])
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_NAME]


def test_an_unwritable_cache_warns_and_uses_the_trained_classifier(tmp_path, fast_training):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not cache the digits classifier"):
        extractor = dc.load_digits_classifier(cache_dir=blocker)
    assert len(fast_training) == 1
    assert extractor(torch.zeros(2, 1, 8, 8))["logits"].shape == (2, 10)


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dc.default_cache_dir() == tmp_path / "explicit"
    assert dc.cache_path() == tmp_path / "explicit" / CACHE_NAME
    assert dc.cache_path(tmp_path / "arg") == tmp_path / "arg" / CACHE_NAME
    monkeypatch.delenv("SCORESDE_CACHE")
    assert dc.default_cache_dir() == tmp_path / "xdg" / "scoresde"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dc.default_cache_dir() == tmp_path / "home" / ".cache" / "scoresde"


def test_extractor_outputs(cached, digits):
    _, extractor = cached
    assert extractor.name == "digits-classifier"
    assert extractor.num_features == 128
    images = digits[2][:5]
    out = extractor(images)
    assert set(out) == {"features", "logits"}
    assert out["features"].shape == (5, extractor.num_features)
    assert out["logits"].shape == (5, 10)
    assert out["features"].dtype == out["logits"].dtype == torch.float32
    assert not out["features"].requires_grad
    predicted = extractor.predict(images)
    assert predicted.shape == (5,)
    assert predicted.dtype == torch.int64
    assert torch.equal(predicted, out["logits"].argmax(1))
    as_double = extractor(images.double())
    torch.testing.assert_close(as_double["logits"], out["logits"])
    one_at_a_time = torch.cat([extractor(images[i : i + 1])["features"] for i in range(5)])
    torch.testing.assert_close(one_at_a_time, out["features"])
    empty = extractor(torch.zeros(0, 1, 8, 8))
    assert empty["features"].shape == (0, 128)
    assert empty["logits"].shape == (0, 10)


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 3, 8, 8), (4, 1, 28, 28), (4, 1, 8, 8, 1)])
def test_extractor_rejects_other_shapes_in_one_line(cached, shape):
    _, extractor = cached
    with pytest.raises(ValueError, match=r"takes \(B, 1, 8, 8\) images; got") as err:
        extractor(torch.zeros(shape))
    assert "\n" not in str(err.value)
    assert str(shape) in str(err.value)


def test_extractor_rejects_integer_images(cached):
    _, extractor = cached
    with pytest.raises(ValueError, match="float images"):
        extractor(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extractor_on_cuda(cached, digits):
    cache_dir, cpu = cached
    gpu = dc.load_digits_classifier(cache_dir=cache_dir, device="cuda")
    images = digits[2][:32]
    out = gpu(images)
    assert out["features"].device.type == "cuda"
    torch.testing.assert_close(out["logits"].cpu(), cpu(images)["logits"], atol=1e-4, rtol=1e-4)


def test_class_accuracy_by_hand():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 3, 3, 3, 3])
    predicted = torch.tensor([0, 0, 0, 2, 1, 0, 3, 3, 3, 3])
    assert dc.class_accuracy(predicted, target) == {0: 0.75, 1: 0.5, 3: 1.0}
    assert dc.class_accuracy(predicted, target, num_classes=4) == {0: 0.75, 1: 0.5, 3: 1.0}
    assert dc.accuracy(predicted, target) == pytest.approx(0.8)
    assert (
        dc.class_accuracy(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
        == {}
    )
    with pytest.raises(ValueError, match=r"0\.\.3"):
        dc.class_accuracy(predicted, target + 1, num_classes=4)
    with pytest.raises(ValueError, match="one length"):
        dc.class_accuracy(predicted[:3], target)
    with pytest.raises(ValueError, match="integer"):
        dc.class_accuracy(predicted.float(), target)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between gaussians fitted to two ``(N, F)`` feature sets, in float64."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_real_digits_are_closer_to_real_digits_than_noise_is(cached, digits):
    _, extractor = cached
    train_images, _, test_images, _ = digits
    noise = torch.rand(test_images.shape, generator=torch.Generator().manual_seed(0))
    train = extractor(train_images)["features"]
    real = frechet_distance(extractor(test_images)["features"], train)
    fake = frechet_distance(extractor(noise)["features"], train)
    print(
        f"\nFrechet distance to the train features: real test digits {real:.3f}, noise {fake:.3f}"
    )
    assert real < 0.1 * fake


def test_conditional_accuracy_of_real_digits_by_their_labels():
    """Real held-out digits, labelled with their true classes, are what class-conditional
    samples should look like: the independent classifier recognises them (99% held out)."""
    from scoresde.jobs.evaluation.digits_classifier import conditional_accuracy
    from scoresde.setup.data.digits import load_digits_labeled_split

    _, _, images, labels = load_digits_labeled_split()
    result = conditional_accuracy(images, labels)
    assert sorted(result["per_class"], key=int) == [str(k) for k in range(10)]
    assert result["mean"] > 0.97 and min(result["per_class"].values()) > 0.9
    shuffled = conditional_accuracy(images, labels.roll(7))
    assert shuffled["mean"] < 0.3  # wrong labels: about chance
