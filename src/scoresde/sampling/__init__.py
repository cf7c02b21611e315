"""Samplers: predictor and corrector steps, the PC loop, and the probability-flow ODE."""

from scoresde.sampling.correctors import CORRECTORS, annealed_langevin, langevin, no_corrector
from scoresde.sampling.grids import uniform_time_grid
from scoresde.sampling.ode import ode_sample, solve_probability_flow
from scoresde.sampling.pc import pc_sample
from scoresde.sampling.predictors import (
    PREDICTORS,
    ancestral_sampling,
    euler_maruyama,
    no_predictor,
    reverse_diffusion,
)

__all__ = [
    "CORRECTORS",
    "PREDICTORS",
    "ancestral_sampling",
    "annealed_langevin",
    "euler_maruyama",
    "langevin",
    "no_corrector",
    "no_predictor",
    "ode_sample",
    "pc_sample",
    "reverse_diffusion",
    "solve_probability_flow",
    "uniform_time_grid",
]
