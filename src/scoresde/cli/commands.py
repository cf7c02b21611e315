"""The subcommands: each a short shell over a public library function.

Inputs and output locations are checked first, then the CPU thread count is decided once for the
command, then the library does the work.
"""

from __future__ import annotations

import io
import json
import sys


def _overrides(run_cfg, items: list[str], section: str) -> dict:
    """Parse ``section.key=value`` items into a dict of the changed fields of that section."""
    from dataclasses import asdict

    from scoresde.config import ConfigError, apply_overrides

    for item in items:
        if not item.startswith(f"{section}."):
            raise ConfigError(f"only {section}.* fields can be set here, got {item!r}")
    section_cfg = getattr(apply_overrides(run_cfg, items), section)
    return {
        k: v for k, v in asdict(section_cfg).items() if v != getattr(getattr(run_cfg, section), k)
    }


def _set_threads(a, device, make_score_fn, shape, batch_size: int, *, backward: bool) -> None:
    """Decide the CPU thread count once for the whole command: ``--threads N``, or for N = 0
    the faster of 1 and all threads on one call of the command's main workload
    (:func:`scoresde.threads.tune_for_score_fn`; ``make_score_fn()`` builds it). Under
    ``torchrun`` N = 0 keeps the per-process count torchrun sets (``OMP_NUM_THREADS``)."""
    import torch

    from scoresde.distributed import launched_by_torchrun
    from scoresde.threads import tune_for_score_fn

    if a.threads:
        torch.set_num_threads(a.threads)
    elif device.type == "cpu" and not launched_by_torchrun():
        tune_for_score_fn(make_score_fn(), shape, batch_size, device, backward=backward)


def _set_threads_for_training(a, cfg) -> None:
    """``--threads`` for a command that trains: timed on a forward and backward pass of a
    throw-away copy of the config's network at its training batch size."""
    from scoresde.build import build_model, build_score_fn, build_sde, resolve_device
    from scoresde.data.pipeline import data_shape

    def make_score_fn():
        return build_score_fn(build_model(cfg), build_sde(cfg.sde), cfg)

    device = resolve_device(cfg.device)
    shape, batch = data_shape(cfg.data), cfg.train.device_batch_size or cfg.train.batch_size
    _set_threads(a, device, make_score_fn, shape, batch, backward=True)


def _run_overrides(a) -> list[str]:
    """``--seed``/``--device``/``--steps`` as ``key=value`` overrides, before the ``--set`` ones."""
    items = [f"seed={a.seed}"] if a.seed is not None else []
    items += [f"device={a.device}"] if a.device is not None else []
    items += [f"train.steps={a.steps}"] if getattr(a, "steps", None) is not None else []
    return items + a.overrides


def _check_count(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _report_training(command: str, stopped_by: str, steps: int) -> None:
    """Say on stderr when training did not run to ``train.steps``."""
    if stopped_by == "time cap":
        print(
            f"scoresde {command}: note: the time cap stopped training at step {steps}",
            file=sys.stderr,
        )
    elif stopped_by == "already complete":
        print(
            f"scoresde {command}: note: the run is already complete at step {steps}; "
            "nothing was trained (--steps N to train further)",
            file=sys.stderr,
        )


def _cmd_demo(a) -> int:
    from scoresde.demo import demo_config, run_demo
    from scoresde.rundir import check_output_dir

    if a.steps is not None:
        _check_count("--steps", a.steps, 1)
    cfg = demo_config(
        a.sde,
        steps=a.steps,
        minutes=a.minutes or 0.0,
        seed=0 if a.seed is None else a.seed,
        device=a.device or "auto",
        overrides=a.overrides,
    )
    check_output_dir(a.out, ["report.json"], overwrite=a.overwrite, what="a finished demo")
    _set_threads_for_training(a, cfg)
    report = run_demo(cfg, a.out, progress=not a.no_progress, overwrite=a.overwrite)
    print(json.dumps(report, indent=2))
    _report_training("demo", report["train_stopped_by"], report["train_steps"])
    print(f"wrote {a.out}/samples_pc.png, samples_ode.png, inpainting.png, loss.png, report.json")
    return 0


def _cmd_train(a) -> int:
    from scoresde import distributed
    from scoresde.config import apply_overrides, load_config
    from scoresde.presets import get_preset
    from scoresde.training.loop import train
    from scoresde.training.resume import check_resume

    if a.preset and a.config:
        raise ValueError("give --preset or --config, not both")
    if not (a.preset or a.config):
        raise ValueError(
            "say what to train: --preset NAME (list: scoresde presets) or --config FILE "
            "(e.g. an earlier run's config.json)"
        )
    if a.steps is not None:
        _check_count("--steps", a.steps, 0)
    cfg = get_preset(a.preset) if a.preset else load_config(a.config)
    cfg = apply_overrides(cfg, _run_overrides(a))
    check_resume(a.out, cfg, overwrite=a.overwrite)
    _set_threads_for_training(a, cfg)
    result = train(cfg, a.out, progress=not a.no_progress, overwrite=a.overwrite)
    if distributed.current()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    _report_training("train", result.stopped_by, result.steps)
    summary = {
        "checkpoint": str(result.checkpoint),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "stopped_by": result.stopped_by,
        "seconds": round(result.seconds, 2),
        "final_loss": result.losses[-1][1] if result.losses else None,
    }
    print(json.dumps(summary))
    return 0


def _cmd_sample(a) -> int:
    from dataclasses import replace

    from scoresde.config import save_config
    from scoresde.rundir import check_output_dir
    from scoresde.runs import generate, load_trained
    from scoresde.sampling import check_sampler
    from scoresde.viz import save_image_grid, save_scatter

    _check_count("--num-samples", a.num_samples, 1)
    if a.batch_size is not None:
        _check_count("--batch-size", a.batch_size, 1)
    if a.method is not None:
        check_sampler(a.method)
    outputs = ["samples.npy", "samples.png", "config.json"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what="samples")
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = _overrides(run.cfg, a.overrides, "sample")
    method = opts.pop("method", None)
    method = a.method or method
    batch_size = opts.pop("batch_size", run.cfg.sample.batch_size)
    batch_size = a.batch_size or batch_size
    tune_batch = min(batch_size, a.num_samples)
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, tune_batch, backward=False)
    seed = run.cfg.seed if a.seed is None else a.seed
    samples, info = generate(
        run,
        a.num_samples,
        method=method,
        seed=seed,
        batch_size=batch_size,
        progress=not a.no_progress,
        **opts,
    )
    used = replace(
        run.cfg.sample,
        **opts,
        method=info["method"],
        batch_size=batch_size,
        num_samples=a.num_samples,
    )
    a.out.mkdir(parents=True, exist_ok=True)
    _save_array(a.out / "samples.npy", samples)
    if samples.ndim == 4:
        save_image_grid(samples, a.out / "samples.png", nrow=8)
    else:
        save_scatter(samples, a.out / "samples.png", title=f"{info['method']} samples")
    save_config(replace(run.cfg, seed=seed, sample=used), a.out / "config.json")
    summary = {"out": str(a.out), "num_samples": a.num_samples, "checkpoint_step": run.step}
    print(json.dumps({**summary, **info}))
    return 0


def _cmd_likelihood(a) -> int:
    from scoresde.data.pipeline import load_split
    from scoresde.runs import evaluate_likelihood, load_trained

    _check_count("--num-examples", a.num_examples, 0)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = _overrides(run.cfg, a.overrides, "eval")
    if a.num_examples:
        opts["num_examples"] = a.num_examples
    data = load_split(run.cfg.data, a.split)
    batch = min(opts.get("batch_size", run.cfg.eval.batch_size), data.shape[0])
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=True)
    result = evaluate_likelihood(
        run,
        data,
        seed=run.cfg.seed if a.seed is None else a.seed,
        progress=not a.no_progress,
        **opts,
    )
    result.pop("per_example")
    print(json.dumps({"split": a.split, "checkpoint_step": run.step, **result}))
    return 0


def _cmd_presets(a) -> int:
    from scoresde.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, fn in PRESETS.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0].replace("``", "")
        print(f"{name:{width}s}  {summary}")
    return 0


def _cmd_convert(a) -> int:
    from scoresde.interop.convert import UNTRAINED_STEPS, convert_official

    if a.preset and a.official_config:
        raise ValueError("give --preset or --official-config, not both")
    result = convert_official(
        a.src,
        a.out,
        preset=a.preset,
        official_config=a.official_config,
        use_ema=not a.raw_weights,
        overwrite=a.overwrite,
    )
    if result.step < UNTRAINED_STEPS:
        print(
            f"scoresde convert: note: {a.src} was saved at training step {result.step}; "
            "it is essentially untrained",
            file=sys.stderr,
        )
    summary = {"checkpoint": str(result.checkpoint), "config": str(result.config)}
    print(json.dumps({**summary, "step": result.step}))
    return 0


def _cmd_evaluate(a) -> int:
    from dataclasses import replace

    from scoresde import distributed
    from scoresde.config import ConfigError, apply_overrides
    from scoresde.evaluation.evaluate import OUTPUTS, check_evaluation, evaluate
    from scoresde.rundir import check_output_dir
    from scoresde.runs import load_trained
    from scoresde.sampling import check_sampler

    for name, value in (("--num-samples", a.num_samples), ("--batch-size", a.batch_size)):
        if value is not None:
            _check_count(name, value, 1)
    if a.method is not None:
        check_sampler(a.method)
    for item in a.overrides:
        if not item.startswith(("sample.", "eval.", "data.root=")):
            raise ConfigError(f"only sample.*, eval.* and data.root can be set here, got {item!r}")
    check_output_dir(a.out, list(OUTPUTS), overwrite=a.overwrite, what="an evaluation")
    world = distributed.setup(a.device or "auto")
    run = load_trained(a.checkpoint, device=str(world.device))
    extra = [f"eval.num_samples={a.num_samples}"] if a.num_samples is not None else []
    run = replace(run, cfg=apply_overrides(run.cfg, [*a.overrides, *extra]))
    check_evaluation(run.cfg)
    batch_size = a.batch_size or run.cfg.sample.batch_size
    tune_batch = min(batch_size, run.cfg.eval.num_samples)
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, tune_batch, backward=False)
    results = evaluate(
        run,
        a.out,
        checkpoint=a.checkpoint,
        method=a.method,
        seed=a.seed,
        batch_size=a.batch_size,
        world=world,
        progress=not a.no_progress,
        overwrite=a.overwrite,
    )
    if world.is_main:
        shown = {k: v for k, v in results.items() if k != "eval"}
        for key in ("bpd", "nll_nats"):
            if key in shown:
                shown[key] = {k: v for k, v in shown[key].items() if k != "per_example"}
        print(json.dumps(shown))
    return 0


def _save_array(path, tensor) -> None:
    import numpy as np

    from scoresde.rundir import atomic_write

    buffer = io.BytesIO()
    np.save(buffer, tensor.numpy())
    atomic_write(path, buffer.getvalue())


def _save_picture(x, path, *, nrow: int, title: str) -> None:
    """Images as a grid, toy points as a scatter."""
    from scoresde.viz import save_image_grid, save_scatter

    if x.ndim == 4:
        save_image_grid(x, path, nrow=nrow)
    else:
        save_scatter(x, path, title=title)


def _cmd_encode(a) -> int:
    from scoresde.rundir import check_output_dir
    from scoresde.runs import encode_images, images_for_model, load_trained, read_user_images

    outputs = ["latents.npy", "decoded.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what="latents")
    images = read_user_images(a.images)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = _overrides(run.cfg, a.overrides, "sample")
    images = images_for_model(images, run, a.images)
    batch = min(opts.get("batch_size", run.cfg.sample.batch_size), images.shape[0])
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=False)
    latents, decoded, info = encode_images(run, images, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    _save_array(a.out / "latents.npy", latents)
    _save_picture(decoded, a.out / "decoded.png", nrow=8, title="decode(encode(x))")
    summary = {"out": str(a.out), "num_images": images.shape[0], "checkpoint_step": run.step}
    print(json.dumps({**summary, **info}))
    return 0


def _cmd_interpolate(a) -> int:
    from scoresde.rundir import check_output_dir
    from scoresde.runs import images_for_model, interpolate_images, load_trained, read_user_images

    _check_count("--num", a.num, 2)
    _check_count("--first", a.first, 0)
    _check_count("--second", a.second, 0)
    outputs = ["frames.npy", "interpolation.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what="an interpolation")
    images = read_user_images(a.images)
    n = images.shape[0]
    if a.first >= n or a.second >= n:
        raise ValueError(
            f"--first {a.first} / --second {a.second}: {a.images} holds {n} images (0..{n - 1})"
        )
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = _overrides(run.cfg, a.overrides, "sample")
    images = images_for_model(images, run, a.images)
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, a.num, backward=False)
    frames, info = interpolate_images(run, images[a.first], images[a.second], a.num, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    _save_array(a.out / "frames.npy", frames)
    _save_picture(frames, a.out / "interpolation.png", nrow=a.num, title="interpolation")
    summary = {"out": str(a.out), "first": a.first, "second": a.second, "num": a.num}
    print(json.dumps({**summary, "checkpoint_step": run.step, **info}))
    return 0


def _read_inverse_images(path):
    """``--image``: one image file, an ``.npz`` (its ``images`` array or its only one), or what
    :func:`scoresde.runs.read_user_images` reads (an ``.npy`` array or a folder)."""
    import numpy as np
    import torch

    from scoresde.data.image_formats import decode_image, image_to_tensor
    from scoresde.runs import read_user_images

    suffix = path.suffix.lower()
    if path.is_file() and suffix in {".png", ".jpg", ".jpeg", ".webp", ".bmp"}:
        return image_to_tensor(decode_image(path))[None]
    if path.is_file() and suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            names = list(arrays.keys())
            if "images" not in names and len(names) != 1:
                raise ValueError(f"--image {path}: expected an 'images' array or one array")
            arr = arrays["images" if "images" in names else names[0]]
        scale = 255 if arr.dtype == np.uint8 else 1
        return torch.from_numpy(arr.astype(np.float32) / scale)
    return read_user_images(path)


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
    from scoresde.rundir import check_output_dir
    from scoresde.runs import images_for_model, load_trained

    outputs = [f"{name}.npy", f"{name}.png"]
    check_output_dir(a.out, outputs, overwrite=a.overwrite, what=what)
    images = _read_inverse_images(a.image)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    opts = _overrides(run.cfg, a.overrides, "sample")
    if fit_images:
        images = images_for_model(images, run, a.image)
    method = opts.pop("method", "pc")
    batch = min(opts.pop("batch_size", run.cfg.sample.batch_size), images.shape[0])
    _set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=False)
    seed = run.cfg.seed if a.seed is None else a.seed
    out = job(run, images, method=method, seed=seed, progress=not a.no_progress, **opts)
    a.out.mkdir(parents=True, exist_ok=True)
    _save_array(a.out / f"{name}.npy", out)
    _save_picture(out, a.out / f"{name}.png", nrow=8, title=name)
    summary = {"out": str(a.out), "num_images": images.shape[0], "checkpoint_step": run.step}
    print(json.dumps({**summary, "method": method}))
    return 0


def _cmd_inpaint(a) -> int:
    from scoresde.runs import inpaint_images

    def job(run, images, **kw):
        return inpaint_images(run, images, _read_mask(a.mask, run.shape), **kw)

    return _inverse_command(a, "inpainted", "an inpainting", job)


def _cmd_colorize(a) -> int:
    from scoresde.runs import colorize_images

    return _inverse_command(a, "colorized", "a colorization", colorize_images, fit_images=False)


COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "sample": _cmd_sample,
    "likelihood": _cmd_likelihood,
    "evaluate": _cmd_evaluate,
    "presets": _cmd_presets,
    "convert": _cmd_convert,
    "encode": _cmd_encode,
    "interpolate": _cmd_interpolate,
    "inpaint": _cmd_inpaint,
    "colorize": _cmd_colorize,
}
