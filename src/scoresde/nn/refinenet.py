"""RefineNet building blocks of NCSN/NCSNv2 (:mod:`scoresde.nn.ncsn`), with the official module
names and registration order: the pre-activation ``ResidualBlock`` (with ``ConvMeanPool``
downsampling), residual conv units (``RCUBlock``), chained residual pooling (``CRPBlock``),
multi-resolution fusion (``MSFBlock``) and the ``RefineBlock`` combining them; the networks
themselves are assembled in :mod:`scoresde.nn.ncsn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]
"""``channels -> norm`` with ``norm(x: (B, C, H, W), y: (B,) | None) -> (B, C, H, W)``."""


def ncsn_conv3x3(in_ch: int, out_ch: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with "same" padding and PyTorch's default initialisation."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
    """Convolution, then 2x2 mean pooling: ``(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return (h[..., ::2, ::2] + h[..., 1::2, ::2] + h[..., ::2, 1::2] + h[..., 1::2, 1::2]) / 4


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``(B, in_ch, H, W) -> (B, out_ch, H', W')`` of NCSN/NCSNv2.

    ``norm -> act -> conv1 -> norm -> act -> conv2``, plus a shortcut. With ``down`` and
    ``dilation == 1`` the block halves the resolution (``conv2`` and the shortcut are
    ``ConvMeanPool``); a dilated "down" block keeps the resolution and uses dilated convolutions
    instead (the dilated RefineNet trades downsampling for dilation). The shortcut is the identity
    unless the channels change or ``down`` is set. Norms come from ``norm`` (called with ``y``).
    Registration order (official): ``conv1, normalize2, conv2, shortcut, normalize1``.
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        act: nn.Module,
        norm: NormFactory,
        down: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.non_linearity = act
        mid_ch = in_ch if down else out_ch
        self.conv1 = ncsn_conv3x3(in_ch, mid_ch, dilation=dilation)
        self.normalize2 = norm(mid_ch)
        shortcut: nn.Module | None = None
        if dilation > 1:
            self.conv2 = ncsn_conv3x3(mid_ch, out_ch, dilation=dilation)
            if down or in_ch != out_ch:
                shortcut = ncsn_conv3x3(in_ch, out_ch, dilation=dilation)
        elif down:
            self.conv2 = ConvMeanPool(mid_ch, out_ch, 3)
            shortcut = ConvMeanPool(in_ch, out_ch, 1)
        else:
            self.conv2 = ncsn_conv3x3(mid_ch, out_ch)
            if in_ch != out_ch:
                shortcut = nn.Conv2d(in_ch, out_ch, 1)
        self.shortcut = shortcut
        self.normalize1 = norm(in_ch)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.conv1(self.non_linearity(self.normalize1(x, y)))
        h = self.conv2(self.non_linearity(self.normalize2(h, y)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class RCUBlock(nn.Module):
    """Residual conv units ``(B, C, H, W) -> (B, C, H, W)`` of RefineNet (Lin et al., 2017).

    ``n_blocks`` residual units of ``n_stages`` x (``[norm ->] act -> conv3x3``, no bias); the
    layers are attributes ``{i}_{j}_norm`` / ``{i}_{j}_conv`` (1-based), as in the official code.
    """

    def __init__(
        self, features: int, n_blocks: int, n_stages: int, act: nn.Module, norm: NormFactory | None
    ) -> None:
        super().__init__()
        self.names = [f"{i + 1}_{j + 1}" for i in range(n_blocks) for j in range(n_stages)]
        for name in self.names:
            if norm is not None:
                setattr(self, f"{name}_norm", norm(features))
            setattr(self, f"{name}_conv", ncsn_conv3x3(features, features, bias=False))
        self.n_stages = n_stages
        self.conditional = norm is not None
        self.act = act

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        for start in range(0, len(self.names), self.n_stages):
            residual = x
            for name in self.names[start : start + self.n_stages]:
                if self.conditional:
                    x = getattr(self, f"{name}_norm")(x, y)
                x = getattr(self, f"{name}_conv")(self.act(x))
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling ``(B, C, H, W) -> (B, C, H, W)``: ``x = act(x)``, then
    ``n_stages`` times ``path = conv(pool(path))`` (``path = norm(path)`` first if conditional),
    ``x = x + path``. 5x5 stride-1 pooling: max pooling unconditionally (NCSNv2), average pooling
    in the conditional blocks (NCSN), as in the official code.
    """

    def __init__(
        self, features: int, n_stages: int, act: nn.Module, norm: NormFactory | None
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList() if norm is not None else None
        for _ in range(n_stages):
            if self.norms is not None:
                self.norms.append(norm(features))
            self.convs.append(ncsn_conv3x3(features, features, bias=False))
        pool = nn.MaxPool2d if norm is None else nn.AvgPool2d
        self.pool = pool(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            if self.norms is not None:
                path = self.norms[i](path, y)
            path = conv(self.pool(path))
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: ``[norm ->] conv3x3`` of each input, bilinearly resized
    (``align_corners=True``) to ``shape`` and summed: ``(B, features, *shape)``."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList() if norm is not None else None
        for ch in in_planes:
            self.convs.append(ncsn_conv3x3(ch, features))
            if self.norms is not None:
                self.norms.append(norm(ch))
        self.features = features

    def forward(self, xs: Sequence[Tensor], y: Tensor | None, shape: Sequence[int]) -> Tensor:
        x0 = xs[0]
        out = torch.zeros(x0.shape[0], self.features, *shape, device=x0.device, dtype=x0.dtype)
        for i, (conv, x) in enumerate(zip(self.convs, xs, strict=True)):
            h = conv(x if self.norms is None else self.norms[i](x, y))
            out = out + F.interpolate(h, size=tuple(shape), mode="bilinear", align_corners=True)
        return out


class RefineBlock(nn.Module):
    """RefineNet block: fuses ``xs[i] (B, in_planes[i], H_i, W_i)`` into ``(B, features, *shape)``.

    Each input goes through two RCUs (``adapt_convs``), then multi-resolution fusion (``msf``,
    absent for the single-input ``start`` block), chained residual pooling (``crp``) and one RCU
    (three for the ``end`` block, ``output_convs``). Registration order (official):
    ``adapt_convs, output_convs, msf, crp``. ``norm`` makes it the conditional block of NCSN.
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(
        self,
        in_planes: Sequence[int],
        features: int,
        act: nn.Module,
        norm: NormFactory | None = None,
        start: bool = False,
        end: bool = False,
    ) -> None:
        super().__init__()
        self.adapt_convs = nn.ModuleList(RCUBlock(ch, 2, 2, act, norm) for ch in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act, norm)
        self.msf = None if start else MSFBlock(in_planes, features, norm)
        self.crp = CRPBlock(features, 2, act, norm)

    def forward(self, xs: Sequence[Tensor], y: Tensor | None, shape: Sequence[int]) -> Tensor:
        hs = [rcu(x, y) for rcu, x in zip(self.adapt_convs, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, y, shape)
        return self.output_convs(self.crp(h, y), y)
