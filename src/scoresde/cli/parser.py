"""The command line's arguments: one parser, the options the subcommands share declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = {
    "demo": "example: scoresde demo --sde subvp --out runs/demo --steps 1800",
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


TRAIN_NOTES = """\
resume: running the same command again continues the run in --out from its checkpoint,
  bit-exactly. Only train.steps, train.minutes, train.log_every, train.checkpoint_every,
  train.sample_every, train.eval_every and the device may change on resume (e.g. --steps 8000
  trains further); any other change of the config is refused: use a new --out, or --overwrite
  to discard the old run.
interrupt: Ctrl-C or SIGTERM saves a checkpoint at the next step boundary and exits with status
  130 / 143; a second Ctrl-C stops at once (the last checkpoint stays intact).
reproducible: the initial weights, data order, noise and dropout all come from the config's seed
  (--seed), so the same command gives the same weights (bit-identical on the same machine and
  thread count).
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scoresde", description="Score-based generative modeling through SDEs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_: str, notes: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=notes + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def runtime(cmd: argparse.ArgumentParser, set_example: str, *, seed: bool = True) -> None:
        """The options every computing subcommand shares."""
        if seed:
            cmd.add_argument("--seed", type=int, help="random seed (default: the config's, 0)")
        cmd.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a config field, e.g. {set_example} (repeatable)",
        )
        cmd.add_argument(
            "--threads",
            type=int,
            default=0,
            help="CPU threads (default 0: time 1 and all, keep the faster)",
        )
        cmd.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def overwrite(cmd: argparse.ArgumentParser, what: str) -> None:
        cmd.add_argument(
            "--overwrite", action="store_true", help=f"replace {what} already in --out"
        )

    d = add(
        "demo", "Train on 8x8 digits, sample (PC and ODE), test bits/dim, inpaint.", TRAIN_NOTES
    )
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    d.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    d.add_argument("--steps", type=int, help="training steps (default: 1800)")
    d.add_argument(
        "--minutes", type=float, help="optional cap on training wall time (default: none)"
    )
    runtime(d, "sample.num_steps=500")
    overwrite(d, "a finished demo")

    t = add("train", "Train a score model from a preset or a config file.", TRAIN_NOTES)
    t.add_argument("--preset", help="a name from `scoresde presets`")
    t.add_argument("--config", type=Path, help="a config.json (e.g. from an earlier run)")
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument("--steps", type=int, help="training steps (same as --set train.steps=N)")
    runtime(t, "train.lr=1e-4")
    overwrite(t, "a run")

    s = add("sample", "Draw samples from a trained checkpoint.")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True, help="folder for samples.npy/png")
    s.add_argument(
        "--method", help="a sampler of scoresde.SAMPLERS: pc, ode (default: sample.method)"
    )
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument(
        "--batch-size",
        type=int,
        help="samples per batch (default: sample.batch_size); sample i draws from its own "
        "stream, so samples do not depend on it (but the batch-mean langevin corrector "
        "couples a batch: sample.corrector=langevin_per_example does not)",
    )
    runtime(s, "sample.num_steps=500")
    overwrite(s, "samples")

    lk = add("likelihood", "Negative log-likelihood (bits/dim for images) of a data split.")
    lk.add_argument("--checkpoint", type=Path, required=True)
    lk.add_argument("--split", choices=["train", "test"], default="test")
    lk.add_argument("--num-examples", type=int, default=0, help="0: the whole split")
    runtime(lk, "eval.trace=hutchinson-gaussian")

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
    overwrite(c, "a run")
    return p
