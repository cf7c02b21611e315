"""The demo's sample quality beyond one draw of 64: FD and IS of all of a demo folder's samples,
and their mean and standard error over its disjoint blocks of 64.

One draw of 64 samples gives an FD whose spread from draw to draw is larger than the
differences between the demo's samplers, so ``scoresde demo``'s default figures (64 samples)
cannot rank them. Run the demo with more samples and read them here, e.g. the default demo
against the paper-trained one at 512 samples (about 4 and 3.5 minutes on 2 cores, most of it the
PC sampler)::

    scoresde demo --num-samples 512 --out runs/demo512
    scoresde demo --training paper --num-samples 512 --out runs/demo512_paper
    python benchmarks/demo_quality.py runs/demo512 runs/demo512_paper

Prints one row per folder and sampler (``samples_{fast,pc,ode}.npy``) and one for the real
held-out digits (their 359 at most, in blocks of 64 too), and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from scoresde.jobs.demo import demo_quality_config
from scoresde.jobs.evaluation.evaluate import sample_quality
from scoresde.jobs.runs import load_trained
from scoresde.setup.data.pipeline import load_split

SAMPLERS = ("fast", "pc", "ode")


def block_quality(cfg, images: torch.Tensor, block: int, seed: int) -> dict[str, float]:
    """FD and IS of ``images`` ``(N, 1, 8, 8)`` in ``[0, 1]`` (all N), and the mean and standard
    error (ddof 1) of both over the ``N // block`` disjoint blocks of ``block`` images."""
    def metrics(x):
        m = sample_quality(cfg, x, seed=seed)["metrics"]
        return m["fid"], m["is"]

    fd, inception = metrics(images)
    row = {"n": images.shape[0], "fd": fd, "is": inception}
    blocks = [metrics(images[i:i + block]) for i in range(0, images.shape[0] - block + 1, block)]
    row["blocks"] = len(blocks)
    for name, values in zip(("fd", "is"), zip(*blocks, strict=True), strict=True):
        row[f"{name}_{block}"] = statistics.mean(values)
        row[f"{name}_{block}_se"] = (
            statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="finished demo folders")
    p.add_argument("--block", type=int, default=64, help="block size (default 64)")
    args = p.parse_args(argv)
    b = args.block
    print(f"| demo | training | sampler | n | FD | IS | FD of {b} (mean ± SE) | IS of {b} "
          "| blocks |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    real_row = None
    for folder in args.folders:
        report = json.loads((folder / "report.json").read_text())
        run = load_trained(folder / "checkpoint.safetensors", device="cpu")
        cfg = demo_quality_config(run.cfg)
        for name in SAMPLERS:
            images = torch.from_numpy(np.load(folder / f"samples_{name}.npy"))[:, None]
            row = block_quality(cfg, images, b, run.cfg.seed)
            print(_line(folder.name, report["training"], name, row, b), flush=True)
        if real_row is None:
            real_row = block_quality(cfg, load_split(cfg.data, "test"), b, run.cfg.seed)
    print(_line("real held-out digits", "", "", real_row, b))
    return 0


def _line(folder: str, training: str, sampler: str, row: dict, b: int) -> str:
    return (f"| {folder} | {training} | {sampler} | {row['n']} | {row['fd']:.2f} | "
            f"{row['is']:.3f} | {row[f'fd_{b}']:.2f} ± {row[f'fd_{b}_se']:.2f} | "
            f"{row[f'is_{b}']:.3f} ± {row[f'is_{b}_se']:.3f} | {row['blocks']} |")


if __name__ == "__main__":
    raise SystemExit(main())
