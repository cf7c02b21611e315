"""The command line: every subcommand end to end on tiny settings, and one-line errors."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from scoresde.cli import main

TINY_TRAIN = [
    "--set",
    "train.steps=30",
    "--set",
    "train.batch_size=128",
    "--set",
    "model.hidden=32",
    "--set",
    "model.depth=2",
    "--set",
    "device=cpu",
]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyrun")
    assert (
        main(["train", "--preset", "toy_moons", "--out", str(out), "--no-progress", *TINY_TRAIN])
        == 0
    )
    return out / "checkpoint.safetensors"


@pytest.mark.parametrize("command", ["demo", "train", "sample", "likelihood", "presets", "convert"])
def test_help_gives_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example: scoresde " + command in capsys.readouterr().out


def test_presets_lists_names(capsys):
    code, out, _ = _run(capsys, "presets")
    assert code == 0
    assert "digits_subvp" in out and "toy_moons" in out


def test_train_writes_checkpoint_and_config(toy_checkpoint):
    assert toy_checkpoint.exists()
    cfg = json.loads((toy_checkpoint.parent / "config.json").read_text())
    assert cfg["train"]["steps"] == 30 and cfg["data"]["dataset"] == "moons"


def test_train_edm_training_is_the_library_recipe(tmp_path, capsys):
    """``--edm-training`` is :func:`edm_training` of the preset, before ``--set``: here on VE,
    whose digits preset has a Fourier embedding and sigma scaling that EDM's labels replace."""
    from scoresde.setup.config_io import load_config
    from scoresde.setup.presets import get_preset
    from scoresde.setup.presets.edm import edm_training

    code, _, _ = _run(capsys, "train", "--preset", "digits_ve", "--edm-training", "--out",
                      str(tmp_path), "--steps", "2", "--no-progress", "--device", "cpu",
                      "--set", "train.batch_size=8", "--set", "train.lr=1e-4")
    assert code == 0
    cfg = load_config(tmp_path / "config.json")
    expected = edm_training(get_preset("digits_ve"))
    assert cfg.model == expected.model and cfg.sde == expected.sde
    assert (cfg.train.loss, cfg.train.batch_size, cfg.train.lr) == ("edm", 8, 1e-4)


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_sample_writes_arrays_and_png(method, toy_checkpoint, tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "sample",
        "--checkpoint",
        str(toy_checkpoint),
        "--out",
        str(tmp_path),
        "--method",
        method,
        "--num-samples",
        "50",
        "--no-progress",
        "--set",
        "sample.num_steps=20",
    )
    assert code == 0
    info = json.loads(out)
    assert np.load(tmp_path / "samples.npy").shape == (50, 2)
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert info["pc_steps"] == 20 if method == "pc" else info["nfe"] > 2


def test_likelihood_prints_nll(toy_checkpoint, capsys):
    code, out, _ = _run(
        capsys,
        "likelihood",
        "--checkpoint",
        str(toy_checkpoint),
        "--num-examples",
        "16",
        "--no-progress",
        "--set",
        "eval.rtol=1e-3",
        "--set",
        "eval.atol=1e-3",
    )
    assert code == 0
    result = json.loads(out)
    assert result["num_examples"] == 16 and np.isfinite(result["nll_nats"])


def test_likelihood_with_a_fixed_grid_solver(toy_checkpoint, capsys):
    """``eval.method=rk4`` on ``eval.num_steps`` steps of ``eval.grid`` (docs/likelihood_cost.md):
    exactly 4 drift evaluations per step, the same answer as a tight adaptive solve (the same
    probes: the streams do not depend on the solver), and a fixed-step method without steps is
    refused in one line."""
    common = ("likelihood", "--checkpoint", str(toy_checkpoint), "--num-examples", "16",
              "--no-progress")
    code, out, _ = _run(capsys, *common, "--set", "eval.method=rk4", "--set",
                        "eval.num_steps=24", "--set", "eval.grid=log_snr")
    assert code == 0
    fixed = json.loads(out)
    assert fixed["nfe"] == 96
    code, out, _ = _run(capsys, *common, "--set", "eval.rtol=1e-6", "--set", "eval.atol=1e-6",
                        "--set", "eval.error_norm=joint")
    assert code == 0
    adaptive = json.loads(out)
    assert abs(fixed["nll_nats"] - adaptive["nll_nats"]) < 0.01, (fixed, adaptive)
    code, _, err = _run(capsys, *common, "--set", "eval.method=rk4")
    _one_line_error(code, err)
    assert "eval.num_steps" in err


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    code, _, err = _run(
        capsys, "sample", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)
    )
    _one_line_error(code, err)
    assert "nope.safetensors" in err


def test_corrupt_checkpoint_is_one_line_error_and_left_alone(toy_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    shutil.copy(toy_checkpoint, bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = _run(capsys, "likelihood", "--checkpoint", str(bad))
    _one_line_error(code, err)
    assert bad.read_bytes() == data[: len(data) // 2]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "nope", "--out", "x"],
        ["train", "--preset", "toy_moons", "--out", "x", "--set", "train.steps=many"],
        ["sample", "--checkpoint"],
        ["demo", "--sde", "vv"],
        ["demo", "--training", "dsm"],
        ["demo", "--sde", "edm", "--training", "paper"],
        ["demo", "--num-samples", "1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_are_one_line_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    _one_line_error(code, capsys.readouterr().err)


def test_bad_sample_override_is_one_line_error(toy_checkpoint, tmp_path, capsys):
    code, _, err = _run(
        capsys,
        "sample",
        "--checkpoint",
        str(toy_checkpoint),
        "--out",
        str(tmp_path),
        "--set",
        "train.lr=1",
    )
    _one_line_error(code, err)


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, capsys):
    code, _, _ = _run(
        capsys,
        "demo",
        "--out",
        str(tmp_path),
        "--steps",
        "20",
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        "sample.num_steps=30",
        "--set",
        "eval.num_examples=24",
        "--set",
        "eval.rtol=1e-3",
        "--set",
        "eval.atol=1e-3",
    )
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "sde",
        "train_steps",
        "train_seconds",
        "test_bpd",
        "ode_nfe",
        "fast_nfe",
        "fid_digits_fast",
        "pc_steps",
        "seconds_total",
    ):
        assert key in report
    assert report["train_steps"] == 20 and report["pc_steps"] == 30
    assert report["fast_nfe"] == 19  # the fast sampler: 9 EDM steps and the denoising step
    assert report["training"] == "edm" and report["parametrization"] == "edm"
    assert report["fast_method"] == "edm"
    assert report["fast_sampler_options"] == {"num_steps": 9, "s_churn": 1.0}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["loss"] == "edm" and config["train"]["ema_decay"] == 0.999
    # The report's fast sampler, given to `scoresde sample`, draws the same 64 samples again.
    again = tmp_path / "again"
    redraw = ["--method", report["fast_method"]]
    for key, value in report["fast_sampler_options"].items():
        redraw += ["--set", f"sample.{key}={value}"]
    code, _, _ = _run(capsys, "sample", "--checkpoint", str(tmp_path), "--out", str(again),
                      "--device", "cpu", "--no-progress", *redraw)
    assert code == 0
    np.testing.assert_allclose(np.load(again / "samples.npy")[:, 0],
                               np.load(tmp_path / "samples_fast.npy"), rtol=0, atol=1e-6)
    assert 0 < report["test_bpd"] < 20
    for name in (
        "samples_pc.png",
        "samples_ode.png",
        "samples_fast.png",
        "inpainting.png",
        "loss.png",
        "checkpoint.safetensors",
        "config.json",
    ):
        assert (tmp_path / name).exists(), name
    for name in ("samples_fast.npy", "samples_pc.npy", "samples_ode.npy"):
        arr = np.load(tmp_path / name)
        assert arr.shape == (64, 8, 8) and arr.min() >= 0 and arr.max() <= 1


def test_console_script_is_installed():
    exe = shutil.which("scoresde")
    assert exe is not None
    result = subprocess.run([exe, "presets"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "digits_vp" in result.stdout
