"""Cost of per-sample random streams: PC sampling with one stream per sample / one generator.

Batch-size-independent sampling draws each sample's noise from its own stream
(``scoresde.core.seeding.SampleStreams``): one small ``randn`` per sample and step instead of one
for
the batch. This script times the demo network's PC sampler both ways, interleaved round by
round, and prints the median ratio (goal: at most 1.05 at batch 64 on the 8x8 demo, where the
network is cheapest and the overhead largest). Run:

    python benchmarks/bench_sample_streams.py [--batch 64] [--steps 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import scoresde
from _common import demo_network
from scoresde.core.seeding import SampleStreams
from scoresde.infra.threads import median_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="PC steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    _, sde, _, score_fn, x = demo_network(a.sde, a.batch)

    def run(generator) -> object:
        return scoresde.sample(sde, score_fn, x, num_steps=a.steps, generator=generator)

    def shared() -> object:
        return run(torch.Generator().manual_seed(0))

    def streams() -> object:
        return run(SampleStreams(0, range(a.batch)))

    def draws(generator_fn) -> float:
        return median_seconds(
            lambda: scoresde.core._tensor.randn(x.shape, generator_fn()), repeats=50
        )

    ratios, times = [], {"shared": [], "streams": []}
    with torch.no_grad():
        for r in range(a.rounds):  # alternate which goes first
            if r % 2:
                t_streams = median_seconds(streams, repeats=1, warmup=1)
                t_shared = median_seconds(shared, repeats=1, warmup=1)
            else:
                t_shared = median_seconds(shared, repeats=1, warmup=1)
                t_streams = median_seconds(streams, repeats=1, warmup=1)
            times["shared"].append(t_shared)
            times["streams"].append(t_streams)
            ratios.append(t_streams / t_shared)
    one = draws(lambda: torch.Generator().manual_seed(0))
    per = draws(lambda: SampleStreams(0, range(a.batch)))
    print(f"threads {torch.get_num_threads()}; batch {a.batch}; {a.steps} PC steps "
          f"(reverse_diffusion + langevin, {2 * a.steps + 1} NFE)")
    print(f"one generator: median {statistics.median(times['shared']):.3f} s; per-sample streams: "
          f"median {statistics.median(times['streams']):.3f} s")
    print(f"ratio streams / shared: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"one noise draw of the batch: {one * 1e6:.0f} us with one generator, "
          f"{per * 1e6:.0f} us with per-sample streams (stream set-up included)")


if __name__ == "__main__":
    main()
