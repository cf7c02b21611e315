"""The subcommands on runs (demo, train, sample, likelihood, evaluate, presets, convert): each a
short shell over a public library function.

Inputs and output locations are checked first, then the CPU thread count is decided once for the
command, then the library does the work.
"""

from __future__ import annotations

import json
import sys

from scoresde.cli.checks import check_data, check_out, header_run, run_config
from scoresde.cli.options import (
    check_count,
    class_list,
    overrides,
    run_overrides,
    set_threads,
    set_threads_for_training,
)
from scoresde.cli.outputs import save_array

GRID_ROW = 16
"""The most samples of one class that ``scoresde sample --class`` shows in a row of its grid."""
DEMO_REPORT = "report.json"
"""The file that marks a finished demo: ``demo`` and ``train`` refuse its folder."""


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
    from scoresde.jobs.demo import demo_config, run_demo

    if a.steps is not None:
        check_count("--steps", a.steps, 1)
    check_count("--num-samples", a.num_samples, 2)
    cfg = demo_config(
        a.sde,
        training=a.training,
        steps=a.steps,
        minutes=a.minutes or 0.0,
        seed=0 if a.seed is None else a.seed,
        device=a.device or "auto",
        overrides=a.overrides,
    )
    check_out(a.out, [DEMO_REPORT], overwrite=a.overwrite, what="a finished demo")
    check_data(cfg, ["train", "test"])
    set_threads_for_training(a, cfg)
    report = run_demo(
        cfg, a.out, num_samples=a.num_samples, progress=not a.no_progress, overwrite=a.overwrite
    )
    print(json.dumps(report, indent=2))
    _report_training("demo", report["train_stopped_by"], report["train_steps"])
    print(
        f"wrote {a.out}/samples_fast.png, samples_pc.png, samples_ode.png, inpainting.png, "
        "loss.png, report.json"
    )
    return 0


def _training_config(a, *, classifier: bool):
    """The config of ``--preset`` or ``--config`` with the run options and ``--set`` overrides;
    for ``train-classifier``, the classifier run of a score preset or config."""
    from scoresde.setup.build import is_classifier
    from scoresde.setup.config_io import apply_overrides, load_config
    from scoresde.setup.presets import get_preset
    from scoresde.setup.presets.classifiers import classifier_preset

    if a.preset and a.config:
        raise ValueError("give --preset or --config, not both")
    if not (a.preset or a.config):
        raise ValueError(
            "say what to train: --preset NAME (list: scoresde presets) or --config FILE "
            "(e.g. an earlier run's config.json)"
        )
    if a.steps is not None:
        check_count("--steps", a.steps, 0)
    cfg = get_preset(a.preset) if a.preset else load_config(a.config)
    if classifier and not is_classifier(cfg):
        cfg = classifier_preset(cfg)
    if getattr(a, "edm_training", False):
        from scoresde.setup.presets.edm import edm_training

        cfg = edm_training(cfg)
    return apply_overrides(cfg, run_overrides(a))


def _train(a, cfg, command: str):
    """Check the labels, the run folder (a finished demo is refused unless ``--overwrite``,
    which then drops its report) and the data, then choose the threads and train; the result
    on rank 0, else ``None``."""
    import contextlib

    from scoresde.infra import distributed
    from scoresde.jobs.training.loop import train
    from scoresde.jobs.training.objectives import check_labels
    from scoresde.jobs.training.resume import check_resume

    check_labels(cfg)
    check_out(a.out, [DEMO_REPORT], overwrite=a.overwrite, what="a finished demo")
    check_resume(a.out, cfg, overwrite=a.overwrite)
    check_data(cfg, ["train", "test"] if cfg.train.eval_every else ["train"])
    if a.overwrite:  # the demo's report would describe another model
        with contextlib.suppress(FileNotFoundError):
            (a.out / DEMO_REPORT).unlink()
    set_threads_for_training(a, cfg)
    result = train(cfg, a.out, progress=not a.no_progress, overwrite=a.overwrite)
    if distributed.current()[0] != 0:
        return None  # under torchrun, rank 0 reports
    _report_training(command, result.stopped_by, result.steps)
    return result


def _training_summary(result) -> dict:
    return {
        "checkpoint": str(result.checkpoint),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "stopped_by": result.stopped_by,
        "seconds": round(result.seconds, 2),
        "final_loss": result.losses[-1][1] if result.losses else None,
    }


def _cmd_train(a) -> int:
    result = _train(a, _training_config(a, classifier=False), "train")
    if result is not None:
        print(json.dumps(_training_summary(result)))
    return 0


def _cmd_train_classifier(a) -> int:
    from scoresde.infra.rundir import atomic_write
    from scoresde.jobs.runs import classifier_accuracy, load_classifier

    cfg = _training_config(a, classifier=True)
    result = _train(a, cfg, "train-classifier")
    if result is None:
        return 0
    classifier = load_classifier(result.checkpoint, device=cfg.device)
    accuracy = {"step": classifier.step, **classifier_accuracy(classifier, seed=cfg.seed)}
    atomic_write(a.out / "accuracy.json", json.dumps(accuracy, indent=2) + "\n")
    print(json.dumps({**_training_summary(result), "accuracy_by_t": accuracy}))
    return 0


def _cmd_sample(a) -> int:
    from dataclasses import replace

    import torch

    from scoresde.infra.viz import save_image_grid, save_scatter
    from scoresde.jobs.conditioning import check_conditioning
    from scoresde.jobs.runs import generate_classes, load_classifier, load_trained
    from scoresde.methods.sampling import check_sampler
    from scoresde.setup.config_io import save_config

    check_count("--num-samples", a.num_samples, 1)
    if a.batch_size is not None:
        check_count("--batch-size", a.batch_size, 1)
    if a.method is not None:
        check_sampler(a.method)
    if a.classes is None and (a.guidance is not None or a.classifier is not None):
        raise ValueError("--guidance and --classifier need --class K")
    outputs = ["samples.npy", "labels.npy", "samples.png", "config.json"]
    check_out(a.out, outputs, overwrite=a.overwrite, what="samples")
    cfg = run_config(a.checkpoint)
    if a.method is not None:  # its own defaults first, then the --set sample.* options
        cfg = replace(cfg, sample=cfg.sample.updated(method=a.method))
    opts = overrides(cfg, a.overrides, "sample")
    # The conditioning is checked on the configs (no network yet), then loaded.
    header = header_run(cfg)
    classifier = header_run(run_config(a.classifier, classifier=True)) if a.classifier else None
    classes = class_list(a.classes, header, classifier)
    guidance = 1.0 if a.guidance is None else a.guidance
    labels = torch.tensor(classes) if classes is not None else None
    check_conditioning(header, labels, guidance, classifier)
    run = load_trained(a.checkpoint, device=a.device or "auto")
    classifier = load_classifier(a.classifier, device=str(run.device)) if a.classifier else None
    method = opts.pop("method", None)
    method = a.method or method
    batch_size = opts.pop("batch_size", run.cfg.sample.batch_size)
    batch_size = a.batch_size or batch_size
    tune_batch = min(batch_size, a.num_samples)
    set_threads(a, run.device, lambda: run.score_fn, run.shape, tune_batch, backward=False)
    seed = run.cfg.seed if a.seed is None else a.seed
    samples, sample_labels, info = generate_classes(
        run,
        classes,
        a.num_samples,
        guidance=guidance,
        classifier=classifier,
        method=method,
        seed=seed,
        batch_size=batch_size,
        progress=not a.no_progress,
        **opts,
    )
    used = run.cfg.sample.updated(
        method=info["method"], **opts, batch_size=batch_size, num_samples=a.num_samples
    )
    a.out.mkdir(parents=True, exist_ok=True)
    save_array(a.out / "samples.npy", samples)
    summary = {"out": str(a.out), "num_samples": a.num_samples, "checkpoint_step": run.step}
    nrow, shown = 8, samples
    if classes is not None:
        save_array(a.out / "labels.npy", sample_labels)
        if len(classes) > 1:  # one row per class, at most GRID_ROW samples of each
            nrow = min(a.num_samples, GRID_ROW)
            shown = samples.reshape(len(classes), a.num_samples, *samples.shape[1:])[:, :nrow]
            shown = shown.reshape(-1, *samples.shape[1:])
        summary.update(classes=classes, guidance=guidance)
        if classifier is not None:
            summary.update(classifier=str(a.classifier), classifier_step=classifier.step)
        if run.cfg.data.dataset == "digits":
            from scoresde.jobs.evaluation.digits_classifier import conditional_accuracy

            summary["digits_classifier_accuracy"] = conditional_accuracy(samples, sample_labels)
    if samples.ndim == 4:
        save_image_grid(shown, a.out / "samples.png", nrow=nrow)
    else:
        save_scatter(samples, a.out / "samples.png", title=f"{info['method']} samples")
    save_config(replace(run.cfg, seed=seed, sample=used), a.out / "config.json")
    print(json.dumps({**summary, **info}))
    return 0


def _cmd_likelihood(a) -> int:
    from scoresde.jobs.runs import evaluate_bound, evaluate_likelihood, load_trained
    from scoresde.setup.data.pipeline import load_split

    check_count("--num-examples", a.num_examples, 0)
    cfg = run_config(a.checkpoint)
    opts = overrides(cfg, a.overrides, "eval")
    check_data(cfg, [a.split])
    run = load_trained(a.checkpoint, device=a.device or "auto")
    if a.num_examples:
        opts["num_examples"] = a.num_examples
    data = load_split(run.cfg.data, a.split)
    batch = min(opts.get("batch_size", run.cfg.eval.batch_size), data.shape[0])
    set_threads(a, run.device, lambda: run.score_fn, run.shape, batch, backward=not a.bound)
    result = (evaluate_bound if a.bound else evaluate_likelihood)(
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
    from scoresde.setup.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, fn in PRESETS.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0].replace("``", "")
        print(f"{name:{width}s}  {summary}")
    return 0


def _cmd_convert(a) -> int:
    from scoresde.interop.convert import UNTRAINED_STEPS, convert_official

    if a.preset and a.official_config:
        raise ValueError("give --preset or --official-config, not both")
    check_out(a.out, overwrite=True)  # can be created; convert_official checks the rest
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

    from scoresde.infra import distributed
    from scoresde.jobs.evaluation.evaluate import OUTPUTS, check_evaluation, evaluate
    from scoresde.jobs.runs import load_trained
    from scoresde.methods.sampling import check_sampler
    from scoresde.setup.config import ConfigError
    from scoresde.setup.config_io import apply_overrides

    for name, value in (("--num-samples", a.num_samples), ("--batch-size", a.batch_size)):
        if value is not None:
            check_count(name, value, 1)
    if a.method is not None:
        check_sampler(a.method)
    for item in a.overrides:
        if not item.startswith(("sample.", "eval.", "data.root=")):
            raise ConfigError(f"only sample.*, eval.* and data.root can be set here, got {item!r}")
    check_out(a.out, list(OUTPUTS), overwrite=a.overwrite, what="an evaluation")
    extra = [f"eval.num_samples={a.num_samples}"] if a.num_samples is not None else []
    extra += [f"sample.method={a.method}"] if a.method is not None else []
    cfg = run_config(a.checkpoint, [*a.overrides, *extra])
    check_evaluation(cfg)
    if {"bpd", "bound"} & set(cfg.eval.metrics):
        check_data(cfg, [cfg.eval.bpd_split])
    world = distributed.setup(a.device or "auto")
    run = load_trained(a.checkpoint, device=str(world.device))
    run = replace(run, cfg=apply_overrides(run.cfg, [*a.overrides, *extra]))
    batch_size = a.batch_size or run.cfg.sample.batch_size
    tune_batch = min(batch_size, run.cfg.eval.num_samples)
    set_threads(a, run.device, lambda: run.score_fn, run.shape, tune_batch, backward=False)
    results = evaluate(
        run,
        a.out,
        checkpoint=a.checkpoint,
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


RUN_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "train-classifier": _cmd_train_classifier,
    "sample": _cmd_sample,
    "likelihood": _cmd_likelihood,
    "evaluate": _cmd_evaluate,
    "presets": _cmd_presets,
    "convert": _cmd_convert,
}
