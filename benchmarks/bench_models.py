"""Speed and memory of the CIFAR-10 NCSN++ cont. / DDPM++ cont. networks, against the official code.

Per preset and variant (default, channels_last, torch.compile) it measures, each configuration in
a fresh subprocess:

- forward: median wall time of ``model(x, labels)`` in eval mode under ``no_grad``;
- train step: median wall time of one continuous-DSM step in train mode, ``dsm_loss(sde,
  make_score_fn(model, sde), x).mean()`` (VESDE for NCSN++, VPSDE for DDPM++), backward and
  ``Adam.step``;
- peak memory above the resident weights: CPU ``ru_maxrss`` (its high-water mark is reset after
  the warmup where Linux allows it, so compilation is not counted), CUDA
  ``max_memory_allocated``. The train figure includes gradients and Adam state.

The reference column is the official ``score_sde_pytorch`` on 2 CPU cores at batch 4; ``off/ours``
above 1 means we are faster. Run:

    python benchmarks/bench_models.py [--presets ncsnpp ddpmpp] [--variants default channels_last]
        [--batch 4] [--repeats 5] [--device cpu|cuda] [--compile-timeout 300] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import scoresde
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.nn.ncsnpp_presets import ddpmpp_cifar10_continuous, ncsnpp_cifar10_continuous

PRESETS = {
    "ncsnpp": ("NCSN++ cont.", ncsnpp_cifar10_continuous, scoresde.VESDE),
    "ddpmpp": ("DDPM++ cont.", ddpmpp_cifar10_continuous, scoresde.VPSDE),
}
VARIANTS = ("default", "channels_last", "compile")
# Official score_sde_pytorch, 2 CPU cores, batch 4, medians in seconds: (forward, train step).
OFFICIAL_CPU_BATCH4 = {"ncsnpp": (0.64, 2.70), "ddpmpp": (0.58, 2.12)}


class CompileTimeoutError(Exception):
    pass


# ---------------------------------------------------------------- measurement (in the subprocess)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak(device: torch.device) -> float:
    """Reset the memory high-water mark where possible; returns the current mark in MB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # Linux >= 4.0: resets VmHWM, hence ru_maxrss, to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return maxrss_mb()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return maxrss_mb()


def warmup(fn: Callable[[], object], n: int, compile_timeout: float | None) -> float:
    """Run ``fn`` ``n`` times; returns the time of the first call (compilation, if any).

    With ``compile_timeout``, raises ``CompileTimeoutError`` if the first call takes longer.
    """
    if compile_timeout:

        def on_alarm(signum, frame):
            raise CompileTimeoutError(f"first call took more than {compile_timeout:.0f} s")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(compile_timeout))
    start = time.perf_counter()
    try:
        fn()
    finally:
        if compile_timeout:
            signal.alarm(0)
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
    x = torch.rand(a.batch, kwargs["num_channels"], 32, 32, device=device)
    if kwargs["centered"]:
        x = 2 * x - 1
    labels = sde.network_labels(torch.full((a.batch,), 0.5, device=device))
    if a.variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if a.variant == "compile" else model
    compile_timeout = a.compile_timeout if a.variant == "compile" else None
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
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
        out[f"{name}_s"] = median_time(fn, a.repeats, device)
        out[f"{name}_peak_mb"] = max(peak_mb(device) - weights_mb, 0.0)
    return out


# ------------------------------------------------------------------------- driver and report


def run_config(a: argparse.Namespace, preset: str, variant: str) -> dict:
    """Measure one configuration in a fresh interpreter (clean ru_maxrss, no shared caches)."""
    cmd = [sys.executable, __file__, "--worker", preset, variant, "--device", a.device]
    cmd += ["--batch", str(a.batch), "--repeats", str(a.repeats), "--warmup", str(a.warmup)]
    cmd += ["--compile-timeout", str(a.compile_timeout)] + (["--no-train"] if a.no_train else [])
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    # backstop only: the worker itself aborts a first (compiling) call after --compile-timeout
    timeout = a.worker_timeout + (2 * a.compile_timeout if variant == "compile" else 0)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker killed after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exit {proc.returncode}: {tail[:200]}"}


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(a: argparse.Namespace, results: list[tuple[str, str, dict]]) -> None:
    mem = "MiB alloc" if a.device == "cuda" else "MiB RSS"
    has_ref = a.device == "cpu" and a.batch == 4
    head = (
        f"{'network':<13} {'variant':<14} {'fwd s':>7} {'off.':>5} {'off/us':>6} "
        f"{'train s':>8} {'off.':>5} {'off/us':>6} {'fwd ' + mem:>13} {'train ' + mem:>15}"
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
            f"{fmt(ratio_train, '.2f'):>6} {fmt(r['fwd_peak_mb'], '.0f'):>13} "
            f"{fmt(r.get('train_peak_mb'), '.0f'):>15}"
        )
        if variant == "compile":
            first = f"first forward {r['fwd_first_s']:.1f} s"
            if "train_first_s" in r:
                first += f", first train step {r['train_first_s']:.1f} s"
            print(f"{'':<28} (compilation: {first})")
    if not has_ref:
        print("(official figures are for CPU at batch 4 only)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
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
            first_line = (str(e).strip().splitlines() or [""])[0]
            result = {"error": f"{type(e).__name__}: {first_line[:200]}"}
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # skip interpreter teardown (compile workers, CUDA context)

    print(
        f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads, "
        f"batch {a.batch}, {a.warmup} warmup + median of {a.repeats}"
    )
    results = []
    for preset in a.presets:
        for variant in a.variants:
            start = time.perf_counter()
            r = run_config(a, preset, variant)
            elapsed = time.perf_counter() - start
            print(f"  {preset}/{variant} measured in {elapsed:.0f} s", flush=True)
            results.append((preset, variant, r))
    print()
    report(a, results)


if __name__ == "__main__":
    main()
