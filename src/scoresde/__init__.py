"""scoresde: score-based generative modeling through SDEs (Song et al., ICLR 2021), in PyTorch.

The public API: SDEs, the network-to-score boundary, losses, samplers, likelihood, inverse
problems, guidance and the latent space. Everything outside the networks works with
``score_fn(x, t)``.
"""

from scoresde.core.classifier import NoiseClassifier, classifier_loss
from scoresde.core.score import ScoreModel, edm_coefficients, make_score_fn, tweedie_denoise
from scoresde.core.sdes import (
    EDMSDE,
    SDE,
    VESDE,
    VPSDE,
    SubVPSDE,
    probability_flow_drift,
    reverse_discretize,
    reverse_sde,
)
from scoresde.core.transforms import uniform_dequantize
from scoresde.methods.guidance import classifier_free_guidance, classifier_guidance
from scoresde.methods.importance import time_proposal
from scoresde.methods.inverse import colorize, inpaint, linear_inverse
from scoresde.methods.latent import decode, encode, interpolate, slerp
from scoresde.methods.likelihood import bits_per_dim, dequantized_bpd, log_likelihood
from scoresde.methods.likelihood_bound import bound_bpd, likelihood_bound
from scoresde.methods.losses import ddpm_loss, dsm_loss, edm_loss, smld_loss
from scoresde.methods.sampling import (
    CORRECTORS,
    PREDICTORS,
    SAMPLERS,
    ode_sample,
    pc_sample,
    sample,
    uniform_time_grid,
)

__version__ = "0.1.0"

__all__ = [
    "CORRECTORS",
    "EDMSDE",
    "PREDICTORS",
    "SAMPLERS",
    "SDE",
    "VESDE",
    "VPSDE",
    "NoiseClassifier",
    "ScoreModel",
    "SubVPSDE",
    "bits_per_dim",
    "bound_bpd",
    "classifier_free_guidance",
    "classifier_guidance",
    "classifier_loss",
    "colorize",
    "ddpm_loss",
    "decode",
    "dequantized_bpd",
    "dsm_loss",
    "edm_coefficients",
    "edm_loss",
    "encode",
    "inpaint",
    "interpolate",
    "likelihood_bound",
    "linear_inverse",
    "log_likelihood",
    "make_score_fn",
    "ode_sample",
    "pc_sample",
    "probability_flow_drift",
    "reverse_discretize",
    "reverse_sde",
    "sample",
    "slerp",
    "smld_loss",
    "time_proposal",
    "tweedie_denoise",
    "uniform_dequantize",
    "uniform_time_grid",
]
