"""Typed run configuration: one frozen dataclass per section, checked when built.

A run's resolved config is saved as ``config.json`` next to its checkpoint
(:mod:`scoresde.setup.config_io`: ``key=value`` overrides and JSON round trips); presets live in
:mod:`scoresde.setup.presets`. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from scoresde.core.config_errors import ConfigError
from scoresde.core.names import (
    ERROR_NORM_NAMES,
    FIXED_STEP_METHODS,
    GRID_NAMES,
    METRIC_NAMES,
    PARAMETRIZATION_NAMES,
    SDE_NAMES,
    loss_problem,
)
from scoresde.setup.config_rules import config_problem
from scoresde.setup.sample_config import SAMPLE_FIELDS, SampleConfig

__all__ = [
    "SAMPLE_FIELDS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "SDEConfig",
    "SampleConfig",
    "TrainConfig",
    "resumable_keys",
]


RESUMABLE = {"resumable": True}
"""The metadata of a field that may differ between a run and the command that resumes it (how
long it runs, how often it logs, checkpoints, draws grids and evaluates, where and on how many
devices it runs, the switches that change speed and memory but not the arithmetic, the feeding
of the data, and the precision switches ``tf32``/``bf16``, whose change is recorded in
``metrics.jsonl``): :func:`resumable_keys` collects them."""


def resumable_keys() -> frozenset[str]:
    """The dotted keys (``"train.steps"``, ``"device"``) of the fields marked :data:`RESUMABLE`;
    every other field of a run's config must be equal when it resumes."""
    keys = {f.name for f in fields(Config) if f.metadata.get("resumable")}
    for section in fields(Config):
        if isinstance(section.default_factory, type):
            keys |= {f"{section.name}.{f.name}" for f in fields(section.default_factory)
                     if f.metadata.get("resumable")}
    return frozenset(keys)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """What the model is trained on.

    ``dataset``: ``"digits"`` (scikit-learn's 8x8 digits), a 2-D toy set (``"gmm"``, ``"moons"``,
    ``"swissroll"``) or an image dataset read from ``root`` (``"cifar10"``, ``"celeba"``,
    ``"lsun"``, ``"celebahq"``, ``"ffhq"``, ``"folder"``; layouts in
    :mod:`scoresde.setup.data.images`). Images are ``[0, 1]`` with ``levels`` grey levels;
    ``centered``
    maps them to ``[-1, 1]``; ``dequantize`` trains on uniformly dequantized data;
    ``random_flip`` flips training images horizontally at random; ``image_size`` 0 keeps each
    dataset's default size.

    Feeding (speed only, never the batches: batch ``k`` is a function of the seed and ``k``):
    ``num_workers`` ``DataLoader`` worker processes decode image datasets (-1: 4 on CUDA, 0 on
    the CPU); ``on_device`` keeps a whole in-memory training set (digits, toys, CIFAR-10) on the
    training device and takes batches there. Batches go to the device from pinned memory,
    without blocking, one batch ahead.
    """

    dataset: str = "digits"
    root: str = ""
    image_size: int = 0
    centered: bool = True
    dequantize: bool = True
    random_flip: bool = False
    levels: int = 17
    test_fraction: float = 0.2
    split_seed: int = 0
    num_workers: int = field(default=-1, metadata=RESUMABLE)
    on_device: bool = field(default=False, metadata=RESUMABLE)

    def __post_init__(self) -> None:
        _check(
            self.num_workers >= -1,
            f"data.num_workers must be >= 0 (or -1: 4 on CUDA, 0 on CPU), got {self.num_workers}",
        )


@dataclass(frozen=True)
class SDEConfig:
    """The forward SDE: ``kind`` is ``"ve"``, ``"vp"``, ``"subvp"`` or ``"edm"`` (EDM's
    ``sigma(t) = t`` on ``[sigma_min, sigma_max]``, :class:`scoresde.core.sdes.EDMSDE`);
    ``N`` discrete steps."""

    kind: str = "vp"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self) -> None:
        _check(self.kind in SDE_NAMES,
               f"unknown sde {self.kind!r}; choose from {', '.join(SDE_NAMES)}")


@dataclass(frozen=True)
class ModelConfig:
    """The score network and its options (the official code's names where they exist).

    ``name``: ``"unet"`` (the small U-Net of the demo), ``"mlp"`` (vectors), ``"ncsnpp"``
    (NCSN++ / DDPM++), ``"ddpm"``, ``"ncsn"`` or ``"ncsnv2"``. ``embedding_type`` ``"fourier"``
    embeds ``log sigma`` (VE), ``"positional"`` embeds ``999 t`` or a step index (VP).
    ``continuous=False`` trains the discrete SMLD/DDPM objective. The small U-Net reads ``nf``,
    ``ch_mult``, ``num_res_blocks``, ``dropout`` and puts attention at its lowest resolution
    when ``attn_resolutions`` is not empty; the MLP reads ``hidden`` and ``depth``; NCSN++ reads
    all the rest (see :class:`scoresde.nn.ncsnpp.NCSNpp`). ``ncsnv2_variant`` 0 picks the NCSNv2
    depth from the image size. ``num_classes`` > 0 adds a class-label embedding (a
    label-conditional model ``s(x, t, y)``, trained on the dataset's labels).

    Two names are noise-conditional classifiers ``p_t(y | x)`` rather than score networks
    (``scoresde train-classifier``, :mod:`scoresde.core.classifier`): ``"wideresnet"`` (images;
    ``depth`` = 6n + 4 layers, ``widen_factor``, ``dropout``, the paper's 28 x 10 for CIFAR-10)
    and ``"mlp_classifier"`` (vectors; ``hidden``, ``depth``); both read ``num_classes`` (the
    dataset's) and ``fourier_scale``. Which field fills which constructor argument of each
    network: ``scoresde.setup.networks.MODELS``.

    ``parametrization``: what the network outputs, ``""`` (the SDE family's: score for VE, eps
    for VP and sub-VP, EDM's for ``sde.kind=edm``), ``"score"``, ``"eps"`` or ``"edm"`` (EDM's
    preconditioning with data std ``sigma_data``, labels ``ln(sigma) / 4``; continuous time, a
    positional embedding and no ``scale_by_sigma``; ``docs/edm.md``).
    """

    name: str = "unet"
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    hidden: int = 128
    depth: int = 3
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = False
    continuous: bool = True
    resamp_with_conv: bool = True
    resblock_type: str = "biggan"
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    init_scale: float = 0.0
    conditional: bool = True
    nonlinearity: str = "swish"
    num_classes: int = 0
    ncsnv2_variant: int = 0
    widen_factor: int = 10
    parametrization: str = ""
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        _check(self.parametrization in ("", *PARAMETRIZATION_NAMES),
               f"model.parametrization must be '' or one of {', '.join(PARAMETRIZATION_NAMES)}, "
               f"got {self.parametrization!r}")
        _check(self.sigma_data > 0, f"model.sigma_data must be > 0, got {self.sigma_data}")
        _check(self.parametrization != "edm" or self.continuous,
               "model.parametrization=edm is continuous-time: it needs model.continuous=true")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam with linear warmup, gradient clipping and an EMA of the weights.

    Training stops after ``steps`` steps or ``minutes`` of wall time (0: no time limit);
    ``grad_clip`` < 0 disables clipping, ``warmup`` 0 disables warmup. ``sample_every`` > 0
    writes a grid of EMA samples to ``<run>/samples/`` every so many steps, ``eval_every`` > 0
    the test likelihood of the EMA model to ``<run>/eval.jsonl``.

    ``batch_size`` is the global batch of one optimisation step, whatever the number of
    devices: each of ``W`` devices (``torchrun`` processes) takes ``device_batch_size`` examples
    at a time (0: ``batch_size / W``) and accumulates gradients over
    ``batch_size / (W * device_batch_size)`` micro-batches. ``checkpoint_every`` is the rolling
    preemption checkpoint (``checkpoint.safetensors``, replaced atomically), ``snapshot_every``
    > 0 keeps a copy under ``<run>/snapshots/`` every so many steps. ``tensorboard`` writes
    scalars to ``<run>/tensorboard/``.

    ``sync_every`` is how often (in steps) the ranks vote on stopping (a signal, the time cap, a
    NaN or infinite loss): 0 means 10 on CUDA and 1 on the CPU; a vote is also taken at every
    log line, checkpoint, snapshot, sample grid and evaluation, so no checkpoint holds weights
    from after a non-finite step. ``dist_timeout_minutes`` is the process-group timeout of a
    ``torchrun`` job (NCCL's watchdog): a collective that waits longer kills the job; the
    periodic hooks fence the ranks with a barrier that does not time out.

    Performance switches: ``tf32`` (on by default: TF32 matmuls and convolutions on NVIDIA
    GPUs, PyTorch's own default for convolutions; ``false`` is strict float32), and, each off
    unless named, ``bf16`` (the network under bf16 autocast; loss and score conversion stay
    float32), ``channels_last`` (image batches and weights in NHWC), ``compile``
    (``torch.compile`` of the network), ``activation_checkpointing`` (recompute each residual
    and attention block in the backward pass instead of storing its activations).

    ``label_dropout`` (label-conditional models, ``model.num_classes`` > 0): the probability
    that a training example's label is replaced by the null label (no label), so that the one
    network also learns the unconditional score, for classifier-free guidance (Ho & Salimans,
    2022).

    ``likelihood_weighting`` weights the continuous loss by ``g(t)^2`` (a bound on the negative
    log-likelihood); ``importance_sampling`` (which needs it) also draws ``t`` from
    ``q(t) ∝ g^2 / s^2`` instead of ``U(eps, T)``: the same expected loss at a lower variance
    (Song et al., 2021, "Maximum Likelihood Training of Score-Based Diffusion Models").
    ``loss``: ``"dsm"`` (eq. 7, these weightings) or ``"edm"`` (EDM's loss, ``ln sigma ~
    N(P_mean, P_std^2)``, weight ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2``).
    """

    steps: int = field(default=4000, metadata=RESUMABLE)
    minutes: float = field(default=0.0, metadata=RESUMABLE)
    batch_size: int = 128
    lr: float = 2e-3
    beta1: float = 0.9
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    likelihood_weighting: bool = False
    importance_sampling: bool = False
    reduce: str = "mean"
    eps: float = 1e-5
    log_every: int = field(default=50, metadata=RESUMABLE)
    checkpoint_every: int = field(default=1000, metadata=RESUMABLE)
    sample_every: int = field(default=0, metadata=RESUMABLE)
    eval_every: int = field(default=0, metadata=RESUMABLE)
    snapshot_every: int = field(default=0, metadata=RESUMABLE)
    device_batch_size: int = field(default=0, metadata=RESUMABLE)
    tensorboard: bool = field(default=True, metadata=RESUMABLE)
    sync_every: int = field(default=0, metadata=RESUMABLE)
    dist_timeout_minutes: float = field(default=30.0, metadata=RESUMABLE)
    bf16: bool = field(default=False, metadata=RESUMABLE)
    tf32: bool = field(default=True, metadata=RESUMABLE)
    channels_last: bool = field(default=False, metadata=RESUMABLE)
    compile: bool = field(default=False, metadata=RESUMABLE)
    activation_checkpointing: bool = field(default=False, metadata=RESUMABLE)
    label_dropout: float = 0.0
    loss: str = "dsm"
    P_mean: float = -1.2
    P_std: float = 1.2

    def __post_init__(self) -> None:
        _check(self.steps >= 0, f"train.steps must be >= 0, got {self.steps}")
        _check(self.minutes >= 0, f"train.minutes must be >= 0, got {self.minutes}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.ema_decay <= 1, f"train.ema_decay must be in [0, 1], got {self.ema_decay}")
        _check(
            self.reduce in ("mean", "sum"), f"train.reduce must be mean or sum, got {self.reduce!r}"
        )
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _check(self.sample_every >= 0, "train.sample_every must be >= 0")
        _check(self.eval_every >= 0, "train.eval_every must be >= 0")
        _check(self.snapshot_every >= 0, "train.snapshot_every must be >= 0")
        _check(self.device_batch_size >= 0, "train.device_batch_size must be >= 0")
        _check(self.sync_every >= 0, f"train.sync_every must be >= 0, got {self.sync_every}")
        _check(
            self.dist_timeout_minutes > 0,
            f"train.dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}",
        )
        _check(
            0 <= self.label_dropout < 1,
            f"train.label_dropout must be in [0, 1), got {self.label_dropout}",
        )
        _check(self.P_std >= 0, f"train.P_std must be >= 0, got {self.P_std}")
        problem = loss_problem(self.loss, likelihood_weighting=self.likelihood_weighting,
                               importance_sampling=self.importance_sampling)
        _check(problem is None, problem or "")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: the likelihood through the probability-flow ODE (bits/dim for images) and
    sample quality (``scoresde evaluate``).

    Likelihood: ODE tolerances ``rtol``/``atol``, ``trace`` estimator, ``eps``, ``batch_size``;
    the solver ``method`` (torchdiffeq: adaptive ``"dopri5"``, ``"bosh3"``, ... or fixed-step
    ``"euler"``, ``"midpoint"``, ``"heun3"``, ``"rk4"`` with ``num_steps`` steps on the time
    ``grid`` ``"uniform"``, ``"log_snr"`` or ``"edm"``) and the adaptive solvers' ``error_norm``
    (``"per-part"``, ``"joint"``, ``"per-example"``;
    :data:`scoresde.methods.likelihood.ERROR_NORMS`,
    measured in ``docs/likelihood_cost.md``); ``num_examples`` > 0 keeps the first examples of
    the split; ``bpd_split`` is the split ``scoresde evaluate`` measures and ``bpd_repeats`` the
    number of dequantization draws per example (the paper averages several).

    Sample quality: ``num_samples`` samples (50k, the paper's FID) from the config's sampler,
    compared in the feature space ``features``: ``"inception"`` (the TF-ported Inception-v3
    ``inception-2015-12-05`` of FID/IS/KID, read from the local file ``inception_weights``) or
    ``"digits"`` (a small digits classifier the package trains itself; 8x8 digits only), against
    ``reference``: an npz of statistics (``mu``/``sigma``, or raw ``pool_3``/``features``
    activations as in the official CIFAR-10 stats) or a folder of images; empty for the
    digits classifier means the held-out digits. ``metrics`` lists what to compute:
    ``fid``, ``is``, ``kid``, ``bpd``, ``bound`` (the variational bound on the negative
    log-likelihood of the reverse-SDE model, :mod:`scoresde.methods.likelihood_bound`, on the same
    split and dequantizations as ``bpd``, with ``bound_times`` importance-sampled times per
    example). KID averages ``kid_subsets`` subsets of
    ``kid_subset_size``; IS splits the samples into ``is_splits`` parts.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    trace: str = "hutchinson-rademacher"
    eps: float = 1e-5
    method: str = "dopri5"
    num_steps: int = 0
    grid: str = "uniform"
    error_norm: str = "per-part"
    batch_size: int = 512
    num_examples: int = 0
    bpd_split: str = "test"
    bpd_repeats: int = 1
    bound_times: int = 1
    num_samples: int = 50000
    features: str = "inception"
    inception_weights: str = ""
    reference: str = ""
    metrics: tuple[str, ...] = ("fid", "is", "kid")
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10

    def __post_init__(self) -> None:
        _check(self.rtol > 0 and self.atol > 0, "eval.rtol/eval.atol must be > 0")
        _check(self.num_steps >= 0, f"eval.num_steps must be >= 0, got {self.num_steps}")
        _check(
            self.num_steps >= 1 or self.method not in FIXED_STEP_METHODS,
            f"eval.method {self.method} is fixed-step: set eval.num_steps >= 1",
        )
        _check(
            self.grid in GRID_NAMES,
            f"eval.grid must be one of {', '.join(GRID_NAMES)}, got {self.grid!r}",
        )
        _check(
            self.error_norm in ERROR_NORM_NAMES["likelihood"],
            f"eval.error_norm must be one of {', '.join(ERROR_NORM_NAMES['likelihood'])}, "
            f"got {self.error_norm!r}",
        )
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_examples >= 0, f"eval.num_examples must be >= 0, got {self.num_examples}")
        _check(self.bpd_split in ("train", "test"), "eval.bpd_split must be 'train' or 'test'")
        _check(self.bpd_repeats >= 1, f"eval.bpd_repeats must be >= 1, got {self.bpd_repeats}")
        _check(self.num_samples >= 1, f"eval.num_samples must be >= 1, got {self.num_samples}")
        _check(
            self.features in ("inception", "digits"),
            f"eval.features must be 'inception' or 'digits', got {self.features!r}",
        )
        _check(self.bound_times >= 1, f"eval.bound_times must be >= 1, got {self.bound_times}")
        unknown = sorted(set(self.metrics) - set(METRIC_NAMES))
        _check(not unknown,
               f"eval.metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}")
        _check(
            self.kid_subsets >= 1 and self.kid_subset_size >= 2,
            "eval.kid_subsets >= 1 and eval.kid_subset_size >= 2 needed",
        )
        _check(self.is_splits >= 1, f"eval.is_splits must be >= 1, got {self.is_splits}")


@dataclass(frozen=True)
class Config:
    """A whole run: data, SDE, model, training, sampling, evaluation, seed and device."""

    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = field(default="auto", metadata=RESUMABLE)

    def __post_init__(self) -> None:
        problem = config_problem(self)  # a NaN or infinite float; a seed outside 0 .. 2**63 - 1
        _check(problem is None, problem or "")
