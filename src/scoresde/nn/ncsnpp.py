"""NCSN++ / DDPM++ U-Net of Song et al. (2021), compatible with the official ``score_sde_pytorch``.

The parameters live in ``all_modules``, an ``nn.ModuleList`` in exactly the official order, so an
official state dict loads after stripping its ``module.`` prefix, and ``parameters()`` has the
official order (that of the official EMA ``shadow_params``). The forward pass does not walk that
list with a running index: the constructor records, per resolution, which entry plays which role
(:mod:`scoresde.nn.ncsnpp_layout`) and ``forward`` reads those roles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from scoresde.nn.blocks import Downsample, Upsample
from scoresde.nn.embeddings import (
    GaussianFourierProjection,
    add_class_embedding,
    check_class_labels,
    sinusoidal_embedding,
)
from scoresde.nn.layers import conv3x3, get_act, group_norm, linear
from scoresde.nn.ncsnpp_layout import ModuleListBuilder

_SQRT2 = math.sqrt(2.0)


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network ``(x: (B, C, H, W), labels: (B,)) -> (B, C, H, W)``.

    Args:
        image_size: input height and width ``H = W``; the attention resolutions refer to it.
        num_channels: image channels ``C``.
        nf: base channel count; level ``i`` has ``nf * ch_mult[i]`` channels, the time
            embedding ``4 nf``.
        ch_mult: channel multiplier per resolution (one entry per level; each level halves H).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (side lengths) at which self-attention is applied.
        dropout: dropout rate inside the residual blocks.
        resamp_with_conv: DDPM-type resampling layers include a 3x3 conv.
        resblock_type: ``'ddpm'`` (separate up/downsampling layers) or ``'biggan'`` (residual
            blocks that resample).
        fir: resample with the FIR filter ``fir_kernel`` instead of nearest/average pooling.
        fir_kernel: 1-D taps of the separable FIR filter.
        skip_rescale: divide every residual sum by sqrt 2.
        progressive: output pyramid: ``'none'``, ``'output_skip'`` (sum of upsampled per-level
            image predictions) or ``'residual'``.
        progressive_input: input pyramid: ``'none'``, ``'input_skip'`` (downsampled input merged
            with ``progressive_combine``) or ``'residual'``.
        progressive_combine: ``'sum'`` or ``'cat'``, how ``input_skip`` merges the pyramid.
        embedding_type: ``'fourier'`` (Gaussian Fourier features of ``log(labels)``, labels are
            sigmas) or ``'positional'`` (sinusoidal embedding of the labels, e.g. ``999 t``).
        fourier_scale: standard deviation of the Fourier frequencies.
        init_scale: initialisation scale of the layers closing each residual branch (0 gives
            1e-10, as in the official code).
        conditional: condition on the noise level; without it the labels are ignored (except by
            ``scale_by_sigma``).
        scale_by_sigma: divide the output by sigma: the labels (``'fourier'``), or
            ``sigmas[labels.long()]`` (``'positional'``).
        centered: inputs are already in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped to
            ``2 x - 1``.
        sigma_min, sigma_max, num_scales: the geometric noise levels of the ``sigmas`` buffer
            ``(num_scales,)`` float64, from ``sigma_max`` down to ``sigma_min``.
        nonlinearity: ``'swish'``, ``'elu'``, ``'relu'`` or ``'lrelu'``.
        num_classes: if set, an ``nn.Embedding(num_classes, 4 nf)`` (``class_embed``, not part of
            the official network) whose vector is added to the time embedding (none for
            :data:`~scoresde.nn.embeddings.NULL_LABEL`); ``None`` means unconditional: class
            labels are then an error. Requires ``conditional``.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        resblock_type: str = "biggan",
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        conditional: bool = True,
        scale_by_sigma: bool = True,
        centered: bool = False,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        nonlinearity: str = "swish",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        resblock_type, embedding_type = resblock_type.lower(), embedding_type.lower()
        progressive, progressive_input = progressive.lower(), progressive_input.lower()
        progressive_combine = progressive_combine.lower()
        _check("resblock_type", resblock_type, ("ddpm", "biggan"))
        _check("progressive", progressive, ("none", "output_skip", "residual"))
        _check("progressive_input", progressive_input, ("none", "input_skip", "residual"))
        _check("progressive_combine", progressive_combine, ("sum", "cat"))
        _check("embedding_type", embedding_type, ("fourier", "positional"))
        if num_classes is not None and not conditional:
            raise ValueError("num_classes needs conditional=True (added to the time embedding)")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1}")

        sigmas = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))
        self.register_buffer("sigmas", torch.tensor(sigmas))
        self.act = get_act(nonlinearity)
        self.nf = nf
        self.scale_by_sigma = scale_by_sigma
        self.centered = centered
        self.embedding_type = embedding_type
        self.resblock_type = resblock_type
        self.progressive = progressive
        self.progressive_input = progressive_input
        self.skip_rescale = skip_rescale
        temb_dim = 4 * nf
        b = ModuleListBuilder(
            act=self.act,
            image_channels=num_channels,
            nf=nf,
            channels=[nf * mult for mult in ch_mult],
            attn_levels=[image_size // 2**i in attn_resolutions for i in range(len(ch_mult))],
            num_res_blocks=num_res_blocks,
            temb_dim=temb_dim,
            dropout=dropout,
            resblock_type=resblock_type,
            resamp_with_conv=resamp_with_conv,
            fir=fir,
            fir_kernel=tuple(fir_kernel),
            skip_rescale=skip_rescale,
            init_scale=init_scale,
        )

        self._fourier = None
        if embedding_type == "fourier":
            self._fourier = b.add(GaussianFourierProjection(embedding_size=nf, scale=fourier_scale))
        self._temb_dense = None
        if conditional:
            embed_dim = 2 * nf if embedding_type == "fourier" else nf
            self._temb_dense = (
                b.add(linear(embed_dim, temb_dim)),
                b.add(linear(temb_dim, temb_dim)),
            )
        if progressive == "output_skip":
            self.pyramid_upsample = Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        if progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)

        self._input_conv = b.add(conv3x3(num_channels, nf))
        self._encoder, skips = b.encoder(progressive_input, progressive_combine)
        in_ch = skips[-1]
        self._middle = (b.resnet(in_ch), b.attention(in_ch), b.resnet(in_ch))
        self._decoder = b.decoder(progressive, in_ch, skips)
        self._output = None
        if progressive != "output_skip":
            out_ch = b.channels[0]
            self._output = (
                b.add(group_norm(out_ch)),
                b.add(conv3x3(out_ch, num_channels, init_scale=init_scale)),
            )
        self.all_modules = nn.ModuleList(b.modules)
        self.class_embed = nn.Embedding(num_classes, temb_dim) if num_classes is not None else None

    def _residual_sum(self, a: Tensor, b: Tensor) -> Tensor:
        return (a + b) / _SQRT2 if self.skip_rescale else a + b

    def _change_level(self, index: int, h: Tensor, temb: Tensor | None) -> Tensor:
        """Apply a between-level resampler: a BigGAN block (takes ``temb``) or a plain layer."""
        module = self.all_modules[index]
        return module(h, temb) if self.resblock_type == "biggan" else module(h)

    def _embed(
        self, labels: Tensor, class_labels: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor | None, Tensor]:
        """Time embedding ``(B, 4 nf)`` in ``dtype`` (or ``None``) and the sigmas ``(B,)`` used
        for scaling.

        ``dtype`` is that of the input images: the sinusoidal embedding is computed in it; the
        Fourier features in it or in the labels' dtype if more precise, then cast to it.
        """
        m = self.all_modules
        if self.embedding_type == "fourier":
            used_sigmas = labels
            log_sigmas = torch.log(labels.to(torch.promote_types(labels.dtype, dtype)))
            temb = m[self._fourier](log_sigmas).to(dtype)
        else:
            used_sigmas = self.sigmas[labels.long()] if self.scale_by_sigma else labels
            temb = sinusoidal_embedding(labels, self.nf, dtype=dtype)
        if self._temb_dense is None:
            check_class_labels(self.class_embed, class_labels, "NCSNpp")
            return None, used_sigmas
        temb = m[self._temb_dense[1]](self.act(m[self._temb_dense[0]](temb)))
        return add_class_embedding(temb, self.class_embed, class_labels, "NCSNpp"), used_sigmas

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Network output for images ``x (B, C, H, W)`` at noise ``labels (B,)``.

        ``labels`` are the official ``time_cond``: sigmas for the Fourier embedding, (possibly
        fractional) noise-level indices such as ``999 t`` for the positional one.
        ``class_labels (B,)`` (int64) needs ``num_classes``; ``None``, or
        :data:`~scoresde.nn.embeddings.NULL_LABEL` in a row, leaves the time embedding (of that
        row) unchanged. Returns ``(B, C, H, W)``, divided by sigma if
        ``scale_by_sigma``.
        """
        m = self.all_modules
        temb, used_sigmas = self._embed(labels, class_labels, x.dtype)
        if not self.centered:
            x = 2 * x - 1.0

        input_pyramid = x
        hs = [m[self._input_conv](x)]
        for level in self._encoder:
            for block, attn in zip(level.blocks, level.attentions, strict=True):
                h = m[block](hs[-1], temb)
                hs.append(m[attn](h) if attn is not None else h)
            if level.downsample is None:
                continue
            h = self._change_level(level.downsample, hs[-1], temb)
            if self.progressive_input == "input_skip":
                input_pyramid = self.pyramid_downsample(input_pyramid)
                h = m[level.pyramid](input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = self._residual_sum(m[level.pyramid](input_pyramid), h)
                h = input_pyramid
            hs.append(h)

        block_a, attn, block_b = self._middle
        h = m[block_b](m[attn](m[block_a](hs[-1], temb)), temb)

        pyramid = None
        for level in self._decoder:
            for block in level.blocks:
                h = m[block](torch.cat([h, hs.pop()], dim=1), temb)
            if level.attention is not None:
                h = m[level.attention](h)
            if self.progressive == "output_skip":
                pyramid_h = m[level.pyramid_conv](self.act(m[level.pyramid_norm](h)))
                pyramid = (
                    pyramid_h if pyramid is None else self.pyramid_upsample(pyramid) + pyramid_h
                )
            elif self.progressive == "residual" and level.pyramid_norm is not None:
                pyramid = m[level.pyramid_conv](self.act(m[level.pyramid_norm](h)))
            elif self.progressive == "residual":
                pyramid = self._residual_sum(m[level.pyramid_conv](pyramid), h)
                h = pyramid
            if level.upsample is not None:
                h = self._change_level(level.upsample, h, temb)

        if self._output is None:
            h = pyramid
        else:
            norm, conv = self._output
            h = m[conv](self.act(m[norm](h)))
        if self.scale_by_sigma:
            h = h / used_sigmas.to(h.dtype).reshape(-1, *([1] * (h.ndim - 1)))
        return h


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
