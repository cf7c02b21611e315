"""From command-line options to library settings: config overrides, counts, CPU threads."""

from __future__ import annotations


def overrides(run_cfg, items: list[str], section: str) -> dict:
    """Parse ``section.key=value`` items into a dict of the changed fields of that section."""
    from dataclasses import asdict

    from scoresde.setup.config import ConfigError
    from scoresde.setup.config_io import apply_overrides

    for item in items:
        if not item.startswith(f"{section}."):
            raise ConfigError(f"only {section}.* fields can be set here, got {item!r}")
    section_cfg = getattr(apply_overrides(run_cfg, items), section)
    return {
        k: v for k, v in asdict(section_cfg).items() if v != getattr(getattr(run_cfg, section), k)
    }


TUNE_CALL_SECONDS = 0.25
"""The thread count is timed only for a workload whose one call takes under this long on one
thread (the small networks where threads can cost more than they give); a larger one keeps
all threads, so the choice costs a second or two at most."""


def set_threads(a, device, make_score_fn, shape, batch_size: int, *, backward: bool) -> None:
    """Decide the CPU thread count once for the whole command: ``--threads N``, or for N = 0
    the faster of 1 and all threads on one call of the command's main workload
    (:func:`scoresde.infra.threads.tune_for_score_fn`; ``make_score_fn()`` builds it) when that call
    is small (:data:`TUNE_CALL_SECONDS` on one thread, measured on growing batches up to
    ``batch_size``), else all threads. Under ``torchrun`` N = 0 keeps the per-process count
    torchrun sets (``OMP_NUM_THREADS``). Commands call it after all their checks."""
    import torch

    from scoresde.infra.distributed import launched_by_torchrun
    from scoresde.infra.threads import tune_for_score_fn

    if a.threads:
        torch.set_num_threads(a.threads)
        return
    if device.type != "cpu" or launched_by_torchrun():
        return
    score_fn = make_score_fn()
    if _small_workload(score_fn, shape, batch_size, device, backward=backward):
        tune_for_score_fn(score_fn, shape, batch_size, device, backward=backward)


def _small_workload(score_fn, shape, batch_size: int, device, *, backward: bool) -> bool:
    """Whether one call at ``batch_size`` takes under :data:`TUNE_CALL_SECONDS` on one thread,
    timed on batches 1, 4, 16, ... up to it and stopped at the first slower call."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size, warm = 1, False
        while True:
            x = torch.zeros(min(size, batch_size), *shape, device=device)
            t = torch.full((x.shape[0],), 0.5, device=device)
            for _ in range(1 if warm else 2):  # the first call of all is a warm-up
                start = time.perf_counter()
                with torch.enable_grad() if backward else torch.no_grad():
                    out = score_fn(x.requires_grad_(backward), t)
                    if backward:
                        out.square().mean().backward()
                if time.perf_counter() - start > TUNE_CALL_SECONDS:
                    return False
            warm = True
            if size >= batch_size:
                return True
            size *= 4
    finally:
        torch.set_num_threads(threads)


def set_threads_for_training(a, cfg) -> None:
    """``--threads`` for a command that trains: timed on a forward and backward pass of a
    throw-away copy of the config's network at its training batch size (a classifier run
    times its classifier)."""
    from scoresde.infra.devices import resolve_device
    from scoresde.setup.build import (
        build_classifier_fn,
        build_model,
        build_score_fn,
        build_sde,
        is_classifier,
    )
    from scoresde.setup.data.pipeline import data_shape

    def make_score_fn():
        if is_classifier(cfg):
            return build_classifier_fn(build_model(cfg), build_sde(cfg.sde))
        return build_score_fn(build_model(cfg), build_sde(cfg.sde), cfg)

    device = resolve_device(cfg.device)
    shape, batch = data_shape(cfg.data), cfg.train.device_batch_size or cfg.train.batch_size
    set_threads(a, device, make_score_fn, shape, batch, backward=True)


def run_overrides(a) -> list[str]:
    """``--seed``/``--device``/``--steps`` as ``key=value`` overrides, before the ``--set`` ones."""
    items = [f"seed={a.seed}"] if a.seed is not None else []
    items += [f"device={a.device}"] if a.device is not None else []
    items += [f"train.steps={a.steps}"] if getattr(a, "steps", None) is not None else []
    return items + a.overrides


def check_count(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def class_list(text: str | None, run, classifier) -> list[int] | None:
    """``--class``: ``K``, ``K1,K2,...`` or ``all`` (every class of the label-conditional model
    or of the classifier) as a list of ints; ``None`` without ``--class``."""
    if text is None:
        return None
    if text.strip() == "all":
        classes = classifier.num_classes if classifier is not None else run.cfg.model.num_classes
        if not classes:
            raise ValueError(
                "--class all: this model is unconditional; give --classifier RUN to sample classes"
            )
        return list(range(classes))
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--class takes K, K1,K2,... or all, got {text!r}") from None
    if not values:
        raise ValueError(f"--class takes K, K1,K2,... or all, got {text!r}")
    return values
