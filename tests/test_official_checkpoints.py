"""Official checkpoints of every supported network: DDPM, NCSN, NCSNv2 (synthetic, in the official
layout) and NCSN++ (the real reference checkpoint), through ``convert_official_checkpoint`` and
``load_converted``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from scoresde.nn.ddpm import DDPM
from scoresde.nn.ncsn import NCSN, NCSNv2
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.nn.official import (
    OfficialCheckpointError,
    convert_official_checkpoint,
    from_official_config,
    load_converted,
    load_official_checkpoint,
    official_ema_state_dict,
    official_network,
    official_state_dict_to_ours,
)

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


def _config(name: str) -> dict[str, Any]:
    return {"model": dict(CONFIGS[name]), "data": dict(DATA)}


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
    assert type(spec.build()) is EXPECTED_CLASS[name]
    assert from_official_config(CONFIGS[name], DATA) == spec.kwargs
    if name.startswith("ncsnv2"):
        assert spec.kwargs["variant"] == int(name.split("_")[1])


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
    torch.manual_seed(0)
    model = official_network(config["model"], config["data"]).build().eval()
    src = tmp_path / "checkpoint_7.pth"
    shadow = _write_official_checkpoint(model, src)
    src.with_suffix(".config.json").write_text(json.dumps(config))
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        trainable = [p for p in ema_model.parameters() if p.requires_grad]
        for p, s in zip(trainable, shadow, strict=True):
            p.copy_(s)

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for use_ema, expected in ((True, ema_model), (False, model)):
        out_dir = tmp_path / ("ema" if use_ema else "raw")
        if use_ema:  # the config from the JSON file next to the checkpoint
            convert_official_checkpoint(src, out_dir)
        else:
            convert_official_checkpoint(src, out_dir, use_ema=False, config=config)
        meta = json.loads((out_dir / "config.json").read_text())
        assert meta["network_class"] == EXPECTED_CLASS[name].__name__
        assert meta["official_config"] == config
        assert meta["step"] == 7 and meta["weights"] == ("ema" if use_ema else "model")

        loaded = load_converted(out_dir)
        assert type(loaded) is EXPECTED_CLASS[name] and not loaded.training
        loaded_sd = loaded.state_dict()
        for key, value in expected.state_dict().items():
            assert torch.equal(loaded_sd[key], value), key
        with torch.no_grad():
            assert torch.equal(loaded(x, _labels(name)), expected(x, _labels(name)))


def test_ema_without_model_matches_model_based_selection(tmp_path):
    """Inferring the trainable entries from the keys agrees with the model's parameters."""
    for name in ("ncsn", "ncsnv2_64"):
        model = official_network(CONFIGS[name], DATA).build()
        src = tmp_path / f"{name}.pth"
        _write_official_checkpoint(model, src)
        checkpoint = load_official_checkpoint(src)
        by_keys = official_ema_state_dict(checkpoint)
        by_model = official_ema_state_dict(checkpoint, model)
        assert list(by_keys) == list(by_model)
        assert all(torch.equal(by_keys[k], by_model[k]) for k in by_keys)


def test_reference_checkpoint_converts_as_ncsnpp(reference_path, tmp_path):
    reference_path(CHECKPOINT.replace(".pth", ".config.json"))
    out_dir = convert_official_checkpoint(reference_path(CHECKPOINT), tmp_path / "out")
    meta = json.loads((out_dir / "config.json").read_text())
    assert meta["network_class"] == "NCSNpp"
    assert isinstance(load_converted(out_dir), NCSNpp)


def test_directory_without_network_class_loads_as_ncsnpp(reference_path, tmp_path):
    reference_path(CHECKPOINT.replace(".pth", ".config.json"))
    out_dir = convert_official_checkpoint(reference_path(CHECKPOINT), tmp_path / "out")
    meta = json.loads((out_dir / "config.json").read_text())
    del meta["network_class"]
    (out_dir / "config.json").write_text(json.dumps(meta))
    assert isinstance(load_converted(out_dir), NCSNpp)


def _assert_one_line(info: pytest.ExceptionInfo[BaseException]) -> None:
    assert "\n" not in str(info.value)


def test_shadow_count_mismatch_is_a_clear_error(tmp_path):
    model = official_network(CONFIGS["ncsnv2_64"], DATA).build()
    src = tmp_path / "checkpoint.pth"
    _write_official_checkpoint(model, src)
    checkpoint = load_official_checkpoint(src)
    checkpoint["ema"]["shadow_params"].pop()
    torch.save(checkpoint, src)
    with pytest.raises(
        OfficialCheckpointError, match=r"EMA has \d+ shadow params but the NCSNv2"
    ) as info:
        convert_official_checkpoint(src, tmp_path / "out", config=_config("ncsnv2_64"))
    _assert_one_line(info)
    assert not (tmp_path / "out").exists()
    # Raw weights need no shadows.
    convert_official_checkpoint(src, tmp_path / "raw", use_ema=False, config=_config("ncsnv2_64"))


def test_checkpoint_of_another_network_is_a_clear_error(tmp_path):
    model = official_network(CONFIGS["ncsnv2_64"], DATA).build()
    src = tmp_path / "checkpoint.pth"
    _write_official_checkpoint(model, src)
    for config, use_ema in ((_config("ncsnv2_128"), False), (_config("ncsn"), False)):
        with pytest.raises(OfficialCheckpointError, match="does not fit the config's") as info:
            convert_official_checkpoint(src, tmp_path / "out", use_ema=use_ema, config=config)
        _assert_one_line(info)
    with pytest.raises(OfficialCheckpointError) as info:
        convert_official_checkpoint(src, tmp_path / "out", config=_config("ncsnv2_128"))
    _assert_one_line(info)


def test_unknown_state_dict_keys_are_rejected():
    with pytest.raises(OfficialCheckpointError, match="unexpected keys"):
        official_state_dict_to_ours({"module.encoder.weight": torch.zeros(1)})
    sd = official_state_dict_to_ours(
        {"module.sigmas": torch.zeros(2), "module.res1.0.conv1.weight": torch.zeros(1)}
    )
    assert list(sd) == ["sigmas", "res1.0.conv1.weight"]
