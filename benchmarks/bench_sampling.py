"""Sampler overhead on the demo network: wall time / (NFE x one network forward), batch 64.

Goal: at most 1.05 for the PC sampler and the probability-flow ODE sampler. Run:

    python benchmarks/bench_sampling.py [--sde subvp] [--batch 64] [--steps 200]
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
    p.add_argument("--steps", type=int, default=200, help="PC steps")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    _, sde, model, score_fn, x = demo_network(a.sde, a.batch)
    t = torch.full((a.batch,), 0.5)
    labels = sde.network_labels(t)

    with torch.no_grad():
        forward = median_seconds(lambda: model(x, labels), repeats=50, warmup=5)
        pc_nfe = a.steps * 2 + 1
        pc = median_seconds(
            lambda: scoresde.pc_sample(
                sde, score_fn, x, num_steps=a.steps, generator=torch.Generator().manual_seed(0)
            ),
            repeats=a.repeats,
        )
        nfe = scoresde.ode_sample(sde, score_fn, x)[1]
        ode = median_seconds(lambda: scoresde.ode_sample(sde, score_fn, x), repeats=a.repeats)

    print(f"network forward, batch {a.batch}: {forward * 1e3:.3f} ms (median of 50)")
    print(
        f"PC  ({a.steps} steps, reverse_diffusion+langevin, NFE {pc_nfe}): "
        f"{pc:.3f} s, overhead {pc / (pc_nfe * forward):.3f}"
    )
    print(
        f"ODE (dopri5, rtol=atol=1e-5, NFE {nfe}): {ode:.3f} s, "
        f"overhead {ode / (nfe * forward):.3f}"
    )


if __name__ == "__main__":
    main()
