"""Official checkpoints become scoresde runs: same network outputs, usable by the CLI."""

import json

import pytest
import torch

from scoresde.cli import main
from scoresde.interop.convert import config_from_official, convert_official
from scoresde.interop.official import (
    from_official_config,
    load_official_checkpoint,
    load_strict,
    official_ema_state_dict,
    official_state_dict_to_ours,
)
from scoresde.jobs.runs import load_trained
from scoresde.nn.ncsnpp import NCSNpp


@pytest.fixture
def official(official_checkpoint):
    return official_checkpoint


def test_config_from_official_reads_every_section(official):
    cfg = config_from_official(json.loads(official.with_suffix(".config.json").read_text()))
    assert (cfg.sde.kind, cfg.sde.sigma_max, cfg.sde.N) == ("ve", 50.0, 1000)
    assert (cfg.model.name, cfg.model.nf, cfg.model.ch_mult) == ("ncsnpp", 8, (1, 2))
    assert cfg.model.progressive == "output_skip" and cfg.model.fir
    assert (cfg.data.dataset, cfg.data.image_size, cfg.data.centered) == ("cifar10", 16, False)
    assert (cfg.train.ema_decay, cfg.train.reduce, cfg.train.warmup) == (0.999, "sum", 5000)
    assert (cfg.sample.predictor, cfg.sample.corrector, cfg.sample.snr) == (
        "reverse_diffusion", "langevin", 0.16)


@pytest.mark.parametrize("use_ema", [True, False])
def test_converted_run_reproduces_the_official_network(official, tmp_path, use_ema):
    path = convert_official(official, tmp_path / "run", use_ema=use_ema).checkpoint
    run = load_trained(path, device="cpu")
    # The reference: the official network from its own config, with the official weights.
    config = json.loads(official.with_suffix(".config.json").read_text())
    reference = NCSNpp(**from_official_config(config["model"], config["data"]))
    checkpoint = load_official_checkpoint(official)
    weights = (
        official_ema_state_dict(checkpoint, reference)
        if use_ema
        else official_state_dict_to_ours(checkpoint["model"])
    )
    load_strict(reference, weights)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 20.0])
    with torch.no_grad():
        assert torch.equal(run.model(x, sigma), reference.eval()(x, sigma))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["nf"] == 8


def test_convert_then_sample_from_the_cli(official, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["convert", str(official), str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("checkpoint.safetensors")
    assert main(["sample", "--checkpoint", str(out / "checkpoint.safetensors"), "--out",
                 str(tmp_path / "s"), "--num-samples", "2", "--no-progress", "--device", "cpu",
                 "--set", "sample.num_steps=3"]) == 0
    assert (tmp_path / "s" / "samples.png").exists()


def test_convert_with_a_preset_that_does_not_fit_is_a_one_line_error(official, tmp_path, capsys):
    code = main(["convert", str(official), str(tmp_path / "run"),
                 "--preset", "ve_cifar10_ncsnpp_continuous"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "160 shadow params" in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_convert_without_config_names_what_is_missing(official, tmp_path, capsys):
    official.with_suffix(".config.json").unlink()
    assert main(["convert", str(official), str(tmp_path / "run")]) == 2
    assert "--preset" in capsys.readouterr().err
