"""One prepared GPU check: training, memory, sampling, likelihood and evaluation speed, one table.

Every figure comes from the library's own code path on random-weight networks and random data
(speed only, nothing is trained or downloaded):

- ``train``: images/s of one training step of the CIFAR-10 DDPM++ cont.
  (``vp_cifar10_ddpmpp_continuous``) and NCSN++ cont. (``ve_cifar10_ncsnpp_continuous``) presets
  at their batch (128), as ``scoresde train`` runs it: ``create_state`` (network, EMA, Adam and
  the speed switches), ``micro_batches`` and ``train_step`` (loss, backward, clipping, Adam, EMA)
  inside the ``tf32`` block of the loop, with ``torch.cuda.synchronize`` after each step; the
  median over the timed steps after the warm-up steps. Variants: ``fp32`` (``train.tf32=false``:
  strict float32), ``tf32`` (the default config), ``bf16``, ``bf16+channels_last`` and
  ``bf16+compile`` (each bf16 variant with TF32 on, as the default config has it). The compile
  variants run last, in the time that is left (their warm-up compiles; it is not timed).
- ``memory``: the peak ``torch.cuda.max_memory_allocated`` (and reserved) over two training steps
  of the 256x256 (``ve_celebahq_256_ncsnpp_continuous``) and 1024x1024
  (``ve_ffhq_ncsnpp_continuous``) presets at their per-device batch, with and without
  ``train.activation_checkpointing``: weights, Adam state, gradients and activations; an
  out-of-memory step is reported as ``OOM``. Then whether the 1024 preset fits an 80 GB card
  (peak reserved at most 78 GiB, what an H100 80GB leaves to PyTorch).
- ``sample``: images/s of ``scoresde.jobs.runs.generate`` on the random-weight DDPM++ cont. model at
  batch 128: ``dpmpp_2m`` with 19 steps (20 NFE) and the preset's PC sampler with 1000 steps,
  each with ``sample.compute_dtype`` ``float32`` and ``bfloat16``. PC-1000 is timed over fewer
  steps and scaled by its NFE (said in the row's note). Each row records whether bf16
  autocast was on inside the network (a hook on it), and a bf16 row whose network ran in
  float32 says so.
- ``likelihood``: examples/s of ``scoresde.jobs.runs.evaluate_likelihood`` (bits/dim through the
  probability-flow ODE with the Hutchinson trace) on a batch of 128, on a fixed grid (``rk4``,
  25 steps, 100 NFE): a random network makes the adaptive solver's NFE meaningless.
- ``evaluate``: the whole ``scoresde.jobs.evaluation.evaluate.evaluate`` path (sampling 1000 images
  with ``dpmpp_2m`` at 20 NFE, the sample files, Inception-v3 features, FID, IS and KID) with a
  seeded random Inception weights file made in a temporary folder, against a random reference
  npz. With torch-fidelity installed that is the real TF-ported Inception-v3; without it a
  small stand-in ``torch_fidelity`` module is used and the row says so.

Output: the table (section, item, variant, value, unit, note) and a JSON file
(``--json``, default ``gpu_check.json`` in ``--out``, default the current directory) with the
device, the versions and every row; it is rewritten after each section. A row that cannot be
measured (no compile, out of time) is ``skipped`` with a one-line reason, never a crash. The
whole run is meant to fit 8 minutes on one H100: ``--budget`` (450 s, counted from after the
imports) bounds it; the compile variants get what is left of it (each at most
``--compile-timeout``, 240 s), and rows still waiting when it has run out are skipped.

``--smoke`` runs the same code on the CPU with tiny networks (16x16 images, ``nf`` 16, two
levels, one residual block each), batch 2 and a few steps, with
``torch.compile(backend="eager")`` for the compile variants and a stand-in Inception: about
20 s on 2 cores; ``tests/benchmarks/test_gpu_check.py`` runs it. ``--smoke --device cuda`` is
the same on a GPU, a quick look before the full run.

    python benchmarks/gpu_check.py                       # one GPU: at most 8 min
    python benchmarks/gpu_check.py --sections train sample --json /tmp/check.json
    python benchmarks/gpu_check.py --smoke               # CPU, tiny networks
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import importlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import compile_alarm, timeout_in_chain
from scoresde.jobs.runs import TrainedModel, evaluate_likelihood, generate
from scoresde.jobs.training.loop import create_state, micro_batches
from scoresde.jobs.training.objectives import build_objective
from scoresde.jobs.training.performance import tf32
from scoresde.jobs.training.state import batch_layout, train_step
from scoresde.setup.build import build_model, build_sde
from scoresde.setup.config import Config
from scoresde.setup.data.pipeline import Batch, data_shape
from scoresde.setup.presets import get_preset

SECTIONS = ("train", "memory", "sample", "likelihood", "evaluate")
TRAIN_PRESETS = ("vp_cifar10_ddpmpp_continuous", "ve_cifar10_ncsnpp_continuous")
TRAIN_VARIANTS: dict[str, dict[str, bool]] = {
    "fp32": {"tf32": False},
    "tf32": {"tf32": True},
    "bf16": {"tf32": True, "bf16": True},
    "bf16+channels_last": {"tf32": True, "bf16": True, "channels_last": True},
    "bf16+compile": {"tf32": True, "bf16": True, "compile": True},
}
"""The ``TrainConfig`` switches of each training variant (the others as the preset has them)."""
MEMORY_PRESETS = ("ve_celebahq_256_ncsnpp_continuous", "ve_ffhq_ncsnpp_continuous")
MEMORY_VARIANTS: dict[str, dict[str, bool]] = {
    "default": {"activation_checkpointing": False},
    "checkpointing": {"activation_checkpointing": True},
}
FIT_PRESET = "ve_ffhq_ncsnpp_continuous"
FIT_LIMIT_GIB = 78.0
"""What an "80 GB" card leaves to PyTorch: an H100 80GB has 79.6 GiB, less the CUDA context."""
SAMPLE_PRESET = "vp_cifar10_ddpmpp_continuous"
SAMPLE_DTYPES = ("float32", "bfloat16")
FAST_SAMPLER = ("dpmpp_2m", 19)  # 19 steps and the final denoising step: 20 NFE
PC_STEPS = 1000
EVAL_METRICS = ("fid", "is", "kid")
INCEPTION_MODULE = "torch_fidelity.feature_extractor_inceptionv3"


@dataclass(frozen=True)
class Profile:
    """The sizes of one run: ``full`` (one GPU, the presets as they are) or ``smoke``."""

    name: str
    tiny: bool  # shrink every network to 16x16 images, nf 16, two levels
    train_batch: int  # 0: the preset's per-device batch
    train_warmup: int
    train_steps: int
    memory_batch: int  # 0: the preset's per-device batch
    sample_batch: int
    sample_repeats: int
    pc_timed_steps: int
    likelihood_batch: int
    likelihood_steps: int  # rk4 steps, 4 NFE each
    eval_samples: int
    eval_batch: int
    reference_size: int
    compile_backend: str | None  # None: inductor (torch.compile's default)
    budget_s: float


FULL = Profile("full", False, 0, 3, 10, 0, 128, 3, 50, 128, 25, 1000, 250, 1000, None, 450.0)
SMOKE = Profile("smoke", True, 2, 1, 2, 2, 2, 1, 3, 2, 2, 16, 8, 32, "eager", 300.0)


@dataclass
class Row:
    """One figure of the table; ``value`` is ``None`` unless ``status`` is ``"ok"``."""

    section: str
    item: str
    variant: str
    value: float | None
    unit: str
    status: str = "ok"  # "ok", "skipped" or "oom"
    reason: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SkipRowError(Exception):
    """A row that cannot be measured here; the message is its one-line reason."""


def one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


# ------------------------------------------------------------------------------ the machine


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Collect garbage and give cached CUDA memory back (quietly, even after a CUDA error)."""
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()


def _status_mib(field_name: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; ``None`` elsewhere."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return None


class PeakMemory:
    """The peak memory of a block: CUDA allocations, or the process's peak RSS on the CPU
    (``VmHWM`` reset through ``/proc/self/clear_refs``; else ``ru_maxrss`` since the start)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "max_memory_allocated"
        self.held_gib = 0.0

    def reset(self) -> None:
        free(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.held_gib = torch.cuda.memory_allocated(self.device) / 2**30
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            ok = _status_mib("VmHWM") is not None
        except OSError:
            ok = False
        self.method = "peak RSS (VmHWM)" if ok else "ru_maxrss since start"
        self.held_gib = (_status_mib("VmRSS") or 0.0) / 1024

    def peak(self) -> tuple[float, float]:
        """``(peak, peak reserved)`` in GiB since :meth:`reset` (the same twice on the CPU)."""
        if self.device.type == "cuda":
            sync(self.device)
            return (
                torch.cuda.max_memory_allocated(self.device) / 2**30,
                torch.cuda.max_memory_reserved(self.device) / 2**30,
            )
        hwm = _status_mib("VmHWM") if self.method.startswith("peak RSS") else None
        peak = (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) / 1024
        return peak, peak


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 2)
    with contextlib.suppress(Exception):
        info["torch_fidelity"] = importlib.import_module("torch_fidelity").__version__
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parents[1]
        info["commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    return info


# ------------------------------------------------------------------------------ the configs


def preset(name: str, profile: Profile) -> Config:
    """The preset ``name``, shrunk to a tiny network (16x16 images) for the smoke profile."""
    cfg = get_preset(name)
    if profile.tiny:
        model = replace(cfg.model, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
        cfg = replace(cfg, model=model, data=replace(cfg.data, image_size=16))
    return cfg


def with_batch(cfg: Config, batch: int) -> Config:
    """``cfg`` training at ``batch`` per step on one device (0: the preset's per-device batch)."""
    batch = batch or cfg.train.device_batch_size or cfg.train.batch_size
    return replace(cfg, train=replace(cfg.train, batch_size=batch, device_batch_size=0))


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """``torch.compile`` with ``backend`` inside the block (``None``: unchanged)."""
    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def training_step(cfg: Config, device: torch.device, backend: str | None):
    """The step of ``scoresde train`` for ``cfg`` on a fixed random batch; returns
    ``(step() -> loss tensor, batch size, parameters)``."""
    cfg = replace(cfg, device=str(device))
    tc = cfg.train
    sde = build_sde(cfg.sde)
    objective = build_objective(cfg, sde)
    with compile_backend(backend):
        state = create_state(cfg, sde, device, objective)
    layout = batch_layout(tc)
    gen = torch.Generator(device).manual_seed(0)
    data = torch.rand((layout.global_batch, *data_shape(cfg.data)), generator=gen, device=device)
    batch = Batch(data, None)
    state.model.train()

    def step() -> torch.Tensor:
        with tf32(tc.tf32):
            micro = micro_batches(cfg, layout, batch, state.step, device)
            loss, _ = train_step(state, micro, objective.loss, tc)
        sync(device)
        return loss

    params = sum(p.numel() for p in state.model.parameters())
    return step, layout.global_batch, params


# ----------------------------------------------------------------------------- the sections


@dataclass
class Task:
    """One row to measure: ``fn(timeout)`` returns its value, unit and the rest of the row
    (``Row`` with any ``section``/``item``/``variant``: those of the task win)."""

    section: str
    item: str
    variant: str
    unit: str
    fn: Callable[[float], Row]
    last: bool = False  # run after every other task, in the time that is left (compile)


class Check:
    """Plans the rows of the sections, measures them, prints and writes the table."""

    def __init__(self, a: argparse.Namespace, profile: Profile, device: torch.device) -> None:
        self.a, self.profile, self.device = a, profile, device
        self.start = time.perf_counter()
        self.budget = a.budget if a.budget is not None else profile.budget_s
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, Any] = {}
        self.env = environment(device)
        self._sample_run: tuple[TrainedModel, list[bool]] | None = None

    # -- bookkeeping

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        if row.status == "ok":
            text = f"{row.value:.4g} {row.unit}"
        else:
            text = f"{row.status}: {row.reason}"
        print(f"  [{row.section}] {row.item} / {row.variant}: {text}", flush=True)
        return row

    def measure(self, task: Task, timeout: float = 0.0) -> Row:
        """The task's row, or a skipped / OOM row with its one-line reason; never raises."""
        where = (task.section, task.item, task.variant, None, task.unit)
        if self.left() <= 0:
            return self.add(
                Row(*where, "skipped", f"time budget (--budget {self.budget:.0f} s) spent")
            )
        try:
            row = task.fn(timeout)
        except OOM_ERRORS as e:
            row = Row(*where, "oom", f"out of memory: {one_line(e)}")
        except SkipRowError as e:
            row = Row(*where, "skipped", str(e))
        except Exception as e:
            row = Row(*where, "skipped", one_line(timeout_in_chain(e) or e))
        finally:
            free(self.device)
        row.section, row.item, row.variant, row.unit = (*where[:3], task.unit)
        if row.status == "ok" and not (row.value is not None and math.isfinite(row.value)):
            row.status, row.reason = "skipped", f"not a finite number ({row.value})"
            row.value = None
        return self.add(row)

    def run_tasks(self, name: str, tasks: list[Task], after: Callable[[], None] | None = None):
        """Measure ``tasks`` (of section ``name``), timing the section; ``last`` tasks share
        what is left of the budget (each at most ``--compile-timeout``)."""
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        for i, task in enumerate(tasks):
            timeout = 0.0
            if task.last:
                share = self.left() / (len(tasks) - i)
                timeout = max(1.0, min(self.a.compile_timeout, share))
            self.measure(task, timeout)
        if after is not None:
            after()
        seconds = time.perf_counter() - start
        entry = self.sections.setdefault(name, {"elapsed_s": 0.0})
        entry["elapsed_s"] = round(entry["elapsed_s"] + seconds, 2)
        print(f"[{name}] {seconds:.1f} s (total {time.perf_counter() - self.start:.0f} s)")
        self.write()

    def plan(self, sections: list[str]) -> list[Task]:
        """Every row of ``sections``, in table order."""
        p = self.profile
        tasks: list[Task] = []
        if "train" in sections:
            for name in TRAIN_PRESETS:
                for variant, switches in TRAIN_VARIANTS.items():
                    fn = functools.partial(self.train_row, name, variant)
                    tasks.append(Task("train", name, variant, "img/s", fn,
                                      last=bool(switches.get("compile"))))  # fmt: skip
        if "memory" in sections:
            unit = "GiB" if self.device.type == "cuda" else "GiB RSS"
            for name in MEMORY_PRESETS:
                for variant in MEMORY_VARIANTS:
                    fn = functools.partial(self.memory_row, name, variant)
                    tasks.append(Task("memory", name, variant, unit, fn))
        if "sample" in sections:
            fast = f"{FAST_SAMPLER[0]} {FAST_SAMPLER[1] + 1} NFE"
            for kind, item in (("fast", fast), ("pc", f"pc {PC_STEPS} steps")):
                for dtype in SAMPLE_DTYPES:
                    fn = functools.partial(self.sample_row, kind, dtype)
                    tasks.append(Task("sample", item, dtype, "img/s", fn))
        if "likelihood" in sections:
            steps = p.likelihood_steps
            fn = functools.partial(self.likelihood_row, steps)
            tasks.append(Task("likelihood", f"rk4 {4 * steps} NFE", "float32", "examples/s", fn))
        if "evaluate" in sections:
            reason = inception_missing()
            variant = "stand-in inception" if reason else "inception (random weights)"
            if reason:
                self.notes.append(
                    f"evaluate: torch-fidelity is not importable here ({reason}); a small "
                    "stand-in Inception was used, so the figure leaves out Inception-v3's cost"
                )
            item = f"{p.eval_samples} samples, {FAST_SAMPLER[0]} {FAST_SAMPLER[1] + 1} NFE, "
            item += "+".join(EVAL_METRICS)
            tasks.append(Task("evaluate", item, variant, "s", self.evaluate_row))
        return tasks

    # -- train

    def train_row(self, name: str, variant: str, timeout: float) -> Row:
        p = self.profile
        switches = TRAIN_VARIANTS[variant]
        cfg = with_batch(preset(name, p), p.train_batch)
        cfg = replace(cfg, train=replace(cfg.train, **switches))
        compiled = bool(switches.get("compile"))
        try:
            step, batch, params = training_step(cfg, self.device, p.compile_backend)
            warm_start = time.perf_counter()
            with compile_alarm(timeout if compiled else 0, f"{variant} warm-up (compilation)"):
                for _ in range(p.train_warmup):
                    step()
            warmup_s = time.perf_counter() - warm_start
            times, loss = [], None
            for _ in range(p.train_steps):
                t0 = time.perf_counter()
                loss = step()
                times.append(time.perf_counter() - t0)
        finally:
            if compiled:
                with contextlib.suppress(Exception):
                    torch._dynamo.reset()
        loss_value = float(loss) if loss is not None else math.nan
        if not math.isfinite(loss_value):
            raise SkipRowError(f"non-finite loss {loss_value}")
        median = statistics.median(times)
        note = f"median of {len(times)} steps, batch {batch}"
        if compiled:
            note += f", compiled ({p.compile_backend or 'inductor'}) in {warmup_s:.0f} s"
        return Row("train", name, variant, batch / median, "img/s", note=note,
                   extra={"step_ms": 1000 * median, "batch": batch, "params": params,
                          "warmup_s": warmup_s, "times_s": times, "loss": loss_value,
                          "switches": switches})  # fmt: skip

    # -- memory

    def memory_row(self, name: str, variant: str, timeout: float) -> Row:
        p = self.profile
        cfg = with_batch(preset(name, p), p.memory_batch)
        cfg = replace(cfg, train=replace(cfg.train, **MEMORY_VARIANTS[variant]))
        memory = PeakMemory(self.device)
        memory.reset()  # before the network is built: the peak counts weights and Adam state
        step, batch, params = training_step(cfg, self.device, None)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        step()  # Adam's state exists from the first step on
        peak, reserved = memory.peak()
        return Row("memory", name, variant, peak, "GiB",
                   note=f"peak of 2 steps, batch {batch}, {memory.method}",
                   extra={"peak_gib": peak, "reserved_gib": reserved, "batch": batch,
                          "params": params, "first_step_s": first,
                          "image_size": data_shape(cfg.data)[-1]})  # fmt: skip

    def fits_verdict(self) -> None:
        """Whether the 1024 preset trains on an 80 GB card, per variant, from its rows."""
        total = self.env.get("device_memory_gib")
        verdict: dict[str, Any] = {"preset": FIT_PRESET, "limit_gib": FIT_LIMIT_GIB}
        for row in self.rows:
            if row.section != "memory" or row.item != FIT_PRESET:
                continue
            if self.device.type != "cuda":
                answer = "unknown (not measured on a GPU)"
            elif row.status == "ok":
                reserved = row.extra["reserved_gib"]
                answer = "yes" if reserved <= FIT_LIMIT_GIB else "no"
                answer += f" (peak {row.value:.1f} GiB allocated, {reserved:.1f} GiB reserved)"
            elif row.status == "oom":
                small = total is not None and total < FIT_LIMIT_GIB
                answer = f"unknown (OOM on a {total} GiB card)" if small else "no (OOM)"
            else:
                answer = f"unknown ({row.reason})"
            verdict[row.variant] = answer
        self.verdicts["fits_80gb"] = verdict

    # -- sample

    def new_sampling_run(self) -> tuple[TrainedModel, list[bool]]:
        """A random-weight model of the sampling preset as a trained run, and a list that
        records, at each network call, whether autocast was on."""
        cfg = replace(preset(SAMPLE_PRESET, self.profile), device=str(self.device))
        model = build_model(cfg).to(self.device).eval()
        seen: list[bool] = []

        def record(module, args):
            try:
                seen.append(torch.is_autocast_enabled(self.device.type))
            except TypeError:  # torch < 2.4: CUDA only
                seen.append(torch.is_autocast_enabled())

        model.register_forward_pre_hook(record)
        return TrainedModel(cfg, build_sde(cfg.sde), model, self.device), seen

    def sampling_run(self) -> tuple[TrainedModel, list[bool]]:
        if self._sample_run is None:
            self._sample_run = self.new_sampling_run()
        return self._sample_run

    def timed_generate(self, run: TrainedModel, n: int, dtype: str, **options: Any):
        """``(seconds, info)`` of one ``generate`` call with ``sample.compute_dtype=dtype``."""
        sync(self.device)
        t0 = time.perf_counter()
        _, info = generate(run, n, batch_size=n, compute_dtype=dtype, **options)
        sync(self.device)
        return time.perf_counter() - t0, info

    def sample_row(self, kind: str, dtype: str, timeout: float) -> Row:
        p = self.profile
        run, seen = self.sampling_run()
        n = p.sample_batch
        self.timed_generate(run, n, dtype, method=FAST_SAMPLER[0], num_steps=2)  # warm-up
        seen.clear()
        if kind == "fast":
            method, steps = FAST_SAMPLER
            runs = [self.timed_generate(run, n, dtype, method=method, num_steps=steps)
                    for _ in range(p.sample_repeats)]  # fmt: skip
            seconds = statistics.median(t for t, _ in runs)
            nfe = runs[0][1]["nfe"]
            note = f"{nfe} NFE, median of {len(runs)}, batch {n}"
            extra = {"seconds": seconds, "nfe": nfe, "num_steps": steps}
        else:
            k = min(p.pc_timed_steps, PC_STEPS)
            measured, info = self.timed_generate(run, n, dtype, method="pc", num_steps=k)
            per_step = (info["nfe"] - 1) / k  # predictor + corrector calls; +1: denoising
            nfe = round(per_step * PC_STEPS + 1)
            seconds = measured / info["nfe"] * nfe
            note = f"scaled from {k} of {PC_STEPS} steps by NFE ({info['nfe']} -> {nfe})"
            note += f", batch {n}"
            extra = {"seconds": seconds, "measured_s": measured, "timed_steps": k, "nfe": nfe,
                     "scaled": True}  # fmt: skip
        autocast = bool(seen) and all(seen)
        extra["autocast_in_network"] = autocast
        if dtype == "bfloat16" and not autocast:
            note += "; bf16 NOT applied: the network ran in float32"
        return Row("sample", kind, dtype, n / seconds, "img/s", note=note, extra=extra)

    # -- likelihood

    def likelihood_row(self, steps: int, timeout: float) -> Row:
        p = self.profile
        run, _ = self.sampling_run()
        n = p.likelihood_batch
        data = torch.rand((n, *run.shape), generator=torch.Generator().manual_seed(1))
        evaluate_likelihood(run, data[:1], method="rk4", num_steps=1)  # warm-up
        sync(self.device)
        t0 = time.perf_counter()
        found = evaluate_likelihood(run, data, method="rk4", num_steps=steps, batch_size=n)
        sync(self.device)
        seconds = time.perf_counter() - t0
        if not math.isfinite(found["bpd"]):
            raise SkipRowError(f"non-finite bits/dim {found['bpd']}")
        return Row("likelihood", "rk4", "float32", n / seconds, "examples/s",
                   note=f"{found['nfe']:.0f} NFE, batch {n}, {run.cfg.eval.trace} trace",
                   extra={"seconds": seconds, "nfe": found["nfe"], "bpd": found["bpd"],
                          "batch": n})  # fmt: skip

    # -- evaluate

    def evaluate_row(self, timeout: float) -> Row:
        from scoresde.jobs.evaluation.evaluate import evaluate

        p = self.profile
        run, _ = self.sampling_run()
        n = p.eval_samples
        method, steps = FAST_SAMPLER
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, inception():
            folder = Path(tmp)
            weights = folder / "inception-random.safetensors"
            seed_inception_weights(weights, seed=0)
            rng = np.random.default_rng(0)
            reference = folder / "reference.npz"
            features = rng.standard_normal((p.reference_size, 2048), np.float32)
            np.savez(reference, features=features)
            cfg = run.cfg
            cfg = replace(
                cfg,
                sample=cfg.sample.updated(method=method, num_steps=steps,
                                          batch_size=p.eval_batch, num_samples=n,
                                          compute_dtype="float32"),
                eval=replace(cfg.eval, num_samples=n, metrics=EVAL_METRICS,
                             inception_weights=str(weights), reference=str(reference),
                             kid_subset_size=min(1000, n, p.reference_size)),
            )  # fmt: skip
            sync(self.device)
            t0 = time.perf_counter()
            results = evaluate(replace(run, cfg=cfg), folder / "evaluation")
            sync(self.device)
            seconds = time.perf_counter() - t0
        metrics = results.get("metrics", {})
        bad = [k for k in ("fid", "is", "kid") if not math.isfinite(metrics.get(k, math.nan))]
        if bad:
            raise SkipRowError(f"evaluate gave no finite {', '.join(bad)}: {metrics}")
        return Row("evaluate", "", "", seconds, "s",
                   note=f"{n / seconds:.0f} samples/s; the whole evaluate() call, sample batch "
                        f"{p.eval_batch}, {results['nfe']['max']} NFE, "
                        f"{results['features']} features",
                   extra={"seconds": seconds, "samples_per_s": n / seconds,
                          "evaluate_seconds": results.get("seconds"), "metrics": metrics,
                          "nfe": results["nfe"], "num_samples": n})  # fmt: skip

    # -- output

    def table(self) -> str:
        order = {s: i for i, s in enumerate(SECTIONS)}
        rows = sorted(self.rows, key=lambda r: order[r.section])  # stable: run order within
        head = ("section", "item", "variant", "value", "unit", "note")
        lines = []
        for r in rows:
            value = f"{r.value:.4g}" if r.status == "ok" else r.status.upper()
            note = r.note if r.status == "ok" else r.reason
            lines.append((r.section, r.item, r.variant, value, r.unit, note))
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(5)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        out = [fmt.format(*head), "-" * (sum(widths) + 2 * 5 + 4)]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def result(self) -> dict[str, Any]:
        return {
            "profile": asdict(self.profile),
            "budget_s": self.budget,
            "elapsed_s": round(time.perf_counter() - self.start, 2),
            "environment": self.env,
            "sections": self.sections,
            "rows": [asdict(r) for r in self.rows],
            "verdicts": self.verdicts,
            "notes": self.notes,
        }

    def write(self) -> None:
        path = self.a.json
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.result(), indent=2) + "\n")
        os.replace(tmp, path)

    def run(self, sections: list[str]) -> None:
        env = self.env
        print(
            f"gpu_check ({self.profile.name}): {env['device_name']} ({env['device']}), torch "
            f"{env['torch']}, CUDA {env['cuda']}; budget {self.budget:.0f} s; sections "
            f"{' '.join(sections)}",
            flush=True,
        )
        tasks = self.plan(sections)
        for name in SECTIONS:
            mine = [t for t in tasks if t.section == name and not t.last]
            if mine:
                self.run_tasks(name, mine, self.fits_verdict if name == "memory" else None)
        rest = [t for t in tasks if t.last]  # the compile variants, in the time that is left
        for name in SECTIONS:
            mine = [t for t in rest if t.section == name]
            if mine:
                self.run_tasks(name, mine)
        print()
        print(self.table())
        fits = self.verdicts.get("fits_80gb")
        if fits:
            answers = "; ".join(f"{k}: {v}" for k, v in fits.items() if k in MEMORY_VARIANTS)
            print(f"\n{FIT_PRESET} fits an 80 GB card (<= {FIT_LIMIT_GIB:.0f} GiB reserved)? "
                  f"{answers}")  # fmt: skip
        for note in self.notes:
            print(f"note: {note}")
        elapsed = time.perf_counter() - self.start
        per = ", ".join(f"{k} {v['elapsed_s']:.0f} s" for k, v in self.sections.items())
        print(f"\nelapsed {elapsed:.0f} s ({per}); JSON: {self.a.json}")
        self.write()


# ------------------------------------------------------------------ Inception with random weights


def inception_missing() -> str:
    """Why torch-fidelity's Inception module does not import here; empty when it does."""
    try:
        importlib.import_module(INCEPTION_MODULE)
    except Exception as e:  # ImportError, or a torchvision built for another torch
        return one_line(e)
    return ""


@contextlib.contextmanager
def inception() -> Iterator[bool]:
    """Inside the block torch-fidelity's Inception module imports: the real one (yields
    ``True``), else a stand-in ``torch_fidelity`` put in ``sys.modules`` for the block (yields
    ``False``; the previous entries are put back afterwards)."""
    if not inception_missing():
        yield True
        return
    names = ("torch_fidelity", INCEPTION_MODULE)
    saved = {k: sys.modules.get(k) for k in names}
    package = types.ModuleType("torch_fidelity")
    package.__version__ = "stand-in"
    module = stand_in_inception_module()
    package.feature_extractor_inceptionv3 = module
    sys.modules.update({"torch_fidelity": package, INCEPTION_MODULE: module})
    try:
        yield False
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def stand_in_inception_module() -> types.ModuleType:
    """A module with torch-fidelity's ``FeatureExtractorInceptionV3`` interface and a cheap
    network: uint8 ``(B, 3, H, W)`` -> ``(features (B, 2048), logits_unbiased (B, 1008))``."""
    from torch import nn

    module = types.ModuleType(INCEPTION_MODULE)

    def load_state_dict_from_url(url, **kwargs):
        raise RuntimeError("the stand-in Inception downloads nothing")

    class FeatureExtractorInceptionV3(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            self.features_list = list(features_list)
            self.proj = nn.Linear(3 * 16, 2048)
            self.fc = nn.Linear(2048, 1008)
            if feature_extractor_weights_path is None:
                state = module.load_state_dict_from_url("stand-in")
            else:
                state = torch.load(feature_extractor_weights_path, weights_only=True)
            self.load_state_dict(state)
            self.eval()

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
            pooled = nn.functional.adaptive_avg_pool2d((x.float() - 128) / 128, 4).flatten(1)
            features = torch.relu(self.proj(pooled))
            return features, features @ self.fc.weight.T

    module.load_state_dict_from_url = load_state_dict_from_url
    module.FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3
    return module


def seed_inception_weights(path: Path, seed: int = 0) -> None:
    """Write a seeded random weights file for torch-fidelity's (or the stand-in's) Inception:
    the network built without weights (its loaders patched out), its initial weights saved as
    safetensors."""
    from safetensors.torch import save_file

    module = importlib.import_module(INCEPTION_MODULE)
    network_class = module.FeatureExtractorInceptionV3
    loader, load = module.load_state_dict_from_url, network_class.load_state_dict
    module.load_state_dict_from_url = lambda *args, **kwargs: {}
    network_class.load_state_dict = lambda self, state, *args, **kwargs: None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = network_class("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        module.load_state_dict_from_url, network_class.load_state_dict = loader, load
    state = {k: v.detach().float().clone().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(path))


# --------------------------------------------------------------------------------- the driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny networks on the CPU (< 1 min)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: cuda if available (cpu with --smoke)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("."), help="folder of the JSON (default .)")
    p.add_argument("--json", type=Path, default=None, help="default: OUT/gpu_check.json")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 450; smoke 300)")  # fmt: skip
    p.add_argument("--compile-timeout", type=float, default=240.0,
                   help="most seconds for one compile variant's warm-up (default 240)")  # fmt: skip
    a = p.parse_args(argv)
    a.json = a.json or a.out / "gpu_check.json"
    profile = SMOKE if a.smoke else FULL
    if a.device == "auto":
        if not a.smoke and not torch.cuda.is_available():
            print(
                "no GPU here (torch.cuda.is_available() is False): the full check is meant for "
                "one GPU and would take hours on a CPU; run --smoke, or --device cpu to insist",
                file=sys.stderr,
            )
            return 2
        a.device = "cpu" if a.smoke else "cuda"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    Check(a, profile, torch.device(a.device)).run(list(a.sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
