"""NCSN++ from diffusers ``UNet2DModel`` folders (score-SDE skip blocks), without diffusers: the
diffusers-layout state dicts are made from our own networks with the forward mapping of diffusers'
conversion script (checked against diffusers 0.31 itself when this module was written)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scoresde.interop.diffusers import (
    DiffusersCompatError,
    diffusers_state_dict_to_ncsnpp,
    load_diffusers_ncsnpp,
    ncsnpp_kwargs_from_diffusers,
    ncsnpp_state_dict_to_diffusers,
)
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.setup.presets.networks_ncsnpp import PRESETS


def _config(
    channels: list[int], attn_level: int, layers: int = 1, size: int = 16, **extra: Any
) -> dict[str, Any]:
    """A score-SDE ``UNet2DModel`` config (the fields of the ``google/ncsnpp-*`` configs)."""
    n = len(channels)
    return {
        "_class_name": "UNet2DModel",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": channels,
        "center_input_sample": True,
        "down_block_types": [
            "AttnSkipDownBlock2D" if i == attn_level else "SkipDownBlock2D" for i in range(n)
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 3,
        "layers_per_block": layers,
        "mid_block_scale_factor": 1.41421356237,
        "norm_eps": 1e-06,
        "norm_num_groups": None,
        "out_channels": 3,
        "sample_size": size,
        "time_embedding_type": "fourier",
        "up_block_types": [
            "AttnSkipUpBlock2D" if n - 1 - k == attn_level else "SkipUpBlock2D" for k in range(n)
        ],
        **extra,
    }


TINY = _config([32, 128], attn_level=1)


def _tiny_model(config: dict[str, Any] = TINY) -> NCSNpp:
    """Seeded NCSN++ for ``config`` with every parameter perturbed (no zero-initialised layer)."""
    torch.manual_seed(0)
    model = NCSNpp(**ncsnpp_kwargs_from_diffusers(config)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _write_folder(folder: Path, config: dict[str, Any], sd: dict, *, bin_file: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if bin_file:
        torch.save(sd, folder / "diffusion_pytorch_model.bin")
    else:
        save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    return folder


def _assert_same_function(loaded: NCSNpp, model: NCSNpp) -> None:
    assert not loaded.training
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.05, 20.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), model(x, sigma))


def test_safetensors_round_trip(tmp_path, single_thread):
    model = _tiny_model()
    sd = ncsnpp_state_dict_to_diffusers(model, TINY)
    folder = _write_folder(tmp_path / "model", TINY, sd, bin_file=False)
    loaded = load_diffusers_ncsnpp(folder)
    _assert_same_function(loaded, model)
    assert not loaded.centered  # center_input_sample maps x -> 2x - 1, as centered=False


def test_legacy_names_in_a_pipeline_bin(tmp_path, single_thread):
    """Hub files of 2022: attention ``query``/``key``/``value``/``proj_attn``, ``time_proj.W``
    next to ``time_proj.weight``, a ``.bin`` file, inside a pipeline's ``unet/`` folder."""
    model = _tiny_model()
    sd = ncsnpp_state_dict_to_diffusers(model, TINY, legacy_attention_names=True)
    assert "mid_block.attentions.0.query.weight" in sd
    sd["time_proj.W"] = sd["time_proj.weight"].clone()
    _write_folder(tmp_path / "pipe" / "unet", TINY, sd, bin_file=True)
    _assert_same_function(load_diffusers_ncsnpp(tmp_path / "pipe"), model)


def test_mapping_follows_the_conversion_script():
    model = _tiny_model()
    ours = model.state_dict()
    sd = ncsnpp_state_dict_to_diffusers(model, TINY)
    assert len(sd) == len(ours) - 1  # every entry but the sigmas buffer
    pairs = {
        "time_proj.weight": "all_modules.0.W",
        "time_embedding.linear_1.weight": "all_modules.1.weight",
        "time_embedding.linear_2.bias": "all_modules.2.bias",
        "conv_in.weight": "all_modules.3.weight",
        "down_blocks.0.resnets.0.conv1.weight": "all_modules.4.Conv_0.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight": "all_modules.4.Dense_0.weight",
        "down_blocks.0.resnet_down.conv_shortcut.weight": "all_modules.5.Conv_2.weight",
        "down_blocks.0.skip_conv.weight": "all_modules.6.Conv_0.weight",
        "down_blocks.1.attentions.0.group_norm.weight": "all_modules.8.GroupNorm_0.weight",
        "mid_block.resnets.0.norm2.bias": "all_modules.9.GroupNorm_1.bias",
        "up_blocks.0.skip_norm.weight": f"all_modules.{len(model.all_modules) - 7}.weight",
        "conv_out.bias": f"all_modules.{len(model.all_modules) - 1}.bias",
    }
    for name, key in pairs.items():
        assert torch.equal(sd[name], ours[key]), name
    for k, nin in enumerate(("to_q", "to_k", "to_v", "to_out.0")):
        weight = sd[f"mid_block.attentions.0.{nin}.weight"]
        assert torch.equal(weight, ours[f"all_modules.10.NIN_{k}.W"].t())
    back = diffusers_state_dict_to_ncsnpp(model, TINY, sd)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)


def test_hub_scale_config_is_the_official_256_network():
    """The layout of the ``google/ncsnpp-*-256`` models maps onto the official 256 preset."""
    config = _config([128, 128, 256, 256, 256, 256, 256], attn_level=4, layers=2, size=256)
    kwargs = ncsnpp_kwargs_from_diffusers(config, sigma_max=348.0, num_scales=2000)
    preset = PRESETS["ncsnpp_celebahq256_continuous"]()
    assert {k: v for k, v in kwargs.items() if k in preset} == {
        k: v for k, v in preset.items() if k in kwargs
    }
    with torch.device("meta"):
        model = NCSNpp(**kwargs)
    sd = ncsnpp_state_dict_to_diffusers(model, config)
    assert len(sd) == len(model.state_dict()) - 1
    assert sd["up_blocks.2.attentions.0.to_q.weight"].shape == (256, 256)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"time_embedding_type": "positional"}, "time_embedding_type"),
        ({"down_block_types": ["DownBlock2D", "AttnDownBlock2D"]}, "down_block_types"),
        ({"up_block_types": ["SkipUpBlock2D", "SkipUpBlock2D"]}, "different levels"),
        ({"attention_head_dim": 8}, "multi-head"),
        ({"norm_eps": 1e-5}, "norm_eps"),
        ({"mid_block_scale_factor": 1.0}, "mid_block_scale_factor"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"in_channels": 1, "out_channels": 1}, "in_channels"),
        ({"num_class_embeds": 10}, "num_class_embeds"),
        ({"block_out_channels": [32, 48]}, "multiples"),
        ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
    ],
)
def test_unsupported_configs_are_refused(change, match):
    with pytest.raises(DiffusersCompatError, match=match) as info:
        ncsnpp_kwargs_from_diffusers({**TINY, **change})
    assert "\n" not in str(info.value)


def test_missing_fields_take_unet2dmodel_defaults():
    """Without ``attention_head_dim`` diffusers uses 8-channel heads: not NCSN++."""
    config = {k: v for k, v in TINY.items() if k != "attention_head_dim"}
    with pytest.raises(DiffusersCompatError, match="multi-head"):
        ncsnpp_kwargs_from_diffusers(config)


def test_differing_group_norms_are_refused(tmp_path):
    """Attention on 64 channels: diffusers' skip blocks use 32 groups, NCSN++ 16."""
    config = _config([64, 64], attn_level=1)
    model = NCSNpp(**ncsnpp_kwargs_from_diffusers(config))
    with pytest.raises(DiffusersCompatError, match="32 groups, NCSN\\+\\+ 16") as info:
        ncsnpp_state_dict_to_diffusers(model, config)
    assert "\n" not in str(info.value)
    folder = _write_folder(tmp_path / "model", config, {"x": torch.zeros(1)}, bin_file=False)
    with pytest.raises(DiffusersCompatError, match="groups"):
        load_diffusers_ncsnpp(folder)


def test_model_of_another_config_is_refused():
    model = _tiny_model()
    with pytest.raises(DiffusersCompatError, match="not the network of the diffusers config"):
        ncsnpp_state_dict_to_diffusers(model, _config([32, 128], attn_level=1, layers=2))


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_weight_files_are_refused(tmp_path):
    model = _tiny_model()
    sd = ncsnpp_state_dict_to_diffusers(model, TINY)
    incomplete = dict(sd)
    del incomplete["mid_block.resnets.1.conv2.weight"]
    folder = _write_folder(tmp_path / "incomplete", TINY, incomplete, bin_file=False)
    with pytest.raises(DiffusersCompatError, match="missing") as info:
        load_diffusers_ncsnpp(folder)
    assert "\n" not in str(info.value)

    marker = tmp_path / "pwned"
    evil = _write_folder(tmp_path / "evil", TINY, {**sd, "x": _RunsCommand(marker)}, bin_file=True)
    with pytest.raises(DiffusersCompatError, match="refusing") as info:
        load_diffusers_ncsnpp(evil)
    assert "\n" not in str(info.value) and not marker.exists()

    with pytest.raises(FileNotFoundError):
        load_diffusers_ncsnpp(tmp_path / "absent")
