"""Samplers: predictor and corrector steps, the PC loop, the probability-flow ODE, the few-step
ODE samplers (DDIM, Heun, DPM-Solver++), EDM's stochastic sampler and the adaptive-step SDE
solver, and the one interface over them (:func:`sample` and the
:data:`SAMPLERS` table)."""

from scoresde.methods.sampling.api import (
    SAMPLERS,
    adaptive_sde_sampler,
    check_sampler,
    ddim_sampler,
    dpmpp_2m_sampler,
    dpmpp_3m_sampler,
    edm_stochastic_sampler,
    heun_sampler,
    pc_sample,
    sample,
    sampler_options,
)
from scoresde.methods.sampling.correctors import (
    CORRECTORS,
    annealed_langevin,
    langevin,
    langevin_per_example,
    no_corrector,
)
from scoresde.methods.sampling.driver import Rule, Step, integrate
from scoresde.methods.sampling.grids import edm_time_grid, log_snr_time_grid, uniform_time_grid
from scoresde.methods.sampling.ode import ode_sample, solve_probability_flow
from scoresde.methods.sampling.predictors import (
    PREDICTORS,
    ancestral_sampling,
    euler_maruyama,
    no_predictor,
    probability_flow,
    reverse_diffusion,
)
from scoresde.methods.sampling.scaled import GRIDS

__all__ = [
    "CORRECTORS",
    "GRIDS",
    "PREDICTORS",
    "SAMPLERS",
    "Rule",
    "Step",
    "adaptive_sde_sampler",
    "ancestral_sampling",
    "annealed_langevin",
    "check_sampler",
    "ddim_sampler",
    "dpmpp_2m_sampler",
    "dpmpp_3m_sampler",
    "edm_stochastic_sampler",
    "edm_time_grid",
    "euler_maruyama",
    "heun_sampler",
    "integrate",
    "langevin",
    "langevin_per_example",
    "log_snr_time_grid",
    "no_corrector",
    "no_predictor",
    "ode_sample",
    "pc_sample",
    "probability_flow",
    "reverse_diffusion",
    "sample",
    "sampler_options",
    "solve_probability_flow",
    "uniform_time_grid",
]
