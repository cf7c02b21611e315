"""A paper preset trains from the CLI on a (fake) CIFAR-10 tarball, then samples and scores."""

import json

from scoresde.cli import main

# The CIFAR-10 NCSN++ preset, shrunk so a CPU test takes seconds: same network family, options,
# SDE, loss, optimiser and data pipeline as the paper's.
SHRINK = ["model.nf=16", "model.num_res_blocks=1", "model.ch_mult=1,2", "train.batch_size=4",
          "train.steps=3", "train.checkpoint_every=0", "device=cpu", "train.log_every=1"]


def _set(items):
    return [arg for item in items for arg in ("--set", item)]


def test_cifar10_preset_trains_samples_and_scores(fake_cifar10_tarball, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "ve_cifar10_ncsnpp_continuous", "--out", str(out),
            "--no-progress", *_set([f"data.root={fake_cifar10_tarball}", *SHRINK])]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and result["final_loss"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == "ncsnpp" and cfg["data"]["dataset"] == "cifar10"
    ckpt = str(out / "checkpoint.safetensors")
    assert main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "s"), "--num-samples",
                 "2", "--no-progress", "--set", "sample.num_steps=2", "--device", "cpu"]) == 0
    assert main(["likelihood", "--checkpoint", ckpt, "--num-examples", "2", "--no-progress",
                 "--device", "cpu", "--set", "eval.rtol=1e-2", "--set", "eval.atol=1e-2"]) == 0
    out_lines = capsys.readouterr().out.strip().splitlines()
    bpd = json.loads(out_lines[-1])["bpd"]
    assert 0 < bpd < 30


def test_missing_dataset_root_is_a_one_line_error(tmp_path, capsys):
    argv = ["train", "--preset", "ve_cifar10_ncsnpp_continuous", "--out", str(tmp_path),
            *_set(SHRINK)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and len(err.strip().splitlines()) == 1


def test_wrong_dataset_root_names_the_path(tmp_path, capsys):
    argv = ["train", "--preset", "ve_cifar10_ncsnpp_continuous", "--out", str(tmp_path / "r"),
            *_set([f"data.root={tmp_path / 'nope'}", *SHRINK])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_image_training_resumes_bit_exactly(fake_cifar10_tarball, tmp_path):
    """The data position (one batch per step), the flips and the noise streams all continue:
    3 + 3 steps give the weights of 6 straight steps, across an epoch boundary."""
    import torch

    from scoresde.infra.checkpoint import load_checkpoint

    small = [f"data.root={fake_cifar10_tarball}", *SHRINK, "model.nf=8", "train.batch_size=16",
             "data.random_flip=true"]

    def run(out, steps):
        argv = ["train", "--preset", "ve_cifar10_ncsnpp_continuous", "--out", str(out),
                "--no-progress", "--threads", "1", *_set([*small, f"train.steps={steps}"])]
        assert main(argv) == 0
        return load_checkpoint(out / "checkpoint.safetensors")

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6)
    assert resumed.step == straight.step == 6
    for key, value in straight.model.items():
        assert torch.equal(value, resumed.model[key]), key
