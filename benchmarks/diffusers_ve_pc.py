"""Our VE PC sampler beside diffusers' ``ScoreSdeVeScheduler`` loop, on one digits VE network.

Both samplers get the same network (diffusers' loop calls it through a ``(x, sigma) -> score``
wrapper, ``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``), the same starting noise
(``randn * sigma_max`` from a ``torch.Generator`` seeded ``--seed``, as ``ScoreSdeVePipeline``
draws it) and that same generator for every later draw, the same ``N``, ``snr`` and last time
``eps`` (the run's ``sample.eps``; diffusers' ``sampling_eps``).

The two PC loops are not step-for-step the same algorithm, so their samples differ even with
the same generator:

- diffusers (like the official code) runs the corrector at ``t_i`` *before* the predictor, on
  ``N`` times ``linspace(1, eps, N)``, its predictor steps between the table noise levels
  ``discrete_sigmas[floor(t (N - 1))]`` and the level below (0 at the end), and it returns the
  last predictor's noise-free mean: ``2N`` score evaluations;
- ours (Algorithm 1) runs the predictor from ``t_i`` to ``t_{i+1}`` on ``N + 1`` times
  ``linspace(1, eps, N + 1)``, then the corrector at ``t_{i+1}``, then a Tweedie denoising
  step at ``eps``: ``2N + 1`` evaluations.

Each draws two noise tensors per step from the generator, in the other order, so the sample
sets agree in distribution only. A second comparison removes the difference: predictor-only
sampling (diffusers ``correct_steps=0``; ours ``corrector="none"`` on the time grid
``t_i = (N - 1 - i) / (N - 1)``, whose noise levels are diffusers' table, and the Tweedie step
at ``t = 0``, which is diffusers' last step to level 0). There the two draw the same noise in
the same order and differ only by the network's time input (diffusers evaluates at
``sigma(1 - i (1 - eps) / (N - 1))``, the table level is ``sigma(1 - i / (N - 1))``), so the
samples must agree per sample.

    OMP_NUM_THREADS=1 python benchmarks/diffusers_ve_pc.py --run-ve runs/ablation/ve --N 100

Wall times are medians of ``--rounds`` interleaved rounds (ours, diffusers, ours, ...). Writes
``docs/ablation/diffusers.json`` (``--out``). Needs diffusers (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoresde import pc_sample
from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.runs import checkpoint_file, load_trained
from scoresde.setup.data.pipeline import from_model_scale


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-ve", type=Path, required=True, help="a digits_ve run folder")
    p.add_argument("--N", type=int, default=1000, help="predictor steps (default 1000)")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--snr", type=float, help="Langevin snr (default: the run's sample.snr)")
    p.add_argument("--eps", type=float, help="last time of both loops (default: sample.eps)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/ablation/diffusers.json"))
    p.add_argument("--quick", action="store_true", help="N = 10, 32 samples, 1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.N, a.num_samples, a.rounds = 10, 32, 1
    if min(a.N - 1, a.num_samples, a.rounds) < 1:
        p.error("need --N >= 2, --num-samples >= 1 and --rounds >= 1")
    if not checkpoint_file(a.run_ve).is_file():
        p.error(f"--run-ve {a.run_ve}: no checkpoint (train it with scoresde train)")
    return a


def diffusers_pc(scheduler_cls, sde, score_fn, shape, *, n, snr, eps, correct_steps, seed):
    """The loop of diffusers' ``ScoreSdeVePipeline`` around our network: ``(x_0, nfe)``."""
    scheduler = scheduler_cls(
        num_train_timesteps=n, snr=snr, sigma_min=sde.sigma_min, sigma_max=sde.sigma_max,
        sampling_eps=eps, correct_steps=correct_steps,
    )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    nfe = 0

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return score_fn(x, sde.t_from_sigma(sigma))

    x_mean = x
    for i, t in enumerate(scheduler.timesteps):
        sigma_t = scheduler.sigmas[i] * torch.ones(shape[0])
        for _ in range(scheduler.config.correct_steps):
            x = scheduler.step_correct(model(x, sigma_t), x, generator=generator).prev_sample
        out = scheduler.step_pred(model(x, sigma_t), t, x, generator=generator)
        x, x_mean = out.prev_sample, out.prev_sample_mean
    return x_mean, nfe


def ours_pc(sde, score_fn, shape, *, n, snr, eps, corrector, seed, time_grid=None):
    """:func:`scoresde.pc_sample` with the same starting noise and generator: ``(x_0, nfe)``."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator) * sde.sigma_max
    nfe = 0

    def counted(x: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return score_fn(x, t)

    x = pc_sample(sde, counted, x_T, predictor="reverse_diffusion", corrector=corrector, snr=snr,
                  num_steps=n, eps=eps, generator=generator, time_grid=time_grid)
    return x, nfe


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    try:
        import diffusers
        from diffusers import ScoreSdeVeScheduler
    except ImportError:
        raise SystemExit(
            "diffusers is not installed: pip install -e '.[bench]' (or pip install diffusers)"
        ) from None
    torch.set_grad_enabled(False)
    run = load_trained(checkpoint_file(a.run_ve), device="cpu")
    if run.cfg.sde.kind != "ve":
        raise SystemExit(f"--run-ve {a.run_ve} is a {run.cfg.sde.kind!r} run, not 've'")
    sde, score_fn = run.sde, run.score_fn
    snr = run.cfg.sample.snr if a.snr is None else a.snr
    eps = run.cfg.sample.eps if a.eps is None else a.eps
    shape = (a.num_samples, *run.shape)
    quality_cfg = replace(run.cfg, eval=replace(run.cfg.eval, features="digits", metrics=("fid",)))

    def fd(x: Tensor) -> float:
        images = from_model_scale(x, run.cfg.data)
        return sample_quality(quality_cfg, images, seed=a.seed)["metrics"]["fid"]

    samplers = {
        "ours": lambda: ours_pc(sde, score_fn, shape, n=a.N, snr=snr, eps=eps,
                                corrector="langevin", seed=a.seed),
        "diffusers": lambda: diffusers_pc(ScoreSdeVeScheduler, sde, score_fn, shape, n=a.N,
                                          snr=snr, eps=eps, correct_steps=1, seed=a.seed),
    }
    times: dict[str, list[float]] = {k: [] for k in samplers}
    results: dict[str, tuple[Tensor, int]] = {}
    start = time.perf_counter()
    for r in range(a.rounds):
        for name, fn in samplers.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r}: {name} {times[name][-1]:.1f} s", flush=True)
    ours, diff = results["ours"][0], results["diffusers"][0]
    pc = {
        name: {
            "nfe": results[name][1],
            "seconds_median": statistics.median(times[name]),
            "seconds": times[name],
            "fd": fd(results[name][0]),
        }
        for name in samplers
    }
    pc["max_abs_diff"] = float((ours - diff).abs().max())
    pc["mean_abs_diff"] = float((ours - diff).abs().mean())
    pc["max_abs_diff_data_scale"] = float(
        (from_model_scale(ours, run.cfg.data) - from_model_scale(diff, run.cfg.data)).abs().max()
    )
    pc["sample_std"] = float(ours.std())

    # Predictor only, on diffusers' noise levels: the same draws in the same order.
    grid = torch.linspace(1.0, 0.0, a.N) * sde.T
    p_ours, p_ours_nfe = ours_pc(sde, score_fn, shape, n=a.N - 1, snr=snr, eps=eps,
                                 corrector="none", seed=a.seed, time_grid=grid)
    p_diff, p_diff_nfe = diffusers_pc(ScoreSdeVeScheduler, sde, score_fn, shape, n=a.N, snr=snr,
                                      eps=eps, correct_steps=0, seed=a.seed)
    predictor_only = {
        "nfe": {"ours": p_ours_nfe, "diffusers": p_diff_nfe},
        "max_abs_diff": float((p_ours - p_diff).abs().max()),
        "mean_abs_diff": float((p_ours - p_diff).abs().mean()),
        "max_abs_diff_data_scale": float(
            (from_model_scale(p_ours, run.cfg.data) - from_model_scale(p_diff, run.cfg.data))
            .abs().max()
        ),
        "fd": {"ours": fd(p_ours), "diffusers": fd(p_diff)},
    }
    result: dict[str, Any] = {
        "settings": {
            "run": str(a.run_ve), "train_steps": run.step, "N": a.N, "snr": snr, "eps": eps,
            "num_samples": a.num_samples, "seed": a.seed, "rounds": a.rounds,
            "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max,
            "diffusers_version": diffusers.__version__, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "command": "python benchmarks/diffusers_ve_pc.py " + " ".join(sys.argv[1:]),
            "wall_seconds": time.perf_counter() - start,
        },
        "pc": pc,
        "predictor_only_same_noise": predictor_only,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"pc": pc, "predictor_only_same_noise": predictor_only}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
