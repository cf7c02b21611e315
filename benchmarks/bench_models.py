"""Speed and memory of the CIFAR-10 NCSN++ cont. / DDPM++ cont. networks, against the official code.

Per preset and variant (default, channels_last, torch.compile) it measures, each configuration in
a fresh subprocess:

- forward: median wall time of ``model(x, labels)`` in eval mode under ``no_grad``;
- train step: median wall time of one continuous-DSM step in train mode, ``dsm_loss(sde,
  make_score_fn(model, sde), x).mean()`` (VESDE for NCSN++, VPSDE for DDPM++), backward and
  ``Adam.step`` (fused where available, as the training loop);
- peak memory above the resident weights: CPU ``ru_maxrss`` (its high-water mark is reset after
  the warmup where Linux allows it, so compilation is not counted), CUDA
  ``max_memory_allocated``. The train figure includes gradients and Adam state.

The reference column is the official ``score_sde_pytorch`` on 2 CPU cores at batch 4; ``off/ours``
above 1 means we are faster. Run:

    python benchmarks/bench_models.py [--presets ncsnpp ddpmpp] [--variants default channels_last]
        [--batch 4] [--repeats 5] [--rounds 1] [--device cpu|cuda] [--compile-timeout 300]
        [--no-train] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import scoresde
from _common import compile_alarm, timeout_in_chain
from scoresde.jobs.training.optim import make_optimizer
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.setup.config import TrainConfig
from scoresde.setup.presets.networks_ncsnpp import (
    ddpmpp_cifar10_continuous,
    ncsnpp_cifar10_continuous,
)

PRESETS = {
    "ncsnpp": ("NCSN++ cont.", ncsnpp_cifar10_continuous, scoresde.VESDE),
    "ddpmpp": ("DDPM++ cont.", ddpmpp_cifar10_continuous, scoresde.VPSDE),
}
VARIANTS = ("default", "channels_last", "compile")
# Official score_sde_pytorch, 2 CPU cores, batch 4, medians in seconds: (forward, train step).
OFFICIAL_CPU_BATCH4 = {"ncsnpp": (0.64, 2.70), "ddpmpp": (0.58, 2.12)}


# ---------------------------------------------------------------- measurement (in the subprocess)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak(device: torch.device) -> float:
    """Reset the memory high-water mark where possible; returns the current mark in MB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # return freed heap pages to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux >= 4.0: resets VmHWM, hence ru_maxrss, to the current RSS
    return maxrss_mb()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return maxrss_mb()


def warmup(fn: Callable[[], object], n: int, compile_timeout: float | None) -> float:
    """Run ``fn`` ``n`` times; returns the time of the first call (compilation, if any).

    With ``compile_timeout``, raises ``CompileTimeoutError`` if the first call takes longer.
    """
    start = time.perf_counter()
    with compile_alarm(compile_timeout or 0, "first call"):
        fn()
    first = time.perf_counter() - start
    for _ in range(n - 1):
        fn()
    return first


def measure(a: argparse.Namespace) -> dict:
    """Time and memory of one (preset, variant) configuration: runs in its own process."""
    device = torch.device(a.device)
    torch.manual_seed(0)
    _, make_kwargs, sde_cls = PRESETS[a.preset]
    kwargs = make_kwargs()
    model = NCSNpp(**kwargs).to(device)
    sde = sde_cls()
    size = kwargs["image_size"]
    x = torch.rand(a.batch, kwargs["num_channels"], size, size, device=device)
    if kwargs["centered"]:
        x = 2 * x - 1
    labels = scoresde.make_score_fn(model, sde).network_labels(
        torch.full((a.batch,), 0.5, device=device)
    )
    if a.variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if a.variant == "compile" else model
    compile_timeout = a.compile_timeout if a.variant == "compile" else None
    opt = make_optimizer(model.parameters(), TrainConfig(lr=2e-4))
    score_fn = scoresde.make_score_fn(net, sde)
    weights_mb = reset_peak(device)
    out = {"params": sum(p.numel() for p in model.parameters())}

    def forward() -> None:
        with torch.no_grad():
            net(x, labels)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        scoresde.dsm_loss(sde, score_fn, x).mean().backward()
        opt.step()

    phases = [("fwd", "eval", forward)] + ([] if a.no_train else [("train", "train", train_step)])
    for name, mode, fn in phases:
        model.train(mode == "train")
        out[f"{name}_first_s"] = warmup(fn, a.warmup, compile_timeout)
        reset_peak(device)
        out[f"{name}_times"] = timings(fn, a.repeats, device)
        out[f"{name}_peak_mb"] = max(peak_mb(device) - weights_mb, 0.0)
    return out


# ------------------------------------------------------------------------- driver and report


def run_config(a: argparse.Namespace, preset: str, variant: str) -> dict:
    """Measure one configuration in a fresh interpreter (clean ru_maxrss and allocator)."""
    cmd = [sys.executable, __file__, "--worker", preset, variant, "--device", a.device]
    cmd += ["--batch", str(a.batch), "--repeats", str(a.repeats), "--warmup", str(a.warmup)]
    cmd += ["--compile-timeout", str(a.compile_timeout)] + (["--no-train"] if a.no_train else [])
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    # backstop only: the worker itself aborts a first (compiling) call after --compile-timeout
    timeout = a.worker_timeout + (2 * a.compile_timeout if variant == "compile" else 0)
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker killed after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT ") :]), "load": max(load, os.getloadavg()[0])}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exit {proc.returncode}: {tail[:200]}"}


def merge(rounds: list[dict]) -> dict:
    """Pool the timings of all successful rounds of one configuration (medians of the rest)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    out = {}
    for key in ok[0]:
        values = [r[key] for r in ok]
        if key.endswith("_times"):
            out[key[: -len("_times")] + "_s"] = statistics.median(t for ts in values for t in ts)
        elif key == "load":
            out[key] = max(values)
        else:
            out[key] = statistics.median(values)
    return out


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(a: argparse.Namespace, results: list[tuple[str, str, dict]]) -> None:
    mem = "MiB alloc" if a.device.startswith("cuda") else "MiB RSS"
    has_ref = a.device == "cpu" and a.batch == 4
    head = (
        f"{'network':<13} {'variant':<14} {'fwd s':>7} {'off.':>5} {'off/us':>6} "
        f"{'train s':>8} {'off.':>5} {'off/us':>6} {'fwd ' + mem:>12} {'train ' + mem:>14} "
        f"{'load':>5}"
    )
    print(head)
    print("-" * len(head))
    for preset, variant, r in results:
        title = PRESETS[preset][0]
        if "error" in r:
            print(f"{title:<13} {variant:<14} skipped: {r['error']}")
            continue
        ref_fwd, ref_train = OFFICIAL_CPU_BATCH4[preset] if has_ref else (None, None)
        fwd, train = r["fwd_s"], r.get("train_s")
        ratio_fwd = ref_fwd / fwd if ref_fwd else None
        ratio_train = ref_train / train if ref_train and train else None
        print(
            f"{title:<13} {variant:<14} {fmt(fwd):>7} {fmt(ref_fwd, '.2f'):>5} "
            f"{fmt(ratio_fwd, '.2f'):>6} {fmt(train):>8} {fmt(ref_train, '.2f'):>5} "
            f"{fmt(ratio_train, '.2f'):>6} {fmt(r['fwd_peak_mb'], '.0f'):>12} "
            f"{fmt(r.get('train_peak_mb'), '.0f'):>14} {r['load']:>5.1f}"
        )
        if variant == "compile":
            first = f"first forward {r['fwd_first_s']:.1f} s"
            if "train_first_s" in r:
                first += f", first train step {r['train_first_s']:.1f} s"
            print(f"{'':<28} (compilation: {first})")
    print(
        "seconds: medians; off. = official score_sde_pytorch (2 CPU cores, batch 4); off/us > 1: "
        "we are faster; memory: peak above the resident weights; load: 1-min load average"
    )
    if not has_ref:
        print("(the official figures are for CPU at batch 4 only)")
    cores = os.cpu_count() or 1
    if any(r.get("load", 0) > cores for *_, r in results):
        print(f"warning: load average above {cores} cores; other processes skew these timings")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=1, help="sweeps; timings of all are pooled")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (>= 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: only if available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-train", action="store_true", help="forward only")
    p.add_argument("--compile-timeout", type=float, default=300.0, help="seconds, first call")
    p.add_argument("--worker-timeout", type=float, default=1800.0, help="seconds per config")
    p.add_argument("--worker", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    a.warmup = max(a.warmup, 1)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("CUDA is not available")
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.worker:
        a.preset, a.variant = a.worker
        try:
            result = measure(a)
        except Exception as e:  # a failing variant (e.g. compile) is reported, not fatal
            e = timeout_in_chain(e) or e  # torch.compile wraps the alarm's exception
            first_line = (str(e).strip().splitlines() or [""])[0]
            result = {"error": f"{type(e).__name__}: {first_line[:200]}"}
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # skip interpreter teardown (compile workers, CUDA context)

    print(
        f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads, "
        f"batch {a.batch}, {a.warmup} warmup + {a.repeats} timed calls x {a.rounds} round(s)"
    )
    configs = [(preset, variant) for preset in a.presets for variant in a.variants]
    rounds: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
    for i in range(a.rounds):
        for preset, variant in configs:
            start = time.perf_counter()
            r = run_config(a, preset, variant)
            rounds[preset, variant].append(r)
            status = r.get("error", f"load {r.get('load', 0):.1f}")
            elapsed = time.perf_counter() - start
            print(f"  round {i + 1}: {preset}/{variant} in {elapsed:.0f} s ({status})", flush=True)
    print()
    report(a, [(preset, variant, merge(rounds[preset, variant])) for preset, variant in configs])


if __name__ == "__main__":
    main()
