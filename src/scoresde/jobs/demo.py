"""``scoresde demo``: the whole method on scikit-learn's 8x8 digits in a few CPU minutes.

Trains a small U-Net with continuous-time denoising score matching, then samples 64 digits with
the PC sampler and 64 with the probability-flow ODE, computes the test-split negative
log-likelihood in bits/dim (uniform dequantization of the 17 grey levels) and inpaints the lower
half of 8 test digits with the same unconditional model. Sample quality is measured in the
feature space of the package's own digits classifier (no download): the Frechet distance and the
Inception-Score analogue of the 64 PC and the 64 ODE samples, beside those of 64 real held-out
digits (:func:`scoresde.jobs.evaluation.evaluate.sample_quality`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoresde.infra.rundir import check_output_dir
from scoresde.infra.viz import save_image_grid, save_loss_curve
from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.image_jobs import inpaint_images, lower_half_mask
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.config import Config
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.pipeline import load_split
from scoresde.setup.presets import get_preset

DEMO_SDES = ("ve", "vp", "subvp", "edm")
"""The demo's ``--sde`` choices: the ``digits_<sde>`` presets (``edm``: EDM's recipe)."""
FAST_SAMPLER = ("heun", {"num_steps": 9, "grid": "log_snr"})
"""The demo's few-step sampler: EDM's Heun method on a log-SNR-uniform grid, 9 steps (19 score
evaluations with the final denoising step). On the default demo model it scored a digits
Frechet distance of 13.5 on 512 samples, the best of the fast samplers at 20 NFE or fewer
(dpmpp_2m 23.2, dpmpp_3m 25.0, ddim 31.7 on their default grids)."""
DEMO_STEPS = 1800
"""Training steps of the default demo: with the sampling, likelihood and inpainting that follow,
the whole demo takes under 5 minutes on an idle 2-core machine (about 10 steps/s)."""


def demo_config(
    sde: str = "subvp",
    *,
    steps: int | None = None,
    minutes: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    overrides: list[str] = (),
) -> Config:
    """The demo's config: the ``digits_<sde>`` preset with the given budget, seed and device.

    Training runs ``steps`` steps (default :data:`DEMO_STEPS`), so a seed gives the same model
    on every machine; ``minutes`` > 0 is an optional cap on its wall time (then the result
    depends on the machine's speed, and the report says that the cap stopped training).
    ``overrides`` are ``section.key=value`` strings applied last (see ``apply_overrides``).
    """
    if sde not in DEMO_SDES:
        raise ValueError(f"unknown sde {sde!r}; choose from {list(DEMO_SDES)}")
    cfg = get_preset(f"digits_{sde}")
    tc = cfg.train
    tc = replace(
        tc,
        steps=DEMO_STEPS if steps is None else steps,
        minutes=minutes,
    )
    return apply_overrides(replace(cfg, train=tc, seed=seed, device=device), list(overrides))


def run_demo(
    cfg: Config,
    out: str | Path = "runs/demo",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train on digits, sample (PC, ODE and a fast sampler), evaluate test bits/dim, inpaint;
    write to ``out``.

    Writes ``samples_pc.png``, ``samples_ode.png``, ``samples_fast.png`` (:data:`FAST_SAMPLER`),
    ``inpainting.png``, ``loss.png``, ``samples_pc.npy``, ``samples_ode.npy``,
    ``samples_fast.npy`` (``(64, 8, 8)`` in ``[0, 1]``), the checkpoint,
    ``config.json`` and ``report.json``; returns the report.

    A folder that holds a finished demo (``report.json``) is refused unless ``overwrite``; an
    interrupted demo with the same config is resumed (:func:`scoresde.jobs.training.loop.train`).
    Samples with NaN or infinite values raise
    :class:`scoresde.jobs.finite.NonFiniteSamplesError` before any sample, picture or report is
    written (the checkpoint stays: the same command resumes there).
    """
    out = check_output_dir(out, ["report.json"], overwrite=overwrite, what="a finished demo")
    start = time.perf_counter()
    result = train(cfg, out, progress=progress, overwrite=overwrite)
    run = load_trained(result.checkpoint, device=cfg.device)

    # Unconditional samples: PC sampler, probability-flow ODE and a fast sampler, from the same
    # noise seed.
    pc, pc_info = generate(run, 64, method="pc", seed=cfg.seed, progress=progress)
    ode, ode_info = generate(run, 64, method="ode", seed=cfg.seed, progress=progress)
    fast_method, fast_options = FAST_SAMPLER
    fast, fast_info = generate(
        run, 64, method=fast_method, seed=cfg.seed, progress=progress, **fast_options
    )
    samples = {"pc": pc, "ode": ode, "fast": fast}
    for name, images in samples.items():
        np.save(out / f"samples_{name}.npy", images[:, 0].numpy())
        save_image_grid(images, out / f"samples_{name}.png", nrow=8)

    # Sample quality in the feature space of the package's digits classifier, beside the same
    # metrics of 64 real held-out digits.
    quality_cfg = replace(
        cfg, eval=replace(cfg.eval, features="digits", metrics=("fid", "is"), is_splits=1)
    )
    quality = {
        name: sample_quality(quality_cfg, images, device=run.device, seed=cfg.seed)
        for name, images in samples.items()
    }

    # Test-split negative log-likelihood in bits/dim.
    test = load_split(cfg.data, "test")
    nll = evaluate_likelihood(run, test, seed=cfg.seed, progress=progress)

    # Inpaint the lower half of 8 test digits.
    originals = test[:8]
    mask = lower_half_mask(run.shape)
    filled = inpaint_images(run, originals, mask, seed=cfg.seed, progress=progress)
    grid = torch.cat([originals, originals * mask, filled])
    save_image_grid(grid, out / "inpainting.png", nrow=8)

    steps, losses = zip(*result.losses, strict=True) if result.losses else ((), ())
    title = f"{cfg.train.loss.upper()} loss ({cfg.sde.kind})"
    save_loss_curve(list(steps), list(losses), out / "loss.png", title=title)
    report = {
        "sde": cfg.sde.kind,
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
        "fast_nfe": fast_info["nfe"],
        "pc_steps": pc_info["pc_steps"],
        "pc_predictor": cfg.sample.sampler_options().predictor,
        "pc_corrector": cfg.sample.sampler_options().corrector,
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "seconds_total": round(time.perf_counter() - start, 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
