"""The paper's training against EDM's (Karras et al., 2022) on the 8x8 digits, per SDE.

For each SDE (``--sdes``, default VE, VP and sub-VP) it trains the demo network twice, with the
same steps, seed and data:

- ``paper``: the ``digits_<sde>`` preset as it is (continuous DSM, ``lambda(t) = s(t)^2``, the
  SDE's own network convention: score / sigma labels for VE, eps / ``999 t`` labels for VP);
- ``edm``: the same preset with EDM's preconditioning and loss
  (:func:`scoresde.setup.presets.edm.edm_training`: ``model.parametrization=edm``,
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

It does this for each of ``--seeds`` (default 0, 1, 2: the seed of the data order, the
initialisation, the training draws and the samples), then reports every cell's mean and standard
error over the seeds and the goal of issue 18 per SDE: the EDM-trained model's best <= 20-NFE
sampler (lowest mean FD) against the paper-trained model's PC-1000, FD at ``--num-samples``
samples, within one standard error of the per-seed difference or better (:func:`aggregate`).

    OMP_NUM_THREADS=2 python benchmarks/edm_training.py --threads 2 --out runs/edm_training

trains six models of 4000 steps per seed (3 to 5 minutes each on 2 idle CPU cores) and samples
1000 digits per cell: about 28 minutes per seed on 2 cores, 1.5 hours for three. Each seed's
runs and ``report.json`` are kept in ``--out/seed<S>``; a later call with the same settings
reuses a finished seed's report and resumes an unfinished seed's training. ``--quick`` (40
steps, 64 samples, PC with 50 steps, 32 test digits) is a smoke run of about a minute per seed;
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scoresde.infra.viz import save_image_grid
from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.config import Config
from scoresde.setup.data.pipeline import load_split
from scoresde.setup.presets import get_preset
from scoresde.setup.presets.edm import EDM_TRAINING, edm_training

FAST_SAMPLERS = {
    "heun": {"num_steps": 9, "grid": "log_snr"},
    "dpmpp_2m": {"num_steps": 19, "grid": "log_snr"},
}
"""The <= 20-NFE samplers tried on every model (19 and 20 NFE with the denoising step)."""


def recipe_config(sde: str, recipe: str, *, steps: int | None, seed: int, device: str) -> Config:
    """The ``digits_<sde>`` preset, EDM's way for ``recipe="edm"``, with the run's budget."""
    cfg = get_preset(f"digits_{sde}")
    if recipe == "edm":
        cfg = edm_training(cfg)
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


SETTINGS = ("sdes", "steps", "num_samples", "pc", "pc_steps", "test_examples")
"""The arguments a seed's report depends on: a stored report is reused only if they match."""
METRICS = ("fid", "fid_at_real_size", "is", "kid")
"""The per-cell metrics averaged over seeds (``fid_at_real_size``: the first 359 samples)."""


def run_seed(args, seed: int, out: Path) -> dict[str, Any]:
    """Train and evaluate the paper's and EDM's model of every SDE with one seed, in ``out``."""
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for sde in args.sdes:
        for recipe in ("paper", "edm"):
            cfg = recipe_config(sde, recipe, steps=args.steps, seed=seed, device=args.device)
            print(f"seed {seed}, {sde} / {recipe}: training {cfg.train.steps} steps", flush=True)
            result = train(cfg, out / f"{sde}_{recipe}", progress=False)
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
    return {"seed": seed, "settings": _settings(args), "results": results,
            "seconds_total": round(time.perf_counter() - start, 1)}


def _settings(args) -> dict[str, Any]:
    return {key: getattr(args, key) for key in SETTINGS}


def _value(cell: dict[str, Any], metric: str) -> float:
    """A cell's metric; with no more samples than real digits, FD at real size is the FD."""
    return cell.get(metric, cell["fid"]) if metric == "fid_at_real_size" else cell[metric]


def _mean_se(values: list[float]) -> dict[str, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": round(mean, 4), "se": round(math.sqrt(var / n), 4), "n": n}


def aggregate(seed_reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard error over seeds of every cell, and the issue's goal per SDE.

    ``cells[f"{sde}/{recipe}/{sampler}"][metric]`` and ``test_bpd[f"{sde}/{recipe}"]`` are
    ``{"mean", "se", "n"}``. ``goal[sde]`` compares the EDM-trained model's best <= 20-NFE
    sampler (the one with the lowest mean FD over seeds, fixed for all seeds) with the
    paper-trained model's PC-1000: ``difference`` is the per-seed FD difference (EDM fast minus
    paper PC, paired by seed) as mean and standard error, and ``met`` says whether the EDM
    sampler's mean FD is at most PC's plus one standard error of that difference.
    """
    cells: dict[str, dict[str, dict[str, float]]] = {}
    test_bpd: dict[str, dict[str, float]] = {}
    keys = seed_reports[0]["results"].keys()
    for key in keys:
        per_seed = [report["results"][key] for report in seed_reports]
        test_bpd[key] = _mean_se([r["test_bpd"] for r in per_seed])
        for sampler in per_seed[0]["samplers"]:
            cells[f"{key}/{sampler}"] = {
                metric: _mean_se([_value(r["samplers"][sampler], metric) for r in per_seed])
                for metric in METRICS
            }
    goal: dict[str, Any] = {}
    for sde in dict.fromkeys(key.split("/")[0] for key in keys):
        if f"{sde}/paper/pc" not in cells or f"{sde}/edm/{next(iter(FAST_SAMPLERS))}" not in cells:
            continue
        best = min(FAST_SAMPLERS, key=lambda name: cells[f"{sde}/edm/{name}"]["fid"]["mean"])
        diffs = [report["results"][f"{sde}/edm"]["samplers"][best]["fid"]
                 - report["results"][f"{sde}/paper"]["samplers"]["pc"]["fid"]
                 for report in seed_reports]
        difference = _mean_se(diffs)
        goal[sde] = {
            "edm_sampler": best,
            "edm_fid": cells[f"{sde}/edm/{best}"]["fid"],
            "paper_pc_fid": cells[f"{sde}/paper/pc"]["fid"],
            "difference": difference,
            "met": difference["mean"] <= difference["se"],
        }
    return {"seeds": [report["seed"] for report in seed_reports], "cells": cells,
            "test_bpd": test_bpd, "goal": goal}


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['se']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def table(summary: dict[str, Any], real: dict[str, Any] | None = None) -> str:
    """The Markdown table of :func:`aggregate`: every cell as mean ± standard error."""
    lines = ["| SDE | training | sampler | FD | FD at real size | IS | KID | test bpd |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for key, cell in summary["cells"].items():
        sde, recipe, sampler = key.split("/")
        best = summary["goal"].get(sde, {}).get("edm_sampler")
        mark = " (best <= 20 NFE)" if recipe == "edm" and sampler == best else ""
        lines.append(f"| {sde} | {recipe} | {sampler}{mark} | "
                     + " | ".join(_pm(cell[m]) for m in METRICS)
                     + f" | {_pm(summary['test_bpd'][f'{sde}/{recipe}'])} |")
    if real is not None:
        lines.append(f"| real held-out digits ({real['num_examples']}) | | | {real['fid']:.3f} "
                     f"| {real['fid']:.3f} | {real['is']:.3f} | {real['kid']:.4f} | |")
    lines += ["", "| SDE | EDM-trained, <= 20 NFE | FD | paper-trained PC-1000 FD | "
              "difference (paired) | goal met |", "|---|---|---:|---:|---:|---|"]
    for sde, g in summary["goal"].items():
        lines.append(f"| {sde} | {g['edm_sampler']} | {_pm(g['edm_fid'])} | "
                     f"{_pm(g['paper_pc_fid'])} | {_pm(g['difference'])} | "
                     f"{'yes' if g['met'] else 'no'} |")
    return "\n".join(lines)


FIGURE_CELLS = (("paper", "pc"), ("paper", "heun"), ("edm", "heun"))
"""The figure's blocks per SDE: PC-1000 and Heun-19 of the paper-trained model, Heun-19 of the
EDM-trained one."""


def figure(seed_dir: Path, sdes: list[str], seed: int, path: Path, device: str,
           pc_steps: int = 0) -> Path:
    """One row of 8 x 8 digit blocks per SDE (:data:`FIGURE_CELLS`, left to right, a blank
    column between blocks, a blank row between SDEs): the first 64 samples of each cell of one
    seed's runs (each sample's noise is its own stream, so they are the first 64 of the measured
    1000)."""
    blank = torch.ones(1, 1, 8, 8)
    width = 8 * len(FIGURE_CELLS) + len(FIGURE_CELLS) - 1
    rows = []
    for k, sde in enumerate(sdes):
        if k:
            rows.append(blank.expand(width, 1, 8, 8))
        blocks = []
        for recipe, sampler in FIGURE_CELLS:
            run = load_trained(seed_dir / f"{sde}_{recipe}" / "checkpoint.safetensors",
                               device=device)
            options = dict(FAST_SAMPLERS.get(sampler, {}))
            if sampler == "pc" and pc_steps:
                options["num_steps"] = pc_steps
            images, _ = generate(run, 64, method=sampler, seed=seed, **options)
            blocks.append(images.cpu().reshape(8, 8, 1, 8, 8))
        for r in range(8):
            for i, block in enumerate(blocks):
                rows.append(block[r])
                if i < len(blocks) - 1:
                    rows.append(blank)
    return save_image_grid(torch.cat(rows), path, nrow=width)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="runs and reports (default: runs/edm_training, "
                   "runs/edm_training_quick with --quick)")
    p.add_argument("--sdes", nargs="+", default=["ve", "vp", "subvp"],
                   choices=["ve", "vp", "subvp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="one full measurement per seed (default: 0 1 2)")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's 4000)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--pc", choices=["paper", "all", "none"], default="paper",
                   help="which models get the PC-1000 cell (default: the paper-trained ones)")
    p.add_argument("--pc-steps", type=int, default=0, help="PC steps (default: the SDE's N)")
    p.add_argument("--test-examples", type=int, default=0, help="test digits for bits/dim (all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-figure", action="store_true",
                   help="skip samples.png (64 samples of PC-1000 and Heun per SDE, first seed)")
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
    seed_reports = []
    for seed in args.seeds:
        path = args.out / f"seed{seed}" / "report.json"
        stored = json.loads(path.read_text()) if path.is_file() else None
        if stored is not None and stored.get("settings") == _settings(args):
            print(f"seed {seed}: reusing {path}", flush=True)
            seed_reports.append(stored)
            continue
        report = run_seed(args, seed, path.parent)
        _write_json(path, report)
        seed_reports.append(report)
    summary = aggregate(seed_reports)
    first = next(iter(seed_reports[0]["results"].values()))
    real = next(iter(first["samplers"].values()))["real"]
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        "edm_training": EDM_TRAINING,
        "fast_samplers": FAST_SAMPLERS,
        "settings": _settings(args),
        "real_held_out": real,
        **summary,
        "per_seed": seed_reports,
        "seconds_total": round(time.perf_counter() - start, 1),
        "seconds_per_seed": {r["seed"]: r["seconds_total"] for r in seed_reports},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    _write_json(args.out / "report.json", report)
    if not args.no_figure:
        seed = args.seeds[0]
        path = figure(args.out / f"seed{seed}", args.sdes, seed, args.out / "samples.png",
                      args.device, args.pc_steps)
        print(f"figure: {path}")
    print(table(summary, real))
    print(f"total {report['seconds_total']:.0f} s; report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
