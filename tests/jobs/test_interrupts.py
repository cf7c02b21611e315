"""Interrupted training loses nothing: Ctrl-C/SIGTERM checkpoint and exit; kill -9 never corrupts.

Each test then runs the same command again to completion and checks that the weights equal
those of an uninterrupted run, bit for bit (same machine, one thread).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde.cli import main
from scoresde.infra.checkpoint import load_checkpoint

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

# Runs the CLI in a child process. With SCORESDE_TEST_KILL_AT=<call>:<n> the child kills itself
# with SIGKILL at the n-th call of os.fsync or os.replace: inside a checkpoint write, after the
# temporary file is written (fsync) or just before it is renamed into place (replace). With
# SCORESDE_TEST_SIGNAL_AT=<step>:<signum> it sends itself that signal right after training step
# <step> (SIGKILL too): at a fixed step, never raced against a timer.
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
at, _, signum = os.environ.get("SCORESDE_TEST_SIGNAL_AT", "::").partition(":")
if at:
    import scoresde.jobs.training.loop as loop
    real_step = loop.train_step
    def step(state, *args, **kwargs):
        out = real_step(state, *args, **kwargs)
        if state.step == int(at):
            os.kill(os.getpid(), int(signum))
        return out
    loop.train_step = step
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


@pytest.mark.parametrize(
    ("signum", "sync_every", "stopped_at"),
    [(signal.SIGINT, 1, 17), (signal.SIGTERM, 1, 17), (signal.SIGTERM, 5, 20)],
)
def test_a_signal_saves_a_checkpoint_and_the_same_command_resumes(
    signum, sync_every, stopped_at, tmp_path
):
    # The signal arrives after step 17; the run stops at the ranks' next vote (every step on
    # the CPU by default; after step 20 with sync_every=5) and saves that step.
    out = tmp_path / "run"
    argv = [*TRAIN, "--out", out, "--steps", "40", "--set", "train.checkpoint_every=0",
            "--set", f"train.sync_every={sync_every}"]
    proc = _start(argv, SCORESDE_TEST_SIGNAL_AT=f"17:{int(signum)}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    assert load_checkpoint(out / "checkpoint.safetensors").step == stopped_at
    assert f"at step {stopped_at}" in lines[0]
    result = _finish(argv)
    assert (result["resumed_from"], result["steps"]) == (stopped_at, 40)
    _assert_same_checkpoint(
        out / "checkpoint.safetensors", _straight(tmp_path, argv[len(TRAIN) + 2 :])
    )


def test_kill_9_anywhere_never_corrupts_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    argv = [*TRAIN, "--out", out, "--steps", "300", "--set", "train.checkpoint_every=1"]
    ckpt = out / "checkpoint.safetensors"
    kills = [{"SCORESDE_TEST_KILL_AT": "fsync:5"}, {"SCORESDE_TEST_KILL_AT": "replace:3"}]
    # and between steps, at fixed steps of the resumed runs
    kills += [{"SCORESDE_TEST_SIGNAL_AT": f"{k}:{int(signal.SIGKILL)}"} for k in (37, 121, 250)]
    steps = []
    for env in kills:
        proc = _start(argv, **env)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        # Whatever is left loads, and no partial file ever sits under the checkpoint's name.
        if ckpt.exists():
            steps.append(load_checkpoint(ckpt).step)
        json.loads((out / "config.json").read_text())
    # A kill inside a write keeps the checkpoint before it; a kill after step k (whose
    # checkpoint was written just before) keeps step k - 1 or k.
    assert steps == sorted(steps) and steps[-3] in (36, 37) and steps[-1] in (249, 250), steps
    result = _finish(argv)
    assert result["steps"] == 300 and result["resumed_from"] == steps[-1]
    _assert_same_checkpoint(ckpt, _straight(tmp_path, argv[len(TRAIN) + 2 :]))
