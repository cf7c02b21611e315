"""The paper's training against EDM's (Karras et al., 2022) on the 8x8 digits, per SDE.

For each SDE (``--sdes``, default VE, VP and sub-VP) it trains the demo network twice, with the
same steps, seed and data:

- ``paper``: the ``digits_<sde>`` preset as it is (continuous DSM, ``lambda(t) = s(t)^2``, the
  SDE's own network convention: score / sigma labels for VE, eps / ``999 t`` labels for VP);
- ``edm``: the same preset with EDM's preconditioning and loss (``model.parametrization=edm``,
  ``train.loss=edm``, positional embedding of ``ln(sigma) / 4``, no ``1/sigma`` output scaling).

and reports, for each model, the digits Frechet distance, Inception score and KID (the feature
space of the package's digits classifier against the training digits,
``scoresde.jobs.evaluation.evaluate.sample_quality``) of ``--num-samples`` samples from

- ``pc``: the preset's PC sampler (reverse diffusion / Euler-Maruyama + Langevin, N = 1000
  steps, 2001 NFE): the paper-trained models only unless ``--pc all`` (``--pc none``: skip);
- ``ode``: the probability-flow ODE (adaptive RK45);
- ``heun`` (9 steps, log-SNR grid, 19 NFE) and ``dpmpp_2m`` (19 steps, log-SNR grid, 20 NFE),
  the best of which is the model's ``<= 20 NFE`` entry;

beside the same metrics of the real held-out digits (359 test digits: the floor; FD compares
only at the same sample size, so the samples' FD at that size is given too), and the test
bits/dim through the probability-flow ODE. Every sampler of a model starts from the same noise.

    OMP_NUM_THREADS=2 python benchmarks/edm_training.py --out runs/edm_training

trains six models of 4000 steps (about 7 minutes each on 2 idle CPU cores) and samples 1000
digits per cell: about 1.5 to 2 hours on 2 cores, most of it the PC cells (2001 NFE each).
Trained runs are kept in ``--out`` and reused (resumed) by a later call. ``--quick`` (60 steps,
64 samples, PC with 50 steps, 32 test digits) is a smoke run of about a minute; its numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.config import Config
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.pipeline import load_split
from scoresde.setup.presets import get_preset

EDM_RECIPE = [
    "train.loss=edm",
    "model.parametrization=edm",
    "model.embedding_type=positional",
    "model.scale_by_sigma=false",
]
"""What turns a ``digits_<sde>`` preset into EDM's training: preconditioning, loss, labels."""

FAST_SAMPLERS = {
    "heun": {"num_steps": 9, "grid": "log_snr"},
    "dpmpp_2m": {"num_steps": 19, "grid": "log_snr"},
}
"""The <= 20-NFE samplers tried on every model (19 and 20 NFE with the denoising step)."""


def recipe_config(sde: str, recipe: str, *, steps: int | None, seed: int, device: str) -> Config:
    """The ``digits_<sde>`` preset, EDM's way for ``recipe="edm"``, with the run's budget."""
    cfg = get_preset(f"digits_{sde}")
    if recipe == "edm":
        cfg = apply_overrides(cfg, EDM_RECIPE)
    train_cfg = cfg.train if steps is None else replace(cfg.train, steps=steps)
    return replace(cfg, train=replace(train_cfg, tensorboard=False), seed=seed, device=device)


def _quality(cfg: Config, images: torch.Tensor, device, seed: int) -> dict[str, Any]:
    qcfg = replace(cfg, eval=replace(cfg.eval, features="digits", metrics=("fid", "is", "kid"),
                                     kid_subset_size=min(1000, images.shape[0]),
                                     is_splits=1))
    found = sample_quality(qcfg, images, device=device, seed=seed)
    out = {k: round(float(v), 4) for k, v in found["metrics"].items()}
    out["real"] = {k: v if isinstance(v, int) else round(float(v), 4)
                   for k, v in found["real_data"].items()}
    if "samples_at_real_size" in found:
        out["fid_at_real_size"] = round(float(found["samples_at_real_size"]["fid"]), 4)
    return out


def evaluate_model(run, cfg: Config, args, samplers: list[str]) -> dict[str, Any]:
    """Sample quality of each sampler in ``samplers`` and the test bits/dim of one model."""
    cells: dict[str, Any] = {}
    for name in samplers:
        options = dict(FAST_SAMPLERS.get(name, {}))
        if name == "pc" and args.pc_steps:
            options["num_steps"] = args.pc_steps
        start = time.perf_counter()
        images, info = generate(run, args.num_samples, method=name, seed=cfg.seed, **options)
        seconds = time.perf_counter() - start
        cells[name] = {
            "nfe": info.get("nfe"),
            "seconds": round(seconds, 1),
            **_quality(cfg, images, run.device, cfg.seed),
        }
        print(f"    {name:9s} nfe {cells[name]['nfe']!s:>5}  FD {cells[name]['fid']:8.3f}  "
              f"IS {cells[name]['is']:6.3f}  KID {cells[name]['kid']:.4f}  ({seconds:.0f} s)",
              flush=True)
    fast = [n for n in FAST_SAMPLERS if n in cells]
    best = min(fast, key=lambda n: cells[n]["fid"]) if fast else None
    test = load_split(cfg.data, "test")
    overrides = {"num_examples": args.test_examples} if args.test_examples else {}
    start = time.perf_counter()
    nll = evaluate_likelihood(run, test, seed=cfg.seed, **overrides)
    print(f"    test bits/dim {nll['bpd']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"samplers": cells, "best_fast": best, "test_bpd": round(float(nll["bpd"]), 4),
            "test_examples": nll["num_examples"], "likelihood_nfe": nll["nfe"]}


def _table(results: dict[str, Any]) -> str:
    lines = ["| SDE | training | sampler | NFE | FD | FD at real size | IS | KID | test bpd |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    real = None
    for key, res in results.items():
        sde, recipe = key.split("/")
        for name, cell in res["samplers"].items():
            mark = " (best <= 20 NFE)" if name == res["best_fast"] else ""
            lines.append(
                f"| {sde} | {recipe} | {name}{mark} | {cell['nfe']} | {cell['fid']:.3f} | "
                f"{cell.get('fid_at_real_size', cell['fid']):.3f} | {cell['is']:.3f} | "
                f"{cell['kid']:.4f} | {res['test_bpd']:.4f} |"
            )
            real = cell["real"]
    if real is not None:
        lines.append(f"| real held-out digits ({real['num_examples']}) | | | | {real['fid']:.3f} | "
                     f"{real['fid']:.3f} | {real['is']:.3f} | {real['kid']:.4f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="runs and report.json (default: runs/edm_training, "
                   "runs/edm_training_quick with --quick)")
    p.add_argument("--sdes", nargs="+", default=["ve", "vp", "subvp"],
                   choices=["ve", "vp", "subvp"])
    p.add_argument("--steps", type=int, help="training steps (default: the preset's 4000)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--pc", choices=["paper", "all", "none"], default="paper",
                   help="which models get the PC-1000 cell (default: the paper-trained ones)")
    p.add_argument("--pc-steps", type=int, default=0, help="PC steps (default: the SDE's N)")
    p.add_argument("--test-examples", type=int, default=0, help="test digits for bits/dim (all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 40 steps, 64 samples, PC 50 steps, 32 test digits")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.num_samples, args.pc_steps, args.test_examples = 40, 64, 50, 32
    if args.out is None:
        args.out = Path("runs/edm_training_quick" if args.quick else "runs/edm_training")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for sde in args.sdes:
        for recipe in ("paper", "edm"):
            cfg = recipe_config(sde, recipe, steps=args.steps, seed=args.seed,
                                device=args.device)
            print(f"{sde} / {recipe}: training {cfg.train.steps} steps", flush=True)
            result = train(cfg, args.out / f"{sde}_{recipe}", progress=False)
            run = load_trained(result.checkpoint, device=args.device)
            samplers = ["ode", *FAST_SAMPLERS]
            if args.pc == "all" or (args.pc == "paper" and recipe == "paper"):
                samplers.insert(0, "pc")
            results[f"{sde}/{recipe}"] = {
                "train_steps": result.steps,
                "train_seconds": round(result.seconds, 1),
                "final_loss": result.losses[-1][1] if result.losses else None,
                **evaluate_model(run, cfg, args, samplers),
            }
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        "edm_recipe": EDM_RECIPE,
        "fast_samplers": FAST_SAMPLERS,
        "results": results,
        "seconds_total": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(_table(results))
    print(f"total {report['seconds_total']:.0f} s; report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
