"""Sampler overhead on the demo network: wall time / (NFE x one network forward), batch 64.

Goal: at most 1.05 for the PC sampler and the probability-flow ODE sampler. The machine is
shared and noisy, so each round times the network forward right before each sampler and the
script prints the median ratio over the rounds. Run:

    python benchmarks/bench_sampling.py [--sde subvp] [--batch 64] [--steps 200] [--rounds 5]
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
    p.add_argument("--steps", type=int, default=200, help="PC steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    _, sde, model, score_fn, x = demo_network(a.sde, a.batch)
    labels = score_fn.network_labels(torch.full((a.batch,), 0.5))

    def forward() -> float:
        return median_seconds(lambda: model(x, labels), repeats=30, warmup=3)

    def pc() -> object:
        gen = torch.Generator().manual_seed(0)
        return scoresde.pc_sample(sde, score_fn, x, num_steps=a.steps, generator=gen)

    pc_nfe = a.steps * 2 + 1
    ratios: dict[str, list[float]] = {"pc": [], "ode": []}
    with torch.no_grad():
        nfe = scoresde.sample(sde, score_fn, x, method="ode")[1]["nfe"]
        for _ in range(a.rounds):
            unit = forward()
            ratios["pc"].append(median_seconds(pc, repeats=1, warmup=0) / (pc_nfe * unit))
            unit = forward()
            ode = median_seconds(lambda: scoresde.sample(sde, score_fn, x, method="ode"), repeats=1,
                                 warmup=0)
            ratios["ode"].append(ode / (nfe * unit))
        unit = forward()

    print(f"threads {torch.get_num_threads()}; network forward, batch {a.batch}: "
          f"{unit * 1e3:.3f} ms")
    for name, label in (("pc", f"PC  ({a.steps} steps, reverse_diffusion+langevin, NFE "
                                f"{pc_nfe})"),
                        ("ode", f"ODE (dopri5, rtol=atol=1e-5, NFE {nfe})")):
        r = ratios[name]
        print(f"{label}: overhead median {statistics.median(r):.3f} "
              f"(rounds: {', '.join(f'{v:.3f}' for v in r)})")


if __name__ == "__main__":
    main()
