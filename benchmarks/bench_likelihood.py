"""Likelihood cost per NFE against one network forward + one vector-Jacobian product.

Goal: at most 1.05 (the official code runs an extra forward per step: 1.31). Run:

    python benchmarks/bench_likelihood.py [--sde subvp] [--batch 64]
"""

from __future__ import annotations

import argparse

import torch

import scoresde
from _common import demo_network
from scoresde.threads import median_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    _, sde, model, score_fn, x = demo_network(a.sde, a.batch)
    x = x.clamp(-1, 1)
    t = torch.full((a.batch,), 0.5)
    labels = sde.network_labels(t)
    v = torch.randn_like(x).sign()

    def forward_vjp() -> None:
        xr = x.detach().requires_grad_(True)
        out = model(xr, labels)
        torch.autograd.grad(out, xr, v)

    unit = median_seconds(forward_vjp, repeats=30, warmup=3)

    def run() -> int:
        return scoresde.log_likelihood(
            sde, score_fn, x, generator=torch.Generator().manual_seed(0)
        )[2]

    nfe = run()
    total = median_seconds(run, repeats=a.repeats, warmup=0)
    print(f"forward + VJP, batch {a.batch}: {unit * 1e3:.3f} ms (median of 30)")
    print(
        f"log_likelihood (dopri5, rtol=atol=1e-5, NFE {nfe}): {total:.3f} s, "
        f"cost per NFE / (forward + VJP) = {total / (nfe * unit):.3f}"
    )


if __name__ == "__main__":
    main()
