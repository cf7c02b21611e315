"""The prepared GPU check (``benchmarks/gpu_check.py``), run in its ``--smoke`` configuration:
the same code paths on the CPU with tiny networks, so the script cannot rot between GPU runs.

The smoke run (one subprocess, ~20 s on 2 cores) must exit 0, print the table and write a JSON
with the device, the versions, every section's elapsed time and exactly the expected rows (the
presets x variants of each section), each a positive finite number in its unit, or, for the
compile variants only, an explicit skip reason. The row bookkeeping (out of memory, errors, the
time budget) and the 80 GB verdict are checked on made-up rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"

TRAIN = ("vp_cifar10_ddpmpp_continuous", "ve_cifar10_ncsnpp_continuous")
TRAIN_VARIANTS = ("fp32", "tf32", "bf16", "bf16+channels_last", "bf16+compile")
MEMORY = ("ve_celebahq_256_ncsnpp_continuous", "ve_ffhq_ncsnpp_continuous")
EVALUATE_ITEM = "16 samples, dpmpp_2m 20 NFE, fid+is+kid"
EXPECTED = {
    **{("train", p, v): "img/s" for p in TRAIN for v in TRAIN_VARIANTS},
    **{("memory", p, v): "GiB RSS" for p in MEMORY for v in ("default", "checkpointing")},
    **{
        ("sample", s, d): "img/s"
        for s in ("dpmpp_2m 20 NFE", "pc 1000 steps")
        for d in ("float32", "bfloat16")
    },
    ("likelihood", "rk4 8 NFE", "float32"): "examples/s",
    # torch-fidelity cannot be imported beside the CPU torch here: the stand-in Inception
    ("evaluate", EVALUATE_ITEM, "stand-in inception"): "s",
}
MAY_SKIP = {("train", p, "bf16+compile") for p in TRAIN}  # torch.compile may be unavailable


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``(stdout, JSON)`` of ``gpu_check.py --smoke --json <tmp>/x.json``."""
    out = tmp_path_factory.mktemp("gpu_check")
    path = out / "x.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(path)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(path.read_text())


@pytest.fixture(scope="module")
def gpu_check(load_benchmark):
    """The script as a module (it imports its sibling ``_common``)."""
    return load_benchmark("gpu_check")


def test_smoke_writes_every_section_with_the_device_and_versions(smoke):
    _, result = smoke
    env = result["environment"]
    assert env["device"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__
    assert result["profile"]["name"] == "smoke"
    assert set(result["sections"]) == {"train", "memory", "sample", "likelihood", "evaluate"}
    for name, section in result["sections"].items():
        assert section["elapsed_s"] > 0, name
    assert 0 < result["elapsed_s"] < result["budget_s"]


def test_smoke_has_exactly_the_expected_rows_each_a_number_or_a_reason(smoke):
    _, result = smoke
    rows = {(r["section"], r["item"], r["variant"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]), "a row appears twice"
    assert set(rows) == set(EXPECTED)
    for key, row in rows.items():
        assert row["unit"] == EXPECTED[key], key
        if row["status"] == "ok":
            assert math.isfinite(row["value"]) and row["value"] > 0, key
            assert row["reason"] == ""
        else:
            assert key in MAY_SKIP, f"{key} was {row['status']}: {row['reason']}"
            assert row["status"] == "skipped" and row["value"] is None
            assert row["reason"].strip() and "\n" not in row["reason"]


def test_smoke_rows_measure_what_they_say(smoke):
    _, result = smoke
    rows = {(r["section"], r["item"], r["variant"]): r for r in result["rows"]}
    for p in TRAIN:
        for v in TRAIN_VARIANTS:
            row = rows["train", p, v]
            if row["status"] != "ok":
                continue
            extra = row["extra"]
            assert extra["batch"] == 2 and math.isfinite(extra["loss"]), (p, v)
            assert len(extra["times_s"]) == result["profile"]["train_steps"]
            assert row["value"] == pytest.approx(2 / (extra["step_ms"] / 1000))
            assert extra["switches"]["tf32"] is (v != "fp32")
            assert extra["switches"].get("bf16", False) is v.startswith("bf16")
    for p in MEMORY:
        for v in ("default", "checkpointing"):
            extra = rows["memory", p, v]["extra"]
            assert extra["reserved_gib"] >= extra["peak_gib"] > 0 and extra["batch"] == 2
    for d in ("float32", "bfloat16"):
        fast = rows["sample", "dpmpp_2m 20 NFE", d]["extra"]
        assert fast["nfe"] == 20
        pc = rows["sample", "pc 1000 steps", d]
        assert pc["extra"]["scaled"] is True and pc["extra"]["nfe"] >= 1001
        assert pc["extra"]["timed_steps"] < 1000 and "scaled from" in pc["note"]
        # the network really ran under bf16 autocast for bfloat16, and not for float32
        assert fast["autocast_in_network"] is (d == "bfloat16")
        assert pc["extra"]["autocast_in_network"] is (d == "bfloat16")
    likelihood = rows["likelihood", "rk4 8 NFE", "float32"]["extra"]
    assert likelihood["nfe"] == 8 and math.isfinite(likelihood["bpd"])
    evaluation = rows["evaluate", EVALUATE_ITEM, "stand-in inception"]["extra"]
    assert evaluation["num_samples"] == 16 and evaluation["nfe"]["max"] == 20
    assert all(math.isfinite(evaluation["metrics"][k]) for k in ("fid", "is", "kid"))
    assert evaluation["seconds"] >= evaluation["evaluate_seconds"] - 0.01 > 0  # rounded to 0.01
    fits = result["verdicts"]["fits_80gb"]
    assert fits["preset"] == "ve_ffhq_ncsnpp_continuous"
    assert set(fits) >= {"default", "checkpointing"}
    assert any("stand-in Inception" in note for note in result["notes"])


def test_smoke_prints_the_table_and_the_section_times(smoke):
    stdout, result = smoke
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:5] == [
        "section", "item", "variant", "value", "unit"])  # fmt: skip
    table = lines[head + 2 : head + 2 + len(result["rows"])]
    assert len(table) == len(EXPECTED)
    for (section, item, variant), unit in EXPECTED.items():
        match = [line for line in table if line.startswith(section) and f" {item} " in line]
        assert any(f" {variant} " in line and f" {unit} " in line for line in match), item
    for name in result["sections"]:
        assert f"[{name}] " in stdout
    assert "fits an 80 GB card" in stdout and "elapsed" in lines[-1]


def _check(gpu_check, tmp_path, **overrides):
    a = argparse.Namespace(json=tmp_path / "x.json", budget=60.0, compile_timeout=10.0)
    check = gpu_check.Check(a, gpu_check.SMOKE, torch.device("cpu"))
    for key, value in overrides.items():
        setattr(check, key, value)
    return check


def test_failures_become_rows_with_a_reason(gpu_check, tmp_path, capsys):
    check = _check(gpu_check, tmp_path)

    def fail(error):
        def fn(timeout):
            raise error

        return fn

    oom = gpu_check.Task("memory", "m", "default", "GiB", fail(gpu_check.OOM_ERRORS[0]("no room")))
    bug = gpu_check.Task("train", "t", "fp32", "img/s", fail(ValueError("bad\nsecond line")))
    nan = gpu_check.Task(
        "sample", "s", "float32", "img/s", lambda t: gpu_check.Row("", "", "", math.nan, "")
    )
    rows = [check.measure(task) for task in (oom, bug, nan)]
    assert [r.status for r in rows] == ["oom", "skipped", "skipped"]
    assert rows[0].reason == "out of memory: OutOfMemoryError: no room"
    assert rows[1].reason == "ValueError: bad" and rows[1].item == "t"
    assert "not a finite number" in rows[2].reason and rows[2].value is None
    check.budget = -1.0
    late = check.measure(gpu_check.Task("likelihood", "l", "float32", "x/s", fail(AssertionError)))
    assert late.status == "skipped" and "time budget" in late.reason
    assert "OOM" in check.table() and "SKIPPED" in check.table()


def test_the_80_gb_verdict(gpu_check, tmp_path):
    check = _check(gpu_check, tmp_path, device=torch.device("cuda"))
    Row, name = gpu_check.Row, gpu_check.FIT_PRESET
    check.rows = [
        Row("memory", name, "default", 70.0, "GiB", extra={"reserved_gib": 79.0}),
        Row("memory", name, "checkpointing", 20.0, "GiB", extra={"reserved_gib": 21.0}),
        Row("memory", "other", "default", None, "GiB", "oom", "out of memory"),
    ]
    check.env["device_memory_gib"] = 139.8
    check.fits_verdict()
    fits = check.verdicts["fits_80gb"]
    assert fits["default"].startswith("no (peak 70.0 GiB allocated, 79.0 GiB reserved)")
    assert fits["checkpointing"].startswith("yes")
    check.rows[0] = Row("memory", name, "default", None, "GiB", "oom", "out of memory")
    check.fits_verdict()
    assert check.verdicts["fits_80gb"]["default"] == "no (OOM)"
    check.env["device_memory_gib"] = 40.0  # an OOM on a smaller card says nothing
    check.fits_verdict()
    assert check.verdicts["fits_80gb"]["default"].startswith("unknown")
