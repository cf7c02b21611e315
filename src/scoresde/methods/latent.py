"""A deterministic latent space through the probability-flow ODE (Song et al., 2021, section 4.3).

The probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` (eq. 13) is a bijection
between the data at time ``eps`` and the latent ``z = x(T)``, whose distribution is (close to)
the isotropic Gaussian prior. Section 4.3 ("Manipulating latent representations", "Uniquely
identifiable encoding"): the encoding is exact up to the solver's error, and for a given score
(and data distribution, when the score is the true one) it is unique, not a learned posterior.

* :func:`encode`: ``x -> z``, integrating from ``eps`` to ``T``.
* :func:`decode`: ``z -> x``, from ``T`` back to ``eps`` without the final Tweedie denoising step
  of :func:`scoresde.ode_sample`, so ``decode(encode(x)) == x`` to the solver's tolerance.
* :func:`slerp` and :func:`interpolate`: spherical interpolation between two encodings (the
  priors are centred isotropic Gaussians, so the latents of typical data lie near a sphere).

Both solves are :func:`scoresde.methods.sampling.solve_probability_flow` (torchdiffeq), on the
tensors'
own device and dtype; nothing here draws random numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE
from scoresde.methods.sampling.ode import TimeProgress, solve_probability_flow

PARALLEL_TOL = 1e-6


def encode(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    num_steps: int | None = None,
    progress: bool | TimeProgress = False,
) -> tuple[Tensor, int]:
    """The latent code of ``x``: the probability-flow ODE solved from ``eps`` to ``T``.

    Args:
        x: data ``(B, ...)`` in the model's scale, taken as ``x(eps)``.
        eps: the start time (the same convention as :func:`scoresde.ode_sample`'s end time).
        rtol, atol: tolerances of the adaptive solver.
        method, num_steps: a torchdiffeq method; fixed-step ones (``"euler"``, ``"midpoint"``,
            ``"rk4"``, ``"heun3"``) need ``num_steps``.
        progress: a bar in integration time (:class:`scoresde.methods.sampling.ode.TimeProgress`).

    Returns:
        ``(z (B, ...), nfe)``: the latents and the number of score evaluations.
    """
    return solve_probability_flow(
        sde, score_fn, x, eps, sde.T, rtol=rtol, atol=atol, method=method, num_steps=num_steps,
        progress="encode" if progress is True else progress,
    )


def decode(
    sde: SDE,
    score_fn: ScoreFn,
    z: Tensor,
    *,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    num_steps: int | None = None,
    progress: bool | TimeProgress = False,
) -> tuple[Tensor, int]:
    """The data of latents ``z``: the probability-flow ODE solved from ``T`` back to ``eps``.

    This is :func:`scoresde.ode_sample` with ``denoise=False``: no Tweedie step, so that
    :func:`decode` inverts :func:`encode` (same ``eps`` and solver) to the solver's tolerance.

    Args:
        z: latents ``(B, ...)`` (e.g. from :func:`encode` or the prior).
        eps, rtol, atol, method, num_steps, progress: see :func:`encode`.

    Returns:
        ``(x (B, ...), nfe)`` in the model's scale.
    """
    return solve_probability_flow(
        sde, score_fn, z, sde.T, eps, rtol=rtol, atol=atol, method=method, num_steps=num_steps,
        progress="decode" if progress is True else progress,
    )



def slerp(z0: Tensor, z1: Tensor, alphas: Tensor) -> Tensor:
    """Spherical linear interpolation between two latents, one frame per ``alpha``.

    ``slerp = sin((1 - a) w) / sin(w) z0 + sin(a w) / sin(w) z1`` with ``w`` the angle between
    ``z0`` and ``z1`` as flat vectors: for ``|z0| == |z1|`` every frame keeps that norm (it stays
    on the shell where the prior's mass lies, which plain linear interpolation leaves). Nearly
    parallel or antiparallel vectors (``sin(w) < 1e-6``) and zero vectors fall back to linear
    interpolation.

    Args:
        z0, z1: one latent each, same shape ``(...)`` (a single example, not a batch).
        alphas: ``(K,)`` fractions; ``0`` gives ``z0`` and ``1`` gives ``z1`` exactly.

    Returns:
        ``(K, ...)`` frames, in ``z0``'s dtype and on its device.
    """
    if z0.shape != z1.shape:
        raise ValueError(
            f"slerp needs latents of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )
    alphas = torch.as_tensor(alphas, dtype=z0.dtype, device=z0.device).reshape(-1)
    a = alphas.reshape(-1, *([1] * z0.ndim))
    n0, n1 = z0.flatten().norm(), z1.flatten().norm()
    lerp = (1 - a) * z0 + a * z1
    if float(n0) == 0.0 or float(n1) == 0.0:
        return lerp
    cos = (z0.flatten() @ z1.flatten() / (n0 * n1)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if float(sin) < PARALLEL_TOL:
        return lerp
    out = (torch.sin((1 - a) * omega) * z0 + torch.sin(a * omega) * z1) / sin
    out[alphas == 0] = z0
    out[alphas == 1] = z1
    return out


def interpolate(
    sde: SDE,
    score_fn: ScoreFn,
    x0: Tensor,
    x1: Tensor,
    num: int = 8,
    **ode: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Interpolate between two data points through their latents (section 4.3).

    Encodes ``x0`` and ``x1`` in one solve, takes ``num`` evenly spaced :func:`slerp` frames
    (``alpha = 0, 1 / (num - 1), ..., 1``) and decodes them in one solve. The end frames are
    ``decode(encode(x0))`` and ``decode(encode(x1))``: ``x0`` and ``x1`` to the solver's
    tolerance.

    Args:
        x0, x1: one example each, shape ``(...)`` in the model's scale.
        num: the number of frames, ``>= 2``.
        ode: ``eps``, ``rtol``, ``atol``, ``method``, ``num_steps``, ``progress`` of
            :func:`encode` and :func:`decode`.

    Returns:
        ``(frames (num, ...), info)`` with ``info["latents"]`` ``(2, ...)``, ``info["alphas"]``
        ``(num,)``, ``info["nfe_encode"]`` and ``info["nfe_decode"]``.
    """
    if num < 2:
        raise ValueError(f"interpolate needs num >= 2 frames, got {num}")
    if x0.shape != x1.shape:
        raise ValueError(
            f"interpolate needs two examples of one shape, got {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )
    z, nfe_encode = encode(sde, score_fn, torch.stack([x0, x1]), **ode)
    alphas = torch.linspace(0, 1, num, dtype=z.dtype, device=z.device)
    frames, nfe_decode = decode(sde, score_fn, slerp(z[0], z[1], alphas), **ode)
    info = {"latents": z, "alphas": alphas, "nfe_encode": nfe_encode, "nfe_decode": nfe_decode}
    return frames, info
