"""Basic layers of NCSN++ / DDPM++ with the initialisation of the official code.

Every weight is drawn with ``default_init`` (DDPM's ``variance_scaling(scale, 'fan_avg',
'uniform')``) and every bias starts at zero. The layers are created in the same way as the official
code (``nn.Conv2d``/``nn.Linear`` built first, then re-initialised), so that with the same seed the
random number generator is consumed identically and the initial weights match bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Initializer = Callable[[Sequence[int]], Tensor]


def _fans(shape: Sequence[int], in_axis: int = 1, out_axis: int = 0) -> tuple[float, float]:
    """Fan-in and fan-out of a weight ``shape`` (receptive field counted, as in JAX)."""
    receptive_field = math.prod(shape) / shape[in_axis] / shape[out_axis]
    return shape[in_axis] * receptive_field, shape[out_axis] * receptive_field


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: int = 1,
    out_axis: int = 0,
) -> Initializer:
    """JAX's ``variance_scaling`` initialiser: returns ``init(shape) -> float32 Tensor``.

    Args:
        scale: variance multiplier.
        mode: ``'fan_in'``, ``'fan_out'`` or ``'fan_avg'``: the denominator of the variance.
        distribution: ``'uniform'`` (on ``[-sqrt(3 v), sqrt(3 v)]``) or ``'normal'``.
        in_axis, out_axis: the axes of ``shape`` holding the input and output dimensions.
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"invalid mode for variance scaling initializer: {mode!r}")
    if distribution not in ("uniform", "normal"):
        raise ValueError(f"invalid distribution for variance scaling initializer: {distribution!r}")

    def init(shape: Sequence[int]) -> Tensor:
        fan_in, fan_out = _fans(shape, in_axis, out_axis)
        denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[
            mode
        ]
        variance = scale / denominator
        if distribution == "normal":
            return torch.randn(*shape, dtype=torch.float32) * math.sqrt(variance)
        return (torch.rand(*shape, dtype=torch.float32) * 2.0 - 1.0) * math.sqrt(3 * variance)

    return init


def default_init(scale: float = 1.0) -> Initializer:
    """DDPM's initialiser: ``variance_scaling(scale, 'fan_avg', 'uniform')``.

    ``scale = 0`` is replaced by ``1e-10`` (as in the official code), so "zero-initialised" output
    layers are tiny but not exactly zero.
    """
    return variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def conv3x3(
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    bias: bool = True,
    init_scale: float = 1.0,
    padding: int = 1,
) -> nn.Conv2d:
    """3x3 convolution ``(B, in_ch, H, W) -> (B, out_ch, H', W')`` with ``default_init``."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    bias: bool = True,
    init_scale: float = 1.0,
) -> nn.Conv2d:
    """1x1 convolution ``(B, in_ch, H, W) -> (B, out_ch, H, W)`` with ``default_init``."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """Dense layer ``(B, in_features) -> (B, out_features)`` with ``default_init``, zero bias."""
    layer = nn.Linear(in_features, out_features)
    layer.weight.data = default_init(init_scale)(layer.weight.shape)
    nn.init.zeros_(layer.bias)
    return layer


class NIN(nn.Module):
    """Network-in-network: a per-pixel dense layer ``(B, in_dim, H, W) -> (B, num_units, H, W)``.

    The weight ``W`` is stored as ``(in_dim, num_units)``, exactly as in the official checkpoints
    (the transpose of a 1x1 convolution weight), with bias ``b`` of shape ``(num_units,)``.
    """

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(default_init(init_scale)((in_dim, num_units)))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.W.t()[:, :, None, None]
        return nn.functional.conv2d(x, weight, self.b)


def group_norm(channels: int) -> nn.GroupNorm:
    """The GroupNorm of NCSN++: ``min(channels // 4, 32)`` groups, ``eps = 1e-6``, affine."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def get_act(name: str) -> nn.Module:
    """Activation module by the official config name: swish (SiLU), elu, relu or lrelu (0.2)."""
    name = name.lower()
    if name == "swish":
        return nn.SiLU()
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    if name == "lrelu":
        return nn.LeakyReLU(negative_slope=0.2)
    raise ValueError(f"unknown nonlinearity {name!r}; expected swish, elu, relu or lrelu")
