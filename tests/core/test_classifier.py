"""Noise-conditional classifiers p_t(y | x) and label-conditional score models, checked against
the closed-form answers of Gaussian-mixture data.

For the 8-component toy mixture the Bayes classifier ``p_t(y = k | x)`` of the perturbed data
is exact (:func:`mixture_class_log_prob_fn`): a trained classifier must reach its accuracy at
every noise level and nearly its cross-entropy. A label-conditional score model must sample
the asked component, and its null label the whole mixture.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.core.classifier import (
    NoiseClassifier,
    accuracy_by_time,
    accuracy_times,
    classifier_loss,
    perturb,
)
from scoresde.core.mixture import mixture_class_log_prob_fn
from scoresde.jobs.conditioning import check_conditioning, conditional_score_fn
from scoresde.jobs.runs import classifier_accuracy, generate, load_classifier, load_trained
from scoresde.jobs.training.loop import train
from scoresde.jobs.training.objectives import build_objective
from scoresde.nn.embeddings import NULL_LABEL
from scoresde.setup.build import build_sde
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.pipeline import Batch, load_labeled_split
from scoresde.setup.data.toy import toy_gmm
from scoresde.setup.presets import get_preset
from scoresde.setup.presets.classifiers import classifier_preset

pytestmark = pytest.mark.usefixtures("single_thread")

SDES = {"VE": VESDE(sigma_max=10.0), "VP": VPSDE(), "subVP": SubVPSDE()}
QUIET = ["train.checkpoint_every=0", "train.tensorboard=false", "device=cpu"]


class Recorder(torch.nn.Module):
    """A classifier network that records its inputs and returns fixed logits."""

    def forward(self, x, labels):
        self.x, self.labels = x, labels
        return torch.zeros(x.shape[0], 3, dtype=x.dtype)


@pytest.mark.parametrize("name", SDES)
def test_the_network_sees_unit_scale_inputs_and_the_noise_to_signal_ratio(name):
    sde = SDES[name]
    net = Recorder()
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    NoiseClassifier(net, sde)(x, t)
    m, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(net.x, x / torch.sqrt(m**2 + s**2)[:, None], rtol=1e-12, atol=0)
    torch.testing.assert_close(net.labels, s / m, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", SDES)
def test_the_loss_perturbs_with_the_transition_kernel_and_is_the_cross_entropy(name):
    sde = SDES[name]
    seen = {}

    def log_prob_fn(x, t):
        seen["x"] = x
        return torch.stack([x[:, 0], -x[:, 0]], dim=1)

    x0 = torch.tensor([[1.0, 2.0], [-0.5, 0.25]], dtype=torch.float64)
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    gen = torch.Generator().manual_seed(3)
    loss = classifier_loss(sde, log_prob_fn, x0, labels, t=t, generator=gen)
    z = torch.randn(2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m, s = sde.marginal_coeffs(t)
    expected_x = m[:, None] * x0 + s[:, None] * z
    torch.testing.assert_close(seen["x"], expected_x, rtol=1e-12, atol=0)
    logits = torch.stack([expected_x[:, 0], -expected_x[:, 0]], dim=1)
    expected = -torch.log_softmax(logits, 1).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)


def test_perturb_draws_only_from_the_generator():
    sde = SDES["VP"]
    x0 = torch.zeros(4, 3)
    t = torch.full((4,), 0.5)
    a = perturb(sde, x0, t, torch.Generator().manual_seed(1))
    b = perturb(sde, x0, t, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.std() > 0


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _classifier_config(steps=1000):
    over = [f"train.steps={steps}", "model.hidden=64", "model.depth=2", *QUIET]
    return apply_overrides(classifier_preset(get_preset("toy_gmm")), over)


@contextlib.contextmanager
def _one_thread():
    """Module fixtures run before the function-scoped ``single_thread``: small networks train
    fastest on one thread (and a busy second core does not stall them)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gmm_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clf")
    with _one_thread():
        train(_classifier_config(), folder, progress=False)
    return load_classifier(folder, device="cpu")


def test_a_trained_classifier_reaches_the_bayes_accuracy_at_every_noise_level(gmm_classifier):
    """The learned p_t(y | x) against the exact posterior of the perturbed mixture, on the same
    perturbed test points: accuracy within 0.03 at each of 11 times (measured: 0.008), and the
    cross-entropy within 0.05 nats of the Bayes one, which is its minimum (measured: 0.02
    after 1200 steps)."""
    c = gmm_classifier
    x, y = load_labeled_split(c.cfg.data, "test")
    times = accuracy_times(c.sde)
    exact = mixture_class_log_prob_fn(c.sde, toy_gmm())
    learned_acc = accuracy_by_time(c.sde, c.log_prob_fn, x, y, times, generator=_gen(1))
    bayes_acc = accuracy_by_time(c.sde, exact, x, y, times, generator=_gen(1))
    assert (learned_acc - bayes_acc).abs().max() < 0.03
    assert learned_acc[0] > 0.99 and bayes_acc[-1] < 0.2  # separable at t ~ 0, chance-like at T
    assert torch.all(bayes_acc[1:] <= bayes_acc[:-1] + 0.02)  # information falls with noise
    for t_value in (0.2, 0.4, 0.6):
        t = torch.full((x.shape[0],), t_value)
        xt = perturb(c.sde, x, t, _gen(5))
        with torch.no_grad():
            ce_learned = torch.nn.functional.cross_entropy(c.log_prob_fn(xt, t), y)
        ce_bayes = torch.nn.functional.cross_entropy(exact(xt, t), y)
        assert -0.02 < float(ce_learned - ce_bayes) < 0.05


def test_classifier_accuracy_reports_the_test_split(gmm_classifier):
    result = classifier_accuracy(gmm_classifier, seed=0, num_examples=500)
    assert result["num_examples"] == 500 and result["chance"] == 1 / 8
    assert len(result["times"]) == len(result["accuracy"]) == 11
    assert result["times"][0] == pytest.approx(1e-3) and result["times"][-1] == pytest.approx(1.0)
    assert result["accuracy"][0] > 0.99 and result["accuracy"][-1] < 0.25
    assert result == classifier_accuracy(gmm_classifier, seed=0, num_examples=500)


def test_label_dropout_replaces_labels_by_the_null_label_from_the_noise_stream():
    cfg = apply_overrides(
        get_preset("toy_gmm"), ["model.num_classes=8", "train.label_dropout=0.5"]
    )
    objective = build_objective(cfg, build_sde(cfg.sde))
    seen = []

    def model_fn(x, t, class_labels):
        seen.append(class_labels)
        return torch.zeros_like(x)

    labels = torch.arange(2000) % 8
    batch = Batch(torch.zeros(2000, 2), labels)
    objective.loss(model_fn, batch, torch.Generator().manual_seed(0))
    objective.loss(model_fn, batch, torch.Generator().manual_seed(0))
    dropped = seen[0] == NULL_LABEL
    assert torch.equal(seen[0], seen[1])  # a function of the noise stream only
    assert abs(dropped.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 2000)
    assert torch.equal(seen[0][~dropped], labels[~dropped])


@pytest.fixture(scope="module")
def conditional_gmm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond")
    over = [
        "train.steps=800",
        "train.batch_size=128",
        "model.num_classes=8",
        "train.label_dropout=0.2",
        "model.hidden=64",
        "model.depth=2",
        *QUIET,
    ]
    with _one_thread():
        train(apply_overrides(get_preset("toy_gmm"), over), folder, progress=False)
    return load_trained(folder / "checkpoint.safetensors", device="cpu")


def _nearest_component(x):
    return torch.cdist(x, toy_gmm().means).argmin(1)


def test_a_label_conditional_model_samples_the_asked_component(conditional_gmm):
    """Each class is one mixture component (std 0.3, 3 apart): conditional samples land in it;
    the null label (unconditional score, learned through label dropout) covers every
    component with about its weight 1/8; guidance 3 stays in the component."""
    run = conditional_gmm
    for k in (0, 5):
        x, _ = generate(run, 200, labels=k, seed=1, num_steps=100)
        assert (_nearest_component(x) == k).double().mean() > 0.95
        x, _ = generate(run, 200, labels=k, guidance=3.0, seed=1, num_steps=100)
        assert (_nearest_component(x) == k).double().mean() > 0.95
    x, _ = generate(run, 800, seed=2, num_steps=100)
    counts = torch.bincount(_nearest_component(x), minlength=8).double() / 800
    assert counts.min() > 0.06 and counts.max() < 0.2


def test_classifier_free_guidance_mixes_the_conditional_and_null_scores(conditional_gmm):
    run = conditional_gmm
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    score = run.score_fn
    with torch.no_grad():
        cond = score(x, t, class_labels=labels)
        null = score(x, t, class_labels=torch.full_like(labels, NULL_LABEL))
        guided = conditional_score_fn(run, labels, 2.5)(x, t)
        torch.testing.assert_close(null, score(x, t), rtol=0, atol=0)
        torch.testing.assert_close(guided, null + 2.5 * (cond - null), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(conditional_score_fn(run, labels)(x, t), cond)


def test_conditioning_is_checked_before_sampling(conditional_gmm, gmm_classifier):
    run = conditional_gmm
    with pytest.raises(ValueError, match="out of range"):
        check_conditioning(run, torch.tensor([8]))
    with pytest.raises(ValueError, match="label-conditional: sample its classes"):
        check_conditioning(run, torch.tensor([1]), classifier=gmm_classifier)
    with pytest.raises(ValueError, match="need a class"):
        check_conditioning(run, None, 2.0)
    with pytest.raises(ValueError, match="3 labels for 5 samples"):
        generate(run, 5, labels=torch.tensor([1, 2, 3]))


def test_the_trained_classifier_guides_the_exact_score_to_its_class(gmm_classifier):
    """Eq. 14 with the exact unconditional score of the mixture and the learned p_t(y | x):
    samples of class k land in component k (the exact classifier gives 1.0; measured 0.97+)."""
    from scoresde import sample
    from scoresde.core.mixture import mixture_score_fn
    from scoresde.methods.guidance import classifier_guidance

    c = gmm_classifier
    gen = torch.Generator().manual_seed(4)
    for k in (2, 6):
        guided = classifier_guidance(mixture_score_fn(c.sde, toy_gmm()), c.log_prob_fn, k, 1.0)
        x_T = c.sde.prior_sampling((400, 2), gen)
        x, _ = sample(c.sde, guided, x_T, method="pc", generator=gen, num_steps=200)
        assert (_nearest_component(x) == k).double().mean() > 0.9


def test_a_classifier_must_share_the_perturbation_and_the_data(gmm_classifier, tmp_path):
    from dataclasses import replace

    from scoresde.jobs.conditioning import same_perturbation

    assert same_perturbation(VPSDE(), VPSDE())
    assert not same_perturbation(VPSDE(), VPSDE(beta_max=10.0))
    assert not same_perturbation(VPSDE(), SubVPSDE())
    c = gmm_classifier
    # sigma_max is not a parameter of the VP SDE: a classifier differing in it still fits
    other_sigma = replace(c.cfg, sde=replace(c.cfg.sde, sigma_max=3.0))
    folder = tmp_path / "moons"
    over = ["train.steps=2", "model.hidden=32", "model.depth=1", "data.dataset=moons", *QUIET]
    train(apply_overrides(get_preset("toy_gmm"), over), folder, progress=False)
    moons = load_trained(folder / "checkpoint.safetensors", device="cpu")
    with pytest.raises(ValueError, match="trained on other data"):
        check_conditioning(moons, torch.tensor([1]), classifier=c)
    gmm_run = replace(moons, cfg=replace(moons.cfg, data=c.cfg.data))
    check_conditioning(gmm_run, torch.tensor([1]), classifier=replace(c, cfg=other_sigma))


def test_a_new_run_of_zero_steps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="a new run needs at least one step"):
        train(_classifier_config(0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_label_conditional_digits_model_draws_the_asked_digits(tmp_path):
    """A small label-conditional U-Net on the 8x8 digits, 400 steps: its samples of each class
    are recognised as that class by the package's independent digits classifier (trained on
    real digits) far above the chance of 10% (measured: 0.92 mean, 0.8 the worst class)."""
    from scoresde.jobs.evaluation.digits_classifier import conditional_accuracy
    from scoresde.jobs.runs import generate_classes

    over = [
        "train.steps=400",
        "train.batch_size=64",
        "train.warmup=50",
        "train.ema_decay=0.99",
        "model.num_classes=10",
        "model.nf=16",
        *QUIET,
    ]
    train(apply_overrides(get_preset("digits_subvp"), over), tmp_path, progress=False)
    run = load_trained(tmp_path / "checkpoint.safetensors", device="cpu")
    x, labels, _ = generate_classes(run, list(range(10)), 10, num_steps=50, seed=0)
    result = conditional_accuracy(x, labels)
    assert result["mean"] > 0.6 and min(result["per_class"].values()) >= 0.3


def test_a_classifier_run_logs_its_accuracy_against_t_every_eval_every_steps(tmp_path):
    import json

    cfg = apply_overrides(
        _classifier_config(4), ["train.eval_every=2", "eval.num_examples=50"]
    )
    with _one_thread():
        train(cfg, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert line["num_examples"] == 50 and line["chance"] == 1 / 8
        assert len(line["accuracy"]) == 11 and all(0 <= a <= 1 for a in line["accuracy"])
    with pytest.raises(ValueError, match="a classifier run draws no samples"):
        train(apply_overrides(cfg, ["train.sample_every=2"]), tmp_path / "other", progress=False)
