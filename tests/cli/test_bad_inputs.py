"""Bad inputs of every command: one line on stderr, exit status 2, within seconds, before any
network is built or sampler run (the ``no_work`` guard fails the test otherwise), and no file
touched. Issue 19: non-finite images and options, data paths and ``--out`` checked first, one
spelling of the options, seeds and guidance scales."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from scoresde.cli import main

TINY = ["--no-progress", "--device", "cpu", "--threads", "1",
        "--set", "model.hidden=32", "--set", "model.depth=2", "--set", "train.batch_size=64"]


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    """A 4-step toy_moons run folder."""
    out = tmp_path_factory.mktemp("moons") / "run"
    assert main(["train", "--preset", "toy_moons", "--out", str(out), "--steps", "4", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 2-step digits run (a tiny U-Net) and its checkpoint."""
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
def rgb_run(tmp_path_factory):
    """A 1-step RGB run (a tiny DDPM++) trained on a folder of four 8x8 images, which is then
    removed: its data path no longer exists."""
    import shutil

    from scoresde.jobs.training.loop import train
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    root = tmp_path_factory.mktemp("rgb")
    gen = np.random.default_rng(0)
    (root / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / "imgs" / f"{i}.png"
        )
    cfg = apply_overrides(get_preset("vp_cifar10_ddpmpp_continuous"), [
        "data.dataset=folder", f"data.root={root / 'imgs'}", "data.image_size=8", "model.nf=8",
        "model.ch_mult=1", "model.num_res_blocks=1", "train.steps=1", "train.batch_size=4",
        "device=cpu",
    ])
    train(cfg, root / "run", progress=False)
    shutil.rmtree(root / "imgs")
    return root / "run"


@pytest.fixture
def no_work(monkeypatch):
    """Building a network, training or sampling fails the test: the checks come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the checks refused the input")

    monkeypatch.setattr("scoresde.setup.build._build_network", refuse)
    monkeypatch.setattr("scoresde.jobs.training.loop.train", refuse)
    monkeypatch.setattr("scoresde.jobs.runs.sample", refuse)


def _files(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    if not folder.exists():
        return {}
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def refused(capsys, folder, *argv, code=2):
    """Run ``scoresde argv``; check the exit status, one stderr line, the time and that no
    file under ``folder`` changed; return the line."""
    before = _files(folder)
    start = time.perf_counter()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        status = e.code
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert status == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and len(err) < 500, err
    assert elapsed < 10, elapsed
    assert _files(folder) == before
    return err


# ---- 1. non-finite images -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("command", ["encode", "interpolate", "inpaint", "colorize"])
def test_non_finite_images_are_refused_by_every_reader(command, bad, digits, tmp_path, capsys,
                                                       no_work):
    images = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    images[1, 2, 3] = bad
    np.save(tmp_path / "digits_nan.npy", images)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask.png")
    extra = ["--mask", tmp_path / "mask.png"] if command == "inpaint" else []
    err = refused(capsys, tmp_path, command, "--checkpoint", digits, "--images",
                  tmp_path / "digits_nan.npy", "--out", tmp_path / "x", *extra)
    assert "1 of 192 values are NaN or infinite" in err and "digits_nan.npy" in err
    assert not (tmp_path / "x").exists()


# ---- 2. non-finite options ----------------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["sample", "--guidance", "nan"], "--guidance: 'nan' is not a finite number"),
    (["sample", "--guidance", "inf"], "'inf' is not a finite number"),
    (["sample", "--set", "sample.snr=nan"], "sample.snr: 'nan' is not a finite number"),
    (["sample", "--set", "sample.eps=-inf"], "sample.eps: '-inf' is not a finite number"),
    (["likelihood", "--set", "eval.rtol=nan"], "eval.rtol: 'nan' is not a finite number"),
    (["evaluate", "--set", "eval.atol=inf"], "eval.atol: 'inf' is not a finite number"),
])
def test_non_finite_options_of_a_run_are_refused(argv, needle, moons, tmp_path, capsys, no_work):
    out = [] if argv[0] == "likelihood" else ["--out", tmp_path / "x"]
    err = refused(capsys, tmp_path, *argv, "--checkpoint", moons, *out)
    assert needle in err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--preset", "toy_moons", "--set", "train.lr=nan"], "train.lr: 'nan'"),
    (["train", "--preset", "toy_moons", "--set", "sde.beta_max=inf"], "sde.beta_max: 'inf'"),
    (["train-classifier", "--preset", "toy_gmm", "--set", "train.ema_decay=nan"], "ema_decay"),
    (["demo", "--minutes", "inf"], "--minutes: 'inf' is not a finite number"),
])
def test_non_finite_training_options_are_refused(argv, needle, tmp_path, capsys, no_work):
    err = refused(capsys, tmp_path, *argv, "--out", tmp_path / "x")
    assert needle in err and not (tmp_path / "x").exists()


def test_a_config_file_with_nan_is_refused(tmp_path, capsys, no_work):
    from scoresde.setup.config_io import config_to_dict
    from scoresde.setup.presets import get_preset

    cfg = config_to_dict(get_preset("toy_moons"))
    cfg["sde"]["sigma_max"] = float("nan")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    err = refused(capsys, tmp_path, "train", "--config", tmp_path / "cfg.json",
                  "--out", tmp_path / "x")
    assert "cfg.json" in err and "sde.sigma_max must be a finite number, got nan" in err


# ---- 4. data paths and --out, before the network ------------------------------------------


def test_a_missing_cifar10_tarball_is_refused_at_once(tmp_path, capsys, no_work):
    err = refused(capsys, tmp_path, "train", "--preset", "ve_cifar10_ncsnpp_continuous",
                  "--out", tmp_path / "c10", "--steps", "1",
                  "--set", "data.root=/nonexistent/cifar.tar.gz")
    assert "/nonexistent/cifar.tar.gz does not exist" in err
    assert not (tmp_path / "c10").exists()


def test_a_cifar10_path_in_the_wrong_format_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "cifar.tar.gz").write_bytes(b"not a tarball at all")
    err = refused(capsys, tmp_path, "train", "--preset", "vp_cifar10_ddpmpp_continuous",
                  "--out", tmp_path / "c10", "--set", f"data.root={tmp_path / 'cifar.tar.gz'}")
    assert "not a readable CIFAR-10 tarball" in err


def test_a_good_cifar10_tarball_passes_the_checks(fake_cifar10_tarball, tmp_path, no_work):
    """The real layout gets past every check: the guard then stops the network's build."""
    with pytest.raises(AssertionError, match="work started"):
        main(["train", "--preset", "vp_cifar10_ddpmpp_continuous", "--out", str(tmp_path / "c"),
              "--set", f"data.root={fake_cifar10_tarball}", "--device", "cpu"])


def test_an_empty_image_folder_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "imgs").mkdir()
    err = refused(capsys, tmp_path, "train", "--preset", "vp_cifar10_ddpmpp_continuous",
                  "--out", tmp_path / "run", "--set", "data.dataset=folder",
                  "--set", f"data.root={tmp_path / 'imgs'}", "--set", "data.image_size=8")
    assert "no images" in err


@pytest.mark.parametrize("command", ["sample", "evaluate", "encode", "inpaint"])
def test_an_out_that_cannot_be_created_is_refused_before_the_work(command, moons, digits,
                                                                  tmp_path, capsys, no_work):
    np.save(tmp_path / "in.npy", np.zeros((1, 8, 8), np.float32))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask.png")
    extra = {"sample": [], "evaluate": [],
             "encode": ["--images", tmp_path / "in.npy"],
             "inpaint": ["--images", tmp_path / "in.npy", "--mask", tmp_path / "mask.png"]}
    ckpt = moons if command in ("sample", "evaluate") else digits
    err = refused(capsys, tmp_path, command, "--checkpoint", ckpt, "--out", "/proc/x",
                  *extra[command])
    assert "--out /proc/x cannot be created" in err


def test_an_out_below_a_file_is_refused(moons, tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("mine")
    err = refused(capsys, tmp_path, "sample", "--checkpoint", moons,
                  "--out", tmp_path / "file" / "s")
    assert "is a file, not a folder" in err


def test_likelihood_and_evaluate_check_the_data_before_loading(rgb_run, tmp_path, capsys,
                                                               no_work):
    err = refused(capsys, tmp_path, "likelihood", "--checkpoint", rgb_run, "--split", "test")
    assert "image path" in err and "imgs does not exist" in err
    err = refused(capsys, tmp_path, "evaluate", "--checkpoint", rgb_run, "--out", tmp_path / "e",
                  "--set", "data.root=/nonexistent", "--set", "eval.metrics=bpd")
    assert "/nonexistent does not exist" in err and not (tmp_path / "e").exists()


def test_a_missing_mask_is_refused_before_the_network(digits, tmp_path, capsys, no_work):
    np.save(tmp_path / "in.npy", np.zeros((1, 8, 8), np.float32))
    err = refused(capsys, tmp_path, "inpaint", "--checkpoint", digits, "--images",
                  tmp_path / "in.npy", "--mask", tmp_path / "nope.png", "--out", tmp_path / "x")
    assert "--mask" in err and "does not exist" in err


def test_a_mask_of_the_wrong_size_is_refused_before_the_network(digits, tmp_path, capsys,
                                                                no_work):
    np.save(tmp_path / "in.npy", np.zeros((1, 8, 8), np.float32))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "mask.png")
    err = refused(capsys, tmp_path, "inpaint", "--checkpoint", digits, "--images",
                  tmp_path / "in.npy", "--mask", tmp_path / "mask.png", "--out", tmp_path / "x")
    assert "(5, 5); the model takes (1, 8, 8)" in err


def test_colorize_needs_an_rgb_model_before_the_network(digits, tmp_path, capsys, no_work):
    np.save(tmp_path / "grey.npy", np.zeros((1, 8, 8), np.float32))
    err = refused(capsys, tmp_path, "colorize", "--checkpoint", digits, "--images",
                  tmp_path / "grey.npy", "--out", tmp_path / "x")
    assert "needs an RGB model" in err


def test_the_thread_choice_is_cheap_for_a_large_workload():
    """A workload of 0.3 s a call is timed once (all threads kept), not 8 times at full size."""
    from types import SimpleNamespace

    import torch

    from scoresde.cli.options import set_threads

    calls = []

    def slow(x, t):
        calls.append(x.shape[0])
        time.sleep(0.3)
        return x

    threads = torch.get_num_threads()
    start = time.perf_counter()
    set_threads(SimpleNamespace(threads=0), torch.device("cpu"), lambda: slow, (2,), 512,
                backward=False)
    assert time.perf_counter() - start < 1.0 and calls == [1]
    assert torch.get_num_threads() == threads


# ---- 10. one convention for the options ---------------------------------------------------


def test_image_and_images_are_one_option(digits, tmp_path, capsys, no_work):
    err = refused(capsys, tmp_path, "inpaint", "--checkpoint", digits, "--mask", "m.png",
                  "--out", tmp_path / "x")
    assert "--images/--image" in err
    np.save(tmp_path / "in.npy", np.full((1, 8, 8), np.nan, np.float32))
    for spelling in ("--image", "--images"):
        for command in ("encode", "colorize"):
            err = refused(capsys, tmp_path, command, "--checkpoint", digits, spelling,
                          tmp_path / "in.npy", "--out", tmp_path / "x")
            assert "NaN or infinite" in err


def test_checkpoint_takes_a_run_folder(moons, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(moons), "--out", str(out), "--num-samples", "3",
                 "--no-progress", "--threads", "1", "--set", "sample.num_steps=2"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_step"] == 4
    err = refused(capsys, tmp_path, "sample", "--checkpoint", tmp_path / "empty_dir_x",
                  "--out", tmp_path / "s2")
    assert "checkpoint not found" in err


def test_a_binary_config_file_is_named(tmp_path, capsys, no_work):
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    err = refused(capsys, tmp_path, "train", "--config", tmp_path / "random.pth",
                  "--out", tmp_path / "x")
    assert "random.pth is not a JSON text file" in err


# ---- 11. seeds and guidance scales --------------------------------------------------------


def test_a_negative_guidance_scale_is_refused(moons, tmp_path, capsys, no_work):
    err = refused(capsys, tmp_path, "sample", "--checkpoint", moons, "--out", tmp_path / "x",
                  "--class", "0", "--guidance", "-1")
    assert "the guidance scale must be >= 0" in err


@pytest.mark.parametrize("argv", [
    ["sample", "--checkpoint", "{run}", "--seed", "-1"],
    ["sample", "--checkpoint", "{run}", "--seed", str(2**63)],
    ["inpaint", "--checkpoint", "{run}", "--images", "a.npy", "--mask", "m.png", "--seed", "-2"],
    ["train", "--preset", "toy_moons", "--seed", "-1"],
    ["demo", "--seed", "-5"],
])
def test_a_seed_is_an_integer_from_0_to_2_63(argv, moons, tmp_path, capsys, no_work):
    argv = [a.format(run=moons) for a in argv]
    err = refused(capsys, tmp_path, *argv, "--out", tmp_path / "x")
    assert "a seed is an integer in 0 .. 2**63 - 1" in err


def test_a_negative_seed_in_a_config_is_refused(tmp_path, capsys, no_work):
    err = refused(capsys, tmp_path, "train", "--preset", "toy_moons", "--out", tmp_path / "x",
                  "--set", "seed=-1")
    assert "seed must be an integer in 0 .. 2**63 - 1, got -1" in err


def test_classes_and_classifiers_are_checked_before_the_network(moons, tmp_path, capsys,
                                                               no_work):
    err = refused(capsys, tmp_path, "sample", "--checkpoint", moons, "--out", tmp_path / "x",
                  "--class", "2")
    assert "unconditional" in err and "--classifier RUN" in err
    err = refused(capsys, tmp_path, "sample", "--checkpoint", moons, "--out", tmp_path / "x",
                  "--class", "2", "--classifier", tmp_path / "nope")
    assert "checkpoint not found" in err and "nope" in err
    err = refused(capsys, tmp_path, "sample", "--checkpoint", moons, "--out", tmp_path / "x",
                  "--class", "2", "--classifier", moons)
    assert "this is a score model run" in err


def test_convert_checks_that_its_out_can_be_created(tmp_path, capsys, no_work):
    (tmp_path / "official.pth").write_bytes(b"x")
    err = refused(capsys, tmp_path, "convert", tmp_path / "official.pth", "/proc/x",
                  "--preset", "ve_cifar10_ncsnpp_continuous")
    assert "--out /proc/x cannot be created" in err
