"""Jobs on a trained run: load it from a checkpoint, sample, evaluate likelihood, inpaint.

These are the library functions behind ``scoresde sample``, ``scoresde likelihood`` and the demo.
Images go in and come out in data scale (``[0, 1]``); the model scale is handled here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from scoresde.build import build_model, build_score_fn, build_sde, resolve_device, sampler_config
from scoresde.checkpoint import CheckpointError, ema_model_state_dict, load_checkpoint
from scoresde.config import Config, config_from_dict
from scoresde.data.pipeline import data_shape, from_model_scale, is_image_data, to_model_scale
from scoresde.inverse import inpaint
from scoresde.likelihood import dequantized_bpd, log_likelihood
from scoresde.sampling import sample
from scoresde.score import ScoreFn
from scoresde.sdes import SDE
from scoresde.seeding import SampleStreams, derive_seed


@dataclass
class TrainedModel:
    """A trained score model ready for sampling: config, SDE, network (eval mode), device, and
    the training step its checkpoint was saved at."""

    cfg: Config
    sde: SDE
    model: nn.Module
    device: torch.device
    step: int = 0

    @property
    def score_fn(self) -> ScoreFn:
        return build_score_fn(self.model, self.sde, self.cfg)

    @property
    def shape(self) -> tuple[int, ...]:
        return data_shape(self.cfg.data)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def load_trained(path: str | Path, *, device: str = "auto", use_ema: bool = True) -> TrainedModel:
    """Load a checkpoint written by ``scoresde train`` or ``scoresde demo``.

    Raises :class:`CheckpointError` (one-line message) for a missing, corrupt or foreign file.
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt.config)
        model = build_model(cfg)
        use = use_ema and ckpt.ema is not None
        weights = ema_model_state_dict(ckpt.ema) if use else ckpt.model
        model.load_state_dict(weights)
    except (ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model: {first}") from None
    return TrainedModel(
        replace(cfg, device=str(dev)), build_sde(cfg.sde), model.to(dev).eval(), dev, ckpt.step
    )


@torch.no_grad()
def generate(
    run: TrainedModel,
    num_samples: int,
    *,
    method: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    first_index: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Draw samples ``first_index .. first_index + num_samples - 1`` of seed ``seed``, in data
    scale, with the sampler ``method`` (default: ``run.cfg.sample.method``).

    Every random draw of sample ``i`` comes from its own stream ``(seed, i)``
    (:class:`scoresde.seeding.SampleStreams`), so a sample does not depend on the batch size
    (default ``sample.batch_size``) or on which other samples are drawn with it, up to float
    rounding (and, for the adaptive ODE solver, whose steps depend on the whole batch, up to
    its tolerance). ``overrides`` replace fields of ``run.cfg.sample`` (e.g. ``num_steps=500``).

    Returns:
        ``(samples (num_samples, *shape), info)`` with ``info["method"]``, ``info["nfe"]``
        (score evaluations per sample; for the ODE the largest over the batches) and, for PC,
        ``info["pc_steps"]``.
    """
    sc = replace(run.cfg.sample, **overrides)
    method, options = sampler_config(sc, method)
    batch_size = sc.batch_size if batch_size is None else batch_size
    if num_samples < 1 or batch_size < 1 or first_index < 0:
        raise ValueError(
            f"need num_samples >= 1, batch_size >= 1 and first_index >= 0, got {num_samples}, "
            f"{batch_size}, {first_index}"
        )
    out, info = [], {"method": method, "nfe": 0}
    for start in range(first_index, first_index + num_samples, batch_size):
        indices = range(start, min(start + batch_size, first_index + num_samples))
        streams = SampleStreams(seed, indices, device=run.device)
        x_T = run.sde.prior_sampling((len(indices), *run.shape), streams, device=run.device)
        x, batch_info = sample(
            run.sde,
            run.score_fn,
            x_T,
            method=method,
            generator=streams,
            progress=progress,
            **options,
        )
        info["nfe"] = max(info["nfe"], batch_info["nfe"])
        if "num_steps" in batch_info:
            info["pc_steps"] = batch_info["num_steps"]
        out.append(from_model_scale(x, run.cfg.data).cpu())
    return torch.cat(out), info


def evaluate_likelihood(
    run: TrainedModel,
    data: Tensor,
    *,
    seed: int = 0,
    indices: range | None = None,
    repeat: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Negative log-likelihood of ``data`` (data scale) under the probability-flow ODE.

    Images are uniformly dequantized and scored in bits/dim (:func:`scoresde.bits_per_dim`);
    toy vectors in nats per example. ``overrides`` replace fields of ``run.cfg.eval``.
    Example ``k`` of ``data`` is example ``indices[k]`` of its split (default ``0, 1, ...``)
    and draws its dequantization and trace probe from its own stream ``(seed, repeat, index)``,
    so its value does not depend on the batch or the shard it is scored in (up to the adaptive
    solver's tolerance, whose steps depend on the batch); ``repeat`` numbers independent
    dequantization draws.

    Returns:
        ``{"bpd" | "nll_nats": mean, "per_example": list, "nfe": mean NFE, "num_examples": N}``.
    """
    ec = replace(run.cfg.eval, **overrides)
    if ec.num_examples:
        data = data[: ec.num_examples]
    indices = range(data.shape[0]) if indices is None else indices[: data.shape[0]]
    if len(indices) != data.shape[0]:
        raise ValueError(f"{len(indices)} indices for {data.shape[0]} examples")
    stream_seed = derive_seed(seed, "likelihood", repeat)
    opts = dict(rtol=ec.rtol, atol=ec.atol, trace=ec.trace, eps=ec.eps)
    values, nfes = [], []
    for start in tqdm(
        range(0, data.shape[0], ec.batch_size), desc="likelihood", disable=not progress
    ):
        x = data[start : start + ec.batch_size].to(run.device)
        gen = SampleStreams(stream_seed, indices[start : start + x.shape[0]], device=run.device)
        if is_image_data(run.cfg.data):
            v, nfe = dequantized_bpd(
                run.sde,
                run.score_fn,
                x,
                levels=run.cfg.data.levels,
                centered=run.cfg.data.centered,
                generator=gen,
                **opts,
            )
        else:
            y = to_model_scale(x, run.cfg.data, generator=gen)
            logp, _, nfe = log_likelihood(run.sde, run.score_fn, y, generator=gen, **opts)
            v = -logp
        values.append(v.detach().cpu())
        nfes.append(nfe)
    per_example = torch.cat(values)
    key = "bpd" if is_image_data(run.cfg.data) else "nll_nats"
    return {
        key: per_example.mean().item(),
        "per_example": per_example.tolist(),
        "nfe": sum(nfes) / len(nfes),
        "num_examples": int(per_example.numel()),
    }


@torch.no_grad()
def inpaint_images(
    run: TrainedModel,
    images: Tensor,
    mask: Tensor,
    *,
    method: str = "pc",
    seed: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> Tensor:
    """Complete ``images`` (data scale) where ``mask == 0`` with the unconditional model.

    ``method`` is a sampler that can project (``"pc"``); image ``k`` draws from the stream
    ``(seed, k)``. ``overrides`` replace fields of ``run.cfg.sample``.
    """
    mask = mask.to(run.device)

    def solve(y: Tensor, **kw: Any) -> Tensor:
        return inpaint(run.sde, run.score_fn, y, mask, **kw)

    return _solve_inverse(run, images, solve, method, seed, progress, overrides)


def _solve_inverse(
    run: TrainedModel,
    images: Tensor,
    solve: Any,
    method: str,
    seed: int,
    progress: bool,
    overrides: dict[str, Any],
) -> Tensor:
    """The shell of the inverse-problem jobs: ``solve(y, method=, generator=, progress=,
    **options)`` on ``images`` in model scale (not dequantized), with the sampler of
    ``run.cfg.sample`` and ``overrides``, image ``k`` drawing from the stream ``(seed, k)``;
    back in data scale."""
    sc = replace(run.cfg.sample, **overrides)
    method, options = sampler_config(sc, method)
    streams = SampleStreams(seed, range(images.shape[0]), device=run.device)
    y = to_model_scale(images.to(run.device), replace(run.cfg.data, dequantize=False))
    out = solve(y, method=method, generator=streams, progress=progress, **options)
    return from_model_scale(out, run.cfg.data).cpu()


def lower_half_mask(shape: tuple[int, ...]) -> Tensor:
    """Mask ``(1, C, H, W)`` that keeps the upper half of an image (1) and hides the lower (0)."""
    mask = torch.ones(1, *shape)
    mask[..., shape[-2] // 2 :, :] = 0
    return mask


def _latent_options(run: TrainedModel, overrides: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The probability-flow solver options (``eps``, ``rtol``, ``atol``) of ``run.cfg.sample``
    with ``overrides``, and its batch size."""
    sc = replace(run.cfg.sample, **overrides)
    return dict(eps=sc.eps, rtol=sc.ode_rtol, atol=sc.ode_atol), sc.batch_size


@torch.no_grad()
def encode_images(
    run: TrainedModel, images: Tensor, **overrides: Any
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Encode ``images`` (data scale, ``(N, *shape)``) to latents with the probability-flow ODE
    and decode them again (:mod:`scoresde.latent`), in batches of ``sample.batch_size``.

    The solver uses ``sample.eps``, ``sample.ode_rtol`` and ``sample.ode_atol``; ``overrides``
    replace fields of ``run.cfg.sample``. Images enter the model's scale without dequantization.

    Returns:
        ``(latents (N, *shape), decoded (N, *shape) in data scale, info)`` with
        ``info["nfe_encode"]``/``info["nfe_decode"]`` (the largest over the batches) and
        ``info["roundtrip_max_abs_error"]`` (data scale).
    """
    from scoresde.latent import decode, encode

    opts, batch_size = _latent_options(run, overrides)
    data_cfg = replace(run.cfg.data, dequantize=False)
    latents, decoded, info = [], [], {"nfe_encode": 0, "nfe_decode": 0}
    for start in range(0, images.shape[0], batch_size):
        x = to_model_scale(images[start : start + batch_size].to(run.device), data_cfg)
        z, nfe_encode = encode(run.sde, run.score_fn, x, **opts)
        y, nfe_decode = decode(run.sde, run.score_fn, z, **opts)
        info["nfe_encode"] = max(info["nfe_encode"], nfe_encode)
        info["nfe_decode"] = max(info["nfe_decode"], nfe_decode)
        latents.append(z.cpu())
        decoded.append(from_model_scale(y, run.cfg.data).cpu())
    decoded_all = torch.cat(decoded)
    info["roundtrip_max_abs_error"] = float((decoded_all - images.cpu()).abs().max())
    return torch.cat(latents), decoded_all, info


@torch.no_grad()
def interpolate_images(
    run: TrainedModel, first: Tensor, second: Tensor, num: int = 8, **overrides: Any
) -> tuple[Tensor, dict[str, Any]]:
    """``num`` frames from image ``first`` to image ``second`` (data scale, ``shape`` each)
    through the spherical interpolation of their latents (:func:`scoresde.latent.interpolate`).

    Solver options as in :func:`encode_images`. Returns ``(frames (num, *shape) in data scale,
    info)`` with ``info["nfe_encode"]``, ``info["nfe_decode"]`` and ``info["alphas"]`` (a list).
    """
    from scoresde.latent import interpolate

    opts, _ = _latent_options(run, overrides)
    data_cfg = replace(run.cfg.data, dequantize=False)
    x0 = to_model_scale(first.to(run.device), data_cfg)
    x1 = to_model_scale(second.to(run.device), data_cfg)
    frames, info = interpolate(run.sde, run.score_fn, x0, x1, num, **opts)
    summary = {
        "nfe_encode": info["nfe_encode"],
        "nfe_decode": info["nfe_decode"],
        "alphas": info["alphas"].tolist(),
    }
    return from_model_scale(frames, run.cfg.data).cpu(), summary


def read_user_images(path: str | Path) -> Tensor:
    """A user's images: one image file, a folder of them, an ``.npy`` array or an ``.npz`` (its
    ``images`` array, or its only one), as a float tensor ``(N, ...)`` (uint8 arrays and image
    files are divided by 255), with at least one example.

    Raises:
        ValueError: a one-line message naming ``path`` (missing, unreadable, wrong shape).
    """
    import zipfile

    import numpy as np

    from scoresde.data.image_formats import (
        IMAGE_EXTENSIONS,
        decode_image,
        image_to_tensor,
        list_image_files,
    )

    path = Path(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise ValueError(f"images {path}: the folder holds no png, jpg, jpeg, webp or bmp")
        images = [image_to_tensor(decode_image(f)) for f in files]
        if len({tuple(x.shape) for x in images}) > 1:
            raise ValueError(f"the images in {path} differ in size; resize them to one size")
        return torch.stack(images)
    if not path.is_file():
        raise ValueError(f"images {path}: it does not exist (an image, folder, .npy or .npz)")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return image_to_tensor(decode_image(path))[None]
    try:
        arr = np.load(path, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            with arr as arrays:
                arr = {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"images {path} is not a readable .npy/.npz array: {e}") from None
    if isinstance(arr, dict):
        if "images" not in arr and len(arr) != 1:
            raise ValueError(f"images {path}: expected an 'images' array or one array")
        arr = arr["images"] if "images" in arr else next(iter(arr.values()))
    if not isinstance(arr, np.ndarray) or arr.ndim not in (2, 3, 4) or arr.shape[0] < 1:
        shape = getattr(arr, "shape", None)
        raise ValueError(
            f"images {path}: expected an array (N, C, H, W), (N, H, W) or (N, 2), got {shape}"
        )
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 255)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"images {path}: expected a numeric array, got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.float32))


def images_for_model(images: Tensor, run: TrainedModel, path: Path | str) -> Tensor:
    """``images`` (from :func:`read_user_images` of ``path``) in the run's example shape:
    ``(N, H, W)`` gains the channel axis, RGB becomes grey (the channel mean) for a one-channel
    model; images must lie in ``[0, 1]``. Raises ``ValueError`` (one line) otherwise."""
    shape = tuple(run.shape)
    if images.ndim == 3 and len(shape) == 3 and shape[0] == 1:
        images = images[:, None]
    if images.ndim == 4 and images.shape[1] == 3 and shape[:1] == (1,):
        images = images.mean(dim=1, keepdim=True)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"images {path} hold examples of shape {tuple(images.shape[1:])}; the model "
            f"takes {shape}"
        )
    if is_image_data(run.cfg.data) and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images {path}: expected values in [0, 1] (data scale)")
    return images


@torch.no_grad()
def colorize_images(
    run: TrainedModel,
    images: Tensor,
    *,
    method: str = "pc",
    seed: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> Tensor:
    """Colour grey ``images`` (data scale, ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, 3, H, W)``;
    colour images are first made grey, the mean of their channels) with an RGB model
    (:func:`scoresde.inverse.colorize`, app. I.3).

    ``method`` is a sampler that can project (``"pc"``); image ``k`` draws from the stream
    ``(seed, k)``. ``overrides`` replace fields of ``run.cfg.sample``. Returns ``(N, 3, H, W)``
    in data scale.

    Raises:
        ValueError: the model does not take three-channel images.
    """
    from scoresde.inverse import colorize

    shape = tuple(run.shape)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"colorization needs an RGB model (3, H, W); this one takes {shape}")
    images = images[:, None] if images.ndim == 3 else images
    images = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"images of shape {tuple(images.shape[1:])}; the model takes {shape}")

    def solve(grey: Tensor, **kw: Any) -> Tensor:
        return colorize(run.sde, run.score_fn, grey, **kw)

    return _solve_inverse(run, images, solve, method, seed, progress, overrides)
