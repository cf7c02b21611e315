"""The subcommands on a user's images: ``encode``, ``interpolate``, ``inpaint``, ``colorize``.

Each is a thin shell over a job of :mod:`scoresde.runs`: it checks the arguments and ``--out``
first, reads the images, runs the job and writes arrays and a picture.
"""

from __future__ import annotations

import json

from scoresde.cli.options import check_count, overrides, set_threads
from scoresde.cli.outputs import save_array, save_picture


def _cmd_encode(a) -> int:
    from scoresde.image_jobs import encode_images, images_for_model, read_user_images
    from scoresde.rundir import check_output_dir
    from scoresde.runs import load_trained

    outputs = ["latents.npy", "decoded.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what="latents")
    images = read_user_images(a.images)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = overrides(run.cfg, a.overrides, "sample")
    images = images_for_model(images, run, a.images)
    batch = min(opts.get("batch_size", run.cfg.sample.batch_size), images.shape[0])
    set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=False)
    latents, decoded, info = encode_images(run, images, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / "latents.npy", latents)
    save_picture(decoded, a.out / "decoded.png", nrow=8, title="decode(encode(x))")
    summary = {"out": str(a.out), "num_images": images.shape[0], "checkpoint_step": run.step}
    print(json.dumps({**summary, **info}))
    return 0


def _cmd_interpolate(a) -> int:
    from scoresde.image_jobs import images_for_model, interpolate_images, read_user_images
    from scoresde.rundir import check_output_dir
    from scoresde.runs import load_trained

    check_count("--num", a.num, 2)
    check_count("--first", a.first, 0)
    check_count("--second", a.second, 0)
    outputs = ["frames.npy", "interpolation.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what="an interpolation")
    images = read_user_images(a.images)
    n = images.shape[0]
    if a.first >= n or a.second >= n:
        raise ValueError(
            f"--first {a.first} / --second {a.second}: {a.images} holds {n} images (0..{n - 1})"
        )
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = overrides(run.cfg, a.overrides, "sample")
    images = images_for_model(images, run, a.images)
    set_threads(a, run.device, lambda: run.score_fn, run.shape, a.num, backward=False)
    frames, info = interpolate_images(run, images[a.first], images[a.second], a.num, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / "frames.npy", frames)
    save_picture(frames, a.out / "interpolation.png", nrow=a.num, title="interpolation")
    summary = {"out": str(a.out), "first": a.first, "second": a.second, "num": a.num}
    print(json.dumps({**summary, "checkpoint_step": run.step, **info}))
    return 0


def _read_mask(path, shape):
    """``--mask`` PNG (white = known) as a 0/1 tensor ``(1, C, H, W)`` for examples ``shape``."""
    from scoresde.data.image_formats import decode_image, image_to_tensor

    if not path.is_file():
        raise ValueError(f"--mask {path} does not exist")
    mask = (image_to_tensor(decode_image(path)).mean(0) > 0.5).float()
    if len(shape) != 3 or tuple(mask.shape) != tuple(shape[1:]):
        raise ValueError(f"--mask {path} is {tuple(mask.shape)}; the model takes {tuple(shape)}")
    return mask.expand(shape[0], -1, -1)[None]


def _inverse_command(a, name: str, what: str, job, *, fit_images: bool = True) -> int:
    """The shell of ``inpaint`` and ``colorize``: ``job(run, images, **kw)`` does the work;
    ``fit_images`` puts the images in the model's shape first (colorize takes grey ones)."""
    from scoresde.image_jobs import images_for_model, read_user_images
    from scoresde.rundir import check_output_dir
    from scoresde.runs import load_trained

    outputs = [f"{name}.npy", f"{name}.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what=what)
    images = read_user_images(a.image)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = overrides(run.cfg, a.overrides, "sample")
    if fit_images:
        images = images_for_model(images, run, a.image)
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
    from scoresde.image_jobs import inpaint_images

    def job(run, images, **kw):
        return inpaint_images(run, images, _read_mask(a.mask, run.shape), **kw)

    return _inverse_command(a, "inpainted", "an inpainting", job)


def _cmd_colorize(a) -> int:
    from scoresde.image_jobs import colorize_images

    return _inverse_command(a, "colorized", "a colorization", colorize_images, fit_images=False)


IMAGE_COMMANDS = {
    "encode": _cmd_encode,
    "interpolate": _cmd_interpolate,
    "inpaint": _cmd_inpaint,
    "colorize": _cmd_colorize,
}
