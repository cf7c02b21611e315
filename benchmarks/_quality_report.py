"""Tables and plots of ``quality_per_cost.py``'s results (its JSON), and the goal's verdict."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = {"pc": "tab:blue", "ode": "tab:brown", "ddim": "tab:orange", "heun": "tab:green",
          "dpmpp_2m": "tab:red", "dpmpp_3m": "tab:purple", "edm": "tab:olive",
          "adaptive": "tab:cyan"}
"""One colour per sampler; the line style tells the grid (solid: the sampler's default, dotted:
another grid, dashed: a later last time ``eps``), the marker the grid (square: ``edm``,
triangle: ``uniform``)."""
DEFAULT_GRIDS = {"ddim": "uniform", "heun": "edm", "dpmpp_2m": "log_snr", "dpmpp_3m": "log_snr",
                 "edm": "edm"}


def label(row: dict) -> str:
    """``sampler (grid[, eps])``."""
    eps = f", eps={row['options']['eps']:g}" if "eps" in row["options"] else ""
    return row["sampler"] + (f" ({row['grid']}{eps})" if row["grid"] else "")


def pc_reference(rows: list[dict]) -> dict | None:
    """The paper's PC sampler at 1000 steps (NFE 2001), if it was run."""
    return next((r for r in rows if r["sampler"] == "pc" and r["options"]["num_steps"] == 1000),
                None)


def goal(part: dict, max_nfe: int = 20, k: float = 3.0) -> dict | None:
    """The best fast sampler at ``<= max_nfe`` NFE by the exact-reference energy distance,
    against PC-1000: met where its energy distance and mode-weight error are at most PC-1000's
    plus ``k sqrt(2)`` noise-floor standard deviations (the Monte-Carlo error of a difference
    of two independent estimates)."""
    pc = pc_reference(part["rows"])
    fast = [r for r in part["rows"] if r["sampler"] != "pc" and r["nfe"] <= max_nfe]
    if pc is None or not fast:
        return None
    best = min(fast, key=lambda r: r["energy_exact"])
    f, margin = part["floor"], k * math.sqrt(2)
    met = (best["energy_exact"] <= pc["energy_exact"] + margin * f["energy_exact_sd"]
           and best["mode_tv"] <= pc["mode_tv"] + margin * f["mode_tv_sd"])
    return {"best": label(best), "nfe": best["nfe"], "energy_exact": best["energy_exact"],
            "mode_tv": best["mode_tv"], "pc_energy_exact": pc["energy_exact"],
            "pc_mode_tv": pc["mode_tv"], "met": met}


def goal_met(entry: dict, k: float = 2.0) -> bool:
    """As good as PC-1000: neither metric's mean difference from PC-1000 (paired by prior draw)
    exceeds ``k`` standard errors."""
    return all(entry[f"{m}_diff"] <= k * entry[f"{m}_diff_se"] for m in ("energy_exact", "mode_tv"))


def markdown_table(result: dict) -> str:
    """Per SDE: energy distance (x 1e3) and mode-weight TV of every run, by sampler and NFE."""
    lines = []
    for name, part in result["mixture"].items():
        f = part["floor"]
        lines += [f"### {name}", "", f"Noise floor (true samples): energy {1e3 * f['energy']:.2f} "
                  f"+- {1e3 * f['energy_sd']:.2f}, exact-reference energy "
                  f"{1e3 * f['energy_exact']:.2f} +- {1e3 * f['energy_exact_sd']:.2f}, mode TV "
                  f"{f['mode_tv']:.4f} +- {f['mode_tv_sd']:.4f}.", "",
                  "| sampler (grid) | NFE: energy / exact-reference energy (x 1e3) / mode TV |",
                  "| --- | --- |"]
        by_label: dict[str, list[dict]] = {}
        for row in part["rows"]:
            by_label.setdefault(label(row), []).append(row)
        for lab, rows in by_label.items():
            cells = ", ".join(f"{r['nfe']}: {1e3 * r['energy']:.2f} / "
                              f"{1e3 * r['energy_exact']:.2f} / {r['mode_tv']:.3f}"
                              for r in sorted(rows, key=lambda r: r["nfe"]))
            lines.append(f"| {lab} | {cells} |")
        g = goal(part)
        if g:
            lines += ["", f"Best at <= 20 NFE (this one prior draw): {g['best']}, NFE "
                      f"{g['nfe']}: exact-reference "
                      f"energy {1e3 * g['energy_exact']:.2f}, mode TV {g['mode_tv']:.4f}; "
                      f"PC-1000: {1e3 * g['pc_energy_exact']:.2f}, {g['pc_mode_tv']:.4f}; "
                      f"{'within' if g['met'] else 'NOT within'} 3 sqrt(2) noise-floor stds."]
        lines.append("")
    for name, g in result.get("goal", {}).items():
        lines += [f"### Goal, {name}: 20 NFE against PC-1000 over {g['seeds']} prior draws of "
                  f"{g['samples']} points", "",
                  "| sampler | energy (exact ref.) x 1e3 | minus PC-1000's | mode TV | "
                  "minus PC-1000's | verdict |", "| --- | --- | --- | --- | --- | --- |"]
        for key, e in g["summary"].items():
            verdict = "" if key == "pc" else "as good" if goal_met(e) else "worse"
            lines.append(f"| {key} | {1e3 * e['energy_exact']:.2f} | "
                         f"{1e3 * e['energy_exact_diff']:+.2f} +- "
                         f"{1e3 * e['energy_exact_diff_se']:.2f} | {e['mode_tv']:.4f} | "
                         f"{e['mode_tv_diff']:+.4f} +- {e['mode_tv_diff_se']:.4f} | {verdict} |")
        lines.append("")
    for key, d in result.get("digits", {}).items():
        lines += [f"### digits: {key} ({d['sde']}, {d['num_samples']} samples; held-out real "
                  f"digits FD {d['real_heldout_fd']:.3f} at {d['real_heldout_size']})", "",
                  "| sampler (grid) | NFE | FD | FD at the held-out size |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {label(r)} | {r['nfe']} | {r['fd']:.3f} | "
                  f"{r['fd'] if r['fd_at_real_size'] is None else r['fd_at_real_size']:.3f} |"
                  for r in d["rows"]]
        lines.append("")
    return "\n".join(lines)


def plot_metric(result: dict, metric: str, path: Path) -> None:
    """``metric`` against NFE, log-log, one panel per SDE, one line per sampler (and grid), with
    PC-1000 and the noise floor as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = result["mixture"]
    fig = Figure(figsize=(5 * len(parts) + 2.5, 4.5))
    FigureCanvasAgg(fig)
    for i, (name, part) in enumerate(parts.items()):
        ax = fig.add_subplot(1, len(parts), i + 1)
        by_label: dict[str, list[dict]] = {}
        for row in part["rows"]:
            by_label.setdefault(label(row), []).append(row)
        for lab, rows in by_label.items():
            rows = sorted(rows, key=lambda r: r["nfe"])
            default = rows[0]["grid"] in (None, DEFAULT_GRIDS.get(rows[0]["sampler"]))
            style = "--" if "eps" in rows[0]["options"] else "-" if default else ":"
            ax.plot([r["nfe"] for r in rows], [max(r[metric], 1e-6) for r in rows], style,
                    color=COLORS.get(rows[0]["sampler"]), ms=3, label=lab,
                    marker={"edm": "s", "uniform": "^"}.get(rows[0]["grid"], "o"))
        pc = pc_reference(part["rows"])
        if pc:
            ax.axhline(pc[metric], color="k", ls="--", lw=1, label="PC-1000")
        ax.axhline(part["floor"][metric], color="grey", ls="-.", lw=1, label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=name,
               ylabel={"energy": "energy distance to a true sample",
                       "energy_exact": "energy distance (exact reference)",
                       "mode_tv": "mode-weight TV"}[metric])
        ax.grid(True, which="both", alpha=0.3)
    fig.axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_digits(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, d in result["digits"].items():
        by_label: dict[str, list[dict]] = {}
        for row in d["rows"]:
            by_label.setdefault(label(row), []).append(row)
        for lab, rows in by_label.items():
            rows = sorted(rows, key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rows], [r["fd"] for r in rows], marker="o", ms=4,
                    label=f"{key}: {lab}")
        ax.axhline(d["real_heldout_fd"], color="grey", ls="-.", lw=1,
                   label=f"{key}: held-out real digits ({d['real_heldout_size']})")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="digits-feature FD")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict, out: Path) -> str:
    """Write ``table.md`` and the plots of ``result`` to ``out``; returns the table."""
    table = markdown_table(result)
    (out / "table.md").write_text(table + "\n")
    if result["mixture"]:
        plot_metric(result, "energy", out / "energy_vs_nfe.png")
        plot_metric(result, "energy_exact", out / "energy_exact_vs_nfe.png")
        plot_metric(result, "mode_tv", out / "mode_tv_vs_nfe.png")
    if result.get("digits"):
        plot_digits(result, out / "digits_fd_vs_nfe.png")
    return table
