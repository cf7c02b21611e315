"""Image jobs on a trained run: inverse problems (inpainting, colorization) and the latent
space of the probability-flow ODE (encoding, interpolation), plus reading a user's images.

These are the library functions behind ``scoresde inpaint``, ``colorize``, ``encode`` and
``interpolate``. Images go in and come out in data scale (``[0, 1]``); the model scale is
handled here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde.core.seeding import SampleStreams
from scoresde.jobs.finite import check_finite
from scoresde.jobs.runs import TrainedModel, TrainedRun
from scoresde.methods.inverse import inpaint
from scoresde.methods.sampling.ode import TimeProgress
from scoresde.setup.build import sampler_config
from scoresde.setup.config import Config
from scoresde.setup.data.pipeline import data_shape, from_model_scale, is_image_data, to_model_scale


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

    ``method`` is a sampler that can project (``"pc"``), with its own step count unless
    ``overrides`` (fields of ``run.cfg.sample``) set it; image ``k`` draws from the stream
    ``(seed, k)``. Raises :class:`scoresde.jobs.finite.NonFiniteSamplesError` for NaN or infinite
    results.
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
    sc = run.cfg.sample.updated(method=method, **overrides)
    method, options = sampler_config(sc)
    streams = SampleStreams(seed, range(images.shape[0]), device=run.device)
    y = to_model_scale(images.to(run.device), replace(run.cfg.data, dequantize=False))
    out = solve(y, method=method, generator=streams, progress=progress, **options)
    check_finite(out, run.model, what="images", method=method)
    return from_model_scale(out, run.cfg.data).cpu()


def lower_half_mask(shape: tuple[int, ...]) -> Tensor:
    """Mask ``(1, C, H, W)`` that keeps the upper half of an image (1) and hides the lower (0)."""
    mask = torch.ones(1, *shape)
    mask[..., shape[-2] // 2 :, :] = 0
    return mask


def _latent_options(run: TrainedModel, overrides: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The probability-flow solver options (``eps``, ``rtol``, ``atol``) of ``run.cfg.sample``
    with ``overrides``, and its batch size."""
    sc = run.cfg.sample.updated(method="ode", **overrides)
    ode = sc.sampler_options()
    return dict(eps=ode.eps, rtol=ode.rtol, atol=ode.atol), sc.batch_size


@torch.no_grad()
def encode_images(
    run: TrainedModel, images: Tensor, *, progress: bool = False, **overrides: Any
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Encode ``images`` (data scale, ``(N, *shape)``) to latents with the probability-flow ODE
    and decode them again (:mod:`scoresde.methods.latent`), in batches of ``sample.batch_size``.

    The solver uses the ``ode`` sampler's ``eps``, ``rtol`` and ``atol`` (the run's, when its
    ``sample.method`` is ``ode``, else the defaults) with ``overrides``. Images enter the
    model's scale without dequantization.
    ``progress`` shows the solves in integration time. NaN or infinite latents raise
    :class:`scoresde.jobs.finite.NonFiniteSamplesError`.

    Returns:
        ``(latents (N, *shape), decoded (N, *shape) in data scale, info)`` with
        ``info["nfe_encode"]``/``info["nfe_decode"]`` (the largest over the batches) and
        ``info["roundtrip_max_abs_error"]`` (data scale).
    """
    from scoresde.methods.latent import decode, encode

    opts, batch_size = _latent_options(run, overrides)
    data_cfg = replace(run.cfg.data, dequantize=False)
    latents, decoded, info = [], [], {"nfe_encode": 0, "nfe_decode": 0}
    parts = -(-images.shape[0] // batch_size)
    with (
        TimeProgress(opts["eps"], run.sde.T, desc="encode", enabled=progress, parts=parts) as up,
        TimeProgress(run.sde.T, opts["eps"], desc="decode", enabled=progress, parts=parts) as down,
    ):
        for start in range(0, images.shape[0], batch_size):
            x = to_model_scale(images[start : start + batch_size].to(run.device), data_cfg)
            z, nfe_encode = encode(run.sde, run.score_fn, x, progress=up, **opts)
            check_finite(z, run.model, what="latents", method="ode", first_index=start)
            y, nfe_decode = decode(run.sde, run.score_fn, z, progress=down, **opts)
            check_finite(y, run.model, what="images", method="ode", first_index=start)
            latents.append(z.cpu())
            decoded.append(from_model_scale(y, run.cfg.data).cpu())
            info["nfe_encode"] = max(info["nfe_encode"], nfe_encode)
            info["nfe_decode"] = max(info["nfe_decode"], nfe_decode)
    decoded_all = torch.cat(decoded)
    info["roundtrip_max_abs_error"] = float((decoded_all - images.cpu()).abs().max())
    return torch.cat(latents), decoded_all, info


@torch.no_grad()
def interpolate_images(
    run: TrainedModel, first: Tensor, second: Tensor, num: int = 8, *, progress: bool = False,
    **overrides: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """``num`` frames from image ``first`` to image ``second`` (data scale, ``shape`` each)
    through the spherical interpolation of their latents
    (:func:`scoresde.methods.latent.interpolate`).

    Solver options as in :func:`encode_images`. Returns ``(frames (num, *shape) in data scale,
    info)`` with ``info["nfe_encode"]``, ``info["nfe_decode"]`` and ``info["alphas"]`` (a list).
    """
    from scoresde.methods.latent import interpolate

    opts, _ = _latent_options(run, overrides)
    data_cfg = replace(run.cfg.data, dequantize=False)
    x0 = to_model_scale(first.to(run.device), data_cfg)
    x1 = to_model_scale(second.to(run.device), data_cfg)
    frames, info = interpolate(run.sde, run.score_fn, x0, x1, num, progress=progress, **opts)
    check_finite(frames, run.model, what="frames", method="ode")
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
        ValueError: a one-line message naming ``path`` (missing, unreadable, wrong shape, NaN
            or infinite values).
    """
    import zipfile

    import numpy as np

    from scoresde.setup.data.image_formats import (
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
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"images {path}: expected a real numeric array, got dtype {arr.dtype}")
    values = arr.astype(np.float32)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"images {path}: {bad} of {values.size} values are NaN or infinite (in float32); "
            "give finite values in [0, 1]"
        )
    return torch.from_numpy(values)


def images_for_model(
    images: Tensor,
    model: TrainedRun | Config,
    path: Path | str,
    *,
    note: Callable[[str], None] | None = None,
) -> Tensor:
    """``images`` (from :func:`read_user_images` of ``path``) in the example shape of ``model``
    (a trained run, or just its config: nothing needs the network): ``(N, H, W)`` gains the
    channel axis; for a one-channel model, three channels become grey (their mean): silently
    when they are equal (a grey image stored as RGB, as image files are read), else saying so
    through ``note(message)`` (the command line writes it on stderr). Images must lie in
    ``[0, 1]``. Raises ``ValueError`` (one line) otherwise."""
    cfg = model if isinstance(model, Config) else model.cfg
    shape = tuple(data_shape(cfg.data))
    if images.ndim == 3 and len(shape) == 3 and shape[0] == 1:
        images = images[:, None]
    if images.ndim == 4 and images.shape[1] == 3 and shape[:1] == (1,):
        grey = torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
        colour = not grey
        if colour and note is not None:
            note(
                f"images {path} are in colour (3 channels) and the model takes 1: converted "
                "to grey (the mean of the channels)"
            )
        images = images.mean(dim=1, keepdim=True)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"images {path} hold examples of shape {tuple(images.shape[1:])}; the model "
            f"takes {shape}"
        )
    if is_image_data(cfg.data) and (images.min() < 0 or images.max() > 1):
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
    (:func:`scoresde.methods.inverse.colorize`, app. I.3).

    ``method`` is a sampler that can project (``"pc"``); image ``k`` draws from the stream
    ``(seed, k)``. ``overrides`` replace fields of ``run.cfg.sample``. Returns ``(N, 3, H, W)``
    in data scale.

    Raises:
        ValueError: the model does not take three-channel images.
    """
    from scoresde.methods.inverse import colorize

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
