"""The network-to-score boundary: :class:`ScoreModel`, the one object that turns a network into
a score ``score_fn(x, t)``.

Everything outside the networks (losses, samplers, likelihood, inverse problems) sees only a
function ``score_fn(x, t) -> score`` with ``x`` ``(B, ...)`` and ``t`` ``(B,)``. A
:class:`ScoreModel` is such a function, and it holds every convention of the network it wraps
(those of the official code, Song et al., 2021, appendix H):

- time: a continuous-time model (trained with the DSM objective of eq. 7) or a discrete one
  (trained with the SMLD or DDPM objective on the ``N`` steps of the SDE's discretisation);
- the labels the network is called with, ``model(x, labels, **model_kwargs)``. Two families:

  ===========  ==============================  ==========================================
  ``labels``   continuous time                 discrete time
  ===============  ==============================  ======================================
  ``"sigma"``      ``s(t)`` (``sigma(t)`` for VE)  NCSN index ``round((T - t)(N - 1))``
  ``"time"``       ``999 t``                       DDPM step index ``(N - 1) t``
  ``"c_noise"``    EDM's ``ln(sigma(t)) / 4``      (none)
  ===============  ==============================  ======================================

  (NCSN indexes its scales from the largest: index 0 at ``t = T``.) VE models (NCSN, NCSN++) use
  ``"sigma"``, VP and sub-VP models (DDPM, DDPM++) ``"time"``, EDM-preconditioned ``"c_noise"``;
- the output parametrization: ``"score"``, the output is the score (VE networks, with
  ``scale_by_sigma`` inside the network), or ``"eps"``, the output predicts the noise ``z`` of
  ``x_t = m(t) x_0 + s(t) z`` and ``score = -eps / s(t)``. The std ``s(t)`` is the marginal std of
  the SDE, except for a discrete-time ``"time"`` (DDPM) model, whose std is DDPM's
  ``sqrt(1 - alpha_bar_i)`` at ``i = round((N - 1) t)`` (the official code floors; rounding keeps
  ``t_i = i / (N - 1)`` on index ``i`` exactly). Or ``"edm"``, EDM's preconditioning (Karras et
  al., 2022, Table 1 and eq. 7) for any SDE, in the scaled state ``y = x / m(t)`` with noise level
  ``sigma = s(t) / m(t)``: the network ``F`` is called on ``c_in y`` with labels ``c_noise``, the
  denoiser is ``D(y; sigma) = c_skip y + c_out F = E[x_0 | x_t]`` and ``score = (m D - x) / s^2``
  (coefficients: :func:`edm_coefficients`; continuous time only; ``docs/edm.md``);
- optional conditioning (``model_kwargs``, e.g. class labels) passed to every network call;
- mixed precision (``compute_dtype``).

The SDE only provides neutral quantities: its marginal coefficients ``m(t), s(t)``, ``T``, ``N``
and, for DDPM models, its table ``alphas_cumprod``. Where a convention is not given, it is derived
from the SDE's mathematics: an SDE whose mean coefficient ``m(t)`` is identically one (variance
exploding, VE) defaults to ``"score"`` and ``"sigma"``, every other SDE to ``"eps"`` and
``"time"``; EDM's SDE (:class:`~scoresde.core.sdes.EDMSDE`) to ``"edm"`` and ``"c_noise"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from scoresde.core._tensor import append_dims
from scoresde.core._types import ScoreFn
from scoresde.core.sdes import _lookup

if TYPE_CHECKING:
    from scoresde.core.sdes import SDE

__all__ = [
    "COMPUTE_DTYPES",
    "LABELS",
    "PARAMETRIZATIONS",
    "ScoreFn",
    "ScoreModel",
    "edm_coefficients",
    "is_variance_exploding",
    "is_variance_preserving",
    "make_score_fn",
    "tweedie_denoise",
]

PARAMETRIZATIONS = ("score", "eps", "edm")
LABELS = ("sigma", "time", "c_noise")
COMPUTE_DTYPES = (torch.bfloat16, torch.float16)

_PROBE_POINTS = 17


def check_compute_dtype(compute_dtype: torch.dtype | None) -> None:
    """Refuse a mixed-precision dtype other than ``None``, bfloat16 or float16 (one line)."""
    if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unsupported compute_dtype {compute_dtype}; choose None or one of {COMPUTE_DTYPES}"
        )


def call_in_precision(
    net: Callable[..., Tensor], compute_dtype: torch.dtype | None, x: Tensor, *args, **kwargs
) -> Tensor:
    """``net(x, *args, **kwargs)``; with a ``compute_dtype``, under ``torch.autocast`` for
    ``x``'s device in that dtype, the output cast back to ``x``'s dtype (at least float32): the
    one mixed-precision call of :class:`ScoreModel` and
    :class:`~scoresde.core.classifier.NoiseClassifier`."""
    if compute_dtype is None:
        return net(x, *args, **kwargs)
    with torch.autocast(device_type=x.device.type, dtype=compute_dtype):
        out = net(x, *args, **kwargs)
    return out.to(torch.promote_types(x.dtype, torch.float32))


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's preconditioning at noise levels ``sigma`` ``(B,)`` (Karras et al., 2022, Table 1):
    ``(c_skip, c_out, c_in, c_noise)``, each ``(B,)``, with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
    ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
    ``c_noise = ln(sigma) / 4`` (``sd = sigma_data``)."""
    c_in = torch.rsqrt(sigma**2 + sigma_data**2)
    c_skip = sigma_data**2 * c_in**2
    return c_skip, sigma * sigma_data * c_in, c_in, torch.log(sigma) / 4


def _probe_coeffs(sde: SDE) -> tuple[Tensor, Tensor]:
    """``(m(t), s(t))`` on an even float64 grid of ``[0, T]``, to read off the SDE's kind."""
    t = torch.linspace(0.0, float(sde.T), _PROBE_POINTS, dtype=torch.float64)
    return sde.marginal_coeffs(t)


def is_variance_exploding(sde: SDE) -> bool:
    """Whether the SDE's mean coefficient ``m(t)`` is identically one (checked on a grid of
    ``[0, T]``): the variance-exploding family, whose perturbed data are ``x_0 + s(t) z``."""
    mean_coeff, _ = _probe_coeffs(sde)
    return bool(torch.all(mean_coeff == 1))


def is_variance_preserving(sde: SDE) -> bool:
    """Whether ``m(t)^2 + s(t)^2 = 1`` on ``[0, T]`` (checked on a grid, float64): the SDEs that
    are the continuous limit of a DDPM chain, so that DDPM's discrete table applies."""
    mean_coeff, std = _probe_coeffs(sde)
    total = mean_coeff**2 + std**2
    return bool(torch.allclose(total, torch.ones_like(total), rtol=0, atol=1e-9))


class ScoreModel(nn.Module):
    """A network together with its conventions: a score function ``score_fn(x, t)``.

    Calling it (``forward``) gives the score; :meth:`score`, :meth:`eps` and :meth:`denoise` are
    the three views of the same network output (module docstring for the conventions). The
    wrapped network is the submodule ``net``: the state dict is the network's with keys prefixed
    ``"net."``, and ``.to(device)`` / ``.eval()`` / ``.parameters()`` act on it. (Tensors in
    ``model_kwargs`` are not moved by ``.to``.)

    Args:
        net: called as ``net(x, labels, **kwargs)`` with ``x`` ``(B, ...)`` and ``labels``
            ``(B,)``, returning a tensor shaped like ``x``; an ``nn.Module`` or any callable.
        sde: the SDE the network was trained with.
        continuous: whether the network was trained in continuous time.
        parametrization: ``"score"``, ``"eps"`` or ``"edm"``; ``None``: the SDE family's
            (``sde.network_convention``: ``"score"`` for VE, ``"eps"`` for VP and sub-VP,
            ``"edm"`` for EDM's SDE).
        labels: ``"sigma"``, ``"time"`` or ``"c_noise"``; ``None``: ``"c_noise"`` for ``"edm"``,
            else the SDE family's (``"sigma"`` for VE, ``"time"`` otherwise). Discrete-time
            ``"time"`` (DDPM) models need a variance preserving SDE with an ``alphas_cumprod``
            table (so not sub-VP). ``"edm"`` needs ``"c_noise"`` and continuous time.
        sigma_data: EDM's data std ``sigma_d`` (> 0) of the ``"edm"`` parametrization.
        model_kwargs: keyword arguments for every network call, e.g. ``{"class_labels": y}``;
            a call's own keyword arguments are added to (and override) them.
        compute_dtype: ``None`` (default): the network runs as it is, in its own dtype, and its
            output is returned or converted unchanged in dtype. ``torch.bfloat16`` or
            ``torch.float16``: the network runs under ``torch.autocast`` for ``x``'s device type
            in that dtype, and its output is cast to ``x``'s dtype, at least float32, before the
            conversion (division by the std, Tweedie), which is done outside autocast.

    Raises:
        ValueError: an unknown parametrization, labels or compute dtype, discrete DDPM labels
            on an SDE that has no DDPM discretisation (e.g. sub-VP), ``"edm"`` or ``"c_noise"``
            in discrete time, ``"edm"`` with other labels, or ``sigma_data <= 0``.
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., Tensor],
        sde: SDE,
        *,
        continuous: bool = True,
        parametrization: str | None = None,
        labels: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        compute_dtype: torch.dtype | None = None,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        parametrization = parametrization or sde.network_convention[0]
        labels = labels or _default_labels(sde, parametrization)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"unknown parametrization {parametrization!r}; choose from {PARAMETRIZATIONS}"
            )
        if labels not in LABELS:
            raise ValueError(f"unknown labels {labels!r}; choose from {LABELS}")
        _check_edm(parametrization, labels, continuous, sigma_data)
        check_compute_dtype(compute_dtype)
        self._ddpm_std: Tensor | None = None
        if not continuous and labels == "time":
            table = getattr(sde, "alphas_cumprod", None)
            if table is None or not is_variance_preserving(sde):
                raise ValueError(
                    "discrete-time DDPM labels need a variance-preserving SDE (m^2 + s^2 = 1) "
                    "with a DDPM table alphas_cumprod; the sub-VP SDE has no discrete-time "
                    "model; use continuous=True"
                )
            self._ddpm_std = torch.sqrt(1.0 - table)  # (N,), the table's dtype (float32)
        self.net = net
        self.sde = sde
        self.continuous = bool(continuous)
        self.parametrization = parametrization
        self.labels = labels
        self.model_kwargs = dict(model_kwargs or {})
        self.compute_dtype = compute_dtype
        self.sigma_data = float(sigma_data)

    def extra_repr(self) -> str:
        edm = f", sigma_data={self.sigma_data}" if self.parametrization == "edm" else ""
        return (
            f"sde={self.sde!r}, continuous={self.continuous}, "
            f"parametrization={self.parametrization!r}, labels={self.labels!r}{edm}, "
            f"compute_dtype={self.compute_dtype}"
        )

    # ---------------------------------------------------------------------------------------
    # The neutral quantities: labels and std
    # ---------------------------------------------------------------------------------------

    def network_labels(self, t: Tensor) -> Tensor:
        """What the network is conditioned on at times ``t`` ``(B,)``: ``(B,)``.

        ``"sigma"``: ``s(t)`` (continuous) or the NCSN index ``round((T - t)(N - 1))`` as long
        (discrete); ``"time"``: ``999 t`` (continuous) or the DDPM index ``(N - 1) t``
        (discrete, in ``t``'s dtype); ``"c_noise"``: ``ln(sigma(t)) / 4 = -log_snr(t) / 8``.
        """
        sde = self.sde
        if self.labels == "c_noise":
            return sde.log_snr(t) / -8
        if self.labels == "sigma":
            if self.continuous:
                return sde.marginal_coeffs(t)[1]
            return torch.round((sde.T - t) * (sde.N - 1)).long()
        if self.continuous:
            return t * 999
        return t * (sde.N - 1)

    def std(self, t: Tensor) -> Tensor:
        """The std ``s(t)`` ``(B,)`` of the parametrization: ``score = -eps / s(t)``.

        The marginal std of the SDE, except for discrete-time DDPM models: DDPM's
        ``sqrt(1 - alpha_bar_i)`` at ``i = round((N - 1) t)``, read from the SDE's float32 table.
        """
        if self._ddpm_std is None:
            return self.sde.marginal_coeffs(t)[1]
        idx = torch.round(t * (self.sde.N - 1)).long()
        return _lookup(self._ddpm_std, idx, t)

    # ---------------------------------------------------------------------------------------
    # The network call and its three views
    # ---------------------------------------------------------------------------------------

    def network_output(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The raw network output ``(B, ...)`` at ``x`` ``(B, ...)``, ``t`` ``(B,)``.

        ``cond`` is added to ``model_kwargs``. With a ``compute_dtype`` the network runs under
        autocast and the output is cast back to ``x``'s dtype (at least float32). For ``"edm"``
        this is ``F(c_in y; c_noise)`` with ``y = x / m(t)``, the network called on ``c_in y``.
        """
        kwargs = {**self.model_kwargs, **cond} if cond else self.model_kwargs
        if self.parametrization == "edm":
            x = self._edm_scaled(x, t)[0] * append_dims(self._edm_coeffs(t)[2], x.ndim)
        return call_in_precision(self.net, self.compute_dtype, x, self.network_labels(t), **kwargs)

    def _edm_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return edm_coefficients(self.sde.sigma(t), self.sigma_data)

    def _edm_scaled(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, sigma)``: the scaled state ``x / m(t)`` and ``sigma(t)`` ``(B,)``."""
        return x / append_dims(self.sde.marginal_coeffs(t)[0], x.ndim), self.sde.sigma(t)

    def _edm_eps(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """EDM's ``(y - D) / sigma = c_in (sigma c_in y - sd F)``, free of cancellation."""
        out = self.network_output(x, t, **cond)
        y, sigma = self._edm_scaled(x, t)
        c_in = append_dims(self._edm_coeffs(t)[2], out.ndim)
        return c_in * (append_dims(sigma, out.ndim) * c_in * y - self.sigma_data * out)

    def score(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The score ``grad_x log p_t(x)`` ``(B, ...)`` at ``x`` ``(B, ...)``, ``t`` ``(B,)``;
        for ``"edm"`` ``(m D - x) / s^2 = -eps / s`` with eps as :meth:`eps`."""
        if self.parametrization == "edm":
            return -self._edm_eps(x, t, **cond) / append_dims(self.std(t), x.ndim)
        out = self.network_output(x, t, **cond)
        if self.parametrization == "score":
            return out
        return -out / append_dims(self.std(t), out.ndim)

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """``score_fn(x, t)``: the score, as :meth:`score`."""
        return self.score(x, t, **cond)

    def eps(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The noise prediction ``eps = -s(t) score`` ``(B, ...)`` (``s`` as :meth:`std`); for
        ``"edm"`` ``(y - D) / sigma``, computed as ``c_in (sigma c_in y - sigma_d F)``."""
        if self.parametrization == "edm":
            return self._edm_eps(x, t, **cond)
        out = self.network_output(x, t, **cond)
        if self.parametrization == "eps":
            return out
        return -append_dims(self.std(t), out.ndim) * out

    def denoise(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The posterior mean ``E[x_0 | x_t = x]`` ``(B, ...)`` by Tweedie's formula (appendix G):
        ``(x + s(t)^2 score(x, t)) / m(t)`` with the SDE's marginal coefficients; the same as
        ``tweedie_denoise(sde, self, x, t)``. For ``"edm"`` EDM's ``D = c_skip y + c_out F``
        itself (equal to Tweedie's to rounding)."""
        if self.parametrization == "edm":
            out = self.network_output(x, t, **cond)
            c_skip, c_out = (append_dims(c, out.ndim) for c in self._edm_coeffs(t)[:2])
            return c_skip * self._edm_scaled(x, t)[0] + c_out * out
        return tweedie_denoise(self.sde, lambda x_, t_: self.score(x_, t_, **cond), x, t)


def _default_labels(sde: SDE, parametrization: str) -> str:
    """``"c_noise"`` for ``"edm"``; else the family's labels (``sde.network_convention``),
    except that a network of the EDM family asked for another output takes ``"sigma"``: EDM's
    SDE is variance exploding, and VE networks are conditioned on sigma."""
    if parametrization == "edm":
        return "c_noise"
    family = sde.network_convention[1]
    return "sigma" if family == "c_noise" else family


def _check_edm(parametrization: str, labels: str, continuous: bool, sigma_data: float) -> None:
    if parametrization == "edm" and labels != "c_noise":
        raise ValueError(f"the edm parametrization uses labels 'c_noise', not {labels!r}")
    if not continuous and labels == "c_noise":
        raise ValueError("the edm parametrization and c_noise labels need continuous=True")
    if not (sigma_data > 0 and math.isfinite(sigma_data)):
        raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data}")


def make_score_fn(
    model: nn.Module | Callable[..., Tensor],
    sde: SDE,
    *,
    continuous: bool = True,
    parametrization: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    labels: str | None = None,
    compute_dtype: torch.dtype | None = None,
    sigma_data: float = 0.5,
) -> ScoreModel:
    """Wrap ``model`` as a score function ``score_fn(x, t)`` for ``sde``: a :class:`ScoreModel`.

    Args:
        model: called as ``model(x, labels, **model_kwargs)`` and returning a tensor like ``x``.
        sde: the SDE the model was trained with; gives the labels and the std.
        continuous: whether the model was trained in continuous time.
        parametrization: ``"score"``, ``"eps"`` or ``"edm"``; ``None``: the SDE family's
            (``"score"`` for VE, ``"eps"`` for VP and sub-VP, ``"edm"`` for EDM's SDE).
        model_kwargs: extra keyword arguments for every call, e.g. ``{"class_labels": y}``.
        labels: ``"sigma"``, ``"time"`` or ``"c_noise"``; ``None``: as :class:`ScoreModel`.
        compute_dtype: mixed precision for the network, see :class:`ScoreModel`.
        sigma_data: EDM's ``sigma_d`` for ``"edm"``.

    Returns:
        ``score_fn(x (B, ...), t (B,)) -> (B, ...)``.
    """
    return ScoreModel(
        model,
        sde,
        continuous=continuous,
        parametrization=parametrization,
        labels=labels,
        model_kwargs=model_kwargs,
        compute_dtype=compute_dtype,
        sigma_data=sigma_data,
    )


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula ``E[x_0 | x_t] = (x_t + s(t)^2 score(x_t, t)) / m(t)`` (appendix G).

    The final noise-free step of the samplers: one score evaluation, shape of ``x``.
    """
    mean_coeff, std = sde.marginal_coeffs(t)
    return (x + append_dims(std**2, x.ndim) * score_fn(x, t)) / append_dims(mean_coeff, x.ndim)
