"""Sample quality against cost (NFE) for every sampler of ``scoresde.SAMPLERS``.

Mixture part: a 2-D mixture of five isotropic Gaussians with unequal weights and stds and its
exact score, for VE (sigma_max = 20), VP and sub-VP. Each sampler (on each time grid it can use)
draws ``--samples`` points in float64 from a seeded prior draw at NFE from about 5 to 2000
(the ODE and adaptive solvers sweep their tolerances and record the NFE they took); quality is
the energy distance to a fresh true sample of the same size (:func:`energy_distance`) and the
mode-weight error (:func:`mode_weight_error`). A second true sample gives the noise floor.

Digits part (``--digits RUN_DIR``, repeatable): the digits-feature Frechet distance of
``--digits-samples`` samples of a trained digits run against the training digits
(:func:`scoresde.jobs.evaluation.evaluate.sample_quality`), at a few NFE.

Goal part (``--goal-seeds K``): PC-1000 against the DPM-Solver++ samplers at 20 NFE from K prior
draws, compared draw by draw (:func:`goal_runs`).

Writes ``quality_per_cost.json`` (every number and setting), ``table.md`` and the PNG plots to
``--out`` (default ``docs/fast_samplers``); ``--samplers``/``--sdes`` rerun a subset and merge
it into the saved JSON (``--samplers none`` alone redraws the tables and plots). Run from the
repository root with ``OMP_NUM_THREADS=1``:

    python benchmarks/quality_per_cost.py                       # mixture, ~25 min on 1 busy core
    python benchmarks/quality_per_cost.py --quick               # 2000 samples, fewer costs
    python benchmarks/quality_per_cost.py --samplers adaptive   # rerun and merge one sampler
    python benchmarks/quality_per_cost.py --samplers none --goal-seeds 5            # ~7 min
    python benchmarks/quality_per_cost.py --samplers none --digits runs/conditional_digits/demo \
        --digits-samples 128                                    # ~13 min
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

import scoresde
from _quality_report import write_report
from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.core.mixture import GaussianMixture, mixture_score_fn

F64 = torch.float64
NFE_TARGETS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)
QUICK_TARGETS = (5, 10, 20, 50, 200)
SDES = {"VE": VESDE(sigma_max=20.0), "VP": VPSDE(), "subVP": SubVPSDE()}
ODE_TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ADAPTIVE_RTOLS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
EDM_CHURN = 10.0
FAST = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "edm", "ode", "adaptive")
"""Every sampler but PC, in the order the script runs them (adaptive last)."""
GRIDS = {"ddim": ("uniform", "log_snr", "edm"), "heun": ("edm", "log_snr", "uniform"),
         "dpmpp_2m": ("log_snr", "edm", "uniform"), "dpmpp_3m": ("log_snr", "edm", "uniform")}
"""The grids each grid sampler runs on, its default first (``edm`` has EDM's grid only)."""
EVALS_PER_STEP = {"pc": 2, "ddim": 1, "heun": 2, "dpmpp_2m": 1, "dpmpp_3m": 1, "edm": 2}
ALT_GRID_MAX_NFE = 200
"""Non-default grids run up to this NFE (beyond it every grid has converged to the floor)."""
FAST_MAX_NFE = 200
"""The fixed-step fast samplers stop here (by 100 NFE every one is at its converged value); PC
goes on to its 1000 steps (NFE 2001)."""
LATE_EPS = 0.03
"""A later last time for the multistep samplers (also run with the default 1e-3): sub-VP's
``sigma(1e-3) ~ 1e-4`` is 100x below VP's, which spends log-SNR steps on noise levels far below
the data's scale; ``sigma(0.03) ~ 0.012`` for sub-VP."""
DIGITS_NFE = (10, 20, 50, 100)
DIGITS_SAMPLERS = {"heun": "log_snr", "dpmpp_2m": "log_snr", "dpmpp_3m": "log_snr"}


def benchmark_mixture() -> GaussianMixture:
    """Five isotropic Gaussians on a circle of radius 4, weights 0.1-0.3, stds 0.2-0.5
    (neighbouring means 4.7 apart: the modes overlap by less than 1e-6)."""
    angles = torch.arange(5, dtype=F64) * (2 * math.pi / 5)
    means = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3], dtype=F64), means,
                           torch.tensor([0.2, 0.5, 0.3, 0.4, 0.35], dtype=F64))


# ---- metrics ----------------------------------------------------------------------------------


def mean_distance(a: Tensor, b: Tensor, *, chunk: int = 2048) -> float:
    """``mean_ij |a_i - b_j|`` over all pairs (``i = j`` included) of ``a (N, D)``, ``b (M, D)``."""
    total = 0.0
    for start in range(0, a.shape[0], chunk):
        d = torch.cdist(a[start:start + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(d.sum())
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: Tensor, y: Tensor, *, yy: float | None = None) -> float:
    """The energy distance of Szekely and Rizzo as a V-statistic (all pairs, ``i = j`` included):

        2 mean_ij |x_i - y_j| - mean_ij |x_i - x_j| - mean_ij |y_i - y_j|  >= 0,

    for ``x (N, D)``, ``y (M, D)``; it estimates ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with a
    positive bias ``(E|X - X'|) / N + (E|Y - Y'|) / M`` (the noise floor of two samples of one
    law). ``yy``: ``mean_ij |y_i - y_j|`` if already known.
    """
    if yy is None:
        yy = mean_distance(y, y)
    return 2 * mean_distance(x, y) - mean_distance(x, x) - yy


def rice_mean(nu: Tensor, s: Tensor) -> Tensor:
    """``E|nu e + s Z|`` for ``Z ~ N(0, I_2)`` and a unit vector ``e`` (the Rice mean), elementwise:
    ``s sqrt(pi / 2) [(1 + 2 z) I0e(z) + 2 z I1e(z)]`` with ``z = nu^2 / (4 s^2)``."""
    z = nu**2 / (4 * s**2)
    bessel = (1 + 2 * z) * torch.special.i0e(z) + 2 * z * torch.special.i1e(z)
    return s * math.sqrt(math.pi / 2) * bessel


def energy_distance_exact(x: Tensor, mix: GaussianMixture) -> float:
    """Energy distance of ``x (N, 2)`` to a 2-D isotropic mixture with its terms in ``Y`` exact:

        2 mean_i E|x_i - Y| - mean_ij |x_i - x_j| - E|Y - Y'|,

    ``E|x - Y| = sum_k w_k rice_mean(|x - mu_k|, s_k)`` and ``E|Y - Y'| = sum_kl w_k w_l
    rice_mean(|mu_k - mu_l|, sqrt(s_k^2 + s_l^2))``; the sample term is the V-statistic (bias
    ``E|X - X'| / N``, the floor of a true sample).
    """
    if x.shape[1] != 2 or mix.dim != 2:
        raise ValueError(f"the exact energy distance is for 2-D data, got {x.shape[1]}-D")
    xy = (mix.weights * rice_mean(torch.cdist(x, mix.means), mix.stds)).sum(1).mean()
    pair_std = torch.sqrt(mix.stds[:, None] ** 2 + mix.stds[None] ** 2)
    yy = (mix.weights[:, None] * mix.weights * rice_mean(torch.cdist(mix.means, mix.means),
                                                         pair_std)).sum()
    return float(2 * xy - yy) - mean_distance(x, x)


def mode_weights(x: Tensor, mix: GaussianMixture) -> Tensor:
    """The fraction ``(K,)`` of ``x (N, D)`` assigned to each component, each point to its most
    probable one under ``mix``: argmax_k ``log w_k - |x - mu_k|^2 / (2 s_k^2) - D log s_k``."""
    sq = ((x[:, None, :] - mix.means[None]) ** 2).sum(-1)
    log_r = torch.log(mix.weights) - sq / (2 * mix.stds**2) - x.shape[1] * torch.log(mix.stds)
    counts = torch.bincount(log_r.argmax(1), minlength=len(mix.weights))
    return counts.to(F64) / x.shape[0]


def mode_weight_error(x: Tensor, mix: GaussianMixture) -> float:
    """Total variation ``sum_k |w_hat_k - w_k| / 2`` between :func:`mode_weights` and ``w``."""
    return float((mode_weights(x, mix) - mix.weights).abs().sum() / 2)


# ---- the sweep --------------------------------------------------------------------------------


def sweep(sampler: str, targets: tuple[int, ...]) -> list[tuple[str | None, dict]]:
    """``(grid, options)`` of every run of ``sampler``: fixed-step ones at about ``targets`` NFE
    on each grid (non-default grids up to :data:`ALT_GRID_MAX_NFE`), tolerance sweeps else."""
    if sampler == "ode":
        return [(None, {"rtol": tol, "atol": tol}) for tol in ODE_TOLERANCES]
    if sampler == "adaptive":
        return [(None, {"rtol": tol}) for tol in ADAPTIVE_RTOLS]
    e = EVALS_PER_STEP[sampler]
    # PC: the paper's 1000 steps at the top; the others: at most the target NFE.
    steps = [max(1, nfe // 2 if sampler == "pc" else (nfe - 1) // e) for nfe in targets
             if sampler == "pc" or nfe <= FAST_MAX_NFE]
    if sampler == "pc":
        return [(None, {"num_steps": n}) for n in steps]
    if sampler == "edm":
        return [("edm", {"num_steps": n, "s_churn": EDM_CHURN}) for n in steps]
    runs = []
    for g, grid in enumerate(GRIDS[sampler]):
        runs += [(grid, {"num_steps": n, "grid": grid}) for n in steps
                 if g == 0 or e * n + 1 <= ALT_GRID_MAX_NFE]
    if sampler.startswith("dpmpp"):
        runs += [("log_snr", {"num_steps": n, "grid": "log_snr", "eps": LATE_EPS}) for n in steps]
    return runs


def true_samples(mix: GaussianMixture, n: int, seed: int) -> Tensor:
    return mix.sample(n, generator=torch.Generator().manual_seed(seed))


def noise_floor(mix: GaussianMixture, n: int, repeats: int = 5) -> dict:
    """Energy distance and mode-weight error of true samples against the reference (seed 1):
    their mean and std over ``repeats`` fresh samples (seeds 2, 3, ...), i.e. the Monte-Carlo
    scale of both metrics at ``n`` points."""
    ref = true_samples(mix, n, 1)
    yy = mean_distance(ref, ref)
    fresh = [true_samples(mix, n, 2 + r) for r in range(repeats)]
    values = {"energy": [energy_distance(x, ref, yy=yy) for x in fresh],
              "energy_exact": [energy_distance_exact(x, mix) for x in fresh],
              "mode_tv": [mode_weight_error(x, mix) for x in fresh]}
    stats = {}
    for name, v in values.items():
        mean = sum(v) / len(v)
        stats[name] = mean
        stats[f"{name}_sd"] = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1))
    return {**stats, "repeats": repeats}


def mixture_rows(name: str, samplers: list[str], n: int, targets: tuple[int, ...]) -> list:
    """Every run of ``samplers`` on the SDE ``name``: ``[{sampler, grid, options, nfe, energy,
    mode_tv, seconds}]``, all from the same prior draw (seed 0) and sampler noise (seed 1)."""
    sde, mix = SDES[name], benchmark_mixture()
    score_fn = mixture_score_fn(sde, mix)
    x_T = sde.prior_sampling((n, 2), torch.Generator().manual_seed(0), dtype=F64)
    ref = true_samples(mix, n, 1)
    yy = mean_distance(ref, ref)
    rows = []
    for sampler in samplers:
        for grid, options in sweep(sampler, targets):
            start = time.perf_counter()
            x, info = scoresde.sample(sde, score_fn, x_T, method=sampler,
                                      generator=torch.Generator().manual_seed(1), **options)
            seconds = time.perf_counter() - start
            row = {"sampler": sampler, "grid": grid, "options": options, "nfe": info["nfe"],
                   "energy": energy_distance(x, ref, yy=yy),
                   "energy_exact": energy_distance_exact(x, mix),
                   "mode_tv": mode_weight_error(x, mix), "seconds": round(seconds, 2)}
            rows.append(row)
            print(f"  {name:5s} {sampler:8s} {grid or '':7s} NFE {row['nfe']:5d}  "
                  f"energy {row['energy']:.2e}  mode TV {row['mode_tv']:.4f}  "
                  f"({seconds:.1f} s)", flush=True)
    return rows


GOAL_CANDIDATES = [(m, {"num_steps": 19, "grid": "log_snr", "eps": eps})
                   for m in ("dpmpp_2m", "dpmpp_3m") for eps in (1e-3, LATE_EPS)]
"""The fast samplers at 20 NFE compared with PC-1000 over repeated prior draws."""


def goal_runs(name: str, seeds: int, n: int) -> dict:
    """PC-1000 and :data:`GOAL_CANDIDATES` from ``seeds`` prior draws (seeds 100, 101, ...) of
    ``n`` points: per draw the exact-reference energy distance and the mode TV, and per
    candidate the mean and standard error of its difference from PC-1000 over the draws."""
    sde, mix = SDES[name], benchmark_mixture()
    score_fn = mixture_score_fn(sde, mix)
    runs: dict[str, list] = {}
    for seed in range(100, 100 + seeds):
        x_T = sde.prior_sampling((n, 2), torch.Generator().manual_seed(seed), dtype=F64)
        plan = [("pc", {"num_steps": 1000}), *GOAL_CANDIDATES]
        for method, options in plan:
            x, _ = scoresde.sample(sde, score_fn, x_T, method=method,
                                   generator=torch.Generator().manual_seed(seed + 1000), **options)
            key = method + ("" if method == "pc" else f" (log_snr, eps={options['eps']:g})")
            runs.setdefault(key, []).append({"energy_exact": energy_distance_exact(x, mix),
                                             "mode_tv": mode_weight_error(x, mix)})
        print(f"  {name:5s} goal draw {seed}: " + ", ".join(
            f"{k} {1e3 * v[-1]['energy_exact']:.2f}" for k, v in runs.items()), flush=True)
    summary = {}
    for key, values in runs.items():
        entry = {}
        for metric in ("energy_exact", "mode_tv"):
            diff = [v[metric] - p[metric] for v, p in zip(values, runs["pc"], strict=True)]
            mean = sum(diff) / seeds
            entry[metric] = sum(v[metric] for v in values) / seeds
            entry[f"{metric}_diff"] = mean
            entry[f"{metric}_diff_se"] = math.sqrt(
                sum((d - mean) ** 2 for d in diff) / (seeds - 1) / seeds)
        summary[key] = entry
    return {"seeds": seeds, "samples": n, "runs": runs, "summary": summary}


# ---- digits -----------------------------------------------------------------------------------


def digits_results(run_dir: str, n: int, nfes: tuple[int, ...]) -> dict:
    """Digits-feature Frechet distance (FD) of ``n`` samples of a trained run at ``nfes``, with
    PC at the run's own settings and the held-out real digits' FD at the same size (the floor)."""
    from dataclasses import replace

    from scoresde.jobs.evaluation.evaluate import sample_quality
    from scoresde.jobs.runs import checkpoint_file, generate, load_trained

    run = load_trained(checkpoint_file(run_dir), device="cpu")
    cfg = replace(run.cfg, eval=replace(run.cfg.eval, features="digits", metrics=("fid",)))
    plan = [("pc", None, {})]
    plan += [(m, g, {"num_steps": max(1, (nfe - 1) // EVALS_PER_STEP[m]), "grid": g})
             for m, g in DIGITS_SAMPLERS.items() for nfe in nfes]
    plan += [("dpmpp_2m", "log_snr", {"num_steps": nfe - 1, "grid": "log_snr", "eps": LATE_EPS})
             for nfe in nfes]
    rows, floor = [], None
    for method, grid, options in plan:
        start = time.perf_counter()
        images, info = generate(run, n, method=method, seed=0, **options)
        q = sample_quality(cfg, images, seed=0)
        floor = q["real_data"]["fid"] if floor is None else floor
        fd = q["samples_at_real_size"]["fid"] if "samples_at_real_size" in q else None
        rows.append({"sampler": method, "grid": grid, "options": options, "nfe": info["nfe"],
                     "fd": q["metrics"]["fid"], "fd_at_real_size": fd,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"  digits {method:8s} {grid or '':7s} NFE {info['nfe']:5d}  FD "
              f"{q['metrics']['fid']:.3f}  ({rows[-1]['seconds']} s)", flush=True)
    return {"run": run_dir, "sde": run.cfg.sde.kind, "num_samples": n, "rows": rows,
            "real_heldout_fd": floor, "real_heldout_size": q["real_data"]["num_examples"]}


# ---- output -----------------------------------------------------------------------------------


def merge(old: dict, new: dict, samplers: list[str]) -> dict:
    """``old`` with the rows of ``samplers`` on the SDEs of ``new`` replaced by ``new``'s."""
    out = {**old, "settings": {**old.get("settings", {}), **new["settings"]}}
    for key in ("digits", "goal"):
        out[key] = {**old.get(key, {}), **new.get(key, {})}
    mixture = dict(old.get("mixture", {}))
    for name, part in new.get("mixture", {}).items():
        kept = [r for r in mixture.get(name, {}).get("rows", []) if r["sampler"] not in samplers]
        mixture[name] = {**part, "rows": kept + part["rows"]}
    out["mixture"] = mixture
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2000 samples, NFE 5-200")
    p.add_argument("--samples", type=int, default=None, help="mixture samples (4000)")
    p.add_argument("--samplers", nargs="+", default=["pc", *FAST],
                   help="mixture samplers to run ('none': only the digits part)")
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES))
    p.add_argument("--digits", action="append", default=[], metavar="RUN_DIR")
    p.add_argument("--digits-samples", type=int, default=512)
    p.add_argument("--goal-seeds", type=int, default=0,
                   help="prior draws of the PC-1000 vs 20-NFE comparison (0: skip)")
    p.add_argument("--out", default="docs/fast_samplers")
    a = p.parse_args(argv)
    samplers = [] if a.samplers == ["none"] else a.samplers
    unknown = sorted(set(samplers) - set(scoresde.SAMPLERS))
    if unknown:
        p.error(f"unknown sampler {unknown[0]!r}; choose from {sorted(scoresde.SAMPLERS)}")
    n = a.samples or (2000 if a.quick else 4000)
    targets = QUICK_TARGETS if a.quick else NFE_TARGETS
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {"settings": {"samples": n, "nfe_targets": list(targets), "edm_s_churn": EDM_CHURN,
                           "sde": {k: repr(v) for k, v in SDES.items()}, "eps": 1e-3,
                           "energy_distance": "V-statistic", "threads": torch.get_num_threads()},
              "mixture": {}, "digits": {}}
    for name in a.sdes if samplers else []:
        floor = noise_floor(benchmark_mixture(), n)
        print(f"{name}: noise floor energy {floor['energy']:.2e} (sd {floor['energy_sd']:.1e}), "
              f"mode TV {floor['mode_tv']:.4f}", flush=True)
        result["mixture"][name] = {"floor": floor, "rows": mixture_rows(name, samplers, n, targets)}
    if a.goal_seeds:
        result["goal"] = {name: goal_runs(name, a.goal_seeds, n) for name in a.sdes}
    for run_dir in a.digits:
        result["digits"][Path(run_dir).name] = digits_results(run_dir, a.digits_samples,
                                                              DIGITS_NFE)
    path = out / "quality_per_cost.json"
    if path.exists():
        result = merge(json.loads(path.read_text()), result, samplers)
    if samplers or a.digits or a.goal_seeds:
        result["settings"]["wall_seconds"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(result, indent=1) + "\n")
    table = write_report(result, out)
    print(table)
    print(f"wrote {out}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
