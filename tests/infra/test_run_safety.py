"""No command damages an existing run, and every bad input is one line, checked before any work.

Each destructive case checks that the files are byte-identical afterwards.
"""

import json
import shutil

import pytest
import torch

from scoresde.cli import main
from scoresde.infra.rundir import config_differences, describe_differences, summarize
from scoresde.setup.config import resumable_keys

TINY = ["--no-progress", "--device", "cpu", "--threads", "1",
        "--set", "model.hidden=32", "--set", "model.depth=2", "--set", "train.batch_size=64"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert len(err) < 400, err
    for fragment in fragments:
        assert fragment in err, err


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons") / "run"
    assert main(["train", "--preset", "toy_moons", "--out", str(out), "--steps", "6", *TINY]) == 0
    return out


@pytest.fixture
def moons_copy(moons_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    return out


@pytest.fixture
def official(official_checkpoint):
    return official_checkpoint


# ---- never damage an existing run ---------------------------------------------------------


def test_convert_refuses_a_folder_holding_a_run(official, moons_copy, capsys):
    before = _snapshot(moons_copy)
    code, _, err = _run(capsys, "convert", official, moons_copy)
    _one_line_error(code, err, "already holds a run", "--overwrite")
    assert _snapshot(moons_copy) == before


def test_convert_overwrites_when_asked_and_reports_the_step(official, moons_copy, capsys):
    code, out, err = _run(capsys, "convert", official, moons_copy, "--overwrite")
    assert code == 0
    assert json.loads(out)["step"] == 2
    assert "training step 2" in err and "untrained" in err
    assert json.loads((moons_copy / "config.json").read_text())["model"]["name"] == "ncsnpp"


def test_train_refuses_another_config_and_names_the_keys(moons_copy, capsys):
    before = _snapshot(moons_copy)
    code, _, err = _run(capsys, "train", "--preset", "toy_swissroll", "--out", moons_copy,
                        "--steps", "6", *TINY)
    _one_line_error(code, err, "another config", "data.dataset", "sde.kind", "(2 keys)",
                    "new --out")
    assert _snapshot(moons_copy) == before


def test_train_refuses_a_changed_hyperparameter(moons_copy, capsys):
    before = _snapshot(moons_copy)
    code, _, err = _run(capsys, "train", "--preset", "toy_moons", "--out", moons_copy,
                        "--steps", "6", *TINY, "--set", "train.lr=1e-4")
    _one_line_error(code, err, "train.lr: 0.002 -> 0.0001 (1 key)")
    assert _snapshot(moons_copy) == before


def test_resume_accepts_only_length_and_bookkeeping_changes(moons_copy, capsys):
    code, out, _ = _run(capsys, "train", "--preset", "toy_moons", "--out", moons_copy,
                        "--steps", "9", *TINY, "--set", "train.log_every=2",
                        "--set", "train.checkpoint_every=3", "--set", "train.minutes=5")
    assert code == 0
    result = json.loads(out)
    assert (result["resumed_from"], result["steps"], result["stopped_by"]) == (6, 9, "steps")


def test_rerunning_a_finished_run_writes_nothing(moons_copy, capsys):
    before = _snapshot(moons_copy)
    code, out, err = _run(capsys, "train", "--preset", "toy_moons", "--out", moons_copy,
                          "--steps", "6", *TINY)
    assert code == 0 and json.loads(out)["stopped_by"] == "already complete"
    assert "already complete" in err
    assert _snapshot(moons_copy) == before


def test_train_overwrite_starts_afresh(moons_copy, capsys):
    code, out, _ = _run(capsys, "train", "--preset", "toy_swissroll", "--out", moons_copy,
                        "--steps", "3", *TINY, "--overwrite")
    assert code == 0 and json.loads(out)["resumed_from"] == 0
    assert json.loads((moons_copy / "config.json").read_text())["data"]["dataset"] == "swissroll"


def test_train_refuses_a_folder_with_only_another_config(moons_copy, capsys):
    (moons_copy / "checkpoint.safetensors").unlink()  # stopped before its first checkpoint
    code, _, err = _run(capsys, "train", "--preset", "toy_swissroll", "--out", moons_copy, *TINY)
    _one_line_error(code, err, "another config")


def test_sample_refuses_to_overwrite_samples(moons_run, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--checkpoint", moons_run / "checkpoint.safetensors", "--out", out,
            "--num-samples", "5", "--no-progress", "--device", "cpu", "--set", "sample.num_steps=3"]
    assert _run(capsys, *argv)[0] == 0
    before = _snapshot(out)
    code, _, err = _run(capsys, *argv, "--seed", "1")
    _one_line_error(code, err, "already holds samples", "--overwrite")
    assert _snapshot(out) == before
    code, out_text, _ = _run(capsys, *argv, "--seed", "1", "--overwrite")
    assert code == 0 and json.loads(out_text)["checkpoint_step"] == 6
    assert _snapshot(out)["samples.npy"] != before["samples.npy"]


def test_demo_refuses_a_finished_demo(tmp_path, capsys):
    (tmp_path / "report.json").write_text("{}")
    code, _, err = _run(capsys, "demo", "--out", tmp_path, "--steps", "1")
    _one_line_error(code, err, "finished demo", "--overwrite")
    assert (tmp_path / "report.json").read_text() == "{}"


# ---- one line for every bad input, checked before any work --------------------------------


def test_train_without_a_preset_or_config_lists_the_ways(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--out", tmp_path / "x")
    _one_line_error(code, err, "--preset NAME", "--config FILE", "scoresde presets")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("count", ["-5", "0"])
def test_sample_counts_are_checked_first(count, tmp_path, capsys):
    code, _, err = _run(capsys, "sample", "--checkpoint", tmp_path / "missing.safetensors",
                        "--out", tmp_path / "s", "--num-samples", count)
    _one_line_error(code, err, f"--num-samples must be >= 1, got {count}")


def test_likelihood_count_is_checked_first(tmp_path, capsys):
    code, _, err = _run(capsys, "likelihood", "--checkpoint", tmp_path / "missing.safetensors",
                        "--num-examples", "-1")
    _one_line_error(code, err, "--num-examples must be >= 0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", [["--device", "cuda"], ["--set", "device=cuda:1"]])
def test_an_unavailable_device_is_named_with_the_available_ones(how, tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--preset", "toy_moons", "--out", tmp_path / "x", *how)
    _one_line_error(code, err, "is not available", "available: cpu")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_on_an_unavailable_device(moons_run, tmp_path, capsys):
    code, _, err = _run(capsys, "sample", "--checkpoint", moons_run / "checkpoint.safetensors",
                        "--out", tmp_path / "s", "--device", "cuda")
    _one_line_error(code, err, "device 'cuda' is not available")


def test_unknown_device_name(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--preset", "toy_moons", "--out", tmp_path / "x",
                        "--device", "gpu0")
    _one_line_error(code, err, "unknown device 'gpu0'")


def test_train_out_is_an_existing_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    code, _, err = _run(capsys, "train", "--preset", "toy_moons", "--out", target, *TINY)
    _one_line_error(code, err, "is an existing file")
    assert target.read_text() == "mine"


def test_sample_out_is_an_existing_file_checked_before_loading(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    # The checkpoint does not exist either: the output is checked first, before any work.
    code, _, err = _run(capsys, "sample", "--checkpoint", tmp_path / "missing.safetensors",
                        "--out", target)
    _one_line_error(code, err, "is an existing file")
    assert target.read_text() == "mine"


def test_convert_a_truncated_safetensors_file(moons_run, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((moons_run / "checkpoint.safetensors").read_bytes()[:1000])
    code, _, err = _run(capsys, "convert", bad, tmp_path / "out", "--preset", "toy_moons")
    _one_line_error(code, err, "truncated or corrupt safetensors")
    assert not (tmp_path / "out").exists()


def test_convert_a_scoresde_checkpoint_says_so_in_one_short_line(moons_run, tmp_path, capsys):
    code, _, err = _run(capsys, "convert", moons_run / "checkpoint.safetensors", tmp_path / "out")
    _one_line_error(code, err, "already a scoresde checkpoint")


def test_train_options_seed_device_steps_reach_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, _ = _run(capsys, "train", "--preset", "toy_moons", "--out", out, "--steps", "2",
                      "--seed", "7", *TINY)
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["seed"], cfg["device"], cfg["train"]["steps"]) == (7, "cpu", 2)


def test_train_help_explains_resume_and_reproducibility(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "running the same command again continues the run" in text
    assert "same command gives the same weights" in " ".join(text.split())


# ---- the helpers behind the messages ------------------------------------------------------


def test_config_differences_ignore_bookkeeping_and_summaries_stay_short():
    old = {"train": {"steps": 1, "lr": 1.0, "log_every": 5}, "device": "cpu", "seed": 0}
    new = {"train": {"steps": 9, "lr": 2.0, "log_every": 1}, "device": "cuda", "seed": 1}
    keys = config_differences(old, new, ignore=resumable_keys())
    assert keys == ["seed", "train.lr"]
    assert describe_differences(old, new, keys) == "seed: 0 -> 1; train.lr: 1.0 -> 2.0 (2 keys)"
    many = {f"k{i}": i for i in range(10)}
    text = describe_differences(many, {}, config_differences(many, {}))
    assert text.endswith("and 7 more (10 keys)")
    assert summarize([str(i) for i in range(500)]) == "0, 1, 2 and 497 more"


def test_loading_and_sampling_leave_the_global_rng_alone(moons_run, tmp_path, capsys):
    torch.manual_seed(11)
    state = torch.get_rng_state()
    assert main(["sample", "--checkpoint", str(moons_run / "checkpoint.safetensors"), "--out",
                 str(tmp_path / "s"), "--num-samples", "3", "--no-progress", "--threads", "1",
                 "--set", "sample.num_steps=2"]) == 0
    assert main(["likelihood", "--checkpoint", str(moons_run / "checkpoint.safetensors"),
                 "--num-examples", "4", "--no-progress", "--threads", "1",
                 "--set", "eval.rtol=1e-2", "--set", "eval.atol=1e-2"]) == 0
    assert torch.equal(torch.get_rng_state(), state)
