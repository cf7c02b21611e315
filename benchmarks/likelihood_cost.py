"""Exact likelihood: bits/dim error against NFE for each solver choice (docs/likelihood_cost.md).

Problems (``--nets``):

- ``ve``: the tiny official NCSN++ (VE SDE) of ``shared/reference/ncsnpp_ve_tiny.pt``, data in
  ``[0, 1]``; ``vp``: the tiny DDPM++ (VP SDE) of ``ddpmpp_vp_tiny.pt``, data centred. Both with
  random weights, a batch of 8 seeded ``torch.rand`` images at 16x16x3 quantised to 256 levels.
- ``digits``: the trained sub-VP demo run ``runs/conditional_digits/demo``, its first test digits,
  with :func:`scoresde.jobs.runs.evaluate_likelihood`'s draws (one stream per example).

Every solve of a problem uses the same dequantization and the same Rademacher probe (drawn in
float64 from a fixed seed). The solver state is float64 and the network runs in float32 (its
output cast back), except for the converged answer: dopri5 with the joint norm at
``rtol = atol = 1e-7`` with the network in float64. The error of a setting is the largest
``|bpd - bpd_converged|`` over the batch; NFE counts drift evaluations per batch.

Results are cached in ``--cache`` (one entry per problem and setting), so a rerun only solves
what is missing; ``--out`` receives ``likelihood_cost.json`` and one PNG per problem. Run time
from an empty cache on one free core: about 45 minutes, most of it the converged solves;
``--quick`` leaves out the costliest settings (dopri5 at 1e-5), ``--cached-only`` solves
nothing but the converged answer and reports what the cache holds.

    OMP_NUM_THREADS=1 python benchmarks/likelihood_cost.py [--nets ve vp digits] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

import scoresde as S
from scoresde.core.seeding import SampleStreams, derive_seed

REFERENCE = Path(os.environ.get("SCORESDE_REFERENCE_DIR", Path(__file__).parents[2] / "shared"
                                / "reference"))
DIGITS_RUN = Path(__file__).parents[1] / "runs" / "conditional_digits" / "demo"
F64 = torch.float64
CONVERGED = {"method": "dopri5", "error_norm": "joint", "rtol": 1e-7, "atol": 1e-7}

SETTINGS: dict[str, list[dict]] = {
    "dopri5, per-part norm": [
        {"method": "dopri5", "error_norm": "per-part", "rtol": tol, "atol": tol}
        for tol in (1e-5, 1e-4, 1e-3, 1e-2)
    ],
    "dopri5, joint norm": [
        {"method": "dopri5", "error_norm": "joint", "rtol": tol, "atol": tol}
        for tol in (1e-5, 1e-4, 1e-3, 1e-2)
    ],
    "dopri5, per-example norm": [
        {"method": "dopri5", "error_norm": "per-example", "rtol": tol, "atol": tol}
        for tol in (1e-5, 1e-4, 1e-3, 1e-2)
    ],
    "rk4, uniform grid": [
        {"method": "rk4", "grid": "uniform", "num_steps": n} for n in (4, 8, 16, 32, 64)
    ],
    "rk4, log-SNR grid": [
        {"method": "rk4", "grid": "log_snr", "num_steps": n} for n in (2, 4, 8, 16, 32, 64)
    ],
    "rk4, EDM grid": [
        {"method": "rk4", "grid": "edm", "num_steps": n} for n in (4, 8, 16, 32, 64)
    ],
    "midpoint, log-SNR grid": [
        {"method": "midpoint", "grid": "log_snr", "num_steps": n} for n in (4, 8, 16, 32, 64)
    ],
}
COSTLY = {"rtol": 1e-5}


def _cast_score(score_fn, dtype):
    """``score_fn`` on float64 inputs with the network in ``dtype`` (the output cast back)."""

    def score(x, t):
        return score_fn(x.to(dtype), t.to(dtype)).to(x.dtype)

    return score


def _tiny(file: str, sde: S.SDE, seed: int = 0) -> dict:
    from scoresde.interop.official import from_official_config, official_state_dict_to_ours
    from scoresde.nn.ncsnpp import NCSNpp

    ref = torch.load(REFERENCE / file, weights_only=True)
    net = NCSNpp(**from_official_config(ref["config"]["model"], ref["config"]["data"]))
    net.load_state_dict(official_state_dict_to_ours(ref["state_dict"]))
    net.eval()
    fast = S.make_score_fn(net, sde)
    exact = S.make_score_fn(copy.deepcopy(net).double(), sde)
    u = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return {
        "sde": sde,
        "score": _cast_score(fast, torch.float32),
        "score64": exact,
        "x": torch.round(u * 255) / 255,
        "levels": 256,
        "centered": bool(ref["config"]["data"]["centered"]),
        "generator": lambda: torch.Generator().manual_seed(seed + 1),
    }


def _digits(num: int) -> dict:
    from scoresde.jobs.runs import load_trained
    from scoresde.setup.build import build_score_fn
    from scoresde.setup.data.pipeline import load_split

    run = load_trained(DIGITS_RUN / "checkpoint.safetensors", device="cpu")
    x = load_split(run.cfg.data, "test", limit=num).to(F64)
    score32 = run.score_fn
    model64 = copy.deepcopy(run.model).double()
    seed = derive_seed(0, "likelihood", 0)
    return {
        "sde": run.sde,
        "score": _cast_score(score32, torch.float32),
        "score64": build_score_fn(model64, run.sde, run.cfg),
        "x": x,
        "levels": run.cfg.data.levels,
        "centered": run.cfg.data.centered,
        "generator": lambda: SampleStreams(seed, range(num)),
        "eps": run.cfg.eval.eps,
    }


def solve(problem: dict, setting: dict, *, exact: bool = False) -> dict:
    """One dequantized-bpd solve of ``problem``: ``{"bpd": list, "nfe": int, "seconds": float}``."""
    score = problem["score64" if exact else "score"]
    start = time.perf_counter()
    bpd, nfe = S.dequantized_bpd(
        problem["sde"], score, problem["x"], levels=problem["levels"],
        centered=problem["centered"], generator=problem["generator"](),
        eps=problem.get("eps", 1e-5), **setting,
    )
    return {"bpd": bpd.tolist(), "nfe": nfe, "seconds": time.perf_counter() - start}


def _cost(setting: dict) -> float:
    """A rough NFE: stages times steps, or for dopri5 about 60 rtol^(-1/3)."""
    if "num_steps" in setting:
        return {"rk4": 4, "midpoint": 2}[setting["method"]] * setting["num_steps"]
    return 60 * setting["rtol"] ** (-1 / 3)


def _key(net: str, setting: dict, exact: bool = False) -> str:
    items = ",".join(f"{k}={v}" for k, v in sorted(setting.items()))
    return f"{net}|{'f64' if exact else 'f32'}|{items}"


def run_problem(
    net: str, problem: dict, cache: dict, cache_path: Path, quick: bool, cached_only: bool
) -> dict:
    def cached(setting: dict, exact: bool = False) -> dict | None:
        key = _key(net, setting, exact)
        if key not in cache and cached_only and not exact:
            return None
        if key not in cache:
            cache[key] = solve(problem, setting, exact=exact)
            cache_path.write_text(json.dumps(cache, indent=1))
            print(f"  {key}: nfe {cache[key]['nfe']}, {cache[key]['seconds']:.0f} s", flush=True)
        return cache[key]

    converged = torch.tensor(cached(CONVERGED, exact=True)["bpd"], dtype=F64)
    todo = [(c, s) for c, settings in SETTINGS.items() for s in settings
            if not (quick and all(s.get(k) == v for k, v in COSTLY.items()))]
    for _, setting in sorted(todo, key=lambda cs: _cost(cs[1])):  # cheapest solves first
        cached(setting)
    curves = {}
    for choice, setting in todo:
        r = cached(setting)
        if r is None:
            continue
        err = torch.tensor(r["bpd"], dtype=F64) - converged
        curves.setdefault(choice, []).append({
            **setting, "nfe": r["nfe"], "max_error": err.abs().max().item(),
            "mean_error": err.mean().abs().item(), "seconds": r["seconds"],
        })
    return {"converged_bpd": converged.tolist(), "converged_nfe": cached(CONVERGED, True)["nfe"],
            "curves": curves}


def plot(net: str, result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for choice, points in result["curves"].items():
        if points:
            ax.plot([p["nfe"] for p in points], [max(p["max_error"], 1e-7) for p in points],
                    "o-" if choice.startswith("dopri5") else "s--", label=choice, ms=4)
    ax.axhline(0.01, color="k", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="NFE per batch",
           ylabel="max |bpd error| over the batch", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


TITLES = {"ve": "tiny NCSN++, VE (random weights)", "vp": "tiny DDPM++, VP (random weights)",
          "digits": "digits demo, sub-VP (trained)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["ve", "vp", "digits"], choices=list(TITLES))
    p.add_argument("--quick", action="store_true", help="leave out dopri5 at 1e-5")
    p.add_argument("--digits", type=int, default=32, help="number of test digits")
    p.add_argument("--cache", type=Path, default=Path("/tmp/scoresde_likelihood_cost.json"))
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs"
                   / "likelihood_cost")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cached solves only (the converged one is still solved)")
    a = p.parse_args()
    cache = json.loads(a.cache.read_text()) if a.cache.is_file() else {}
    builders = {"ve": lambda: _tiny("ncsnpp_ve_tiny.pt", S.VESDE()),
                "vp": lambda: _tiny("ddpmpp_vp_tiny.pt", S.VPSDE()),
                "digits": lambda: _digits(a.digits)}
    out_json = a.out / "likelihood_cost.json"
    report = json.loads(out_json.read_text()) if out_json.is_file() else {}
    for net in a.nets:
        print(f"{net}:", flush=True)
        with torch.no_grad():
            problem = builders[net]()
        result = run_problem(net, problem, cache, a.cache, a.quick, a.cached_only)
        report[net] = result
        print(f"converged (dopri5, joint, 1e-7, float64): NFE {result['converged_nfe']}, "
              f"mean bpd {sum(result['converged_bpd']) / len(result['converged_bpd']):.4f}")
        print("| choice | tolerance / steps | NFE per batch | max bpd error | mean bpd error |")
        print("| --- | --- | --- | --- | --- |")
        for choice, points in result["curves"].items():
            for q in points:
                knob = f"{q['rtol']:g}" if "rtol" in q else f"{q['num_steps']} steps"
                print(f"| {choice} | {knob} | {q['nfe']} | {q['max_error']:.2e} | "
                      f"{q['mean_error']:.2e} |")
        if not a.no_save:
            a.out.mkdir(parents=True, exist_ok=True)
            plot(net, result, a.out / f"{net}.png", TITLES[net])
    if not a.no_save:
        out_json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
