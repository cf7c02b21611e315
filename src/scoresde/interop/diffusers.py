"""NCSN++ weights from a score-SDE diffusers ``UNet2DModel`` folder, without diffusers installed.

The ``google/ncsnpp-*`` models on the Hugging Face hub are the official NCSN++ (VE, continuous)
networks converted by diffusers' ``scripts/convert_ncsnpp_original_checkpoint_to_diffusers.py``
into a ``UNet2DModel``: ``config.json`` (``_class_name: UNet2DModel``) and
``diffusion_pytorch_model.safetensors`` (or ``.bin``), possibly inside the ``unet/`` folder of a
``ScoreSdeVePipeline``. ``load_diffusers_ncsnpp(folder)`` inverts that conversion and returns our
``NCSNpp`` (eval mode) computing the same function: ``NCSNpp(x, sigma) == UNet2DModel(x, sigma)``.

Supported (exactly what those skip blocks implement, checked on the config):

- ``down_block_types`` of ``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` and ``up_block_types`` of
  ``SkipUpBlock2D`` / ``AttnSkipUpBlock2D``, with attention at mirrored levels, a ``UNetMidBlock2D``
  with attention; this is NCSN++ with BigGAN residual blocks, FIR ``(1, 3, 3, 1)`` resampling,
  ``skip_rescale``, ``progressive='output_skip'``, ``progressive_input='input_skip'``,
  ``progressive_combine='sum'``;
- ``time_embedding_type='fourier'`` (Gaussian Fourier features of ``log sigma``, output divided by
  sigma: ``embedding_type='fourier'``, ``scale_by_sigma``), ``resnet_time_scale_shift='default'``,
  ``act_fn`` ``'silu'``/``'swish'``, ``norm_eps=1e-6``, ``mid_block_scale_factor=sqrt(2)``,
  single-head attention (``attention_head_dim`` ``None`` or equal to the channels), no class
  embedding, 3 image channels (the skip convolutions of these blocks are hard-wired to 3),
  ``block_out_channels[0]`` = ``nf`` dividing every entry (``ch_mult[0] == 1``);
- ``center_input_sample`` (diffusers maps ``x -> 2x - 1``) becomes ``centered = not
  center_input_sample``. The loader reproduces the diffusers function: with
  ``center_input_sample: false`` the network takes its inputs unchanged (``centered=True``) even
  where the official network it came from was trained with ``centered=False`` and mapped
  ``x -> 2x - 1`` itself;
- ``sample_size`` is the image size (it places ``attn_resolutions``);
- attention weights under the current names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) or the
  legacy ones of the hub files (``query``, ``key``, ``value``, ``proj_attn``); the Fourier
  frequencies as ``time_proj.weight`` (and/or the legacy ``time_proj.W``);
- ``diffusion_pytorch_model.safetensors`` (preferred), else ``diffusion_pytorch_model.bin``, read
  with ``torch.load(weights_only=True)`` only. Half-precision weights are cast to float32.

Not supported (refused with a one-line ``DiffusersCompatError``): any other block type (DDPM-style
``DownBlock2D``/``AttnDownBlock2D`` UNets, which are not NCSN++), positional or learned time
embeddings, ``scale_shift``/``spatial`` time conditioning, class embeddings, multi-head attention,
sharded or ``variant`` weight files, and configs whose GroupNorm group counts differ from
NCSN++'s ``min(channels // 4, 32)``. diffusers gives every attention in the skip blocks 32 groups
and the first norm of the resnets in ``AttnSkipUpBlock2D`` ``min(a + b // 4, 32)`` groups (for
``a + b`` input channels): both equal NCSN++'s counts only from 128 channels on, which holds for
all ``google/ncsnpp-*`` models but not for small networks, whose diffusers versions compute
something else. The loader compares every norm's group count and ``eps`` and refuses on any
difference, rather than load weights into a different function.

The ``sigmas`` buffer of ``NCSNpp`` is not in diffusers' files; it is built from ``sigma_min``,
``sigma_max``, ``num_scales`` (the scheduler's settings) and does not affect the outputs of a
Fourier-embedding network.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from scoresde.core.seeding import private_global_rng
from scoresde.interop.diffusers_config import (
    DiffusersCompatError,
    _checked_layout,
    _Entry,
    ncsnpp_kwargs_from_diffusers,
)
from scoresde.nn.ncsnpp import NCSNpp

__all__ = [
    "WEIGHT_FILES",
    "DiffusersCompatError",
    "diffusers_state_dict_to_ncsnpp",
    "load_diffusers_ncsnpp",
    "ncsnpp_kwargs_from_diffusers",
    "ncsnpp_state_dict_to_diffusers",
]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
"""Weight files looked for in a diffusers model folder, in order of preference."""

# Our sub-module names -> diffusers', per block kind.
_RESNET_NAMES = {
    "Conv_0": "conv1",
    "GroupNorm_0": "norm1",
    "Conv_1": "conv2",
    "GroupNorm_1": "norm2",
    "Dense_0": "time_emb_proj",
    "Conv_2": "conv_shortcut",
}
_ATTENTION_NAMES = {
    "current": {"NIN_0": "to_q", "NIN_1": "to_k", "NIN_2": "to_v", "NIN_3": "to_out.0"},
    "legacy": {"NIN_0": "query", "NIN_1": "key", "NIN_2": "value", "NIN_3": "proj_attn"},
}


def _key_map(
    model: NCSNpp, entries: list[_Entry], attention_names: str
) -> dict[str, tuple[str, bool]]:
    """Our state-dict key -> (diffusers key, whether the tensor is transposed), ``sigmas``
    excluded."""
    names = _ATTENTION_NAMES[attention_names]
    out: dict[str, tuple[str, bool]] = {}
    for key in model.state_dict():
        if key == "sigmas":
            continue
        _, index, rest = key.split(".", 2)
        entry = entries[int(index)]
        head, _, leaf = rest.rpartition(".")
        if entry.kind == "fourier" and rest == "W":
            out[key] = (f"{entry.prefix}.weight", False)
        elif (entry.kind, head) in (("plain", ""), ("combine", "Conv_0")):
            out[key] = (f"{entry.prefix}.{leaf}", False)
        elif entry.kind == "resnet" and head in _RESNET_NAMES:
            out[key] = (f"{entry.prefix}.{_RESNET_NAMES[head]}.{leaf}", False)
        elif entry.kind == "attention" and head == "GroupNorm_0":
            out[key] = (f"{entry.prefix}.group_norm.{leaf}", False)
        elif entry.kind == "attention" and head in names and leaf in ("W", "b"):
            suffix = "weight" if leaf == "W" else "bias"
            out[key] = (f"{entry.prefix}.{names[head]}.{suffix}", leaf == "W")
        else:
            raise DiffusersCompatError(f"no diffusers counterpart for {key} ({entry.kind})")
    return out


def _require_config_model(model: NCSNpp, config: Mapping[str, Any]) -> None:
    """Refuse unless ``model`` has the parameter shapes of the NCSN++ that ``config`` describes."""
    with torch.device("meta"):
        reference = NCSNpp(**ncsnpp_kwargs_from_diffusers(config))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items() if k != "sigmas"}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "sigmas"}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))
        raise DiffusersCompatError(
            f"the NCSNpp model is not the network of the diffusers config "
            f"({len(differing)} differing entries, e.g. {differing[:2]})"
        )


def ncsnpp_state_dict_to_diffusers(
    model: NCSNpp, config: Mapping[str, Any], *, legacy_attention_names: bool = False
) -> dict[str, Tensor]:
    """``model``'s weights as a ``UNet2DModel`` state dict for ``config`` (the forward direction
    of diffusers' conversion script; ``sigmas`` has no counterpart and is dropped).

    Attention weights ``NIN_k.W`` ``(in, out)`` become ``Linear`` weights ``(out, in)`` under the
    current names, or the legacy ones (``query`` ...) with ``legacy_attention_names``.

    Raises:
        DiffusersCompatError: ``config`` is unsupported, ``model`` is not its network, or diffusers
            would normalise differently (one line).
    """
    _require_config_model(model, config)
    names = "legacy" if legacy_attention_names else "current"
    mapping = _key_map(model, _checked_layout(model, config), names)
    sd = model.state_dict()
    return {
        name: (sd[ours].t() if transpose else sd[ours]).detach().clone().contiguous()
        for ours, (name, transpose) in mapping.items()
    }


def diffusers_state_dict_to_ncsnpp(
    model: NCSNpp, config: Mapping[str, Any], sd: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """A ``UNet2DModel`` state dict as ``model``'s state dict (``sigmas`` kept from ``model``).

    Accepts current or legacy attention names and ``time_proj.weight`` and/or ``time_proj.W``.

    Raises:
        DiffusersCompatError: as ``ncsnpp_state_dict_to_diffusers``, or missing, unexpected or
            wrongly shaped tensors (one line).
    """
    _require_config_model(model, config)
    return _to_ncsnpp(model, config, sd)


def _to_ncsnpp(
    model: NCSNpp, config: Mapping[str, Any], sd: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``diffusers_state_dict_to_ncsnpp`` for a ``model`` known to be the config's network."""
    sd = dict(sd)
    legacy_w = sd.pop("time_proj.W", None)
    if legacy_w is not None:
        weight = sd.setdefault("time_proj.weight", legacy_w)
        if not torch.equal(weight, legacy_w):
            raise DiffusersCompatError("time_proj.weight and time_proj.W differ")
    names = "legacy" if any(k.endswith(".query.weight") for k in sd) else "current"
    mapping = _key_map(model, _checked_layout(model, config), names)
    wanted = {name for name, _ in mapping.values()}
    missing = sorted(wanted - set(sd))
    unexpected = sorted(set(sd) - wanted)
    if missing or unexpected:
        raise DiffusersCompatError(
            f"diffusers state dict does not fit the config: missing {missing[:3]} "
            f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    ours = model.state_dict()
    out = {"sigmas": ours["sigmas"]}
    for key, (name, transpose) in mapping.items():
        value = sd[name].t() if transpose else sd[name]
        if tuple(value.shape) != tuple(ours[key].shape):
            raise DiffusersCompatError(
                f"{name} has shape {tuple(sd[name].shape)}, expected that of {key} "
                f"{tuple(ours[key].shape)}{' transposed' if transpose else ''}"
            )
        out[key] = value.to(ours[key].dtype)
    return {key: out[key] for key in ours}


def _model_folder(folder: Path) -> Path:
    """``folder`` itself, or its ``unet/`` subfolder (a saved diffusers pipeline)."""
    if (folder / "config.json").is_file():
        return folder
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    raise FileNotFoundError(f"no diffusers config.json in {folder} or {folder / 'unet'}")


def _load_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of the first of ``WEIGHT_FILES`` present in ``folder`` (safely, on CPU)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            return load_file(path, device="cpu")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DiffusersCompatError(
                f"refusing {path}: not a plain tensor file ({reason})"
            ) from None
        if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise DiffusersCompatError(f"{path} is not a state dict of tensors")
        return dict(sd)
    raise FileNotFoundError(f"none of {list(WEIGHT_FILES)} in {folder}")


def load_diffusers_ncsnpp(
    folder: str | os.PathLike[str],
    *,
    sigma_min: float = 0.01,
    sigma_max: float = 50.0,
    num_scales: int = 1000,
    device: str | torch.device = "cpu",
) -> NCSNpp:
    """An ``NCSNpp`` (eval mode) with the weights of a score-SDE diffusers ``UNet2DModel`` folder.

    Args:
        folder: the model folder (``config.json`` + weights) or a pipeline folder with ``unet/``.
        sigma_min, sigma_max, num_scales: fill the ``sigmas`` buffer (e.g. from the pipeline's
            ``ScoreSdeVeScheduler`` config); they do not change the network's outputs.
        device: where the returned model lives.

    Returns:
        The network; call it as ``model(x (B, 3, H, W), sigma (B,)) -> (B, 3, H, W)``, the
        ``UNet2DModel``'s ``sample`` output for ``timestep = sigma``.

    Raises:
        FileNotFoundError: no config or weight file.
        DiffusersCompatError: anything the module docstring lists as unsupported (one line).
    """
    model_dir = _model_folder(Path(folder))
    config = json.loads((model_dir / "config.json").read_text())
    kwargs = ncsnpp_kwargs_from_diffusers(
        config, sigma_min=sigma_min, sigma_max=sigma_max, num_scales=num_scales
    )
    with private_global_rng(0):  # the initial weights are replaced; the caller's RNG is untouched
        model = NCSNpp(**kwargs)
    _checked_layout(model, config)  # refuse before reading the weights
    sd = _to_ncsnpp(model, config, _load_weights(model_dir))
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()
