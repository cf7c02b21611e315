"""Training throughput and peak memory of one CIFAR-10 training step, per performance switch.

One step is what the training loop does for a batch: the network of a paper preset (default
``vp_cifar10_ddpmpp_continuous``, DDPM++ cont. with the VP SDE), the preset's loss
(``scoresde.setup.build.build_loss``: continuous DSM, or SMLD/DDPM for discrete presets), backward
and
Adam (``scoresde.jobs.training.optim.make_optimizer``, fused where available), in train mode
(dropout
on), without EMA or gradient clipping. The variants are the switches of ``TrainConfig``:

- ``fp32``: none (the reference);
- ``bf16``: the network under bf16 autocast (``ScoreModel(compute_dtype=torch.bfloat16)``);
- ``channels_last``: weights and batches in NHWC (``training.performance``);
- ``compile``: ``torch.compile`` of the network (its warm-up, the compilation, is not timed but
  reported);
- ``checkpointing``: activation checkpointing of the residual and attention blocks;
- ``tf32`` (not in the default list): TF32 matmuls and convolutions (NVIDIA GPUs only).

Variants combine with ``+``, e.g. ``bf16+channels_last+compile``.

Each variant runs in its own worker process, started once (so a variant is built and compiled
once); the workers then take turns, round after round (``--rounds``, the order rotating each
round), each round timing ``--steps`` steps. Printed per variant: the median images/s over all
timed steps, the ratio to ``fp32`` (the median over rounds of the paired per-round ratios, which
cancels slow drifts of a shared machine), the warm-up (the first step, compilation included) and
the peak memory of one step, measured on the last warm-up step (after the compiling first one
when ``--warmup`` >= 2; the timed steps are left undisturbed by the measurement):

- CUDA: ``torch.cuda.max_memory_allocated`` during that step (the peak is reset before it);
- CPU: the peak resident set size of the worker process (a fresh process per variant) during
  that step: Linux's ``VmHWM`` (``/proc/self/status``), reset to the current RSS just before the
  step (``/proc/self/clear_refs``), so compilation is not counted; where that reset is
  unavailable, ``ru_maxrss`` of the worker since its start (compilation included).

"above resident" subtracts what the worker held just before that step (weights, gradients set to
``None``, Adam state: the memory allocated, or on CPU the RSS after ``gc`` and ``malloc_trim``),
which leaves the activations and gradients of one step.

    python benchmarks/bench_train.py       # CPU: batch 4, ~3 min (+7 min compiling, cold caches)
    python benchmarks/bench_train.py --variants fp32 checkpointing --steps 5
    python benchmarks/bench_train.py --device cuda --rounds 5  # the preset's batch (128)
    python benchmarks/bench_train.py --device cuda --variants fp32 tf32 bf16 bf16+compile
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

from _common import compile_alarm, timeout_in_chain

SWITCHES = ("bf16", "channels_last", "compile", "checkpointing", "tf32")
DEFAULT_VARIANTS = ("fp32", "bf16", "channels_last", "compile", "checkpointing")


def parse_variant(name: str) -> tuple[str, ...]:
    """The switches of a variant name (``fp32`` or ``+``-joined switches), checked."""
    if name == "fp32":
        return ()
    parts = tuple(name.split("+"))
    unknown = [p for p in parts if p not in SWITCHES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {name!r}: use fp32 or switches joined by '+' from {SWITCHES}"
        )
    return parts


# ------------------------------------------------------------------------- the worker process


def _rss_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; ``None`` elsewhere."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


class Memory:
    """Peak memory of a step: CUDA allocations, or the process's peak RSS on CPU."""

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.hwm_reset = False

    def reset(self) -> float:
        """Start a measurement; returns the memory held now, in MiB."""
        torch = self.torch
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        with contextlib.suppress(OSError, AttributeError):  # give freed heap pages back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux >= 4.0: resets VmHWM to the current RSS
            self.hwm_reset = _rss_mb("VmHWM") is not None
        except OSError:
            self.hwm_reset = False
        current = _rss_mb("VmRSS")
        return current if current is not None else self.maxrss()

    def maxrss(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

    def peak(self) -> float:
        """The high-water mark since :meth:`reset`, in MiB."""
        if self.cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return _rss_mb("VmHWM") if self.hwm_reset else self.maxrss()

    def method(self) -> str:
        if self.cuda:
            return "max_memory_allocated"
        return "VmHWM, reset before the step" if self.hwm_reset else "ru_maxrss since start"


def build_step(a: argparse.Namespace, switches: tuple[str, ...]):
    """The training step of the preset with ``switches``, its batch size and description."""
    import dataclasses

    import torch

    from scoresde.infra.devices import resolve_device
    from scoresde.jobs.training.optim import make_optimizer
    from scoresde.jobs.training.performance import prepare_network, tf32, to_memory_format
    from scoresde.setup.build import build_loss, build_model, build_score_fn, build_sde
    from scoresde.setup.data.pipeline import data_shape
    from scoresde.setup.presets import get_preset

    device = resolve_device(a.device)
    cfg = get_preset(a.preset)
    tc = dataclasses.replace(
        cfg.train,
        bf16="bf16" in switches,
        tf32="tf32" in switches,
        channels_last="channels_last" in switches,
        compile="compile" in switches,
        activation_checkpointing="checkpointing" in switches,
    )
    batch = a.batch_size or default_batch(cfg, device)
    model = build_model(cfg).to(device)
    sde = build_sde(cfg.sde)
    net = prepare_network(model, tc)
    score_fn = build_score_fn(net, sde, cfg, compute_dtype=torch.bfloat16 if tc.bf16 else None)
    loss_fn = build_loss(cfg, sde)
    optimizer = make_optimizer(model.parameters(), tc)
    gen = torch.Generator(device).manual_seed(0)
    x0 = torch.rand((batch, *data_shape(cfg.data)), generator=gen, device=device)
    x0 = to_memory_format(2 * x0 - 1 if cfg.data.centered else x0, tc)
    model.train()

    def step() -> None:
        with tf32(tc.tf32):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(score_fn, x0, gen).mean().backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    info = {
        "batch": batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "model": cfg.model.name,
    }
    return step, device, info


def default_batch(cfg, device) -> int:
    """4 on the CPU; on an accelerator the preset's batch per device (one device)."""
    if device.type == "cpu":
        return 4
    return cfg.train.device_batch_size or cfg.train.batch_size


def worker(a: argparse.Namespace) -> None:
    """Build and warm up one variant, then time ``--steps`` steps per ``round`` line on stdin."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    switches = parse_variant(a.worker)
    step, device, info = build_step(a, switches)
    memory = Memory(device)

    timeout = a.compile_timeout if "compile" in switches else 0
    start = time.perf_counter()
    first, held = 0.0, 0.0
    with compile_alarm(timeout, "warm-up"):
        for i in range(a.warmup):
            if i == a.warmup - 1:  # memory: over the last warm-up step (after compilation if >= 2)
                held = memory.reset()
            step_start = time.perf_counter()
            step()
            first = first or time.perf_counter() - step_start
    peak = memory.peak()
    warmup = time.perf_counter() - start
    emit("READY", {**info, "first_s": first, "warmup_s": warmup, "peak_mb": peak,
                   "held_mb": held, "memory": memory.method()})  # fmt: skip

    for line in sys.stdin:
        if line.strip() != "round":
            break
        times = []
        for _ in range(a.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        emit("ROUND", {"times": times})


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


def worker_main(a: argparse.Namespace) -> None:
    try:
        worker(a)
    except Exception as e:  # reported by the driver as a skipped variant
        e = timeout_in_chain(e) or e  # torch.compile wraps the alarm's error
        first_line = (str(e).strip().splitlines() or [""])[0]
        emit("ERROR", {"error": f"{type(e).__name__}: {first_line[:200]}"})
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (compile workers, CUDA context)


# ------------------------------------------------------------------------------- the driver


def native_bf16(device: str) -> bool:
    """Whether bf16 runs natively where ``--device`` points: CUDA, or a CPU with AVX512-BF16 or
    AMX (elsewhere oneDNN emulates it)."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return True
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


class Worker:
    """One variant's process, talking in JSON lines: ``READY``/``ROUND``/``ERROR``."""

    def __init__(self, a: argparse.Namespace, variant: str) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant]
        cmd += ["--preset", a.preset, "--device", a.device, "--steps", str(a.steps)]
        cmd += ["--warmup", str(a.warmup), "--compile-timeout", str(a.compile_timeout)]
        cmd += ["--batch-size", str(a.batch_size)]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        self.variant = variant
        self.error: str | None = None
        self.ready: dict = {}
        self.rounds: list[dict] = []
        stderr = None if a.verbose else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )

    def read(self, expected: str) -> dict | None:
        for line in self.proc.stdout:
            tag, _, payload = line.partition(" ")
            if tag == expected:
                return json.loads(payload)
            if tag == "ERROR":
                self.error = json.loads(payload)["error"]
                return None
        self.error = self.error or f"worker exited ({self.proc.wait()})"
        return None

    def run_round(self) -> dict | None:
        if self.error:
            return None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        result = self.read("ROUND")
        if result is not None:
            self.rounds.append(result)
        return result

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summarize(workers: list[Worker]) -> list[dict]:
    """Per variant: median images/s, the median paired ratio to fp32, memory, warm-up."""
    base = next((w for w in workers if w.variant == "fp32" and not w.error), None)
    rows = []
    for w in workers:
        if w.error or not w.rounds:
            rows.append({"variant": w.variant, "error": w.error or "no rounds"})
            continue
        batch = w.ready["batch"]
        times = [t for r in w.rounds for t in r["times"]]
        ratio = None
        if base is not None:
            pairs = zip(base.rounds, w.rounds, strict=False)
            ratio = statistics.median(
                statistics.median(b["times"]) / statistics.median(r["times"]) for b, r in pairs
            )
        peak, held = w.ready["peak_mb"], w.ready["held_mb"]
        rows.append(
            {
                "variant": w.variant,
                "img_s": batch / statistics.median(times),
                "step_ms": 1000 * statistics.median(times),
                "ratio": ratio,
                "peak_mb": peak,
                "above_mb": max(peak - held, 0.0),
                "first_s": w.ready["first_s"],
                "memory": w.ready["memory"],
            }
        )
    return rows


def report(a: argparse.Namespace, info: dict, rows: list[dict]) -> None:
    mem = "MiB alloc" if info.get("device", "").startswith("cuda") else "MiB RSS"
    head = (
        f"{'variant':<28} {'img/s':>8} {'vs fp32':>8} {'step ms':>9} {'1st step s':>10} "
        f"{'peak ' + mem:>14} {'above resident':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<28} skipped: {r['error']}")
            continue
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(
            f"{r['variant']:<28} {r['img_s']:>8.2f} {ratio:>8} {r['step_ms']:>9.0f} "
            f"{r['first_s']:>10.1f} {r['peak_mb']:>14.0f} {r['above_mb']:>15.0f}"
        )
    methods = sorted({r["memory"] for r in rows if "memory" in r})
    print(
        "img/s: batch / median step time; vs fp32: median over rounds of the paired ratios "
        "(> 1: faster); 1st step: the first warm-up step (compilation included; not timed);\n"
        f"memory: peak of one step ({', '.join(methods)}); above resident: minus what the "
        "worker held before the step (weights, Adam state)"
    )
    cores = os.cpu_count() or 1
    if a.max_load > cores:
        print(
            f"warning: 1-min load average up to {a.max_load:.1f} on {cores} cores during the "
            "rounds: other processes skew these timings"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="vp_cifar10_ddpmpp_continuous", help="a paper preset")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"fp32, or switches from {', '.join(SWITCHES)} joined by '+' (default: "
        f"{' '.join(DEFAULT_VARIANTS)}; on a CPU without native bf16 arithmetic, AVX512-BF16 "
        "or AMX, bf16 is left out: emulated, it is some 20x slower than fp32)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="per step (default: 4 on CPU, the preset's per-device batch on a GPU)",
    )
    p.add_argument("--steps", type=int, default=2, help="timed steps per round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2, >= 1)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: all)")
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=900.0,
        help="seconds allowed for the compile variants' warm-up (default 900)",
    )
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.warmup = max(a.warmup, 1)
    if a.worker:
        worker_main(a)
        return
    note = None
    if a.variants is None:
        a.variants = list(DEFAULT_VARIANTS)
        if not native_bf16(a.device):
            a.variants.remove("bf16")
            note = "bf16 left out: this CPU has no native bf16 (ask for it with --variants)"
    for name in a.variants:
        try:
            parse_variant(name)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    a.max_load = 0.0

    print(
        f"preset {a.preset}, device {a.device}, {a.warmup} warm-up + {a.steps} timed steps x "
        f"{a.rounds} rounds",
        flush=True,
    )
    if note:
        print(f"  {note}")
    workers, info = [], {}
    try:
        for variant in a.variants:  # one at a time: warm-ups (compilation) do not overlap
            start = time.perf_counter()
            w = Worker(a, variant)
            workers.append(w)
            w.ready = w.read("READY") or {}
            info = info or w.ready
            status = w.error or f"first step {w.ready['first_s']:.1f} s"
            print(
                f"  warm-up {variant}: {time.perf_counter() - start:.0f} s ({status})", flush=True
            )
        if info:
            print(
                f"  {info['model']} ({info['params'] / 1e6:.1f} M parameters), batch "
                f"{info['batch']}, {info['device']}, {info['threads']} threads"
            )
        for i in range(a.rounds):
            k = i % len(workers)
            for w in workers[k:] + workers[:k]:
                start = time.perf_counter()
                r = w.run_round()
                a.max_load = max(a.max_load, os.getloadavg()[0])
                status = w.error or f"median step {statistics.median(r['times']):.2f} s"
                print(
                    f"  round {i + 1}: {w.variant} {time.perf_counter() - start:.0f} s ({status})",
                    flush=True,
                )
    finally:
        for w in workers:
            w.close()
    print()
    report(a, info, summarize(workers))


if __name__ == "__main__":
    main()
