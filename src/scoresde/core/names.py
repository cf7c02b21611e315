"""The lists of allowed names, in one torch-free module that the config and the code import.

Each table of functions elsewhere (the samplers, grids, predictors, correctors, error norms)
is keyed by exactly these names; a test checks that they agree, so a name is added here and in
its table, and every check and message follows.
"""

from __future__ import annotations

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
