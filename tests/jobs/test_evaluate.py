"""``scoresde evaluate``: samples written as made and resumable, metrics, bits/dim, sharding.

A tiny digits model (two training steps) stands in for a trained one: what is checked is that
the evaluation is the same computation however it is split (batch size, interruption, number
of processes), that the metrics are those of the metric functions on the samples' features, and
that a bad setting is refused before any sample is drawn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde.jobs.evaluation.samples as samples_module
from scoresde.cli import main
from scoresde.infra.rundir import OutputExistsError
from scoresde.jobs.evaluation.evaluate import check_evaluation, evaluate
from scoresde.jobs.evaluation.features import EvaluationError, extract_features
from scoresde.jobs.evaluation.metrics import feature_statistics, frechet_distance, inception_score
from scoresde.jobs.evaluation.samples import SampleStore
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.presets import get_preset

FAST = [
    "sample.num_steps=4",
    "sample.corrector=langevin_per_example",
    "eval.num_examples=3",
    "eval.bpd_repeats=2",
    "eval.batch_size=1",  # one example per ODE solve: bits/dim independent of the sharding
    "eval.rtol=1e-2",
    "eval.atol=1e-2",
    "eval.kid_subsets=5",
    "eval.is_splits=2",
]


class TinyFeatures:
    """A fixed random projection of the pixels (features) and a linear head (logits)."""

    name = "tiny"
    num_features = 5

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(64, 5, generator=g, dtype=torch.float64)
        self.head = torch.randn(5, 4, generator=g, dtype=torch.float64)

    def __call__(self, images):
        features = images.reshape(images.shape[0], -1).double() @ self.proj
        return {"features": features.float(), "logits": (features @ self.head).float()}


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    cfg = apply_overrides(
        get_preset("digits_subvp"),
        ["train.steps=2", "train.batch_size=16", "model.nf=8", "device=cpu"],
    )
    folder = tmp_path_factory.mktemp("digits_run")
    return train(cfg, folder, progress=False).checkpoint


def _run(checkpoint, *overrides):
    run = load_trained(checkpoint, device="cpu")
    from dataclasses import replace

    return replace(run, cfg=apply_overrides(run.cfg, [*FAST, *overrides]))


def test_metrics_are_those_of_the_samples_features(digits_checkpoint, tmp_path):
    run = _run(digits_checkpoint, "eval.num_samples=12", "eval.metrics=fid,is,bpd")
    tiny = TinyFeatures()
    results = evaluate(run, tmp_path / "e", batch_size=5, extractor=tiny)
    x, _ = generate(run, 12, seed=0, batch_size=12)
    with np.load(tmp_path / "e" / "samples.npz") as f:
        stored = torch.from_numpy(f["samples"])
        assert f["images_uint8"].shape == (12, 8, 8, 1) and f["images_uint8"].dtype == np.uint8
    assert torch.allclose(stored, x, atol=1e-5)  # batches of 5 give the samples of one batch
    fake = extract_features(tiny, stored)
    from scoresde.setup.data.pipeline import load_split

    train_features = extract_features(tiny, load_split(run.cfg.data, "train"))["features"]
    expected = frechet_distance(
        feature_statistics(fake["features"]), feature_statistics(train_features)
    )
    assert results["metrics"]["fid"] == pytest.approx(expected, rel=1e-6)
    assert results["metrics"]["is"] == pytest.approx(inception_score(fake["logits"], 2)[0])
    assert results["real_data"]["num_examples"] == 12 and results["real_data"]["fid"] > 0
    assert results["num_samples"] == 12 and results["checkpoint_step"] == 2
    assert results["sampler"]["method"] == "pc" and results["nfe"]["max"] == 4 * 2 + 1
    # Bits/dim: each example's mean over the repeats, and the standard error of their mean.
    bpd = results["bpd"]
    repeats = [
        evaluate_likelihood(run, load_split(run.cfg.data, "test", limit=3), repeat=r)["per_example"]
        for r in range(2)
    ]
    per_example = torch.tensor(repeats).mean(dim=0).double()
    assert bpd["per_example"] == pytest.approx(per_example.tolist(), rel=1e-9)
    assert bpd["mean"] == pytest.approx(per_example.mean().item())
    assert bpd["stderr"] == pytest.approx(per_example.std().item() / 3**0.5)
    assert torch.tensor(repeats[0]).ne(torch.tensor(repeats[1])).all()  # independent draws
    on_disk = json.loads((tmp_path / "e" / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    assert (tmp_path / "e" / "samples.png").exists()


def test_an_interrupted_evaluation_resumes_with_the_same_samples(
    digits_checkpoint, tmp_path, monkeypatch
):
    run = _run(digits_checkpoint, "eval.num_samples=10", "eval.metrics=is")
    tiny = TinyFeatures()
    real_generate = samples_module.generate
    calls = {"n": 0}

    def dies_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(samples_module, "generate", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run, tmp_path / "e", batch_size=3, extractor=tiny)
    store = SampleStore(tmp_path / "e" / "parts", 10)
    assert [(p.start, p.stop) for p in store.parts()] == [(0, 3), (3, 6)]
    assert [(r.start, r.stop) for r in store.missing(4)] == [(6, 10)]
    monkeypatch.setattr(samples_module, "generate", real_generate)
    resumed = evaluate(run, tmp_path / "e", batch_size=4, extractor=tiny)
    straight = evaluate(run, tmp_path / "straight", batch_size=10, extractor=tiny)
    assert resumed["metrics"]["is"] == pytest.approx(straight["metrics"]["is"], rel=1e-5)
    a = np.load(tmp_path / "e" / "samples.npz")["samples"]
    b = np.load(tmp_path / "straight" / "samples.npz")["samples"]
    np.testing.assert_allclose(a, b, atol=1e-5)

    with pytest.raises(OutputExistsError, match="already"):
        evaluate(run, tmp_path / "e", extractor=tiny)  # finished: refused
    (tmp_path / "e" / "results.json").unlink()
    with pytest.raises(OutputExistsError, match="another seed"):
        evaluate(run, tmp_path / "e", seed=5, extractor=tiny)  # the parts are of seed 0
    again = evaluate(run, tmp_path / "e", seed=5, extractor=tiny, overwrite=True)
    assert again["seed"] == 5


def test_bad_settings_are_refused_before_sampling(tmp_path):
    toy = apply_overrides(get_preset("toy_moons"), ["eval.metrics=fid"])
    with pytest.raises(EvaluationError, match="need image data"):
        check_evaluation(toy)
    cifar = get_preset("vp_cifar10_ddpmpp_continuous")
    with pytest.raises(FileNotFoundError, match=r"eval\.inception_weights"):
        check_evaluation(cifar)
    digits_on_cifar = apply_overrides(cifar, ["eval.features=digits"])
    with pytest.raises(EvaluationError, match="for 8x8 digits only"):
        check_evaluation(digits_on_cifar)
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    digits = apply_overrides(get_preset("digits_vp"), [f"eval.reference={stats}"])
    with pytest.raises(EvaluationError, match="KID needs activations"):
        check_evaluation(digits)
    check_evaluation(apply_overrides(digits, ["eval.metrics=fid,is"]))
    with pytest.raises(EvaluationError, match="does not exist"):
        check_evaluation(apply_overrides(digits, [f"eval.reference={tmp_path / 'nope.npz'}"]))


def test_cli_evaluate_errors_are_one_line(digits_checkpoint, tmp_path, capsys):
    def evaluate_cli(*sets: str) -> str:
        args = ["evaluate", "--checkpoint", str(digits_checkpoint), "--out", str(tmp_path / "e")]
        code = main(args + [arg for item in sets for arg in ("--set", item)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "only sample.*, eval.* and data.root" in evaluate_cli("model.nf=4")
    assert "Inception-v3 weights" in evaluate_cli("eval.features=inception", "eval.metrics=is")
    assert not (tmp_path / "e").exists()  # refused before anything was written


def test_a_folder_of_images_is_a_reference(digits_checkpoint, tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    run = _run(
        digits_checkpoint, "eval.num_samples=6", "eval.metrics=fid,kid", f"eval.reference={folder}"
    )
    results = evaluate(run, tmp_path / "e", extractor=GreyTiny())
    assert "ref [9 images" in results["reference"] and results["metrics"]["fid"] > 0
    assert np.isfinite(results["metrics"]["kid"])


class GreyTiny(TinyFeatures):
    """Folder images are read as RGB; the tiny extractor sees their grey mean."""

    def __call__(self, images):
        return super().__call__(images.mean(dim=1, keepdim=True))


@pytest.mark.slow
def test_two_processes_evaluate_like_one(digits_checkpoint, tmp_path):
    def command(nproc: int, out):
        cmd = (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={nproc}",
                "-m",
                "scoresde",
            ]
            if nproc > 1
            else [sys.executable, "-m", "scoresde"]
        )
        cmd += [
            "evaluate",
            "--checkpoint",
            str(digits_checkpoint),
            "--out",
            str(out),
            "--num-samples",
            "10",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ]
        for item in FAST:
            cmd += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr
        return json.loads((out / "results.json").read_text())

    one, two = command(1, tmp_path / "one"), command(2, tmp_path / "two")
    assert two["num_devices"] == 2 and one["num_devices"] == 1
    a = np.load(tmp_path / "one" / "samples.npz")["samples"]
    b = np.load(tmp_path / "two" / "samples.npz")["samples"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("fid", "is", "kid"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], rel=1e-4, abs=1e-6)
    assert one["bpd"]["per_example"] == pytest.approx(two["bpd"]["per_example"], rel=1e-6)
    assert one["bpd"]["mean"] == pytest.approx(two["bpd"]["mean"], rel=1e-6)
