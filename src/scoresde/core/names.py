"""The lists of allowed names, in one torch-free module that the config and the code import.

Each table of functions elsewhere (the samplers, grids, predictors, correctors, error norms)
is keyed by exactly these names; a test checks that they agree, so a name is added here and in
its table, and every check and message follows.
"""

from __future__ import annotations

SDE_NAMES = ("ve", "vp", "subvp", "edm")
"""The forward SDEs ``sde.kind`` names (:func:`scoresde.setup.build.build_sde`): VE, VP, sub-VP
and EDM's ``sigma(t) = t`` (:class:`scoresde.core.sdes.EDMSDE`)."""

NETWORK_CONVENTIONS: dict[str, tuple[str, str]] = {
    "ve": ("score", "sigma"),
    "vp": ("eps", "time"),
    "subvp": ("eps", "time"),
    "edm": ("edm", "c_noise"),
}
"""Each SDE family's network convention (appendix H; EDM's preconditioning for ``"edm"``),
``(parametrization, labels)``: what its networks output and what they are conditioned on. The
SDE classes' ``network_convention`` reads it (:class:`scoresde.ScoreModel` takes the defaults
from the SDE), and the torch-free config rules read it by ``sde.kind``."""

PARAMETRIZATION_NAMES = ("score", "eps", "edm")
"""What a score network outputs (``model.parametrization``,
:data:`scoresde.core.score.PARAMETRIZATIONS`)."""

LOSS_NAMES = ("dsm", "edm")
"""The continuous-time losses (``train.loss``, :data:`scoresde.methods.losses.LOSSES`)."""

TRAINING_NAMES = ("edm", "paper")
"""How ``scoresde demo`` trains (``--training``): EDM's preconditioning and loss for the chosen
SDE (:func:`scoresde.setup.presets.edm.edm_training`), or the paper's continuous DSM with the
SDE family's network convention (the ``digits_<sde>`` preset as it is)."""


def loss_problem(
    loss: str,
    *,
    continuous: bool = True,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
) -> str | None:
    """What is wrong with a loss choice, as a one-line message, or ``None`` (the one home of the
    rule; :func:`scoresde.methods.losses.check_loss` and the config raise it): an unknown
    ``loss``, ``"edm"`` in discrete time or with ``likelihood_weighting`` /
    ``importance_sampling`` (EDM's loss has its own weight and noise levels), or
    ``importance_sampling`` without ``likelihood_weighting``."""
    if loss not in LOSS_NAMES:
        return f"unknown train.loss {loss!r}; choose from {', '.join(LOSS_NAMES)}"
    if loss == "edm" and not continuous:
        return "train.loss=edm is continuous-time: it needs model.continuous=true"
    if loss == "edm" and (likelihood_weighting or importance_sampling):
        return ("train.loss=edm has its own weighting and noise levels; "
                "train.likelihood_weighting and train.importance_sampling are for train.loss=dsm")
    if importance_sampling and not likelihood_weighting:
        return "train.importance_sampling needs train.likelihood_weighting=true"
    return None

SAMPLER_NAMES = ("pc", "ode", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "edm", "adaptive")
"""The methods of :data:`scoresde.SAMPLERS`."""

GRID_NAMES = ("uniform", "edm", "log_snr")
"""The time grids of :data:`scoresde.methods.sampling.GRIDS`: equal steps in ``t``, EDM's rho-spaced
noise levels, equal steps in the log-SNR."""

PREDICTOR_NAMES = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling",
                   "probability_flow", "none")
"""The PC predictors of :data:`scoresde.methods.sampling.PREDICTORS`."""

CORRECTOR_NAMES = ("langevin", "langevin_per_example", "ald", "none")
"""The PC correctors of :data:`scoresde.methods.sampling.CORRECTORS`."""

ERROR_NORM_NAMES = {
    "adaptive": ("l2", "linf"),
    "likelihood": ("per-part", "joint", "per-example"),
}
"""The error norms of the adaptive SDE sampler and of the likelihood's adaptive ODE solve."""

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "heun3")
"""torchdiffeq's fixed-step solvers (they need a number of steps)."""

METRIC_NAMES = ("fid", "is", "kid", "bpd", "bound")
"""What ``scoresde evaluate`` can compute (``eval.metrics``)."""

COMPUTE_DTYPE_NAMES = ("float32", "bfloat16")
"""The names ``sample.compute_dtype`` takes (``torch.float32`` / ``torch.bfloat16``)."""
