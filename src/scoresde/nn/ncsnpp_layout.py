"""How NCSN++ / DDPM++ lay out their blocks in the official module list ``all_modules``.

:class:`ModuleListBuilder` creates the blocks in exactly the official order (so official state
dicts load unchanged) and records, per resolution, which entry plays which role
(:class:`EncoderLevel`, :class:`DecoderLevel`); :class:`scoresde.nn.ncsnpp.NCSNpp` reads those
roles in its forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from scoresde.nn.blocks import (
    AttnBlockpp,
    Combine,
    Downsample,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
)
from scoresde.nn.layers import conv3x3, group_norm


@dataclass(frozen=True)
class EncoderLevel:
    """Indices into ``all_modules`` for one resolution of the downsampling path."""

    blocks: tuple[int, ...]
    attentions: tuple[int | None, ...]
    downsample: int | None
    pyramid: int | None


@dataclass(frozen=True)
class DecoderLevel:
    """Indices into ``all_modules`` for one resolution of the upsampling path.

    ``pyramid_norm``/``pyramid_conv`` are the GroupNorm and 3x3 conv of an ``output_skip`` level or
    of the first ``residual`` level; later ``residual`` levels have only ``pyramid_conv``, the
    upsampling-with-conv module of the output pyramid.
    """

    blocks: tuple[int, ...]
    attention: int | None
    pyramid_norm: int | None
    pyramid_conv: int | None
    upsample: int | None


@dataclass
class ModuleListBuilder:
    """Creates the blocks with the network-wide options, appending each to the official module
    list ``modules`` (the future ``all_modules``); the methods return indices into it."""

    act: nn.Module
    image_channels: int
    nf: int
    channels: list[int]
    attn_levels: list[bool]
    num_res_blocks: int
    temb_dim: int
    dropout: float
    resblock_type: str
    resamp_with_conv: bool
    fir: bool
    fir_kernel: tuple[float, ...]
    skip_rescale: bool
    init_scale: float
    modules: list[nn.Module] = field(default_factory=list)

    def add(self, module: nn.Module) -> int:
        self.modules.append(module)
        return len(self.modules) - 1

    def resnet(
        self, in_ch: int, out_ch: int | None = None, *, up: bool = False, down: bool = False
    ) -> int:
        """A residual block; ``up``/``down`` (BigGAN blocks only) resample by 2."""
        opts = {"temb_dim": self.temb_dim, "dropout": self.dropout, "init_scale": self.init_scale}
        opts["skip_rescale"] = self.skip_rescale
        if self.resblock_type == "ddpm":
            return self.add(ResnetBlockDDPMpp(self.act, in_ch, out_ch, **opts))
        opts.update(up=up, down=down, fir=self.fir, fir_kernel=self.fir_kernel)
        return self.add(ResnetBlockBigGANpp(self.act, in_ch, out_ch, **opts))

    def attention(self, channels: int) -> int:
        return self.add(
            AttnBlockpp(channels, skip_rescale=self.skip_rescale, init_scale=self.init_scale)
        )

    def resample(self, in_ch: int, out_ch: int | None = None, *, up: bool, with_conv: bool) -> int:
        """A 2x ``Upsample`` (``up``) or ``Downsample`` layer with the network's FIR setting."""
        cls = Upsample if up else Downsample
        return self.add(
            cls(in_ch, out_ch, with_conv=with_conv, fir=self.fir, fir_kernel=self.fir_kernel)
        )

    def level_change(self, in_ch: int, *, up: bool) -> int:
        """The resampler between two levels: a resampling BigGAN block or a DDPM-type layer."""
        if self.resblock_type == "biggan":
            return self.resnet(in_ch, up=up, down=not up)
        return self.resample(in_ch, up=up, with_conv=self.resamp_with_conv)

    def encoder(
        self, progressive_input: str, combine: str
    ) -> tuple[tuple[EncoderLevel, ...], list[int]]:
        """Downsampling path. Returns its levels and the channel counts of the skip connections."""
        skips, in_ch, pyramid_ch, levels = [self.nf], self.nf, self.image_channels, []
        for level, out_ch in enumerate(self.channels):
            blocks, attns = [], []
            for _ in range(self.num_res_blocks):
                blocks.append(self.resnet(in_ch, out_ch))
                in_ch = out_ch
                attns.append(self.attention(in_ch) if self.attn_levels[level] else None)
                skips.append(in_ch)
            down = pyramid = None
            if level != len(self.channels) - 1:
                down = self.level_change(in_ch, up=False)
                if progressive_input == "input_skip":
                    pyramid = self.add(Combine(pyramid_ch, in_ch, method=combine))
                    in_ch *= 2 if combine == "cat" else 1
                elif progressive_input == "residual":
                    pyramid = self.resample(pyramid_ch, in_ch, up=False, with_conv=True)
                    pyramid_ch = in_ch
                skips.append(in_ch)
            levels.append(EncoderLevel(tuple(blocks), tuple(attns), down, pyramid))
        return tuple(levels), skips

    def decoder(self, progressive: str, in_ch: int, skips: list[int]) -> tuple[DecoderLevel, ...]:
        """Upsampling path (consumes ``skips``)."""
        levels, pyramid_ch, top = [], 0, len(self.channels) - 1
        for level in reversed(range(len(self.channels))):
            blocks = []
            for _ in range(self.num_res_blocks + 1):
                blocks.append(self.resnet(in_ch + skips.pop(), self.channels[level]))
                in_ch = self.channels[level]
            attn = self.attention(in_ch) if self.attn_levels[level] else None
            norm = conv = None
            if progressive == "output_skip":
                norm = self.add(group_norm(in_ch))
                conv = self.add(conv3x3(in_ch, self.image_channels, init_scale=self.init_scale))
            elif progressive == "residual" and level == top:
                norm, conv = self.add(group_norm(in_ch)), self.add(conv3x3(in_ch, in_ch))
                pyramid_ch = in_ch
            elif progressive == "residual":
                conv = self.resample(pyramid_ch, in_ch, up=True, with_conv=True)
                pyramid_ch = in_ch
            up = self.level_change(in_ch, up=True) if level != 0 else None
            levels.append(DecoderLevel(tuple(blocks), attn, norm, conv, up))
        assert not skips, "unused skip connections"
        return tuple(levels)
