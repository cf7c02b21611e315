"""``scoresde demo``: the whole method on scikit-learn's 8x8 digits in a few CPU minutes.

Trains a small U-Net with EDM's preconditioning and loss (Karras et al., 2022) under the sub-VP
SDE for 3000 steps (``--training paper``: the paper's continuous denoising score matching for
1800 steps, the demo before EDM training), then samples 64 digits (``num_samples``) with EDM's
few-step stochastic sampler (19 NFE, the main picture, :data:`FAST_SAMPLER`), 64 with the PC
sampler (2001 NFE) and 64 with the probability-flow ODE, computes the test-split negative
log-likelihood in bits/dim (uniform dequantization of the 17 grey levels) and inpaints the lower
half of 8 test digits with the same unconditional model. Sample quality is measured in the
feature space of the package's own digits classifier (no download): the Frechet distance and
the Inception-Score analogue of each set of samples, beside those of as many real held-out
digits (:func:`scoresde.jobs.evaluation.evaluate.sample_quality`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoresde.core.names import SDE_NAMES, TRAINING_NAMES
from scoresde.infra.rundir import atomic_write, check_output_dir
from scoresde.infra.viz import save_image_grid, save_loss_curve
from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.image_jobs import inpaint_images, lower_half_mask
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.config import Config
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.pipeline import load_split
from scoresde.setup.presets import get_preset
from scoresde.setup.presets.edm import edm_training

DEMO_TRAINING: dict[str, dict[str, Any]] = {
    "edm": {"steps": 3000},
    "paper": {"steps": 1800},
}
"""The demo's training per ``--training`` (:data:`scoresde.core.names.TRAINING_NAMES`), as
``train.*`` settings over the ``digits_<sde>`` preset. ``edm`` (the default) adds EDM's
preconditioning and loss (:func:`scoresde.setup.presets.edm.edm_training`) and trains for 3000
steps; ``paper`` is the demo as it was before EDM training: the paper's continuous DSM for 1800
steps. (The preset's EMA decay of 0.999 is capped by its warm-up, ``(1 + n) / (10 + n)`` after
``n`` steps, so a shorter EMA would change nothing at these lengths.)"""
FAST_SAMPLER = ("edm", {"num_steps": 9, "s_churn": 1.0})
"""The demo's few-step sampler, its main picture: EDM's stochastic sampler (Karras et al., 2022,
Algorithm 2) on EDM's rho = 7 grid, 9 steps and a final denoising step (19 score evaluations),
with a little churn (``gamma = 1/10`` at every step). On 512 samples of the default demo model it
has the lowest FD and the highest IS of the <= 20-NFE samplers tried (Heun on the EDM and log-SNR
grids, the EDM sampler with churn 0-5, DPM-Solver++), and both beat the PC samples of the
paper-trained demo (README, "The demo")."""


def demo_config(
    sde: str = "subvp",
    *,
    training: str = "edm",
    steps: int | None = None,
    minutes: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    overrides: list[str] = (),
) -> Config:
    """The demo's config: the ``digits_<sde>`` preset trained the ``training`` way
    (:data:`DEMO_TRAINING`) with the given budget, seed and device.

    Training runs ``steps`` steps (default the training's, :data:`DEMO_TRAINING`), so a seed
    gives the same model on every machine; ``minutes`` > 0 is an optional cap on its wall time
    (then the result depends on the machine's speed, and the report says that the cap stopped
    training). ``sde="edm"`` is EDM's own recipe (``digits_edm``) and takes only
    ``training="edm"``. ``overrides`` are ``section.key=value`` strings applied last (see
    ``apply_overrides``).
    """
    if sde not in SDE_NAMES:
        raise ValueError(f"unknown sde {sde!r}; choose from {list(SDE_NAMES)}")
    if training not in TRAINING_NAMES:
        raise ValueError(f"unknown training {training!r}; choose from {list(TRAINING_NAMES)}")
    if sde == "edm" and training != "edm":
        raise ValueError("--sde edm is EDM's own recipe: it trains only with --training edm")
    cfg = get_preset(f"digits_{sde}")
    if training == "edm":
        cfg = edm_training(cfg)
    settings = dict(DEMO_TRAINING[training], minutes=minutes)
    if steps is not None:
        settings["steps"] = steps
    tc = replace(cfg.train, **settings)
    return apply_overrides(replace(cfg, train=tc, seed=seed, device=device), list(overrides))


def run_demo(
    cfg: Config,
    out: str | Path = "runs/demo",
    *,
    num_samples: int = 64,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train on digits, sample (a fast sampler, PC and the ODE), evaluate test bits/dim, inpaint;
    write to ``out``.

    Writes ``samples_pc.png``, ``samples_ode.png``, ``samples_fast.png`` (:data:`FAST_SAMPLER`),
    ``inpainting.png``, ``loss.png``, ``samples_pc.npy``, ``samples_ode.npy``,
    ``samples_fast.npy`` (``(num_samples, 8, 8)`` in ``[0, 1]``; the pictures show the first
    64), the checkpoint,
    ``config.json`` and ``report.json``; returns the report. The report's ``fast_method`` and
    ``fast_sampler_options`` (``sample.*`` settings) draw the fast samples again:
    ``scoresde sample --checkpoint OUT --out DIR --method M --set sample.K=V ...`` (the run's
    seed and 64 samples are the command's defaults). Each sampler draws ``num_samples`` from
    the same noise seed, and their quality is measured on all of them: the PC sampler's cost
    grows with the count (about 10 s for 64 on 2 cores, 60 s for 256).

    A folder that holds a finished demo (``report.json``) is refused unless ``overwrite``; an
    interrupted demo with the same config is resumed (:func:`scoresde.jobs.training.loop.train`).
    Samples with NaN or infinite values raise
    :class:`scoresde.jobs.finite.NonFiniteSamplesError` before any sample, picture or report is
    written (the checkpoint stays: the same command resumes there).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (FD needs a covariance): {num_samples}")
    out = check_output_dir(out, ["report.json"], overwrite=overwrite, what="a finished demo")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    stage = _stages(seconds)
    with stage("train"):
        result = train(cfg, out, progress=progress, overwrite=overwrite)
    run = load_trained(result.checkpoint, device=cfg.device)

    # Unconditional samples: a fast sampler, the PC sampler and the probability-flow ODE, from
    # the same noise seed.
    fast_method, fast_options = FAST_SAMPLER
    with stage("fast"):
        fast, fast_info = generate(
            run, num_samples, method=fast_method, seed=cfg.seed, progress=progress, **fast_options
        )
    with stage("pc"):
        pc, pc_info = generate(run, num_samples, method="pc", seed=cfg.seed, progress=progress)
    with stage("ode"):
        ode, ode_info = generate(run, num_samples, method="ode", seed=cfg.seed, progress=progress)
    samples = {"fast": fast, "pc": pc, "ode": ode}
    for name, images in samples.items():
        np.save(out / f"samples_{name}.npy", images[:, 0].numpy())
        save_image_grid(images[:64], out / f"samples_{name}.png", nrow=8)

    # Sample quality in the feature space of the package's digits classifier, beside the same
    # metrics of as many real held-out digits (at most the test split's 359).
    quality_cfg = demo_quality_config(cfg)
    with stage("quality"):
        quality = {
            name: sample_quality(quality_cfg, images, device=run.device, seed=cfg.seed)
            for name, images in samples.items()
        }

    # Test-split negative log-likelihood in bits/dim.
    test = load_split(cfg.data, "test")
    with stage("likelihood"):
        nll = evaluate_likelihood(run, test, seed=cfg.seed, progress=progress)

    # Inpaint the lower half of 8 test digits.
    originals = test[:8]
    mask = lower_half_mask(run.shape)
    with stage("inpainting"):
        filled = inpaint_images(run, originals, mask, seed=cfg.seed, progress=progress)
    grid = torch.cat([originals, originals * mask, filled])
    save_image_grid(grid, out / "inpainting.png", nrow=8)

    steps, losses = zip(*result.losses, strict=True) if result.losses else ((), ())
    title = f"{cfg.train.loss.upper()} loss ({cfg.sde.kind})"
    save_loss_curve(list(steps), list(losses), out / "loss.png", title=title)
    report = {
        "sde": cfg.sde.kind,
        "training": "edm" if cfg.train.loss == "edm" else "paper",
        "parametrization": run.score_fn.parametrization,
        "train_steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "train_stopped_by": result.stopped_by,
        "final_loss": losses[-1] if losses else None,
        "fid_digits_pc": quality["pc"]["metrics"]["fid"],
        "fid_digits_ode": quality["ode"]["metrics"]["fid"],
        "fid_digits_fast": quality["fast"]["metrics"]["fid"],
        "fid_digits_real": quality["pc"]["real_data"]["fid"],
        "is_digits_pc": quality["pc"]["metrics"]["is"],
        "is_digits_ode": quality["ode"]["metrics"]["is"],
        "is_digits_fast": quality["fast"]["metrics"]["is"],
        "is_digits_real": quality["pc"]["real_data"]["is"],
        "quality_samples": pc.shape[0],
        "test_bpd": nll["bpd"],
        "test_examples": nll["num_examples"],
        "likelihood_nfe": nll["nfe"],
        "ode_nfe": ode_info["nfe"],
        "fast_sampler": f"{fast_method} {fast_options}",
        "fast_method": fast_method,
        "fast_sampler_options": dict(fast_options),
        "fast_nfe": fast_info["nfe"],
        "pc_steps": pc_info["pc_steps"],
        "pc_predictor": cfg.sample.sampler_options().predictor,
        "pc_corrector": cfg.sample.sampler_options().corrector,
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "stage_seconds": seconds,
        "seconds_total": round(time.perf_counter() - start, 2),
    }
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def demo_quality_config(cfg: Config) -> Config:
    """``cfg`` with the demo's quality settings: FD and the IS analogue (one split) in the
    feature space of the package's digits classifier."""
    return replace(
        cfg, eval=replace(cfg.eval, features="digits", metrics=("fid", "is"), is_splits=1)
    )


def _stages(seconds: dict[str, float]):
    """A context manager factory: ``with stage(name):`` adds the block's wall time to
    ``seconds[name]``."""

    @contextmanager
    def stage(name: str):
        begin = time.perf_counter()
        try:
            yield
        finally:
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - begin, 2)

    return stage
