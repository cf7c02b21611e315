"""Official checkpoints of every supported network: DDPM, NCSN, NCSNv2 (synthetic, in the official
layout) and NCSN++ (the real reference checkpoint), through the one conversion path
(``convert_official``: a scoresde run folder) and back through ``load_trained``."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from scoresde.infra.checkpoint import load_checkpoint
from scoresde.interop.convert import config_from_official, convert_official
from scoresde.interop.official import (
    OfficialCheckpointError,
    from_official_config,
    load_official_checkpoint,
    official_ema_state_dict,
    official_network,
    official_state_dict_to_ours,
)
from scoresde.jobs.runs import load_trained
from scoresde.nn.ddpm import DDPM
from scoresde.nn.ncsn import NCSN, NCSNv2
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.setup.build import build_model
from scoresde.setup.config_io import config_to_dict, load_config
from scoresde.setup.data.pipeline import data_shape
from scoresde.setup.networks import model_config_from_network, network_definition

CHECKPOINT = "ncsnpp_ve_nf8_checkpoint.pth"
DATA = {"image_size": 16, "num_channels": 3, "centered": False}

# Small 16px official configs (only the fields the networks read, plus a few they check).
CONFIGS: dict[str, dict[str, Any]] = {
    "ddpm": {
        "name": "ddpm",
        "normalization": "GroupNorm",
        "nf": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.1,
        "resamp_with_conv": True,
        "conditional": True,
        "scale_by_sigma": False,
        "sigma_min": 0.01,
        "sigma_max": 50,
        "num_scales": 1000,
        "nonlinearity": "swish",
        "embedding_type": "fourier",
    },
    "ncsn": {
        "name": "ncsn",
        "normalization": "InstanceNorm++",
        "interpolation": "bilinear",
        "nf": 8,
        "sigma_min": 0.01,
        "sigma_max": 1,
        "num_scales": 10,
        "nonlinearity": "elu",
        "scale_by_sigma": False,
    },
    **{
        f"ncsnv2_{v}": {
            "name": f"ncsnv2_{v}",
            "normalization": "InstanceNorm++",
            "interpolation": "bilinear",
            "nf": 8,
            "sigma_min": 0.01,
            "sigma_max": 50,
            "num_scales": 232,
            "nonlinearity": "elu",
            "scale_by_sigma": True,
        }
        for v in (64, 128, 256)
    },
}
EXPECTED_CLASS = {
    "ddpm": DDPM,
    "ncsn": NCSN,
    "ncsnv2_64": NCSNv2,
    "ncsnv2_128": NCSNv2,
    "ncsnv2_256": NCSNv2,
}
# The rest of a whole official config (what ``config_from_official`` reads besides the network).
_OTHER_SECTIONS: dict[str, dict[str, Any]] = {
    "training": {
        "continuous": False,
        "n_iters": 10,
        "batch_size": 2,
        "likelihood_weighting": False,
        "reduce_mean": False,
    },
    "sampling": {
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "snr": 0.16,
        "n_steps_each": 1,
        "noise_removal": True,
    },
    "optim": {
        "lr": 2e-4,
        "beta1": 0.9,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "warmup": 5000,
        "grad_clip": 1.0,
    },
}


def _config(name: str) -> dict[str, Any]:
    """A whole official config (``model``, ``data``, ``training``, ``sampling``, ``optim``) with
    the small network ``CONFIGS[name]``: DDPM on the VP SDE, NCSN and NCSNv2 on the VE SDE."""
    sections = copy.deepcopy(_OTHER_SECTIONS)
    sections["training"]["sde"] = "vpsde" if name == "ddpm" else "vesde"
    model = {**CONFIGS[name], "ema_rate": 0.999}
    return {"model": model, "data": {**DATA, "dataset": "CIFAR10"}, **sections, "seed": 42}


def _build(config: dict[str, Any]) -> nn.Module:
    """The network of an official config, built the one way: its scoresde config's
    ``build_model`` (initialised from the config's seed)."""
    return build_model(config_from_official(config))


def _write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(config))
    return path


def _labels(name: str) -> Tensor:
    """Network inputs for noise: DDPM time steps (floats), else noise-level indices."""
    return torch.tensor([3.5, 990.0]) if name == "ddpm" else torch.tensor([0, 9])


def _write_official_checkpoint(model: nn.Module, path: Path) -> list[Tensor]:
    """Save ``model`` as the official ``save_checkpoint`` does (DataParallel keys, EMA shadows of
    the trainable parameters, Adam state with a numpy-float64 lr); returns the shadows."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    optim_state = optimizer.state_dict()
    optim_state["param_groups"][0]["lr"] = np.float64(2e-4)
    gen = torch.Generator().manual_seed(5)
    shadow = [p.detach() + 0.01 * torch.randn(p.shape, generator=gen) for p in params]
    checkpoint = {
        "optimizer": optim_state,
        "model": {f"module.{k}": v.clone() for k, v in model.state_dict().items()},
        "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow},
        "step": 7,
    }
    torch.save(checkpoint, path)
    return shadow


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_official_network_dispatch(name):
    spec = official_network(CONFIGS[name], DATA)
    assert from_official_config(CONFIGS[name], DATA) == spec.kwargs
    if name.startswith("ncsnv2"):
        assert spec.kwargs["variant"] == int(name.split("_")[1])
    cfg = config_from_official(_config(name))
    assert cfg.model == model_config_from_network(spec.name, spec.kwargs, continuous=False)
    assert type(build_model(cfg)) is EXPECTED_CLASS[name]
    # Official kwargs -> ModelConfig -> constructor kwargs loses nothing; the network options the
    # official config does not set keep their defaults.
    net = network_definition(spec.name)
    built = net.kwargs(cfg, data_shape(cfg.data))
    assert {key: built[key] for key in spec.kwargs} == spec.kwargs
    defaults = inspect.signature(net.network_class()).parameters
    assert all(built[key] == defaults[key].default for key in set(built) - set(spec.kwargs))


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="unsupported official network 'ncsnv3'"):
        official_network({**CONFIGS["ncsn"], "name": "ncsnv3"}, DATA)
    with pytest.raises(ValueError, match="normalization"):
        official_network({**CONFIGS["ncsnv2_64"], "normalization": "GroupNorm"}, DATA)
    with pytest.raises(ValueError, match="interpolation"):
        official_network({**CONFIGS["ncsn"], "interpolation": "transposed"}, DATA)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_convert_synthetic_checkpoint(tmp_path, single_thread, name):
    """EMA and raw weights both come back exactly: same state dict, same outputs."""
    config = _config(name)
    model = _build(config).eval()
    src = tmp_path / "checkpoint_7.pth"
    shadow = _write_official_checkpoint(model, src)
    _write_config(config, src.with_suffix(".config.json"))
    elsewhere = _write_config(config, tmp_path / "official_config.json")
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        trainable = [p for p in ema_model.parameters() if p.requires_grad]
        for p, s in zip(trainable, shadow, strict=True):
            p.copy_(s)

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for use_ema, expected in ((True, ema_model), (False, model)):
        out_dir = tmp_path / ("ema" if use_ema else "raw")
        if use_ema:  # the config from the JSON file next to the checkpoint
            result = convert_official(src, out_dir)
        else:
            result = convert_official(src, out_dir, use_ema=False, official_config=elsewhere)
        assert sorted(f.name for f in out_dir.iterdir()) == [
            "checkpoint.safetensors",
            "config.json",
        ]
        assert config_to_dict(load_config(result.config)) == config_to_dict(
            config_from_official(config)
        )
        stored = load_checkpoint(result.checkpoint)
        assert result.step == stored.step == 7 and stored.ema is None
        assert stored.extra == {"source": str(src), "weights": "ema" if use_ema else "model"}

        loaded = load_trained(result.checkpoint, device="cpu").model
        assert type(loaded) is EXPECTED_CLASS[name] and not loaded.training
        loaded_sd = loaded.state_dict()
        assert list(loaded_sd) == list(expected.state_dict())
        for key, value in expected.state_dict().items():
            assert torch.equal(loaded_sd[key], value), key
        with torch.no_grad():
            assert torch.equal(loaded(x, _labels(name)), expected(x, _labels(name)))


def test_ema_without_model_matches_model_based_selection(tmp_path):
    """Inferring the trainable entries from the keys agrees with the model's parameters."""
    for name in ("ncsn", "ncsnv2_64"):
        model = _build(_config(name))
        src = tmp_path / f"{name}.pth"
        _write_official_checkpoint(model, src)
        checkpoint = load_official_checkpoint(src)
        by_keys = official_ema_state_dict(checkpoint)
        by_model = official_ema_state_dict(checkpoint, model)
        assert list(by_keys) == list(by_model)
        assert all(torch.equal(by_keys[k], by_model[k]) for k in by_keys)


def test_reference_checkpoint_converts_as_ncsnpp(reference_path, tmp_path):
    reference_path(CHECKPOINT.replace(".pth", ".config.json"))
    result = convert_official(reference_path(CHECKPOINT), tmp_path / "out")
    assert load_config(result.config).model.name == "ncsnpp"
    assert isinstance(load_trained(result.checkpoint, device="cpu").model, NCSNpp)


def _assert_one_line(info: pytest.ExceptionInfo[BaseException]) -> None:
    assert "\n" not in str(info.value)


def test_shadow_count_mismatch_is_a_clear_error(tmp_path):
    model = _build(_config("ncsnv2_64"))
    src = tmp_path / "checkpoint.pth"
    _write_official_checkpoint(model, src)
    checkpoint = load_official_checkpoint(src)
    checkpoint["ema"]["shadow_params"].pop()
    torch.save(checkpoint, src)
    config = _write_config(_config("ncsnv2_64"), tmp_path / "ncsnv2_64.json")
    with pytest.raises(
        OfficialCheckpointError, match=r"EMA has \d+ shadow params but the NCSNv2"
    ) as info:
        convert_official(src, tmp_path / "out", official_config=config)
    _assert_one_line(info)
    assert not (tmp_path / "out").exists()
    # Raw weights need no shadows.
    convert_official(src, tmp_path / "raw", use_ema=False, official_config=config)


def test_checkpoint_of_another_network_is_a_clear_error(tmp_path):
    model = _build(_config("ncsnv2_64"))
    src = tmp_path / "checkpoint.pth"
    _write_official_checkpoint(model, src)
    configs = {n: _write_config(_config(n), tmp_path / f"{n}.json") for n in ("ncsnv2_128", "ncsn")}
    for config, use_ema in ((configs["ncsnv2_128"], False), (configs["ncsn"], False)):
        with pytest.raises(OfficialCheckpointError, match="does not fit the config's") as info:
            convert_official(src, tmp_path / "out", use_ema=use_ema, official_config=config)
        _assert_one_line(info)
    with pytest.raises(OfficialCheckpointError) as info:
        convert_official(src, tmp_path / "out", official_config=configs["ncsnv2_128"])
    _assert_one_line(info)
    assert not (tmp_path / "out").exists()


def test_unknown_state_dict_keys_are_rejected():
    with pytest.raises(OfficialCheckpointError, match="unexpected keys"):
        official_state_dict_to_ours({"module.encoder.weight": torch.zeros(1)})
    sd = official_state_dict_to_ours(
        {"module.sigmas": torch.zeros(2), "module.res1.0.conv1.weight": torch.zeros(1)}
    )
    assert list(sd) == ["sigmas", "res1.0.conv1.weight"]
