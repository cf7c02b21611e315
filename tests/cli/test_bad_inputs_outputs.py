"""Issue 19, the rest: non-finite samples refused with status 1 and nothing written, colour
images for a grey model, each sampler's own step count, a finished demo left alone by
``train``, progress in integration time, and help that says what the commands do."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.cli import main
from scoresde.setup.config_io import load_config

TINY = ["--no-progress", "--device", "cpu", "--threads", "1",
        "--set", "model.hidden=32", "--set", "model.depth=2", "--set", "train.batch_size=64"]
QUIET = ["--no-progress", "--threads", "1"]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons") / "run"
    assert main(["train", "--preset", "toy_moons", "--out", str(out), "--steps", "4", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from scoresde.jobs.training.loop import train
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = apply_overrides(
        get_preset("digits_subvp"),
        ["train.steps=2", "train.batch_size=16", "model.nf=8", "device=cpu"],
    )
    return train(cfg, out, progress=False).checkpoint


@pytest.fixture(scope="module")
def diverged(digits, tmp_path_factory):
    """The digits checkpoint with every weight NaN: a diverged run."""
    from scoresde.infra.checkpoint import load_checkpoint, save_checkpoint

    def nan(state):
        return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in state.items()}

    ckpt = load_checkpoint(digits)
    path = tmp_path_factory.mktemp("diverged") / "checkpoint.safetensors"
    return save_checkpoint(path, model=nan(ckpt.model), ema=nan(ckpt.ema) if ckpt.ema else None,
                           step=ckpt.step, config=ckpt.config)


def _files(folder):
    if not folder.exists():
        return {}
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def run(capsys, *argv, code=0, folder=None, lines=None):
    """``scoresde argv`` with its exit status checked (and, given ``folder``, that no file
    under it changed; given ``lines``, the number of stderr lines); ``(stdout, stderr)``."""
    before = _files(folder) if folder is not None else None
    start = time.perf_counter()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert status == code, err
    assert time.perf_counter() - start < 20
    if lines is not None:
        assert len(err.strip().splitlines()) == lines, err
        assert "Traceback" not in err
    if folder is not None:
        assert _files(folder) == before
    return out, err


# ---- 3. non-finite samples: status 1, one line, nothing written ---------------------------


def test_sample_of_a_diverged_model_exits_1_and_writes_nothing(diverged, tmp_path, capsys):
    out = tmp_path / "s"
    _, err = run(capsys, "sample", "--checkpoint", diverged, "--out", out, "--num-samples", "4",
                 "--set", "sample.num_steps=2", *QUIET, code=1, folder=tmp_path, lines=1)
    assert "4 of 4 samples made by pc are NaN or infinite (the first is sample 0)" in err
    assert "weights hold NaN or infinite values" in err and not out.exists()


def test_non_finite_samples_leave_earlier_samples_alone(digits, diverged, tmp_path, capsys):
    out, common = tmp_path / "s", ["--num-samples", "3", "--set", "sample.num_steps=2", *QUIET]
    run(capsys, "sample", "--checkpoint", digits, "--out", out, *common)
    run(capsys, "sample", "--checkpoint", diverged, "--out", out, *common, "--overwrite",
        code=1, folder=out, lines=1)


def test_evaluate_of_a_diverged_model_exits_1_without_results(diverged, tmp_path, capsys):
    out = tmp_path / "e"
    _, err = run(capsys, "evaluate", "--checkpoint", diverged, "--out", out, "--num-samples", "4",
                 "--set", "sample.num_steps=2", "--set", "eval.metrics=fid", *QUIET, code=1,
                 lines=1)
    assert "NaN or infinite" in err
    assert not (out / "results.json").exists() and not (out / "samples.npz").exists()
    assert not list(out.rglob("*.npz"))


def test_inpaint_of_a_diverged_model_exits_1_and_writes_nothing(diverged, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((2, 8, 8), np.float32))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask.png")
    _, err = run(capsys, "inpaint", "--checkpoint", diverged, "--images", tmp_path / "in.npy",
                 "--mask", tmp_path / "mask.png", "--out", tmp_path / "x",
                 "--set", "sample.num_steps=2", *QUIET, code=1, folder=tmp_path, lines=1)
    assert "2 of 2 images made by pc are NaN or infinite" in err


def test_the_demo_stops_before_its_pictures_on_non_finite_samples(tmp_path, capsys,
                                                                 monkeypatch):
    def nan_sampler(sde, score_fn, x_T, **kwargs):
        return torch.full_like(x_T, float("nan")), {"nfe": 1, "num_steps": 1}

    monkeypatch.setattr("scoresde.jobs.runs.sample", nan_sampler)
    out = tmp_path / "demo"
    _, err = run(capsys, "demo", "--out", out, "--steps", "2", "--set", "model.nf=8",
                 "--set", "train.batch_size=16", "--device", "cpu", *QUIET, code=1, lines=1)
    assert "64 of 64 samples made by edm are NaN or infinite" in err  # the fast sampler, first
    assert "the sampler diverged on this model" in err
    assert (out / "checkpoint.safetensors").exists()  # the training stays: a rerun resumes
    assert not list(out.glob("samples_*")) and not (out / "report.json").exists()


def test_the_likely_cause_names_a_large_guidance_scale():
    from scoresde.jobs.finite import NonFiniteSamplesError, check_finite

    model = torch.nn.Linear(2, 2)
    x = torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [float("nan"), 1.0]])
    with pytest.raises(NonFiniteSamplesError, match=r"2 of 3 samples made by heun .* first is "
                       r"sample 11\); likely cause: the guidance scale 1e\+06 is too large"):
        check_finite(x, model, method="heun", guidance=1e6, first_index=10)
    check_finite(x[:1], model)  # finite: nothing to say


# ---- 5. colour images for a one-channel model: converted, with a note ---------------------


def test_a_colour_image_for_a_grey_model_is_converted_with_a_note(digits, tmp_path, capsys):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "digit_rgb.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "digit_grey.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask.png")
    common = ["--mask", tmp_path / "mask.png", "--set", "sample.num_steps=2", *QUIET]
    _, err = run(capsys, "inpaint", "--checkpoint", digits, "--images", tmp_path / "digit_rgb.png",
                 "--out", tmp_path / "a", *common, lines=1)
    assert "scoresde inpaint: note: images" in err and "converted to grey" in err
    result = np.load(tmp_path / "a" / "inpainted.npy")
    np.testing.assert_allclose(result, np.full((1, 1, 8, 8), 85 / 255), atol=1e-6)  # all known
    _, err = run(capsys, "inpaint", "--checkpoint", digits, "--images",
                 tmp_path / "digit_grey.png", "--out", tmp_path / "b", *common)
    assert "note" not in err


def test_three_channel_arrays_are_converted_with_a_note_when_they_differ():
    from scoresde.jobs.image_jobs import images_for_model
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    cfg = apply_overrides(get_preset("digits_subvp"), [])
    notes = []
    colour = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grey = images_for_model(colour, cfg, "x.npy", note=notes.append)
    assert grey.shape == (2, 1, 8, 8) and torch.allclose(grey[:, 0], colour.mean(1))
    assert len(notes) == 1 and "x.npy are in colour (3 channels)" in notes[0]
    images_for_model(colour[:, :1].expand(-1, 3, -1, -1), cfg, "y.npy", note=notes.append)
    assert len(notes) == 1


# ---- 6. each sampler's own step count ------------------------------------------------------


@pytest.mark.parametrize("argv, steps, nfe, grid", [
    (["--method", "heun"], 9, 19, "log_snr"),
    (["--method", "dpmpp_2m"], 19, 20, "log_snr"),
    (["--method", "ddim"], 19, 20, "uniform"),
    (["--method", "edm"], 9, 19, "edm"),
    (["--set", "sample.method=dpmpp_3m"], 19, 20, "log_snr"),
    (["--method", "heun", "--set", "sample.num_steps=4"], 4, 9, "log_snr"),
    (["--method", "pc", "--set", "sample.num_steps=3"], 3, 7, "uniform"),
])
def test_each_sampler_takes_its_own_steps(argv, steps, nfe, grid, moons, tmp_path, capsys):
    out = tmp_path / "s"
    stdout, _ = run(capsys, "sample", "--checkpoint", moons, "--out", out, "--num-samples", "4",
                    *argv, *QUIET)
    info = json.loads(stdout)
    assert (info["num_steps"], info["nfe"]) == (steps, nfe)
    saved = load_config(out / "config.json").sample
    assert (saved.num_steps, saved.grid) == (steps, grid)


def test_the_table_is_the_library_default_and_in_help(capsys):
    from scoresde.core.sampler_options import OPTIONS
    from scoresde.setup.build import sampler_config
    from scoresde.setup.config import SampleConfig

    assert SampleConfig().num_steps is None  # PC: the SDE's N, the paper's 1000
    assert [OPTIONS[m]().num_steps for m in ("ddim", "heun", "dpmpp_2m", "edm")] == [19, 9, 19, 9]
    assert SampleConfig().updated(method="heun").num_steps == 9
    assert sampler_config(SampleConfig(num_steps=500), "pc")[1]["num_steps"] == 500
    assert sampler_config(SampleConfig(num_steps=500), "heun")[1] == {}  # heun's own defaults
    assert sampler_config(SampleConfig(method="heun", num_steps=30))[1]["num_steps"] == 30
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    assert "heun         9 steps, log_snr grid (19 NFE)" in text
    assert "dpmpp_2m    19 steps, log_snr grid (20 NFE)" in text
    assert "pc        the SDE's N steps (1000 in the paper's presets: 2001 NFE)" in text


# ---- 7. a finished demo is not continued by train ------------------------------------------


def test_train_refuses_a_finished_demo_unless_overwrite(moons, tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(moons, demo)
    (demo / "report.json").write_text("{}")
    _, err = run(capsys, "train", "--preset", "toy_moons", "--out", demo, "--steps", "8", *TINY,
                 code=2, folder=demo, lines=1)
    assert "already holds a finished demo (report.json)" in err and "--overwrite" in err
    stdout, _ = run(capsys, "train", "--preset", "toy_moons", "--out", demo, "--steps", "2",
                    *TINY, "--overwrite")
    assert json.loads(stdout)["resumed_from"] == 0 and not (demo / "report.json").exists()


# ---- 8. progress in integration time -------------------------------------------------------


def test_long_jobs_show_progress(moons, digits, tmp_path, capsys):
    _, err = run(capsys, "likelihood", "--checkpoint", moons, "--num-examples", "8", "--threads",
                 "1", "--set", "eval.rtol=1e-2", "--set", "eval.atol=1e-2",
                 "--set", "eval.batch_size=4")
    assert "likelihood" in err and "2.00/2" in err and "nfe=" in err
    _, err = run(capsys, "sample", "--checkpoint", moons, "--out", tmp_path / "s", "--method",
                 "ode", "--num-samples", "4", "--threads", "1", "--set", "sample.ode_rtol=1e-2",
                 "--set", "sample.ode_atol=1e-2")
    assert "ODE sampling" in err and "1.00/1" in err and "t=0.001" in err
    np.save(tmp_path / "in.npy", np.zeros((2, 8, 8), np.float32))
    _, err = run(capsys, "encode", "--checkpoint", digits, "--images", tmp_path / "in.npy",
                 "--out", tmp_path / "z", "--threads", "1", "--set", "sample.ode_rtol=1e-2",
                 "--set", "sample.ode_atol=1e-2")
    assert "encode" in err and "decode" in err and "1.00/1" in err


# ---- 9. help and docs that say what the commands do ----------------------------------------


def _help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_says_what_the_commands_do(capsys):
    text = _help(capsys, "evaluate")
    assert "digits presets: fid,is,kid,bpd" in text and "1000 for the digits presets" in text
    text = _help(capsys, "demo")
    assert "samples_pc.png" in text and "report.json" in text and "snapshots/" not in text
    for command in ("sample", "likelihood", "evaluate", "encode", "interpolate", "inpaint",
                    "colorize"):
        assert "--checkpoint CHECKPOINT a trained run: its folder or its checkpoint" in (
            _help(capsys, command)
        ), command
    text = _help(capsys, "inpaint")
    assert "Image.fromarray(m).save('mask.png')" in text and "--images IMAGES, --image" in text


def test_the_readme_examples_use_files_it_says_how_to_make():
    text = README.read_text()
    assert "digits.npy" not in text
    assert "--images runs/demo/samples_ode.npy" in text and "Image.fromarray(m).save" in text
    assert "NaN" in text and "/proc" in text  # the bad-input paragraph lists the checks
