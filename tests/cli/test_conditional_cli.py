"""Class-conditional generation from the command line: ``scoresde train-classifier`` (a
noise-conditional classifier p_t(y | x)), ``scoresde sample --class/--guidance/--classifier``
(classifier guidance and classifier-free guidance) and label-conditional score models trained
with ``--set model.num_classes=K --set train.label_dropout=p``, end to end on tiny settings.

Every command runs with ``--threads 1`` so that arrays compare bit-exactly."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scoresde.cli import main

CPU = ["--threads", "1", "--no-progress"]
TOY_SCORE = ["model.hidden=32", "model.depth=2", "train.batch_size=64", "device=cpu"]
TOY_CLASSIFIER = ["model.hidden=32", "train.batch_size=128", "device=cpu"]
CLASSIFIER_STEPS = 300
# The CIFAR-10 NCSN++ preset shrunk as in test_train_images.py; the classifier a Wide-ResNet-10-1.
CIFAR_PRESET = "ve_cifar10_ncsnpp_continuous"
CIFAR_SHRINK = ["model.nf=16", "model.num_res_blocks=1", "model.ch_mult=1,2",
                "train.batch_size=4", "train.checkpoint_every=0", "device=cpu"]
CIFAR_CLASSIFIER = ["model.depth=10", "model.widen_factor=1", "train.batch_size=4", "device=cpu"]


def _set(items):
    return [arg for item in items for arg in ("--set", item)]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _ok(capsys, *argv) -> dict:
    """Run a command that must succeed; its last stdout line parsed as JSON."""
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and ": error: " in err, err
    for needle in needles:
        assert needle in err, err


def _sample(capsys, checkpoint, out, *extra, steps=10) -> dict:
    return _ok(capsys, "sample", "--checkpoint", checkpoint, "--out", out, *CPU,
               "--set", f"sample.num_steps={steps}", *extra)


# --------------------------------------------------------------------------------------------
# Runs shared by the tests of this module (each a few seconds at most on one thread)
# --------------------------------------------------------------------------------------------


def _train_classifier_argv(out, steps, *sets):
    return ["train-classifier", "--preset", "toy_gmm", "--out", str(out), "--steps", str(steps),
            *CPU, *_set([*TOY_CLASSIFIER, *sets])]


@pytest.fixture(scope="module")
def gmm_classifier(tmp_path_factory):
    """A classifier of the 8 gmm components, 300 steps (its run folder)."""
    out = tmp_path_factory.mktemp("gmm_classifier")
    code = main(_train_classifier_argv(out, CLASSIFIER_STEPS))
    assert code == 0
    return out


@pytest.fixture(scope="module")
def gmm_score(tmp_path_factory):
    """An unconditional toy_gmm score model, 20 steps (its checkpoint file)."""
    out = tmp_path_factory.mktemp("gmm_score")
    argv = ["train", "--preset", "toy_gmm", "--out", str(out), "--steps", "20", *CPU,
            *_set(TOY_SCORE)]
    assert main(argv) == 0
    return out / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def cifar_runs(fake_cifar10_tarball, tmp_path_factory):
    """Tiny runs on the fake CIFAR-10: label-conditional with and without label dropout, an
    unconditional model, and a noise-conditional Wide-ResNet classifier (all the VE preset)."""
    root = tmp_path_factory.mktemp("cifar_runs")
    data = f"data.root={fake_cifar10_tarball}"
    runs = {
        "dropout": ("train", 2, [*CIFAR_SHRINK, "model.num_classes=10", "train.label_dropout=0.2"]),
        "no_dropout": ("train", 1, [*CIFAR_SHRINK, "model.num_classes=10"]),
        "unconditional": ("train", 1, CIFAR_SHRINK),
        "classifier": ("train-classifier", 2, CIFAR_CLASSIFIER),
    }
    paths = {}
    for name, (command, steps, sets) in runs.items():
        out = root / name
        argv = [command, "--preset", CIFAR_PRESET, "--out", str(out), "--steps", str(steps),
                *CPU, *_set([data, *sets])]
        assert main(argv) == 0, name
        paths[name] = out
    return paths


# --------------------------------------------------------------------------------------------
# 1. train-classifier on the toy mixture
# --------------------------------------------------------------------------------------------


def test_toy_classifier_run_folder_and_accuracy(gmm_classifier):
    cfg = json.loads((gmm_classifier / "config.json").read_text())
    assert cfg["model"]["name"] == "mlp_classifier" and cfg["model"]["num_classes"] == 8
    assert cfg["model"]["hidden"] == 32 and cfg["train"]["steps"] == CLASSIFIER_STEPS
    assert cfg["data"]["dataset"] == "gmm" and cfg["sde"]["kind"] == "vp"
    assert (gmm_classifier / "checkpoint.safetensors").stat().st_size > 1000
    acc = json.loads((gmm_classifier / "accuracy.json").read_text())
    assert acc["step"] == CLASSIFIER_STEPS and acc["chance"] == 0.125
    assert acc["num_examples"] == 2000
    times, accuracy = acc["times"], acc["accuracy"]
    assert len(times) == len(accuracy) == 11
    assert times[0] == pytest.approx(1e-3) and times[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(times))
    # the 8 components (std 0.3, radius 4) are told apart almost surely near t = 0 (measured:
    # 1.0 after 200 steps) and not at all at t = T, where p_T no longer depends on the class
    assert accuracy[0] > 0.95 and accuracy[1] > 0.9, accuracy
    assert accuracy[-1] < 0.3, accuracy
    assert accuracy[0] - accuracy[-1] > 0.6


@pytest.mark.usefixtures("single_thread")
def test_toy_classifier_is_near_the_bayes_posterior(gmm_classifier):
    """The loaded EMA classifier against the exact posterior p_t(y | x) of the mixture (measured
    after 300 steps: argmax agreement >= 0.88, KL <= 0.2 nats at these times)."""
    from scoresde.core.classifier import perturb
    from scoresde.core.mixture import mixture_class_log_prob_fn
    from scoresde.jobs.runs import load_classifier
    from scoresde.setup.data.toy import sample_gmm_labeled, toy_gmm

    classifier = load_classifier(gmm_classifier, device="cpu")
    assert classifier.step == CLASSIFIER_STEPS and classifier.num_classes == 8
    bayes = mixture_class_log_prob_fn(classifier.sde, toy_gmm())
    gen = torch.Generator().manual_seed(0)
    x0, _ = sample_gmm_labeled(2000, gen)
    for t in (0.1, 0.3, 0.5):
        tt = torch.full((2000,), t)
        xt = perturb(classifier.sde, x0, tt, gen)
        with torch.no_grad():
            learned = classifier.log_prob_fn(xt, tt).log_softmax(1)
            exact = bayes(xt, tt)
        agree = float((learned.argmax(1) == exact.argmax(1)).double().mean())
        kl = float((exact.exp() * (exact - learned)).sum(1).mean())
        assert agree > 0.8 and kl < 0.4, (t, agree, kl)


def test_toy_classifier_rerun_is_already_complete(gmm_classifier, capsys):
    ckpt = gmm_classifier / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    code, out, err = _run(capsys, *_train_classifier_argv(gmm_classifier, CLASSIFIER_STEPS))
    assert code == 0
    assert "already complete at step 300" in err
    summary = json.loads(out)
    assert summary["steps"] == CLASSIFIER_STEPS and summary["stopped_by"] == "already complete"
    assert summary["accuracy_by_t"]["step"] == CLASSIFIER_STEPS
    assert ckpt.read_bytes() == before


def test_toy_classifier_resumes_bit_exactly(tmp_path):
    def run(out, steps):
        assert main(_train_classifier_argv(out, steps)) == 0
        return load_file(out / "checkpoint.safetensors")

    straight = run(tmp_path / "straight", 40)
    run(tmp_path / "halves", 20)
    resumed = run(tmp_path / "halves", 40)
    assert straight.keys() == resumed.keys() and len(straight) > 4
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    acc = json.loads((tmp_path / "halves" / "accuracy.json").read_text())
    assert acc["step"] == 40


# --------------------------------------------------------------------------------------------
# 2. classifier guidance of an unconditional toy model
# --------------------------------------------------------------------------------------------


def test_classifier_guided_samples_are_class_major(gmm_score, gmm_classifier, tmp_path, capsys):
    out = tmp_path / "s"
    info = _sample(capsys, gmm_score, out, "--classifier", gmm_classifier, "--class", "0,3",
                   "--num-samples", "5")
    assert info["classes"] == [0, 3] and info["guidance"] == 1.0
    assert info["classifier_step"] == CLASSIFIER_STEPS
    assert info["classifier"] == str(gmm_classifier)
    assert info["num_samples"] == 5 and info["checkpoint_step"] == 20 and info["pc_steps"] == 10
    labels = np.load(out / "labels.npy")
    assert labels.tolist() == [0] * 5 + [3] * 5 and labels.dtype == np.int64
    samples = np.load(out / "samples.npy")
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    assert (out / "samples.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["sample"]["num_samples"] == 5


def test_classifier_guidance_steers_to_the_class(gmm_score, gmm_classifier, tmp_path, capsys):
    """Guided samples land in their component (W = 3 with this 20-step score model: measured
    0.92 and 1.0 of 100; unguided, each component gets about 1/8)."""
    from scoresde.setup.data.toy import toy_gmm

    _sample(capsys, gmm_score, tmp_path / "s", "--classifier", gmm_classifier, "--class", "0,3",
            "--guidance", "3", "--num-samples", "100", steps=50)
    x = np.load(tmp_path / "s" / "samples.npy")
    labels = np.load(tmp_path / "s" / "labels.npy")
    means = toy_gmm().means.numpy()
    nearest = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    for k in (0, 3):
        assert (nearest[labels == k] == k).mean() > 0.7, k


def test_class_samples_are_reproducible(gmm_score, gmm_classifier, tmp_path, capsys):
    arrays = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        _sample(capsys, gmm_score, tmp_path / name, "--classifier", gmm_classifier,
                "--class", "1", "--num-samples", "6", "--seed", seed)
        arrays.append(np.load(tmp_path / name / "samples.npy"))
        assert np.load(tmp_path / name / "labels.npy").tolist() == [1] * 6
    assert np.array_equal(arrays[0], arrays[1])
    assert not np.allclose(arrays[0], arrays[2])


def test_guidance_zero_is_the_unconditional_sampler(gmm_score, gmm_classifier, tmp_path, capsys):
    """W = 0 returns the unconditional score, and sample j of every class starts from the noise
    stream (seed, j): each class's row equals the unconditional samples exactly."""
    _sample(capsys, gmm_score, tmp_path / "u", "--num-samples", "5", "--seed", "3")
    uncond = np.load(tmp_path / "u" / "samples.npy")
    assert not (tmp_path / "u" / "labels.npy").exists()
    info = _sample(capsys, gmm_score, tmp_path / "g0", "--classifier", gmm_classifier,
                   "--class", "0,3", "--guidance", "0", "--num-samples", "5", "--seed", "3")
    assert info["guidance"] == 0.0
    guided0 = np.load(tmp_path / "g0" / "samples.npy")
    assert np.array_equal(guided0[:5], uncond) and np.array_equal(guided0[5:], uncond)
    _sample(capsys, gmm_score, tmp_path / "g1", "--classifier", gmm_classifier,
            "--class", "0", "--num-samples", "5", "--seed", "3")
    assert not np.allclose(np.load(tmp_path / "g1" / "samples.npy"), uncond)


def test_classifier_free_guidance_zero_is_the_unconditional_score(tmp_path, capsys):
    """A label-conditional toy model with label dropout: W = 0 samples its unconditional score
    (exactly the samples without --class), W = 1 its conditional one (different)."""
    run = tmp_path / "cond"
    argv = ["train", "--preset", "toy_gmm", "--out", run, "--steps", "20", *CPU,
            *_set([*TOY_SCORE, "model.num_classes=8", "train.label_dropout=0.2"])]
    _ok(capsys, *argv)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 8 and cfg["train"]["label_dropout"] == 0.2
    ckpt = run / "checkpoint.safetensors"
    _sample(capsys, ckpt, tmp_path / "u", "--num-samples", "4")
    uncond = np.load(tmp_path / "u" / "samples.npy")
    info = _sample(capsys, ckpt, tmp_path / "w0", "--class", "5", "--guidance", "0",
                   "--num-samples", "4")
    assert "classifier" not in info and "classifier_step" not in info
    assert np.array_equal(np.load(tmp_path / "w0" / "samples.npy"), uncond)
    _sample(capsys, ckpt, tmp_path / "w1", "--class", "5", "--num-samples", "4")
    assert not np.allclose(np.load(tmp_path / "w1" / "samples.npy"), uncond)
    assert np.load(tmp_path / "w1" / "labels.npy").tolist() == [5] * 4


# --------------------------------------------------------------------------------------------
# 3. and 4. the paper's image preset on a fake CIFAR-10
# --------------------------------------------------------------------------------------------


def test_label_conditional_cifar_with_guidance(cifar_runs, tmp_path, capsys):
    cfg = json.loads((cifar_runs["dropout"] / "config.json").read_text())
    assert cfg["model"]["name"] == "ncsnpp" and cfg["model"]["num_classes"] == 10
    assert cfg["train"]["label_dropout"] == 0.2 and cfg["train"]["steps"] == 2
    ckpt = cifar_runs["dropout"] / "checkpoint.safetensors"
    out = tmp_path / "s"
    info = _sample(capsys, ckpt, out, "--class", "2,7", "--guidance", "2", "--num-samples", "2",
                   steps=3)
    assert info["classes"] == [2, 7] and info["guidance"] == 2.0 and info["pc_steps"] == 3
    assert "classifier" not in info
    assert np.load(out / "labels.npy").tolist() == [2, 2, 7, 7]
    samples = np.load(out / "samples.npy")
    assert samples.shape == (4, 3, 32, 32) and samples.min() >= 0 and samples.max() <= 1
    # one row per class of 2 samples each: 2 x 2 cells of 32 * 4 + 1 pixels, plus the border
    with Image.open(out / "samples.png") as png:
        assert png.size == (2 * 129 + 1, 2 * 129 + 1) and png.mode == "RGB"
    # with label dropout the model also has an unconditional score
    _sample(capsys, ckpt, tmp_path / "u", "--num-samples", "2", steps=2)
    assert np.load(tmp_path / "u" / "samples.npy").shape == (2, 3, 32, 32)
    assert not (tmp_path / "u" / "labels.npy").exists()


def test_conditional_model_without_dropout_refuses_guidance(cifar_runs, tmp_path, capsys):
    ckpt = cifar_runs["no_dropout"] / "checkpoint.safetensors"
    base = ["sample", "--checkpoint", ckpt, *CPU, "--num-samples", "2",
            "--set", "sample.num_steps=2"]
    code, _, err = _run(capsys, *base, "--out", tmp_path / "g", "--class", "1", "--guidance", "2")
    _one_line_error(code, err, "label_dropout")
    assert not (tmp_path / "g").exists()
    code, _, err = _run(capsys, *base, "--out", tmp_path / "u")
    _one_line_error(code, err, "label-conditional", "--class K")
    assert not (tmp_path / "u").exists()
    code, _, err = _run(capsys, *base, "--out", tmp_path / "c", "--class", "1",
                        "--classifier", cifar_runs["classifier"])
    _one_line_error(code, err, "label-conditional")
    assert not (tmp_path / "c").exists()
    code, _, err = _run(capsys, *base, "--out", tmp_path / "r", "--class", "10")
    _one_line_error(code, err, "class 10 is out of range", "0..9")
    # its own conditional score (W = 1) it does have
    _sample(capsys, ckpt, tmp_path / "w1", "--class", "1", "--num-samples", "2", steps=2)
    assert np.load(tmp_path / "w1" / "labels.npy").tolist() == [1, 1]


def test_cifar_classifier_guides_an_unconditional_model(cifar_runs, tmp_path, capsys):
    from scoresde.jobs.runs import load_classifier

    run = cifar_runs["classifier"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["name"] == "wideresnet" and cfg["model"]["num_classes"] == 10
    assert cfg["model"]["depth"] == 10 and cfg["model"]["widen_factor"] == 1
    assert cfg["sde"]["kind"] == "ve" and cfg["data"]["dataset"] == "cifar10"
    acc = json.loads((run / "accuracy.json").read_text())
    assert acc["step"] == 2 and len(acc["accuracy"]) == 11 and acc["num_examples"] == 8
    assert all(a in {k / 8 for k in range(9)} for a in acc["accuracy"])
    classifier = load_classifier(run, device="cpu")
    assert classifier.step == 2 and classifier.num_classes == 10
    assert classifier.shape == (3, 32, 32)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = classifier.log_prob_fn(x, torch.tensor([0.01, 0.5, 1.0]))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    out = tmp_path / "s"
    info = _sample(capsys, cifar_runs["unconditional"] / "checkpoint.safetensors", out,
                   "--classifier", run, "--class", "3", "--num-samples", "2", steps=2)
    assert info["classes"] == [3] and info["classifier_step"] == 2
    assert np.load(out / "labels.npy").tolist() == [3, 3]
    samples = np.load(out / "samples.npy")
    assert samples.shape == (2, 3, 32, 32) and np.isfinite(samples).all()


# --------------------------------------------------------------------------------------------
# 5. refusals: one line on stderr, exit status 2, nothing written
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_sde_classifier(tmp_path_factory):
    """A toy_gmm classifier for a VP SDE with beta_max 10 (the model's is 20), one step."""
    out = tmp_path_factory.mktemp("other_sde")
    assert main(_train_classifier_argv(out, 1, "sde.beta_max=10")) == 0
    return out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--guidance", "2"], ["need --class K"]),
        (["--classifier", "{clf}"], ["need --class K"]),
        (["--class", "9", "--classifier", "{clf}"], ["class 9 is out of range", "0..7"]),
        (["--class", "-1", "--classifier", "{clf}"], ["class -1 is out of range"]),
        (["--class", "x", "--classifier", "{clf}"], ["--class takes K, K1,K2,... or all"]),
        (["--class", ","], ["--class takes"]),
        (["--class", "all"], ["unconditional", "--classifier RUN"]),
        (["--class", "2"], ["unconditional", "--classifier RUN"]),
        (["--class", "2", "--classifier", "{score}"], ["score model", "not a classifier"]),
        (["--class", "2", "--classifier", "{other}"], ["another SDE", "beta_max=10"]),
    ],
)
def test_sample_refusals(args, needles, gmm_score, gmm_classifier, other_sde_classifier,
                         tmp_path, capsys):
    paths = {"clf": gmm_classifier, "score": gmm_score.parent, "other": other_sde_classifier}
    args = [a.format(**paths) for a in args]
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "sample", "--checkpoint", gmm_score, "--out", out, *CPU,
                             "--num-samples", "2", *args)
    _one_line_error(code, err, *needles)
    assert stdout == "" and not out.exists()


def test_classifier_as_checkpoint_is_refused(gmm_classifier, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "sample", "--checkpoint", gmm_classifier / "checkpoint.safetensors",
                        "--out", out, *CPU, "--class", "1")
    _one_line_error(code, err, "classifier run", "pass it as --classifier")
    assert not out.exists()


def test_classifier_all_classes(gmm_score, gmm_classifier, tmp_path, capsys):
    info = _sample(capsys, gmm_score, tmp_path / "s", "--classifier", gmm_classifier,
                   "--class", "all", "--num-samples", "1", steps=3)
    assert info["classes"] == list(range(8))
    assert np.load(tmp_path / "s" / "labels.npy").tolist() == list(range(8))


@pytest.mark.parametrize(
    ("command", "preset", "sets", "needles"),
    [
        ("train-classifier", "toy_swissroll", [], ["'swissroll' has no class labels"]),
        ("train", "toy_gmm", ["model.num_classes=3"], ["model.num_classes=3", "8 classes"]),
        ("train", "toy_gmm", ["train.label_dropout=0.1"],
         ["label_dropout needs a label-conditional model"]),
        ("train", "toy_swissroll", ["model.num_classes=2"], ["needs class labels"]),
        ("train-classifier", "toy_gmm", ["train.label_dropout=0.1"], ["not classifiers"]),
        ("train-classifier", "toy_gmm", ["model.num_classes=4"], ["model.num_classes=4"]),
    ],
)
def test_training_refusals(command, preset, sets, needles, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, command, "--preset", preset, "--out", out, "--steps", "1",
                             *CPU, *_set([*TOY_SCORE[-1:], *sets]))
    _one_line_error(code, err, *needles)
    assert stdout == "" and not out.exists()


# --------------------------------------------------------------------------------------------
# 6. digits: the package's digits classifier scores class-conditional samples
# --------------------------------------------------------------------------------------------


def test_digits_class_all_reports_classifier_accuracy(tmp_path, capsys):
    run = tmp_path / "run"
    _ok(capsys, "train", "--preset", "digits_subvp", "--out", run, "--steps", "2", *CPU,
        *_set(["model.num_classes=10", "model.nf=8", "train.batch_size=16", "device=cpu"]))
    out = tmp_path / "s"
    info = _sample(capsys, run / "checkpoint.safetensors", out, "--class", "all",
                   "--num-samples", "2", steps=3)
    assert info["classes"] == list(range(10)) and info["guidance"] == 1.0
    acc = info["digits_classifier_accuracy"]
    assert sorted(acc["per_class"], key=int) == [str(k) for k in range(10)]
    assert all(v in (0.0, 0.5, 1.0) for v in acc["per_class"].values())  # 2 samples a class
    assert 0 <= acc["mean"] <= 1
    assert acc["mean"] == pytest.approx(np.mean(list(acc["per_class"].values())), abs=1e-4)
    assert np.load(out / "labels.npy").tolist() == [k for k in range(10) for _ in range(2)]
    assert np.load(out / "samples.npy").shape == (20, 1, 8, 8)
    # one row per class: 10 rows and 2 columns of 8 * 4 + 1 pixels, plus the border
    with Image.open(out / "samples.png") as png:
        assert png.mode == "L"
        assert png.size == (2 * 33 + 1, 10 * 33 + 1)
