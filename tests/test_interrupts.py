"""Interrupted training loses nothing: Ctrl-C/SIGTERM checkpoint and exit; kill -9 never corrupts.

Each test then runs the same command again to completion and checks that the weights equal
those of an uninterrupted run, bit for bit (same machine, one thread).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde.checkpoint import load_checkpoint
from scoresde.cli import main

pytestmark = pytest.mark.slow

TRAIN = [
    "train",
    "--preset",
    "toy_moons",
    "--no-progress",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--set",
    "model.hidden=32",
    "--set",
    "model.depth=2",
    "--set",
    "train.batch_size=64",
]

# Runs the CLI in a child process; with SCORESDE_TEST_KILL_AT=<call>:<n> the child kills itself
# with SIGKILL at the n-th call of os.fsync or os.replace: inside a checkpoint write, after the
# temporary file is written (fsync) or just before it is renamed into place (replace).
CHILD = """
import os, signal, sys
where, _, n = os.environ.get("SCORESDE_TEST_KILL_AT", "::").partition(":")
if where:
    real, count = getattr(os, where), [0]
    def patched(*args):
        count[0] += 1
        if count[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    setattr(os, where, patched)
from scoresde.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(argv, **env):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, argv)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _finish(argv):
    proc = _start(argv)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


def _assert_same_checkpoint(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for key in ca.model:
        assert torch.equal(ca.model[key], cb.model[key]), key
    for key in ca.ema:
        assert torch.equal(ca.ema[key], cb.ema[key]), key


def _straight(tmp_path, argv):
    ref = tmp_path / "straight"
    assert main([*TRAIN, "--out", str(ref), *argv]) == 0
    return ref / "checkpoint.safetensors"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_the_same_command_resumes(signum, tmp_path):
    out = tmp_path / "run"
    argv = [*TRAIN, "--out", out, "--steps", "500", "--set", "train.checkpoint_every=0"]
    proc = _start(argv)
    _wait_for(out / "config.json")  # written just before the first step
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    step = load_checkpoint(out / "checkpoint.safetensors").step
    assert 0 < step < 500 and f"at step {step}" in lines[0]
    result = _finish(argv)
    assert (result["resumed_from"], result["steps"]) == (step, 500)
    _assert_same_checkpoint(
        out / "checkpoint.safetensors", _straight(tmp_path, argv[len(TRAIN) + 2 :])
    )


def test_kill_9_anywhere_never_corrupts_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    argv = [*TRAIN, "--out", out, "--steps", "300", "--set", "train.checkpoint_every=1"]
    ckpt = out / "checkpoint.safetensors"
    rng = random.Random(0)
    kills = [{"SCORESDE_TEST_KILL_AT": "fsync:5"}, {"SCORESDE_TEST_KILL_AT": "replace:3"}]
    kills += [{} for _ in range(3)]  # and at random times during training
    steps = []
    for env in kills:
        proc = _start(argv, **env)
        if not env:
            _wait_for(ckpt)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.kill()
        proc.communicate(timeout=120)
        if proc.returncode == 0:  # finished before the kill: nothing left to interrupt
            break
        assert proc.returncode == -signal.SIGKILL
        # Whatever is left loads, and no partial file ever sits under the checkpoint's name.
        if ckpt.exists():
            steps.append(load_checkpoint(ckpt).step)
        json.loads((out / "config.json").read_text())
    assert steps and steps == sorted(steps) and steps[-1] > 0
    result = _finish(argv)
    assert result["steps"] == 300 and result["resumed_from"] >= steps[-1]
    _assert_same_checkpoint(ckpt, _straight(tmp_path, argv[len(TRAIN) + 2 :]))
