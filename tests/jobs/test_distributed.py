"""Training on several processes: torchrun (gloo on CPU), the batch layout, NaN stops.

A distributed step is the same computation as a one-process step with the same global batch:
each rank takes its rows of the batch and of the batch's noise draws, and gradients are
averaged. So weights agree to float rounding (the order of the gradient sum differs).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde.cli import main
from scoresde.core.seeding import BatchRows
from scoresde.infra.checkpoint import load_checkpoint
from scoresde.jobs.training.loop import NonFiniteLossError, train
from scoresde.jobs.training.state import batch_layout
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.presets import get_preset

TOY = ["train.log_every=5", "train.checkpoint_every=4", "train.batch_size=64"]
SETS = [arg for item in TOY for arg in ("--set", item)]


def _toy(steps: int, *extra: str):
    return apply_overrides(get_preset("toy_moons"), [f"train.steps={steps}", *TOY, *extra])


def _max_weight_difference(a, b) -> float:
    wa, wb = load_checkpoint(a).model, load_checkpoint(b).model
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_rows_of_a_batch_draw_what_the_whole_batch_draws():
    def parts(draw, cuts):
        out = []
        for lo, hi in itertools.pairwise(cuts):
            rows = BatchRows(torch.Generator().manual_seed(7), 10, lo, hi)
            out.append(torch.cat([draw(rows, hi - lo, k) for k in range(3)], dim=1))
        return torch.cat(out)

    def draw(rows, n, k):
        if k == 0:
            return rows.randn((n, 2))
        if k == 1:
            return rows.rand((n, 3))
        return rows.randint(5, (n, 1)).float()

    whole = parts(draw, [0, 10])
    assert torch.equal(parts(draw, [0, 3, 10]), whole)
    assert torch.equal(parts(draw, [0, 5, 7, 10]), whole)
    with pytest.raises(ValueError, match="a draw of 4 rows from a part of 3 rows"):
        BatchRows(torch.Generator(), 10, 0, 3).randn((4, 2))


def test_batch_layout_splits_the_global_batch_into_chunks():
    tc = _toy(1, "train.device_batch_size=8").train
    layout = batch_layout(tc, rank=1, world_size=2)
    assert layout.accumulation == 4 and layout.rank_rows == slice(32, 64)
    assert [c for c, _ in layout.chunks()] == [4, 5, 6, 7]
    assert layout.chunks()[0][1] == slice(32, 40)
    assert batch_layout(_toy(1).train, world_size=4).device_batch == 16
    with pytest.raises(ValueError, match="does not split over 3 device"):
        batch_layout(tc, world_size=3)


def test_gradient_accumulation_gives_the_one_batch_weights(tmp_path):
    whole = train(_toy(6), tmp_path / "whole", progress=False)
    accumulated = train(_toy(6, "train.device_batch_size=16"), tmp_path / "acc", progress=False)
    assert [s for s, _ in whole.losses] == [s for s, _ in accumulated.losses]
    for (_, a), (_, b) in zip(whole.losses, accumulated.losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert _max_weight_difference(whole.checkpoint, accumulated.checkpoint) < 1e-5


def _torchrun(nproc: int, out, steps: int, *extra: str, **popen):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        "scoresde",
        "train",
        "--preset",
        "toy_moons",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--device",
        "cpu",
        "--no-progress",
        "--threads",
        "1",
    ]
    for item in (*TOY, *extra):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


@pytest.mark.slow
def test_two_processes_train_the_one_process_weights_and_resume_after_sigterm(tmp_path):
    single = train(_toy(12), tmp_path / "single", progress=False)
    proc = _torchrun(2, tmp_path / "two", 12)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 12
    assert (
        _max_weight_difference(single.checkpoint, tmp_path / "two" / "checkpoint.safetensors")
        < 1e-5
    )
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 12]

    # Preemption: SIGTERM to torchrun reaches both ranks; they stop at the same step, rank 0
    # saves, and the same command resumes to the uninterrupted weights.
    proc = _torchrun(2, tmp_path / "preempted", 400, start_new_session=True)
    deadline = time.time() + 120
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted by SIGTERM at step" in err, err
    stopped_at = load_checkpoint(tmp_path / "preempted" / "checkpoint.safetensors").step
    assert 10 <= stopped_at < 400
    target = stopped_at + 6
    resumed = _torchrun(2, tmp_path / "preempted", target)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    straight = train(_toy(target), tmp_path / "straight", progress=False)
    resumed_ckpt = tmp_path / "preempted" / "checkpoint.safetensors"
    assert _max_weight_difference(straight.checkpoint, resumed_ckpt) < 1e-5


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, poison_loss, capsys):
    calls = poison_loss(7)
    with pytest.raises(
        NonFiniteLossError,
        match="loss nan at step 7; the last good checkpoint "
        r"\(step 4\)",
    ):
        train(_toy(20), tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").step == 4
    assert torch.isfinite(
        next(iter(load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").model.values()))
    ).all()

    calls["n"] = 0
    code = main(
        [
            "train",
            "--preset",
            "toy_moons",
            "--out",
            str(tmp_path / "cli"),
            "--steps",
            "20",
            "--no-progress",
            *SETS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "at step 7" in err and "Traceback" not in err


def test_a_corrupt_checkpoint_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    train(_toy(4), run, progress=False)
    ckpt = run / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code = main(
        [
            "train",
            "--preset",
            "toy_moons",
            "--out",
            str(run),
            "--steps",
            "8",
            "--no-progress",
            *SETS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ckpt) in err, err


def test_speed_switches_train_the_same_weights_and_may_change_on_resume(tmp_path):
    base = [
        "train.steps=3",
        "train.batch_size=8",
        "model.nf=8",
        "device=cpu",
        "train.checkpoint_every=0",
    ]
    plain_cfg = apply_overrides(get_preset("digits_vp"), base)
    plain = train(plain_cfg, tmp_path / "plain", progress=False)
    fast_cfg = apply_overrides(
        plain_cfg, ["train.channels_last=true", "train.activation_checkpointing=true"]
    )
    fast = train(fast_cfg, tmp_path / "fast", progress=False)
    assert _max_weight_difference(plain.checkpoint, fast.checkpoint) < 1e-5
    # A resumed run may switch them off (other hardware after a preemption).
    more = train(apply_overrides(plain_cfg, ["train.steps=5"]), tmp_path / "fast", progress=False)
    assert more.resumed_from == 3 and more.steps == 5
