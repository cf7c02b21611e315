"""Training at scale: hooks that cannot trip the process-group timeout, no per-step host sync.

Each multi-process test starts ``torchrun`` with 2 ``gloo`` processes on a small wrapper script
that patches the package before calling the CLI (rank 0 made slower than the timeout, or calls
counted), so the real command runs in the real distributed set-up.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde.infra.checkpoint import load_checkpoint
from scoresde.jobs.training.loop import NonFiniteLossError, train
from scoresde.jobs.training.step_window import resolve_sync_every
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.presets import get_preset

pytestmark = pytest.mark.slow

SMALL = ["train.batch_size=64", "model.hidden=32", "model.depth=2", "train.tensorboard=false"]

# Rank 0 sleeps SLOW seconds in the first call of each hook's work: longer than the process
# group's timeout, which the test sets to a few seconds.
SLOW_RANK0 = """
import os, sys, time
import scoresde.jobs.training.hooks as hooks
SLOW = float(os.environ["SLOW_SECONDS"])
slept = set()
def slowed(name, real):
    def call(*args, **kwargs):
        if os.environ["RANK"] == "0" and name not in slept:
            slept.add(name)
            time.sleep(SLOW)
        return real(*args, **kwargs)
    return call
for name in ("generate", "likelihood_on_ranks", "save_checkpoint"):
    setattr(hooks, name, slowed(name, getattr(hooks, name)))
from scoresde.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Counts, per training step, our own calls that read a tensor on the host and the collectives.
COUNTING = """
import json, os, sys
import torch, torch.distributed as dist
import scoresde.jobs.training.loop as loop
counts = {"reads": 0, "all_reduce": 0}
package = os.sep + "scoresde" + os.sep
def counted(kind, real):
    def call(*args, **kwargs):
        if kind == "all_reduce" or package in sys._getframe(1).f_code.co_filename:
            counts[kind] += 1
        return real(*args, **kwargs)
    return call
for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
    setattr(torch.Tensor, name, counted("reads", getattr(torch.Tensor, name)))
dist.all_reduce = counted("all_reduce", dist.all_reduce)
per_step = []
real_step = loop.train_step
def step(state, *args, **kwargs):
    per_step.append({"step": state.step, **counts})
    return real_step(state, *args, **kwargs)
loop.train_step = step
from scoresde.cli import main
code = main(sys.argv[1:])
per_step.append({"step": "end", **counts})
with open(os.environ["COUNTS_FILE"] + os.environ["RANK"], "w") as f:
    json.dump(per_step, f)
sys.exit(code)
"""


def _torchrun(tmp_path, script: str, out, steps: int, sets, **env):
    path = tmp_path / "wrapper.py"
    path.write_text(textwrap.dedent(script))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(path), "train", "--preset", "toy_moons", "--out", str(out), "--steps", str(steps),
           "--device", "cpu", "--no-progress", "--threads", "1"]
    for item in (*SMALL, *sets):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(path):
    return load_checkpoint(path).model


def test_hooks_slower_than_the_process_group_timeout_do_not_stall_two_ranks(tmp_path):
    # A 3-second process-group timeout; rank 0 sleeps 4 s in its first sample grid, its first
    # evaluation and its first checkpoint. Collective-safe hooks: the run finishes, and its
    # weights, grids and likelihoods are those of one process.
    sets = ["train.dist_timeout_minutes=0.05", "train.sample_every=4", "train.eval_every=4",
            "train.checkpoint_every=4", "train.log_every=4", "sample.method=heun",
            "sample.num_steps=3", "sample.num_samples=10", "eval.method=rk4", "eval.num_steps=3",
            "eval.num_examples=12"]
    proc = _torchrun(tmp_path, SLOW_RANK0, tmp_path / "two", 8, sets, SLOW_SECONDS="4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one"
    single = train(apply_overrides(get_preset("toy_moons"), ["train.steps=8", *SMALL, *sets]),
                   one, progress=False)
    two = tmp_path / "two"
    wa, wb = _weights(single.checkpoint), _weights(two / "checkpoint.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    for step in (4, 8):
        name = f"samples/step_{step:07d}.npy"
        a, b = np.load(one / name), np.load(two / name)
        assert a.shape == b.shape == (10, 2)
        np.testing.assert_allclose(b, a, atol=1e-4)
    lines = [[json.loads(s) for s in (run / "eval.jsonl").read_text().splitlines()]
             for run in (one, two)]
    assert [line["step"] for line in lines[1]] == [4, 8]
    for a, b in zip(*lines, strict=True):
        assert a["num_examples"] == b["num_examples"] == 12
        assert b["nll_nats"] == pytest.approx(a["nll_nats"], rel=1e-4)


def test_the_old_rank0_hooks_would_have_timed_out(tmp_path):
    # The same sleep inside a collective of the step's group (as rank-0-only hooks were)
    # trips the 3-second timeout: the test above measures something real.
    script = SLOW_RANK0.replace(
        'for name in ("generate", "likelihood_on_ranks", "save_checkpoint"):\n'
        "    setattr(hooks, name, slowed(name, getattr(hooks, name)))",
        "import scoresde.infra.distributed as d\n"
        "d.barrier = slowed('barrier', lambda: d.dist.barrier())",
    )
    proc = _torchrun(tmp_path, script, tmp_path / "run", 4,
                     ["train.dist_timeout_minutes=0.05"], SLOW_SECONDS="6")
    assert proc.returncode != 0
    assert "timed out waiting 3000ms" in proc.stderr.lower(), proc.stderr[-2000:]


def test_two_ranks_read_the_device_and_reduce_only_at_their_votes(tmp_path):
    # sync_every=4 and log_every=6 over 12 steps: votes after steps 4, 6, 8 and 12 (the end).
    sets = ["train.sync_every=4", "train.log_every=6", "train.checkpoint_every=0"]
    counts = tmp_path / "counts"
    proc = _torchrun(tmp_path, COUNTING, tmp_path / "run", 12, sets, COUNTS_FILE=str(counts))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        per_step = json.loads((tmp_path / f"counts{rank}").read_text())
        assert [p["step"] for p in per_step] == [*range(12), "end"]
        # An entry holds the counts when state.step == k, before the step that makes k + 1;
        # from the entry of k - 1 to that of k: the work of step k (k = 2..11).
        for before, after in itertools.pairwise(per_step[1:12]):
            k = after["step"]
            reads, reduces = (after[key] - before[key] for key in ("reads", "all_reduce"))
            expected = 1 if k in (4, 6, 8) else 0
            assert (reads, reduces) == (expected, expected), (rank, k, reads, reduces)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 12]


def test_a_nan_between_votes_names_its_step_and_keeps_the_checkpoint_before_it(
    tmp_path, poison_loss
):
    poison_loss(7)
    # Votes after steps 4 (a checkpoint), 5 (sync), 8 (a checkpoint) ...: the NaN of step 7 is
    # found at the vote after step 8, before its checkpoint is written.
    cfg = apply_overrides(get_preset("toy_moons"), ["train.steps=20", "train.sync_every=5",
                                                     "train.checkpoint_every=4", *SMALL])
    with pytest.raises(NonFiniteLossError, match=r"loss nan at step 7 \(found at the vote after "
                       r"step 8\); the last good checkpoint \(step 4\)") as caught:
        train(cfg, tmp_path / "run", progress=False)
    assert (caught.value.step, caught.value.detected_at) == (7, 8)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert saved.step == 4 and all(torch.isfinite(v).all() for v in saved.model.values())


def test_sync_every_defaults_to_10_on_cuda_and_1_on_the_cpu():
    tc = get_preset("toy_moons").train
    assert tc.sync_every == 0 and tc.tf32 and tc.dist_timeout_minutes == 30
    assert resolve_sync_every(tc, torch.device("cuda")) == 10
    assert resolve_sync_every(tc, torch.device("cpu")) == 1
    explicit = apply_overrides(get_preset("toy_moons"), ["train.sync_every=3"]).train
    assert resolve_sync_every(explicit, torch.device("cuda")) == 3


def test_precision_switches_may_change_on_resume_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--preset", "toy_moons", "--out", str(out), "--no-progress",
            "--device", "cpu", "--threads", "1"]
    for item in SMALL:
        base += ["--set", item]
    assert main([*base, "--steps", "4", "--set", "train.tf32=false"]) == 0
    assert main([*base, "--steps", "6", "--set", "train.bf16=true"]) == 0
    assert main([*base, "--steps", "8", "--set", "train.bf16=true"]) == 0  # no change: no line
    capsys.readouterr()
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    events = [line for line in lines if "event" in line]
    assert events == [{"step": 4, "event": "precision", "tf32": True, "bf16": True,
                       "previous": {"tf32": False, "bf16": False}}]
    assert load_checkpoint(out / "checkpoint.safetensors").step == 8
