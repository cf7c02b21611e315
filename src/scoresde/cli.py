"""The ``scoresde`` command: thin shells over the library's public functions.

Errors the user can fix print one line and exit with status 2; set ``SCORESDE_DEBUG=1`` to see
the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = {
    "demo": "example: scoresde demo --sde subvp --out runs/demo --minutes 3",
    "train": "example: scoresde train --preset toy_moons --out runs/moons --set train.steps=2000",
    "sample": "example: scoresde sample --checkpoint runs/demo/checkpoint.safetensors "
    "--out runs/samples --method ode --num-samples 64",
    "likelihood": "example: scoresde likelihood --checkpoint runs/demo/checkpoint.safetensors "
    "--split test",
    "presets": "example: scoresde presets",
    "convert": "example: scoresde convert checkpoint_26.pth runs/cifar10_ve "
    "--preset ve_cifar10_ncsnpp_continuous",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scoresde", description="Score-based generative modeling through SDEs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    d = add("demo", "Train on 8x8 digits, sample (PC and ODE), test bits/dim, inpaint.")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    d.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    d.add_argument(
        "--minutes", type=float, default=3.0, help="training time budget in minutes (default: 3)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    d.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. sample.num_steps=500 (repeatable)",
    )
    d.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: time 1 and all, keep the faster)",
    )
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")

    t = add("train", "Train a score model from a preset or a config file.")
    t.add_argument("--preset", help="a name from `scoresde presets`")
    t.add_argument("--config", type=Path, help="a config.json (e.g. from an earlier run)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. train.lr=1e-4 (repeatable)",
    )
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: time 1 and all, keep the faster)",
    )
    t.add_argument("--no-progress", action="store_true")

    s = add("sample", "Draw samples from a trained checkpoint.")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True, help="folder for samples.npy/png")
    s.add_argument("--method", choices=["pc", "ode"], default="pc")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sample.* field, e.g. sample.num_steps=500",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: time 1 and all, keep the faster)",
    )
    s.add_argument("--no-progress", action="store_true")

    lk = add("likelihood", "Negative log-likelihood (bits/dim for images) of a data split.")
    lk.add_argument("--checkpoint", type=Path, required=True)
    lk.add_argument("--split", choices=["train", "test"], default="test")
    lk.add_argument("--num-examples", type=int, default=0, help="0: the whole split")
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--device", default="auto")
    lk.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an eval.* field, e.g. eval.trace=hutchinson-gaussian",
    )
    lk.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: time 1 and all, keep the faster)",
    )
    lk.add_argument("--no-progress", action="store_true")

    add("presets", "List the experiment presets.")

    c = add("convert", "Convert an official score_sde_pytorch checkpoint into a scoresde run.")
    c.add_argument("src", type=Path, help="the official .pth checkpoint")
    c.add_argument("out", type=Path, help="output folder (checkpoint.safetensors, config.json)")
    c.add_argument("--preset", help="the experiment's preset, e.g. ve_cifar10_ncsnpp_continuous")
    c.add_argument(
        "--official-config",
        type=Path,
        help="the official config as JSON (default: <src stem>.config.json)",
    )
    c.add_argument(
        "--raw-weights", action="store_true", help="keep the raw weights instead of the EMA ones"
    )
    return p


def _overrides(run_cfg, items: list[str], section: str) -> dict:
    """Parse ``section.key=value`` items into a dict of the changed fields of that section."""
    from dataclasses import asdict

    from scoresde.config import ConfigError, apply_overrides

    for item in items:
        if not item.startswith(f"{section}."):
            raise ConfigError(f"only {section}.* fields can be set here, got {item!r}")
    section_cfg = getattr(apply_overrides(run_cfg, items), section)
    return {
        k: v for k, v in asdict(section_cfg).items() if v != getattr(getattr(run_cfg, section), k)
    }


def _threads(a) -> bool:
    """Apply ``--threads N``; returns whether the command should tune the count itself (N = 0)."""
    if a.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {a.threads}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    return a.threads == 0


def _cmd_demo(a) -> int:
    from scoresde.demo import demo_config, run_demo

    cfg = demo_config(
        a.sde, steps=a.steps, minutes=a.minutes, seed=a.seed, device=a.device, overrides=a.overrides
    )
    report = run_demo(cfg, a.out, progress=not a.no_progress, tune_threads=_threads(a))
    print(json.dumps(report, indent=2))
    print(f"wrote {a.out}/samples_pc.png, samples_ode.png, inpainting.png, loss.png, report.json")
    return 0


def _cmd_train(a) -> int:
    from scoresde.config import Config, apply_overrides, load_config
    from scoresde.presets import get_preset
    from scoresde.training.loop import train

    if a.preset and a.config:
        raise ValueError("give --preset or --config, not both")
    cfg = get_preset(a.preset) if a.preset else load_config(a.config) if a.config else Config()
    cfg = apply_overrides(cfg, a.overrides)
    result = train(cfg, a.out, progress=not a.no_progress, tune_threads=_threads(a))
    print(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "seconds": round(result.seconds, 2),
                "final_loss": result.losses[-1][1] if result.losses else None,
            }
        )
    )
    return 0


def _cmd_sample(a) -> int:
    import numpy as np

    from scoresde.runs import generate, load_trained
    from scoresde.viz import save_image_grid, save_scatter

    run = load_trained(a.checkpoint, device=a.device)
    opts = _overrides(run.cfg, a.overrides, "sample")
    samples, info = generate(
        run,
        a.num_samples,
        method=a.method,
        seed=a.seed,
        progress=not a.no_progress,
        tune_threads=_threads(a),
        **opts,
    )
    a.out.mkdir(parents=True, exist_ok=True)
    np.save(a.out / "samples.npy", samples.numpy())
    if samples.ndim == 4:
        save_image_grid(samples, a.out / "samples.png", nrow=8)
    else:
        save_scatter(samples, a.out / "samples.png", title=f"{a.method} samples")
    print(json.dumps({"out": str(a.out), "num_samples": a.num_samples, **info}))
    return 0


def _cmd_likelihood(a) -> int:
    from scoresde.data.pipeline import load_split
    from scoresde.runs import evaluate_likelihood, load_trained

    run = load_trained(a.checkpoint, device=a.device)
    opts = _overrides(run.cfg, a.overrides, "eval")
    if a.num_examples:
        opts["num_examples"] = a.num_examples
    data = load_split(run.cfg.data, a.split)
    result = evaluate_likelihood(
        run, data, seed=a.seed, progress=not a.no_progress, tune_threads=_threads(a), **opts
    )
    result.pop("per_example")
    print(json.dumps({"split": a.split, **result}))
    return 0


def _cmd_presets(a) -> int:
    from scoresde.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, fn in PRESETS.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0].replace("``", "")
        print(f"{name:{width}s}  {summary}")
    return 0


def _cmd_convert(a) -> int:
    from scoresde.convert import convert_official

    if a.preset and a.official_config:
        raise ValueError("give --preset or --official-config, not both")
    path = convert_official(
        a.src, a.out, preset=a.preset, official_config=a.official_config, use_ema=not a.raw_weights
    )
    print(json.dumps({"checkpoint": str(path), "config": str(a.out / "config.json")}))
    return 0


COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "sample": _cmd_sample,
    "likelihood": _cmd_likelihood,
    "presets": _cmd_presets,
    "convert": _cmd_convert,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scoresde`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    from scoresde.config import ConfigError
    from scoresde.training.checkpoint import CheckpointError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, PermissionError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"scoresde {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `scoresde presets | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
