"""What a score-SDE diffusers ``UNet2DModel`` config describes, checked against NCSN++.

``ncsnpp_kwargs_from_diffusers(config)`` fills in ``UNet2DModel``'s defaults, refuses (with a
one-line ``DiffusersCompatError``) every config the skip-block NCSN++ cannot reproduce and returns
the equivalent ``NCSNpp`` kwargs; ``_checked_layout(model, config)`` pairs each module of the
built ``NCSNpp`` with its diffusers counterpart and refuses configs whose GroupNorms differ. The
supported configs are listed in :mod:`scoresde.interop.diffusers`, which maps and loads the
weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from scoresde.nn.ncsnpp import NCSNpp

_DOWN_TYPES = {"SkipDownBlock2D": False, "AttnSkipDownBlock2D": True}
_UP_TYPES = {"SkipUpBlock2D": False, "AttnSkipUpBlock2D": True}
# UNet2DModel's defaults for the fields a config may leave out.
_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "mid_block_type": "UNetMidBlock2D",
    "layers_per_block": 2,
    "mid_block_scale_factor": 1.0,
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
_FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)
# Diffusers GroupNorm names inside a resnet or attention -> ours.
_NORMS = {"norm1": "GroupNorm_0", "norm2": "GroupNorm_1", "group_norm": "GroupNorm_0"}


class DiffusersCompatError(ValueError):
    """A diffusers folder, config or state dict that :mod:`scoresde.interop.diffusers` cannot
    map onto ``NCSNpp``."""


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    return config[key] if key in config else _DEFAULTS[key]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DiffusersCompatError(f"unsupported diffusers UNet2DModel config: {message}")


def _image_size(config: Mapping[str, Any]) -> int:
    size = config.get("sample_size")
    if isinstance(size, list | tuple):
        _require(len(size) == 2 and size[0] == size[1], f"non-square sample_size {size}")
        size = size[0]
    _require(isinstance(size, int) and size > 0, f"sample_size must be an int, got {size!r}")
    return int(size)


def ncsnpp_kwargs_from_diffusers(
    config: Mapping[str, Any],
    *,
    sigma_min: float = 0.01,
    sigma_max: float = 50.0,
    num_scales: int = 1000,
) -> dict[str, Any]:
    """``NCSNpp`` keyword arguments equivalent to a score-SDE ``UNet2DModel`` config.

    Checks everything listed as supported in the :mod:`scoresde.interop.diffusers` docstring
    except the GroupNorm group counts (``load_diffusers_ncsnpp`` checks those on the built model).
    ``sigma_min``, ``sigma_max`` and ``num_scales`` only fill the ``sigmas`` buffer.

    Raises:
        DiffusersCompatError: the config describes a network NCSN++ cannot reproduce.
    """
    name = config.get("_class_name", "UNet2DModel")
    _require(name == "UNet2DModel", f"_class_name {name!r} (expected 'UNet2DModel')")
    down = list(config.get("down_block_types", ()))
    up = list(config.get("up_block_types", ()))
    channels = [int(c) for c in config.get("block_out_channels", ())]
    n = len(channels)
    _require(n > 0 and len(down) == n and len(up) == n, "block lists of different lengths")
    _require(all(t in _DOWN_TYPES for t in down), f"down_block_types {down} (skip blocks only)")
    _require(all(t in _UP_TYPES for t in up), f"up_block_types {up} (skip blocks only)")
    attn_levels = [_DOWN_TYPES[t] for t in down]
    _require(
        attn_levels == [_UP_TYPES[t] for t in reversed(up)],
        "attention in the down and up blocks at different levels",
    )
    fixed = {
        "in_channels": 3,
        "out_channels": 3,
        "time_embedding_type": "fourier",
        "mid_block_type": "UNetMidBlock2D",
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None,
    }
    for key, expected in fixed.items():
        value = _config_value(config, key)
        _require(value == expected, f"{key}={value!r} (expected {expected!r})")
    act = _config_value(config, "act_fn")
    _require(act in ("silu", "swish"), f"act_fn={act!r} (NCSN++ uses swish)")
    eps = float(_config_value(config, "norm_eps"))
    _require(math.isclose(eps, 1e-6, rel_tol=1e-6), f"norm_eps={eps} (NCSN++ uses 1e-6)")
    scale = float(_config_value(config, "mid_block_scale_factor"))
    _require(
        math.isclose(scale, math.sqrt(2.0), rel_tol=1e-6),
        f"mid_block_scale_factor={scale} (skip_rescale needs sqrt(2))",
    )
    nf = channels[0]
    _require(all(c % nf == 0 for c in channels), f"block_out_channels {channels} not multiples")
    temb_dim = _config_value(config, "time_embedding_dim")
    _require(temb_dim in (None, 4 * nf), f"time_embedding_dim={temb_dim} (NCSN++ uses {4 * nf})")
    head_dim = _config_value(config, "attention_head_dim")
    attn_channels = {channels[-1]} | {c for c, a in zip(channels, attn_levels, strict=True) if a}
    _require(
        head_dim is None or attn_channels == {head_dim},
        f"attention_head_dim={head_dim} gives multi-head attention (NCSN++ has one head)",
    )
    image_size = _image_size(config)
    _require(image_size % 2 ** (n - 1) == 0, f"sample_size {image_size} not divisible by 2^{n - 1}")
    return {
        "image_size": image_size,
        "num_channels": 3,
        "nf": nf,
        "ch_mult": tuple(c // nf for c in channels),
        "num_res_blocks": int(_config_value(config, "layers_per_block")),
        "attn_resolutions": tuple(image_size // 2**i for i in range(n) if attn_levels[i]),
        "dropout": float(_config_value(config, "dropout")),
        "resblock_type": "biggan",
        "fir": True,
        "fir_kernel": _FIR_KERNEL,
        "skip_rescale": True,
        "progressive": "output_skip",
        "progressive_input": "input_skip",
        "progressive_combine": "sum",
        "embedding_type": "fourier",
        "conditional": True,
        "scale_by_sigma": True,
        "centered": not bool(_config_value(config, "center_input_sample")),
        "sigma_min": float(sigma_min),
        "sigma_max": float(sigma_max),
        "num_scales": int(num_scales),
        "nonlinearity": "swish",
    }


@dataclass(frozen=True)
class _Entry:
    """One module of ``all_modules`` and its diffusers counterpart.

    ``kind`` is ``'resnet'``, ``'attention'``, ``'combine'`` (a 1x1 ``Conv_0``), ``'fourier'`` or
    ``'plain'`` (a Linear, Conv2d or GroupNorm whose parameters keep their names). ``groups`` maps
    the diffusers name of each GroupNorm in it (relative to ``prefix``, ``''`` for the module
    itself) to the group count diffusers gives it.
    """

    prefix: str
    kind: str
    groups: dict[str, int]


def _resnet_groups(
    block: nn.Module, norm1: int | None = None, norm2: int | None = None
) -> dict[str, int]:
    """Diffusers' group counts of a ``ResnetBlock2D`` standing for our BigGAN ``block``:
    ``min(channels // 4, 32)`` unless given."""
    c_in, c_out = block.GroupNorm_0.num_channels, block.GroupNorm_1.num_channels
    return {
        "norm1": min(c_in // 4, 32) if norm1 is None else norm1,
        "norm2": min(c_out // 4, 32) if norm2 is None else norm2,
    }


def _diffusers_layout(model: NCSNpp, config: Mapping[str, Any]) -> list[_Entry]:
    """The diffusers counterpart of every entry of ``model.all_modules``, in order: the walk of
    diffusers' conversion script (time embedding, ``conv_in``, down blocks, mid block, up blocks,
    ``conv_norm_out``/``conv_out``)."""
    m = model.all_modules
    channels = [int(c) for c in config["block_out_channels"]]
    n, layers = len(channels), int(_config_value(config, "layers_per_block"))
    attn = [_DOWN_TYPES[t] for t in config["down_block_types"]]
    norm_groups = _config_value(config, "norm_num_groups")
    mid_groups = norm_groups if norm_groups is not None else min(channels[-1] // 4, 32)
    mid_attn_groups = _config_value(config, "attn_norm_num_groups") or mid_groups
    out_groups = norm_groups if norm_groups is not None else min(channels[0] // 4, 32)
    entries = [
        _Entry("time_proj", "fourier", {}),
        _Entry("time_embedding.linear_1", "plain", {}),
        _Entry("time_embedding.linear_2", "plain", {}),
        _Entry("conv_in", "plain", {}),
    ]

    def resnet(prefix: str, **groups: int | None) -> None:
        entries.append(_Entry(prefix, "resnet", _resnet_groups(m[len(entries)], **groups)))

    def attention(prefix: str, groups: int) -> None:
        entries.append(_Entry(prefix, "attention", {"group_norm": groups}))

    for i in range(n):
        block = f"down_blocks.{i}"
        for j in range(layers):
            resnet(f"{block}.resnets.{j}")
            if attn[i]:
                attention(f"{block}.attentions.{j}", 32)
        if i != n - 1:
            resnet(f"{block}.resnet_down")
            entries.append(_Entry(f"{block}.skip_conv", "combine", {}))
    resnet("mid_block.resnets.0", norm1=mid_groups, norm2=mid_groups)
    attention("mid_block.attentions.0", mid_attn_groups)
    resnet("mid_block.resnets.1", norm1=mid_groups, norm2=mid_groups)
    h_ch = channels[-1]
    for k in range(n):
        level, block = n - 1 - k, f"up_blocks.{k}"
        for j in range(layers + 1):
            total = m[len(entries)].GroupNorm_0.num_channels
            # AttnSkipUpBlock2D computes min(h + skip // 4, 32) groups (operator precedence).
            norm1 = min(h_ch + (total - h_ch) // 4, 32) if attn[level] else None
            resnet(f"{block}.resnets.{j}", norm1=norm1)
            h_ch = channels[level]
        if attn[level]:
            attention(f"{block}.attentions.0", 32)
        if level != 0:
            entries.append(_Entry(f"{block}.skip_norm", "plain", {"": min(h_ch // 4, 32)}))
            entries.append(_Entry(f"{block}.skip_conv", "plain", {}))
            resnet(f"{block}.resnet_up")
        else:
            entries.append(_Entry("conv_norm_out", "plain", {"": out_groups}))
            entries.append(_Entry("conv_out", "plain", {}))
    if len(entries) != len(m):
        raise DiffusersCompatError(
            f"NCSN++ has {len(m)} modules but the diffusers layout {len(entries)}"
        )
    return entries


def _check_norms(model: NCSNpp, entries: list[_Entry], eps: float) -> None:
    """Refuse unless every GroupNorm has the group count and ``eps`` diffusers gives it."""
    problems = []
    for index, entry in enumerate(entries):
        module = model.all_modules[index]
        for diffusers_name, groups in entry.groups.items():
            norm = module if diffusers_name == "" else getattr(module, _NORMS[diffusers_name])
            where = ".".join(p for p in (entry.prefix, diffusers_name) if p)
            if norm.num_groups != groups:
                problems.append(f"{where}: {groups} groups, NCSN++ {norm.num_groups}")
            elif not math.isclose(norm.eps, eps, rel_tol=1e-6):
                problems.append(f"{where}: eps {eps}, NCSN++ {norm.eps}")
    if problems:
        raise DiffusersCompatError(
            f"diffusers' GroupNorms differ from NCSN++ ({len(problems)}), e.g. "
            + "; ".join(problems[:3])
        )


def _checked_layout(model: NCSNpp, config: Mapping[str, Any]) -> list[_Entry]:
    """``_diffusers_layout`` after ``_check_norms``: the layout of a network both compute alike."""
    entries = _diffusers_layout(model, config)
    _check_norms(model, entries, float(_config_value(config, "norm_eps")))
    return entries
