"""The epilogs of ``scoresde <command> --help``: what each command does, writes and checks."""

from __future__ import annotations

import textwrap

IMAGES_NOTES = """\
images: --images (or --image, the same option) takes an image file, a folder of images, or an
  .npy/.npz array (N, C, H, W) or (N, H, W) in [0, 1] (uint8 0..255 also accepted; NaN or
  infinite values are refused); toy models take an (N, 2) .npy array. For a one-channel model
  three equal channels (grey image files) are taken as grey; colour ones are converted to grey
  (the mean of the channels) with a note on stderr. --checkpoint takes a run folder or its
  checkpoint.safetensors. Non-finite results exit with status 1 and write nothing.
"""

LATENT_NOTES = """\
latents: the probability-flow ODE (sample.eps, sample.ode_rtol, sample.ode_atol) maps an image
  at time sample.eps to its latent z = x(T) and back, deterministically (section 4.3 of the
  paper); no noise is drawn and no final denoising step is taken, so decoding inverts encoding
  to the solver's tolerance.
""" + IMAGES_NOTES

INPAINT_NOTES = """\
mask: a PNG of the images' size, white = known pixels (kept exactly), black = filled in; e.g.
  the upper half of an 8x8 digit known:
  python -c "import numpy as np; from PIL import Image; m = np.zeros((8, 8), np.uint8);
  m[:4] = 255; Image.fromarray(m).save('mask.png')"    (one line)
sampler: sample.method of a sampler that can project (default pc, 1000 steps), with its own
  step count unless --set sample.num_steps=N.
""" + IMAGES_NOTES

DEMO_NOTES = """\
files: checkpoint.safetensors, config.json, metrics.jsonl, tensorboard/, loss.png, and after
  training samples_fast.png (EDM's sampler, 19 NFE) / samples_pc.png (PC, 2001 NFE) /
  samples_ode.png with samples_{fast,pc,ode}.npy (--num-samples each, 64 by default; the
  pictures show the first 64), inpainting.png and report.json (sample
  quality, test bits/dim, timings; fast_method and fast_sampler_options redraw the fast
  samples: scoresde sample --checkpoint OUT --out DIR --method M --set sample.K=V ...).
resume: running the same command again resumes an interrupted demo; a finished one (its
  report.json) is refused unless --overwrite (scoresde train refuses it too).
interrupt: Ctrl-C or SIGTERM saves a checkpoint at the next training step (status 130 / 143).
  NaN or infinite samples stop the demo with status 1 before its pictures and report.
"""


def train_notes() -> str:
    from scoresde.setup.config import resumable_keys

    keys = textwrap.fill(
        ", ".join(sorted(resumable_keys())), 92, initial_indent="  ", subsequent_indent="  "
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
  A folder holding a finished demo (report.json) is refused unless --overwrite.
reproducible: the initial weights, data order, noise and dropout all come from the config's seed
  (--seed, an integer in 0 .. 2**63 - 1) and the step, so the same command gives the same
  weights (bit-identical on the same machine and thread count; on any number of devices to
  float rounding).
"""


CLASSIFIER_NOTES = """\
what: a noise-conditional classifier p_t(y | x) of the preset's data perturbed by its SDE
  (section 5 and appendix I.1 of the paper), for classifier guidance: scoresde sample
  --classifier RUN --class K --guidance W. Networks: a residual MLP for the 2-D toys, a small
  Wide-ResNet for 8x8 digits, the paper's Wide-ResNet-28-10 for CIFAR-10 and other images
  (scoresde.setup.presets.classifiers); --set model.* / train.* change them. --config takes a run's
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
  W must be finite and >= 0 (0: the unconditional model); negative scales are refused.
"""


def sample_notes() -> str:
    from scoresde.setup.config_rules import sampler_defaults_text

    return f"""\
steps: each sampler's own step count and grid (sample.num_steps, sample.grid) when --method or
  --set sample.method=NAME picks it (set them too to choose others; the run's config holds
  those of its own sample.method; ode and adaptive choose their steps by tolerance):
{sampler_defaults_text()}
checked first: the counts, --out (a folder that can be created), the checkpoint (a run folder
  or its checkpoint.safetensors); --seed is an integer in 0 .. 2**63 - 1. NaN or infinite
  samples exit with status 1, naming how many and the likely cause, and write nothing.
"""


EVALUATE_NOTES = """\
metrics: the run's eval.metrics (digits presets: fid,is,kid,bpd, where bpd, the test-split
  likelihood, is most of a small run's time: --set eval.metrics=fid,is,kid skips it; paper
  presets: fid,is,kid; toys: bpd); bpd is the likelihood of eval.bpd_split with
  eval.bpd_repeats dequantizations, bound the variational bound on the same data with
  eval.bound_times times per example. Features: eval.features=inception, the TF-ported
  Inception-v3 of FID from the local file eval.inception_weights (torch-fidelity's
  pt_inception-2015-12-05-6726825d.pth; pip install "scoresde[fid]"), against eval.reference
  (an npz of mu/sigma or pool_3 activations such as the official cifar10_stats.npz, or a folder
  of images); or eval.features=digits for 8x8 digits (a classifier the package trains itself;
  the held-out digits' values at the same sample size are reported beside the samples').
samples: sample i draws from its own stream (seed, i), so the samples do not depend on
  --batch-size or the number of devices; they are written as they are made (parts/), and
  running the same command again resumes an interrupted evaluation. samples.npz, samples.png and
  results.json are written at the end; a finished evaluation is refused unless --overwrite.
  --method picks a sampler with its own step count (see scoresde sample --help). NaN or
  infinite samples stop it with status 1 (the batches made before stay in parts/).
devices: torchrun --nproc_per_node=8 -m scoresde evaluate ... shares the samples and the
  likelihood's examples out over 8 processes.
"""
