"""The paper's Table 1 ablation (Song et al., 2021) redone on the 8x8 digits models.

For each SDE (VE from ``--run-ve``, VP from ``--run-vp``) and each predictor
(``reverse_diffusion``, ``ancestral_sampling``, ``probability_flow``) it samples

- ``P{N}``: the predictor alone, ``N`` steps (corrector ``none``);
- ``P{2N}``: the predictor alone, ``2N`` steps;
- ``PC{N}``: ``N`` predictor steps, each followed by one Langevin corrector step;

and once per SDE ``C{2N}``: the Langevin corrector alone, ``2N`` steps (predictor ``none``), as
in the paper's table, where that cell spans the predictor rows. Every cell of a seed starts from
the same noise and draws its noise from the same per-sample streams (``scoresde.generate``);
every sampler ends with the Tweedie denoising step (one more score evaluation).

The metric is the Frechet distance in the feature space of the package's digits classifier
against the training digits (``scoresde.jobs.evaluation.evaluate.sample_quality``, as the demo),
beside the same distance of as many real held-out digits (the floor). With ``--seeds S`` each
cell is sampled with seeds ``F .. F+S-1`` (``--first-seed F``, default 0) and reported as mean
and standard deviation.

    OMP_NUM_THREADS=1 python benchmarks/table1_ablation.py \\
        --run-ve runs/ablation/ve --run-vp runs/ablation/vp --N 100 --num-samples 256

writes ``docs/ablation/table1.json`` (``--out``) and prints the table next to the paper's
CIFAR-10 FIDs. ``--quick`` (N = 10, 32 samples, one seed) is a smoke test of a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.runs import checkpoint_file, generate, load_trained

PREDICTORS = ("reverse_diffusion", "ancestral_sampling", "probability_flow")
SDE_NAMES = {"ve": "VE (SMLD)", "vp": "VP (DDPM)"}

PAPER_TABLE1: dict[str, dict[str, dict[str, float | None]]] = {
    "ve": {
        "ancestral_sampling": {"P1000": 4.98, "P2000": 4.88, "PC1000": 3.62},
        "reverse_diffusion": {"P1000": 4.79, "P2000": 4.74, "PC1000": 3.60},
        "probability_flow": {"P1000": 15.41, "P2000": 10.54, "PC1000": 3.51},
        "corrector_only": {"C2000": 20.43},
    },
    "vp": {
        "ancestral_sampling": {"P1000": 3.24, "P2000": 3.24, "PC1000": 3.21},
        "reverse_diffusion": {"P1000": 3.21, "P2000": 3.19, "PC1000": 3.18},
        "probability_flow": {"P1000": 3.59, "P2000": 3.23, "PC1000": 3.06},
        "corrector_only": {"C2000": 19.06},
    },
}
"""CIFAR-10 FID of Song et al., 2021 (ICLR), Table 1, N = 1000: means over five sampling runs
(the paper also gives their standard deviations); lower is better."""


def cells(n: int, corrected_only: bool = False) -> list[dict[str, Any]]:
    """The sampler settings of one SDE's table: name, predictor, corrector, num_steps
    (``corrected_only``: only the cells with a corrector, PC and C)."""
    out = []
    for predictor in PREDICTORS:
        if not corrected_only:
            out += [
                {"predictor": predictor, "sampler": f"P{n}", "corrector": "none",
                 "num_steps": n},
                {"predictor": predictor, "sampler": f"P{2 * n}", "corrector": "none",
                 "num_steps": 2 * n},
            ]
        out.append(
            {"predictor": predictor, "sampler": f"PC{n}", "corrector": "langevin", "num_steps": n}
        )
    out.append({"predictor": "none", "sampler": f"C{2 * n}", "corrector": "langevin",
                "num_steps": 2 * n})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-ve", type=Path, help="a digits_ve run folder (scoresde train)")
    p.add_argument("--run-vp", type=Path, help="a digits_vp run folder")
    p.add_argument("--N", type=int, default=1000, help="predictor steps N (default 1000)")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds F .. F+S-1 (default 0)")
    p.add_argument("--snr-ve", type=float, help="Langevin snr for VE (default: the run's)")
    p.add_argument("--snr-vp", type=float, help="Langevin snr for VP (default: the run's)")
    p.add_argument("--out", type=Path, default=Path("docs/ablation/table1.json"))
    p.add_argument("--corrected-only", action="store_true",
                   help="only the PC and C cells (e.g. for another --snr-vp)")
    p.add_argument("--quick", action="store_true", help="N = 10, 32 samples, one seed")
    a = p.parse_args(argv)
    if a.quick:
        a.N, a.num_samples, a.seeds = 10, 32, 1
    runs = {"ve": a.run_ve, "vp": a.run_vp}
    if not any(runs.values()):
        p.error("give --run-ve DIR and/or --run-vp DIR")
    for kind, path in runs.items():
        if path is not None and not checkpoint_file(path).is_file():
            p.error(f"--run-{kind} {path}: no checkpoint (train it with scoresde train)")
    if min(a.N, a.num_samples, a.batch_size, a.seeds) < 1 or a.first_seed < 0:
        p.error("--N, --num-samples, --batch-size and --seeds must be >= 1, --first-seed >= 0")
    return a


def load_sde_run(kind: str, path: Path, a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The trained run and the empty result block of one SDE."""
    run = load_trained(checkpoint_file(path), device="cpu")
    if run.cfg.sde.kind != kind:
        raise SystemExit(f"--run-{kind} {path} is a {run.cfg.sde.kind!r} run, not {kind!r}")
    snr = getattr(a, f"snr_{kind}")
    snr = run.cfg.sample.snr if snr is None else snr
    block = {"run": str(path), "train_steps": run.step, "sde": asdict(run.cfg.sde),
             "snr": snr, "real_floor": None, "cells": []}
    return run, block


def sample_cell(run, block: dict[str, Any], cell: dict[str, Any], seed: int,
                a: argparse.Namespace) -> dict[str, Any]:
    """Sample one cell with one seed and add its FD to the cell's row of ``block``."""
    quality_cfg = replace(run.cfg, eval=replace(run.cfg.eval, features="digits", metrics=("fid",)))
    start = time.perf_counter()
    images, info = generate(
        run, a.num_samples, method="pc", seed=seed, batch_size=a.batch_size,
        predictor=cell["predictor"], corrector=cell["corrector"],
        num_steps=cell["num_steps"], snr=block["snr"], n_steps=1, denoise=True,
    )
    seconds = time.perf_counter() - start
    q = sample_quality(quality_cfg, images, seed=seed)
    block["real_floor"] = q["real_data"]
    rows = [r for r in block["cells"] if r["sampler"] == cell["sampler"]
            and r["predictor"] == cell["predictor"]]
    if not rows:
        rows = [{**cell, "nfe": info["nfe"], "fid": [], "seconds": []}]
        block["cells"].append(rows[0])
    row = rows[0]
    row["fid"].append(q["metrics"]["fid"])
    row["seconds"].append(seconds)
    row["fid_mean"] = statistics.fmean(row["fid"])
    row["fid_std"] = statistics.stdev(row["fid"]) if len(row["fid"]) > 1 else None
    return row


def markdown(result: dict[str, Any]) -> str:
    """Our table and the paper's side by side, one block per SDE."""
    n = result["settings"]["N"]
    cols = [f"P{n}", f"P{2 * n}", f"C{2 * n}", f"PC{n}"]
    paper_cols = ["P1000", "P2000", "C2000", "PC1000"]
    lines = []
    for kind, res in result["sdes"].items():
        by = {(c["predictor"], c["sampler"]): c for c in res["cells"]}
        corr = by.get(("none", cols[2]))
        floor = res["real_floor"]["fid"] if res["real_floor"] else float("nan")
        lines += [
            f"**{SDE_NAMES[kind]}**, digits FD (real held-out floor {floor:.2f}); paper: CIFAR-10 "
            "FID",
            "",
            "| predictor | " + " | ".join(cols) + " | paper " + " / ".join(paper_cols) + " |",
            "| --- |" + " ---: |" * (len(cols) + 1),
        ]
        for predictor in PREDICTORS:
            vals = []
            for col in cols:
                c = corr if col == cols[2] else by.get((predictor, col))
                text = _fmt(c)
                vals.append(text if col != cols[2] or predictor == PREDICTORS[-1] else "")
            paper = PAPER_TABLE1[kind][predictor] | PAPER_TABLE1[kind]["corrector_only"]
            ptext = " / ".join(
                "-" if (k == "C2000" and predictor != PREDICTORS[-1]) else f"{paper[k]:.2f}"
                for k in paper_cols
            )
            lines.append(f"| {predictor} | " + " | ".join(vals) + f" | {ptext} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    if c["fid_std"] is None:
        return f"{c['fid_mean']:.2f}"
    return f"{c['fid_mean']:.2f} ± {c['fid_std']:.2f}"


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    loaded = {kind: load_sde_run(kind, path, a)
              for kind, path in (("ve", a.run_ve), ("vp", a.run_vp)) if path is not None}
    result = {
        "settings": {
            "N": a.N,
            "num_samples": a.num_samples,
            "seeds": list(range(a.first_seed, a.first_seed + a.seeds)),
            "seeds_done": 0,
            "batch_size": a.batch_size,
            "corrected_only": a.corrected_only,
            "metric": "Frechet distance, digits-classifier features, vs the training digits",
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/table1_ablation.py " + " ".join(sys.argv[1:]),
            "wall_seconds": 0.0,
        },
        "paper_table1_cifar10_fid": PAPER_TABLE1,
        "sdes": {kind: block for kind, (_, block) in loaded.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    # Seed by seed, so that an interrupted run leaves whole tables of the seeds it finished.
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for kind, (run, block) in loaded.items():
            for cell in cells(a.N, a.corrected_only):
                row = sample_cell(run, block, cell, seed, a)
                print(f"  seed {seed} {kind} {cell['predictor']:>18} {cell['sampler']:>6}: "
                      f"FD {row['fid'][-1]:.3f}  NFE {row['nfe']}  {row['seconds'][-1]:.0f} s",
                      flush=True)
                result["settings"]["wall_seconds"] = time.perf_counter() - start
                a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        result["settings"]["seeds_done"] += 1
    result["markdown"] = markdown(result)
    a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(result["markdown"])
    print(f"wrote {a.out} ({result['settings']['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
