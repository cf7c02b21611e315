"""The command line's arguments: one parser, the options the subcommands share declared once."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

EXAMPLES = {
    "demo": "example: scoresde demo --sde subvp --out runs/demo --steps 1800",
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
    "--image digit.png --mask mask.png --out runs/inpainted --set sample.num_steps=500",
    "colorize": "example: scoresde colorize --checkpoint runs/cifar10/checkpoint.safetensors "
    "--image grey.png --out runs/colorized",
}

LATENT_NOTES = """\
latents: the probability-flow ODE (sample.eps, sample.ode_rtol, sample.ode_atol) maps an image
  at time sample.eps to its latent z = x(T) and back, deterministically (section 4.3 of the
  paper); no noise is drawn and no final denoising step is taken, so decoding inverts encoding
  to the solver's tolerance. --images: an .npy array (N, C, H, W) or (N, H, W) in [0, 1] (uint8
  0..255 also accepted), or a folder of image files; toy models take an (N, 2) .npy array.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _train_notes() -> str:
    from scoresde.rundir import RESUMABLE_KEYS

    keys = textwrap.fill(
        ", ".join(sorted(RESUMABLE_KEYS)), 92, initial_indent="  ", subsequent_indent="  "
    )
    return f"""\
resume: running the same command again continues the run in --out from its checkpoint,
  bit-exactly (e.g. --steps 8000 trains further). Only these keys may change on resume:
{keys};
  any other change of the config is refused: use a new --out, or --overwrite to discard it.
interrupt: Ctrl-C or SIGTERM (a scheduler's preemption) saves a checkpoint at the next step
  boundary and exits with status 130 / 143; a second Ctrl-C stops at once (the last checkpoint
  stays intact). A NaN or infinite loss stops the run (status 1) and keeps the last good one.
devices: torchrun --nproc_per_node=8 -m scoresde train ... trains on 8 GPUs (nccl) or CPU
  processes (gloo); train.batch_size stays the global batch, train.device_batch_size sets the
  micro-batch (gradients are accumulated), and only rank 0 writes.
files: checkpoint.safetensors (rolling, every train.checkpoint_every steps), snapshots/ (every
  train.snapshot_every), metrics.jsonl, tensorboard/ (tensorboard --logdir RUN), samples/.
reproducible: the initial weights, data order, noise and dropout all come from the config's seed
  (--seed) and the step, so the same command gives the same weights (bit-identical on the same
  machine and thread count; on any number of devices to float rounding).
"""


CLASSIFIER_NOTES = """\
what: a noise-conditional classifier p_t(y | x) of the preset's data perturbed by its SDE
  (section 5 and appendix I.1 of the paper), for classifier guidance: scoresde sample
  --classifier RUN --class K --guidance W. Networks: a residual MLP for the 2-D toys, a small
  Wide-ResNet for 8x8 digits, the paper's Wide-ResNet-28-10 for CIFAR-10 and other images
  (scoresde.presets.classifiers); --set model.* / train.* change them. --config takes a run's
  config.json: a score run's gets its classifier, a classifier run's is trained as it is.
files: the run folder of scoresde train (config.json, checkpoint.safetensors, metrics.jsonl,
  ...), plus accuracy.json: the EMA classifier's test accuracy against t. Resume, interrupts
  and torchrun work as for scoresde train.
"""

CLASS_NOTES = """\
classes: --class K (or K1,K2,... or all) draws --num-samples samples of each class, one row of
  samples.png per class (16 at most); sample j of every class starts from the same noise
  (seed, j).
  An unconditional model needs --classifier RUN (scoresde train-classifier, same preset):
  classifier guidance s(x, t) + W grad log p_t(y | x); W = 1 is the paper's conditional
  reverse SDE (eq. 14). A label-conditional model (model.num_classes > 0) samples its own
  conditional score; with train.label_dropout > 0, W mixes it with the unconditional one
  (classifier-free guidance s_u + W (s_c - s_u)). labels.npy then holds the labels, and for
  digits the package's independent digits classifier reports the accuracy per class.
"""


EVALUATE_NOTES = """\
metrics: eval.metrics (default fid,is,kid; add bpd for the likelihood of eval.bpd_split with
  eval.bpd_repeats dequantizations, bound for the variational bound on the same data with
  eval.bound_times times per example). Features: eval.features=inception, the TF-ported
  Inception-v3 of FID from the local file eval.inception_weights (torch-fidelity's
  pt_inception-2015-12-05-6726825d.pth; pip install "scoresde[fid]"), against eval.reference
  (an npz of mu/sigma or pool_3 activations such as the official cifar10_stats.npz, or a folder
  of images); or eval.features=digits for 8x8 digits (a classifier the package trains itself;
  the held-out digits' values at the same sample size are reported beside the samples').
samples: sample i draws from its own stream (seed, i), so the samples do not depend on
  --batch-size or the number of devices; they are written as they are made (parts/), and
  running the same command again resumes an interrupted evaluation. samples.npz, samples.png and
  results.json are written at the end; a finished evaluation is refused unless --overwrite.
devices: torchrun --nproc_per_node=8 -m scoresde evaluate ... shares the samples and the
  likelihood's examples out over 8 processes.
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
        "demo", "Train on 8x8 digits, sample (PC and ODE), test bits/dim, inpaint.", _train_notes()
    )
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    d.add_argument("--sde", default="subvp", choices=["ve", "vp", "subvp"])
    d.add_argument("--steps", type=int, help="training steps (default: 1800)")
    d.add_argument(
        "--minutes", type=float, help="optional cap on training wall time (default: none)"
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

    t = add("train", "Train a score model from a preset or a config file.", _train_notes())
    training(
        t,
        "a name from `scoresde presets`",
        "a config.json (e.g. from an earlier run)",
        "train.lr=1e-4",
    )

    tc = add(
        "train-classifier",
        "Train a noise-conditional classifier p_t(y | x) for classifier guidance.",
        CLASSIFIER_NOTES + _train_notes(),
    )
    training(
        tc,
        "the score model's preset (list: scoresde presets)",
        "a run's config.json (score or classifier run)",
        "model.widen_factor=4",
    )

    s = add("sample", "Draw samples from a trained checkpoint.", CLASS_NOTES)
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True, help="folder for samples.npy/png")
    s.add_argument(
        "--method",
        help="a sampler of scoresde.SAMPLERS: pc, ode, ddim, heun, dpmpp_2m, dpmpp_3m, edm, "
        "adaptive "
        "(default: sample.method)",
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
        type=float,
        help="guidance scale W (default 1: the conditional model); needs --class",
    )
    s.add_argument(
        "--classifier", type=Path, help="a noise-conditional classifier's run folder or checkpoint"
    )
    runtime(s, "sample.num_steps=500")
    overwrite(s, "samples")

    lk = add("likelihood", "Negative log-likelihood (bits/dim for images) of a data split.")
    lk.add_argument("--checkpoint", type=Path, required=True)
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
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True, help="evaluation folder")
    e.add_argument("--num-samples", type=int, help="samples (default: eval.num_samples, 50000)")
    e.add_argument("--method", help="a sampler of scoresde.SAMPLERS (default: sample.method)")
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

    images_help = "an .npy array (N, C, H, W) or (N, H, W) in [0, 1], or a folder of images"
    en = add("encode", "Encode images to latents with the probability-flow ODE.", LATENT_NOTES)
    en.add_argument("--checkpoint", type=Path, required=True)
    en.add_argument("--images", type=Path, required=True, help=images_help)
    en.add_argument("--out", type=Path, required=True, help="folder for latents.npy, decoded.png")
    runtime(en, "sample.ode_rtol=1e-3", seed=False)
    overwrite(en, "latents")

    ip = add(
        "interpolate",
        "Interpolate between two images through their probability-flow latents (slerp).",
        LATENT_NOTES,
    )
    ip.add_argument("--checkpoint", type=Path, required=True)
    ip.add_argument("--images", type=Path, required=True, help=images_help)
    ip.add_argument("--first", type=int, default=0, help="index of the first image (default 0)")
    ip.add_argument("--second", type=int, default=1, help="index of the second image (default 1)")
    ip.add_argument("--num", type=int, default=8, help="frames, both ends included (default 8)")
    ip.add_argument(
        "--out", type=Path, required=True, help="folder for frames.npy, interpolation.png"
    )
    runtime(ip, "sample.ode_rtol=1e-3", seed=False)
    overwrite(ip, "an interpolation")

    inverse_image = "an image file, a folder of images, an .npz or .npy array in [0, 1]"
    inp = add(
        "inpaint",
        "Fill in the unknown pixels of images with the unconditional model (app. I.2).",
    )
    inp.add_argument("--checkpoint", type=Path, required=True)
    inp.add_argument("--image", type=Path, required=True, help=inverse_image)
    inp.add_argument(
        "--mask", type=Path, required=True, help="a PNG of the image's size: white = known"
    )
    inp.add_argument("--out", type=Path, required=True, help="folder for inpainted.npy/png")
    runtime(inp, "sample.num_steps=500")
    overwrite(inp, "an inpainting")

    co = add("colorize", "Colour grey images with an RGB model (app. I.3).")
    co.add_argument("--checkpoint", type=Path, required=True)
    co.add_argument("--image", type=Path, required=True, help=inverse_image + " (grey or RGB)")
    co.add_argument("--out", type=Path, required=True, help="folder for colorized.npy/png")
    runtime(co, "sample.num_steps=500")
    overwrite(co, "a colorization")
    return p
