"""The subcommands on a user's images: ``encode``, ``interpolate``, ``inpaint``, ``colorize``.

Each is a thin shell over a job of :mod:`scoresde.jobs.runs`: it checks the arguments, ``--out``,
the
images (and mask) against the run's config read from the checkpoint's header first, then loads
the network, runs the job and writes arrays and a picture. ``--images`` and ``--image`` are one
option.
"""

from __future__ import annotations

import json
import sys

from scoresde.cli.checks import check_file, check_out, run_config
from scoresde.cli.options import check_count, overrides, set_threads
from scoresde.cli.outputs import save_array, save_picture


def _note(a):
    """A ``note(message)`` that writes ``scoresde <command>: note: message`` on stderr."""
    return lambda message: print(f"scoresde {a.command}: note: {message}", file=sys.stderr)


def _checked_images(a, outputs: list[str], what: str, method: str | None = None):
    """Check ``--out`` and read ``--images``, then the run's config: ``(images, cfg, opts)``
    with the ``sample.*`` overrides ``opts`` (those of the sampler ``method`` when given: the
    ODE's for the latent commands); no network is built yet."""
    from dataclasses import replace

    from scoresde.jobs.image_jobs import read_user_images

    check_out(a.out, outputs, overwrite=a.overwrite, what=what)
    images = read_user_images(a.images)
    cfg = run_config(a.checkpoint)
    if method is not None:
        cfg = replace(cfg, sample=cfg.sample.updated(method=method))
    return images, cfg, overrides(cfg, a.overrides, "sample")


def _cmd_encode(a) -> int:
    from scoresde.jobs.image_jobs import encode_images, images_for_model
    from scoresde.jobs.runs import load_trained

    images, cfg, opts = _checked_images(a, ["latents.npy", "decoded.png"], "latents", "ode")
    images = images_for_model(images, cfg, a.images, note=_note(a))
    run = load_trained(a.checkpoint, device=a.device or "auto")
    batch = min(opts.get("batch_size", run.cfg.sample.batch_size), images.shape[0])
    set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=False)
    latents, decoded, info = encode_images(run, images, progress=not a.no_progress, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / "latents.npy", latents)
    save_picture(decoded, a.out / "decoded.png", nrow=8, title="decode(encode(x))")
    summary = {"out": str(a.out), "num_images": images.shape[0], "checkpoint_step": run.step}
    print(json.dumps({**summary, **info}))
    return 0


def _cmd_interpolate(a) -> int:
    from scoresde.jobs.image_jobs import images_for_model, interpolate_images
    from scoresde.jobs.runs import load_trained

    check_count("--num", a.num, 2)
    check_count("--first", a.first, 0)
    check_count("--second", a.second, 0)
    outputs = ["frames.npy", "interpolation.png"]
    images, cfg, opts = _checked_images(a, outputs, "an interpolation", "ode")
    n = images.shape[0]
    if a.first >= n or a.second >= n:
        raise ValueError(
            f"--first {a.first} / --second {a.second}: {a.images} holds {n} images (0..{n - 1})"
        )
    images = images_for_model(images, cfg, a.images, note=_note(a))
    run = load_trained(a.checkpoint, device=a.device or "auto")
    set_threads(a, run.device, lambda: run.score_fn, run.shape, a.num, backward=False)
    frames, info = interpolate_images(
        run, images[a.first], images[a.second], a.num, progress=not a.no_progress, **opts
    )
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / "frames.npy", frames)
    save_picture(frames, a.out / "interpolation.png", nrow=a.num, title="interpolation")
    summary = {"out": str(a.out), "first": a.first, "second": a.second, "num": a.num}
    print(json.dumps({**summary, "checkpoint_step": run.step, **info}))
    return 0


def _read_mask(path, shape):
    """``--mask`` PNG (white = known) as a 0/1 tensor ``(1, C, H, W)`` for examples ``shape``."""
    from scoresde.setup.data.image_formats import decode_image, image_to_tensor

    check_file(path, "--mask")
    mask = (image_to_tensor(decode_image(path)).mean(0) > 0.5).float()
    if len(shape) != 3 or tuple(mask.shape) != tuple(shape[1:]):
        raise ValueError(f"--mask {path} is {tuple(mask.shape)}; the model takes {tuple(shape)}")
    return mask.expand(shape[0], -1, -1)[None]


def _grey_for_colour_model(images, cfg, path):
    """``colorize``'s input checks: an RGB model, grey or RGB images of its size."""
    from scoresde.setup.data.pipeline import data_shape

    shape = tuple(data_shape(cfg.data))
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"colorization needs an RGB model (3, H, W); this one takes {shape}")
    found = tuple(images.shape[1:]) if images.ndim == 3 else tuple(images.shape[2:])
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] not in (1, 3)):
        raise ValueError(f"images {path}: expected grey or RGB images, got {tuple(images.shape)}")
    if found != shape[1:]:
        raise ValueError(f"images {path} are {found}; the model takes {shape[1:]}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"images {path}: expected values in [0, 1] (data scale)")
    return images


def _inverse_command(a, name: str, what: str, job, fit) -> int:
    """The shell of ``inpaint`` and ``colorize``: ``fit(images, cfg)`` checks the inputs
    against the run's config (before the network is built), ``job(run, images, **kw)`` does
    the work."""
    from scoresde.jobs.runs import load_trained

    images, cfg, opts = _checked_images(a, [f"{name}.npy", f"{name}.png"], what)
    images = fit(images, cfg)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    method = opts.pop("method", "pc")
    batch = min(opts.pop("batch_size", run.cfg.sample.batch_size), images.shape[0])
    set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=False)
    seed = run.cfg.seed if a.seed is None else a.seed
    out = job(run, images, method=method, seed=seed, progress=not a.no_progress, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / f"{name}.npy", out)
    save_picture(out, a.out / f"{name}.png", nrow=8, title=name)
    summary = {"out": str(a.out), "num_images": images.shape[0], "checkpoint_step": run.step}
    print(json.dumps({**summary, "method": method}))
    return 0


def _cmd_inpaint(a) -> int:
    from scoresde.jobs.image_jobs import images_for_model, inpaint_images
    from scoresde.setup.data.pipeline import data_shape

    mask = None

    def fit(images, cfg):
        nonlocal mask
        images = images_for_model(images, cfg, a.images, note=_note(a))
        mask = _read_mask(a.mask, data_shape(cfg.data))
        return images

    def job(run, images, **kw):
        return inpaint_images(run, images, mask, **kw)

    return _inverse_command(a, "inpainted", "an inpainting", job, fit)


def _cmd_colorize(a) -> int:
    from scoresde.jobs.image_jobs import colorize_images

    def fit(images, cfg):
        return _grey_for_colour_model(images, cfg, a.images)

    return _inverse_command(a, "colorized", "a colorization", colorize_images, fit)


IMAGE_COMMANDS = {
    "encode": _cmd_encode,
    "interpolate": _cmd_interpolate,
    "inpaint": _cmd_inpaint,
    "colorize": _cmd_colorize,
}
