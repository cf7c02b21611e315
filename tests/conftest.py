"""Shared fixtures: the official reference vectors, and single-threaded torch for small tensors."""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from scoresde.core.mixture import GaussianMixture


def reference_dir() -> Path:
    """The reference folder: ``$SCORESDE_REFERENCE_DIR``, else ``<repo>/../shared/reference``."""
    env = os.environ.get("SCORESDE_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Caches (the digits classifier) go to a session folder, never the user's home; the
    subprocesses of tests inherit it."""
    previous = os.environ.get("SCORESDE_CACHE")
    os.environ["SCORESDE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("SCORESDE_CACHE", None)
    else:
        os.environ["SCORESDE_CACHE"] = previous


@pytest.fixture(scope="session")
def reference_path():
    """A function ``name -> Path`` inside the reference folder; skips when the file is absent."""

    def path(name: str) -> Path:
        p = reference_dir() / name
        if not p.is_file():
            pytest.skip(
                f"official reference file {p} is absent (set SCORESDE_REFERENCE_DIR to the folder "
                "holding the reference vectors, normally ../shared/reference)"
            )
        return p

    return path


class Recorder:
    """A stand-in network: records what it is called with and returns ``3 x + 0.5`` (+ the
    ``shift`` keyword, when given)."""

    def __init__(self):
        self.labels = []
        self.kwargs = []

    def __call__(self, x, labels, **kwargs):
        self.labels.append(labels)
        self.kwargs.append(kwargs)
        return 3 * x + 0.5 + kwargs.get("shift", 0.0)


@pytest.fixture
def official_checkpoint(reference_path, tmp_path):
    """The official two-step NCSN++ checkpoint with its config beside it, copied to tmp_path."""
    import shutil

    src = tmp_path / "official.pth"
    shutil.copy(reference_path("ncsnpp_ve_nf8_checkpoint.pth"), src)
    shutil.copy(
        reference_path("ncsnpp_ve_nf8_checkpoint.config.json"), tmp_path / "official.config.json"
    )
    return src


@pytest.fixture(scope="session")
def sde_reference(reference_path):
    """``sde.pt``: the official SDE outputs on fixed inputs (see shared/reference/README.md)."""
    return torch.load(reference_path("sde.pt"), weights_only=True)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread (small tensors: threads only add overhead)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# A check that samples follow a Gaussian mixture (whose perturbed scores are closed form)
# --------------------------------------------------------------------------------------------


def check_mixture_samples(
    x: torch.Tensor, mix: GaussianMixture, *, weight_bias: float, mean_bias: float,
    std_bias: float,
) -> None:
    """Assert the samples' first-component weight and each mode's mean and (pooled) std match
    ``mix`` within 4 Monte-Carlo standard errors plus the given allowances for sampler bias."""
    assert torch.isfinite(x).all()
    n, d = x.shape
    # assign each sample to its most probable component (Bayes rule under the clean mixture)
    log_r = torch.stack([
        math.log(w) - ((x - mu) ** 2).sum(1) / (2 * sd**2) - d * math.log(sd)
        for w, mu, sd in zip(mix.weights.tolist(), mix.means, mix.stds.tolist(), strict=True)
    ], 1)
    k = log_r.argmax(1)
    w0 = float((k == 0).double().mean())
    w_true = float(mix.weights[0])
    assert abs(w0 - w_true) < 4 * math.sqrt(w_true * (1 - w_true) / n) + weight_bias, w0
    for j in range(len(mix.weights)):
        xs = x[k == j]
        nj, sd = xs.shape[0], float(mix.stds[j])
        err_mean = (xs.mean(0) - mix.means[j]).abs().max()
        assert float(err_mean) < 4 * sd / math.sqrt(nj) + mean_bias, (j, xs.mean(0))
        pooled_std = float(((xs - xs.mean(0)) ** 2).sum() / (xs.numel() - d)) ** 0.5
        rel_se = 1 / math.sqrt(2 * xs.numel())
        assert abs(pooled_std / sd - 1) < 4 * rel_se + std_bias, (j, pooled_std, sd)


@pytest.fixture(scope="session")
def check_mixture():
    """:func:`check_mixture_samples` as a fixture (test modules do not import each other)."""
    return check_mixture_samples


@pytest.fixture(scope="session")
def fake_cifar10_tarball(tmp_path_factory):
    """A tiny ``cifar-10-python.tar.gz``: the real layout, 5 train batches + test, 8 images each."""
    import io
    import pickle
    import tarfile

    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cifar10") / "cifar-10-python.tar.gz"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, 8).tolist()}
            payload = pickle.dumps(batch, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def poison_loss(monkeypatch):
    """``poison_loss(k)``: the k-th loss call of training (a step with one micro-batch) returns
    NaN; returns the call counter, which a test may reset (``counter["n"] = 0``)."""
    import scoresde.jobs.training.objectives as objectives

    real_build_loss = objectives.build_loss
    calls = {"n": 0, "at": None}

    def poisoned(cfg, sde):
        loss_fn = real_build_loss(cfg, sde)

        def loss(score_fn, x0, generator):
            calls["n"] += 1
            value = loss_fn(score_fn, x0, generator)
            return value * float("nan") if calls["n"] == calls["at"] else value

        return loss

    def arm(at: int) -> dict:
        calls["at"] = at
        monkeypatch.setattr(objectives, "build_loss", poisoned)
        return calls

    return arm


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def load_benchmark():
    """``load_benchmark("name")`` imports ``benchmarks/name.py`` as a module, with the scripts'
    folder on ``sys.path`` (they import their siblings) for the test module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))
