"""Likelihood cost per NFE against one network forward + one vector-Jacobian product.

Goal: at most 1.05 (the official code runs an extra forward per step: 1.31). Each round times
forward + VJP right before the likelihood solve; the median ratio over rounds is printed. Run:

    python benchmarks/bench_likelihood.py [--sde subvp] [--batch 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import scoresde
from _common import demo_network
from scoresde.infra.threads import median_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    _, sde, model, score_fn, x = demo_network(a.sde, a.batch)
    x = x.clamp(-1, 1)
    labels = score_fn.network_labels(torch.full((a.batch,), 0.5))
    v = torch.randn_like(x).sign()

    def forward_vjp() -> None:
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xr, labels), xr, v)

    def solve() -> int:
        gen = torch.Generator().manual_seed(0)
        return scoresde.log_likelihood(sde, score_fn, x, generator=gen)[2]

    nfe = solve()
    ratios = []
    for _ in range(a.rounds):
        unit = median_seconds(forward_vjp, repeats=20, warmup=2)
        ratios.append(median_seconds(solve, repeats=1, warmup=0) / (nfe * unit))
    print(f"threads {torch.get_num_threads()}; forward + VJP, batch {a.batch}: "
          f"{unit * 1e3:.3f} ms")
    print(f"log_likelihood (dopri5, rtol=atol=1e-5, NFE {nfe}): cost per NFE / (forward + VJP) "
          f"median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
