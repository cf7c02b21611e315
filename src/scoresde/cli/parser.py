"""The command line's arguments: one parser, the options the subcommands share declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

from scoresde.cli.checks import finite_float, guidance_scale, seed_value
from scoresde.cli.notes import (
    CLASS_NOTES,
    CLASSIFIER_NOTES,
    DEMO_NOTES,
    EVALUATE_NOTES,
    IMAGES_NOTES,
    INPAINT_NOTES,
    LATENT_NOTES,
    sample_notes,
    train_notes,
)
from scoresde.core.names import SDE_NAMES, TRAINING_NAMES
from scoresde.jobs.demo import DEMO_TRAINING

EXAMPLES = {
    "demo": "example: scoresde demo --sde subvp --out runs/demo --training paper --steps 1800",
    "train": "example: scoresde train --preset toy_moons --out runs/moons --set train.steps=2000",
    "train-classifier": "example: scoresde train-classifier --preset digits_subvp "
    "--out runs/classifier",
    "sample": "example: scoresde sample --checkpoint runs/demo/checkpoint.safetensors "
    "--out runs/samples --method ode --num-samples 64\n"
    "         scoresde sample --checkpoint runs/demo/checkpoint.safetensors "
    "--classifier runs/classifier --class 3 --guidance 1.0 --out runs/threes",
    "likelihood": "example: scoresde likelihood --checkpoint runs/demo/checkpoint.safetensors "
    "--split test",
    "evaluate": "example: scoresde evaluate --checkpoint runs/demo/checkpoint.safetensors "
    "--out runs/demo/eval --num-samples 1000 --method ode",
    "presets": "example: scoresde presets",
    "convert": "example: scoresde convert checkpoint_26.pth runs/cifar10_ve "
    "--preset ve_cifar10_ncsnpp_continuous",
    "encode": "example: scoresde encode --checkpoint runs/demo/checkpoint.safetensors "
    "--images runs/demo/samples_ode.npy --out runs/latents",
    "interpolate": "example: scoresde interpolate --checkpoint runs/demo/checkpoint.safetensors "
    "--images runs/demo/samples_ode.npy --first 0 --second 1 --num 8 --out runs/interp",
    "inpaint": "example: scoresde inpaint --checkpoint runs/demo/checkpoint.safetensors "
    "--images runs/demo/samples_pc.npy --mask mask.png --out runs/inpainted "
    "--set sample.num_steps=500",
    "colorize": "example: scoresde colorize --checkpoint runs/cifar10/checkpoint.safetensors "
    "--images grey.png --out runs/colorized",
}

class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
            cmd.add_argument(
                "--seed",
                type=seed_value,
                help="random seed, an integer in 0 .. 2**63 - 1 (default: the config's)",
            )
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
            help="CPU threads (default 0: for a small network time 1 and all, keep the "
            "faster; a larger one takes all), chosen after the checks",
        )
        cmd.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def overwrite(cmd: argparse.ArgumentParser, what: str) -> None:
        cmd.add_argument(
            "--overwrite", action="store_true", help=f"replace {what} already in --out"
        )

    def checkpoint(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--checkpoint",
            type=Path,
            required=True,
            help="a trained run: its folder or its checkpoint.safetensors",
        )

    d = add(
        "demo", "Train on 8x8 digits, sample (19 NFE, PC, ODE), test bits/dim, inpaint.", DEMO_NOTES
    )
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    d.add_argument("--sde", default="subvp", choices=SDE_NAMES)
    d.add_argument(
        "--training",
        default="edm",
        choices=TRAINING_NAMES,
        help="edm: EDM's preconditioning and loss (default); paper: the paper's DSM",
    )
    steps = ", ".join(f"{v['steps']} with {k}" for k, v in DEMO_TRAINING.items())
    d.add_argument("--steps", type=int, help=f"training steps (default: {steps})")
    d.add_argument(
        "--minutes", type=finite_float, help="optional cap on training wall time (default: none)"
    )
    d.add_argument(
        "--num-samples",
        type=int,
        default=64,
        help="samples per sampler, all measured (default 64; the pictures show the first 64)",
    )
    runtime(d, "sample.num_steps=500")
    overwrite(d, "a finished demo")

    def training(cmd: argparse.ArgumentParser, preset: str, config: str, set_example: str):
        """The options of the subcommands that train a run."""
        cmd.add_argument("--preset", help=preset)
        cmd.add_argument("--config", type=Path, help=config)
        cmd.add_argument("--out", type=Path, required=True, help="run folder")
        cmd.add_argument("--steps", type=int, help="training steps (same as --set train.steps=N)")
        runtime(cmd, set_example)
        overwrite(cmd, "a run")

    t = add("train", "Train a score model from a preset or a config file.", train_notes())
    training(
        t,
        "a name from `scoresde presets`",
        "a config.json (e.g. from an earlier run)",
        "train.lr=1e-4",
    )
    t.add_argument(
        "--edm-training",
        action="store_true",
        help="train EDM's way: its preconditioning and loss on the preset's or config's SDE "
        "(model.parametrization=edm, positional embedding, no sigma scaling, train.loss=edm), "
        "before --set",
    )

    tc = add(
        "train-classifier",
        "Train a noise-conditional classifier p_t(y | x) for classifier guidance.",
        CLASSIFIER_NOTES + train_notes(),
    )
    training(
        tc,
        "the score model's preset (list: scoresde presets)",
        "a run's config.json (score or classifier run)",
        "model.widen_factor=4",
    )

    s = add("sample", "Draw samples from a trained checkpoint.", CLASS_NOTES + sample_notes())
    checkpoint(s)
    s.add_argument("--out", type=Path, required=True, help="folder for samples.npy/png")
    s.add_argument(
        "--method",
        help="a sampler of scoresde.SAMPLERS: pc, ode, ddim, heun, dpmpp_2m, dpmpp_3m, edm, "
        "adaptive (default: sample.method); each with its own steps and grid (see below)",
    )
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument(
        "--batch-size",
        type=int,
        help="samples per batch (default: sample.batch_size); sample i draws from its own "
        "stream, so samples do not depend on it (but the batch-mean langevin corrector "
        "couples a batch: sample.corrector=langevin_per_example does not)",
    )
    s.add_argument(
        "--class", dest="classes", help="class(es) to sample: K, K1,K2,... or all (see below)"
    )
    s.add_argument(
        "--guidance",
        type=guidance_scale,
        help="guidance scale W >= 0 (default 1: the conditional model); needs --class",
    )
    s.add_argument(
        "--classifier", type=Path, help="a noise-conditional classifier's run folder or checkpoint"
    )
    runtime(s, "sample.num_steps=500")
    overwrite(s, "samples")

    lk = add("likelihood", "Negative log-likelihood (bits/dim for images) of a data split.")
    checkpoint(lk)
    lk.add_argument("--split", choices=["train", "test"], default="test")
    lk.add_argument("--num-examples", type=int, default=0, help="0: the whole split")
    lk.add_argument(
        "--bound",
        action="store_true",
        help="the variational bound of the reverse-SDE model (eval.bound_times draws of t per "
        "example) instead of the ODE likelihood",
    )
    runtime(lk, "eval.trace=hutchinson-gaussian")

    e = add(
        "evaluate",
        "Sample quality (FID, IS, KID) and bits/dim of a checkpoint, as one results.json.",
        EVALUATE_NOTES,
    )
    checkpoint(e)
    e.add_argument("--out", type=Path, required=True, help="evaluation folder")
    e.add_argument(
        "--num-samples",
        type=int,
        help="samples (default: the run's eval.num_samples: 1000 for the digits presets, "
        "50000 for the paper's)",
    )
    e.add_argument(
        "--method",
        help="a sampler of scoresde.SAMPLERS, with its own steps (default: sample.method)",
    )
    e.add_argument("--batch-size", type=int, help="samples per batch (default: sample.batch_size)")
    runtime(e, "eval.inception_weights=~/pt_inception-2015-12-05-6726825d.pth")
    overwrite(e, "an evaluation")

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

    def images(cmd: argparse.ArgumentParser, extra: str = "") -> None:
        cmd.add_argument(
            "--images",
            "--image",
            dest="images",
            type=Path,
            required=True,
            help="an image file, a folder of images, or an .npy/.npz array (N, C, H, W) or "
            f"(N, H, W) in [0, 1]{extra} (see below)",
        )

    en = add("encode", "Encode images to latents with the probability-flow ODE.", LATENT_NOTES)
    checkpoint(en)
    images(en)
    en.add_argument("--out", type=Path, required=True, help="folder for latents.npy, decoded.png")
    runtime(en, "sample.ode_rtol=1e-3", seed=False)
    overwrite(en, "latents")

    ip = add(
        "interpolate",
        "Interpolate between two images through their probability-flow latents (slerp).",
        LATENT_NOTES,
    )
    checkpoint(ip)
    images(ip)
    ip.add_argument("--first", type=int, default=0, help="index of the first image (default 0)")
    ip.add_argument("--second", type=int, default=1, help="index of the second image (default 1)")
    ip.add_argument("--num", type=int, default=8, help="frames, both ends included (default 8)")
    ip.add_argument(
        "--out", type=Path, required=True, help="folder for frames.npy, interpolation.png"
    )
    runtime(ip, "sample.ode_rtol=1e-3", seed=False)
    overwrite(ip, "an interpolation")

    inp = add(
        "inpaint",
        "Fill in the unknown pixels of images with the unconditional model (app. I.2).",
        INPAINT_NOTES,
    )
    checkpoint(inp)
    images(inp)
    inp.add_argument(
        "--mask", type=Path, required=True, help="a PNG of the image's size: white = known"
    )
    inp.add_argument("--out", type=Path, required=True, help="folder for inpainted.npy/png")
    runtime(inp, "sample.num_steps=500")
    overwrite(inp, "an inpainting")

    co = add("colorize", "Colour grey images with an RGB model (app. I.3).", IMAGES_NOTES)
    checkpoint(co)
    images(co, ", grey or RGB")
    co.add_argument("--out", type=Path, required=True, help="folder for colorized.npy/png")
    runtime(co, "sample.num_steps=500")
    overwrite(co, "a colorization")
    return p
