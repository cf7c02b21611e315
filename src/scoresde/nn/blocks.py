"""Building blocks of NCSN++ / DDPM++ (the official ``layerspp`` modules).

Submodule and parameter names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ...) and their
registration order are those of the official code, so official state dicts load unchanged and the
parameters come in the same order (which the official EMA ``shadow_params`` list relies on).
Images are ``(B, C, H, W)``; time embeddings are ``(B, temb_dim)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.nn.layers import NIN, conv1x1, conv3x3, group_norm, linear
from scoresde.nn.resample import (
    FIRConv2d,
    downsample_2d,
    naive_downsample_2d,
    naive_upsample_2d,
    upsample_2d,
)

_SQRT2 = math.sqrt(2.0)


def _fir_buffer(module: nn.Module, fir_kernel: Sequence[float]) -> None:
    """Register the FIR taps as a non-persistent buffer (follows the module's device/dtype)."""
    taps = torch.tensor(tuple(fir_kernel), dtype=torch.float32)
    module.register_buffer("resample_kernel", taps, persistent=False)


class Combine(nn.Module):
    """Merge an input-pyramid image into the features (progressive input ``input_skip``).

    ``forward(x: (B, dim1, H, W), y: (B, dim2, H, W))`` projects ``x`` by a 1x1 conv and returns
    ``cat([Conv_0(x), y], 1)`` of shape ``(B, 2 dim2, H, W)`` (``method='cat'``) or the sum
    ``(B, dim2, H, W)`` (``method='sum'``).
    """

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"combine method must be 'cat' or 'sum', got {method!r}")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection.

    ``(B, C, H, W) -> (B, C, H, W)``: GroupNorm, per-pixel query/key/value projections
    (``NIN_0..2``), softmax attention with scale ``C ** -0.5``, output projection ``NIN_3``
    (initialised with ``init_scale``), then ``x + h`` (divided by sqrt 2 if ``skip_rescale``).
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0) -> None:
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = (
            nin(h).reshape(B, C, H * W).transpose(1, 2)
            for nin in (self.NIN_0, self.NIN_1, self.NIN_2)
        )
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.NIN_3(h.transpose(1, 2).reshape(B, C, H, W))
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """2x upsampling ``(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)`` (``out_ch`` default: ``in_ch``).

    Without ``fir``: nearest neighbour, then a 3x3 conv ``Conv_0`` if ``with_conv``. With ``fir``:
    FIR upsampling with ``fir_kernel``, fused with a 3x3 conv ``Conv2d_0`` if ``with_conv``.
    Without a conv the channel count is unchanged.
    """

    def __init__(
        self,
        in_ch: int | None = None,
        out_ch: int | None = None,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and in_ch is None:
            raise ValueError("Upsample with_conv needs in_ch")
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel)
        self.fir = fir
        self.with_conv = with_conv
        _fir_buffer(self, fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fir:
            h = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.Conv_0(h) if self.with_conv else h
        if self.with_conv:
            return self.Conv2d_0(x)
        return upsample_2d(x, self.resample_kernel, factor=2)


class Downsample(nn.Module):
    """2x downsampling ``(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)`` (``out_ch`` default ``in_ch``).

    Without ``fir``: a stride-2 3x3 conv ``Conv_0`` after padding one pixel right/bottom
    (``with_conv``), or 2x2 average pooling. With ``fir``: FIR downsampling with ``fir_kernel``,
    fused with a 3x3 conv ``Conv2d_0`` if ``with_conv``.
    """

    def __init__(
        self,
        in_ch: int | None = None,
        out_ch: int | None = None,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and in_ch is None:
            raise ValueError("Downsample with_conv needs in_ch")
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = FIRConv2d(
                in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel
            )
        self.fir = fir
        self.with_conv = with_conv
        _fir_buffer(self, fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fir:
            if self.with_conv:
                return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
            return F.avg_pool2d(x, 2, stride=2)
        if self.with_conv:
            return self.Conv2d_0(x)
        return downsample_2d(x, self.resample_kernel, factor=2)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block ``(B, in_ch, H, W), (B, temb_dim) -> (B, out_ch, H, W)``.

    ``act(GN(x)) -> conv3x3 -> + Dense(act(temb)) -> act(GN) -> dropout -> conv3x3``; the shortcut
    is the identity, or ``NIN_0`` (``Conv_2``, a 3x3 conv, if ``conv_shortcut``) when the channel
    count changes. Returns ``x + h``, divided by sqrt 2 if ``skip_rescale``.
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.1,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale = skip_rescale
        self.act = act
        self.out_ch = out_ch
        self.conv_shortcut = conv_shortcut

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block, optionally resampling: ``(B, in_ch, H, W) -> (B, out_ch, H', W')``.

    ``H' = 2H`` if ``up``, ``H/2`` if ``down``, else ``H``. Both branches are resampled right after
    the first ``act(GN(x))`` (FIR with ``fir_kernel`` if ``fir``, else nearest/average pooling); the
    shortcut gets a 1x1 conv ``Conv_2`` when the channels change or the block resamples.
    Returns ``x + h``, divided by sqrt 2 if ``skip_rescale``.
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a resnet block cannot both upsample and downsample")
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.up = up
        self.down = down
        self.fir = fir
        _fir_buffer(self, fir_kernel)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale = skip_rescale
        self.act = act
        self.in_ch = in_ch
        self.out_ch = out_ch

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return upsample_2d(x, self.resample_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.resample_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h
