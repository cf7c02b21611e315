"""The DDPM U-Net of Ho et al. (2020), as the official ``score_sde_pytorch`` model ``'ddpm'``.

The paper's baseline network for the VP / sub-VP SDEs and "DDPM (VE)" (Song et al., 2021,
table 3; configs ``vp/ddpm/*``, ``ve/cifar10_ddpm``, ``subvp/cifar10_ddpm_continuous``), itself a
port of ``diffusion_tf/models/unet.py``. The parameters live in ``all_modules``, an
``nn.ModuleList`` in exactly the official order, so an official state dict loads after stripping
its ``module.`` prefix and ``parameters()`` has the official (EMA ``shadow_params``) order. With the
same seed the initial weights are the official ones (same layers, created in the same order).

It reuses the DDPM++ blocks of ``scoresde.nn.blocks`` without ``skip_rescale``, which are the DDPM
blocks, except that DDPM's GroupNorms always have 32 groups (``eps = 1e-6``); the constructor
replaces the norms of the shared blocks accordingly (they differ only below 128 channels).
With ``scale_by_sigma`` the output is divided by ``sigmas`` cast to its dtype (the official float64
buffer promotes the output to float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from scoresde.nn.blocks import AttnBlockpp, Downsample, ResnetBlockDDPMpp, Upsample
from scoresde.nn.embeddings import (
    add_class_embedding,
    check_class_labels,
    sinusoidal_embedding,
)
from scoresde.nn.layers import conv3x3, get_act, linear


def _ddpm_group_norm(channels: int) -> nn.GroupNorm:
    """DDPM's GroupNorm: 32 groups, ``eps = 1e-6``, affine."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


def _with_ddpm_norms(block: nn.Module) -> nn.Module:
    """Give a shared block DDPM's 32-group norms in place (same names, same registration order;
    GroupNorm initialisation draws no random numbers, so seeded weights are unaffected)."""
    for name, child in list(block.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(block, name, _ddpm_group_norm(child.num_channels))
    return block


class DDPM(nn.Module):
    """DDPM U-Net ``(x: (B, C, H, W), labels: (B,)) -> (B, C, H, W)``.

    Levels ``i = 0 .. len(ch_mult) - 1`` have ``nf * ch_mult[i]`` channels at resolution
    ``image_size / 2**i``; each has ``num_res_blocks`` residual blocks on the way down (attention
    after each at ``attn_resolutions``) and ``num_res_blocks + 1`` on the way up (attention after
    the last), with a resnet-attention-resnet middle. The noise level enters through a sinusoidal
    embedding of ``labels`` and a two-layer MLP to ``4 nf`` channels.

    Args:
        image_size: input side ``H = W``; must be divisible by ``2**(len(ch_mult) - 1)``.
        num_channels: image channels ``C``.
        nf: base channel count (a multiple of 32, for the 32-group norms).
        ch_mult: channel multiplier per resolution.
        num_res_blocks: residual blocks per level on the way down.
        attn_resolutions: resolutions (side lengths) with self-attention.
        dropout: dropout rate inside the residual blocks.
        resamp_with_conv: the 2x up/downsampling layers include a 3x3 conv.
        conditional: embed ``labels``; otherwise the labels are ignored (except by
            ``scale_by_sigma``) and the blocks' ``Dense_0`` layers stay unused, as in the official
            network (whose unconditional variant ``vp/ddpm/cifar10_unconditional`` fails to build:
            this is what it builds once fixed).
        scale_by_sigma: divide the output by ``sigmas[labels.long()]`` (``ve/cifar10_ddpm``, where
            ``labels`` are noise-level indices).
        centered: inputs are in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped to ``2x - 1``.
        sigma_min, sigma_max, num_scales: the geometric noise levels of the ``sigmas`` buffer
            ``(num_scales,)`` float64, from ``sigma_max`` down (always present, as officially).
        nonlinearity: ``'swish'`` (official), ``'elu'``, ``'relu'`` or ``'lrelu'``.
        num_classes: if set, an ``nn.Embedding(num_classes, 4 nf)`` (``class_embed``, not part of
            the official network) whose vector is added to the time embedding (none for
            :data:`~scoresde.nn.embeddings.NULL_LABEL`); without it class labels are an error.
            Needs ``conditional``.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        scale_by_sigma: bool = False,
        centered: bool = True,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        nonlinearity: str = "swish",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1}")
        if nf % 32:
            raise ValueError(f"nf must be a multiple of 32 (32-group norms), got {nf}")
        if num_classes is not None and not conditional:
            raise ValueError("num_classes needs conditional=True (added to the time embedding)")
        sigmas = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))
        self.register_buffer("sigmas", torch.tensor(sigmas))
        self.act = act = get_act(nonlinearity)
        self.nf = nf
        self.conditional = conditional
        self.scale_by_sigma = scale_by_sigma
        self.centered = centered
        temb_dim = 4 * nf
        modules: list[nn.Module] = []

        def add(module: nn.Module) -> int:
            modules.append(module)
            return len(modules) - 1

        def resnet(in_ch: int, out_ch: int | None = None) -> int:
            block = ResnetBlockDDPMpp(act, in_ch, out_ch, temb_dim=temb_dim, dropout=dropout)
            return add(_with_ddpm_norms(block))

        def attention(channels: int) -> int:
            return add(_with_ddpm_norms(AttnBlockpp(channels)))

        if conditional:
            add(linear(nf, temb_dim))
            add(linear(temb_dim, temb_dim))
        self._input_conv = add(conv3x3(num_channels, nf))
        levels = range(len(ch_mult))
        has_attn = [image_size // 2**i in attn_resolutions for i in levels]

        # Down path: per level, (block, attention or None) pairs and the downsampler.
        self._down: list[tuple[list[tuple[int, int | None]], int | None]] = []
        skips, in_ch = [nf], nf
        for i in levels:
            pairs = []
            for _ in range(num_res_blocks):
                block = resnet(in_ch, nf * ch_mult[i])
                in_ch = nf * ch_mult[i]
                pairs.append((block, attention(in_ch) if has_attn[i] else None))
                skips.append(in_ch)
            down = None
            if i != len(ch_mult) - 1:
                down = add(Downsample(in_ch, with_conv=resamp_with_conv))
                skips.append(in_ch)
            self._down.append((pairs, down))

        self._middle = (resnet(in_ch), attention(in_ch), resnet(in_ch))

        # Up path: per level, its blocks, attention (or None) and upsampler (or None).
        self._up: list[tuple[list[int], int | None, int | None]] = []
        for i in reversed(levels):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(resnet(in_ch + skips.pop(), nf * ch_mult[i]))
                in_ch = nf * ch_mult[i]
            attn = attention(in_ch) if has_attn[i] else None
            up = add(Upsample(in_ch, with_conv=resamp_with_conv)) if i != 0 else None
            self._up.append((blocks, attn, up))
        assert not skips, "unused skip connections"

        self._output = (
            add(_ddpm_group_norm(in_ch)),
            add(conv3x3(in_ch, num_channels, init_scale=0.0)),
        )
        self.all_modules = nn.ModuleList(modules)
        self.class_embed = nn.Embedding(num_classes, temb_dim) if num_classes is not None else None

    def _embed(
        self, labels: Tensor, class_labels: Tensor | None, dtype: torch.dtype
    ) -> Tensor | None:
        """Time embedding ``(B, 4 nf)`` computed in ``dtype`` (the input's), or ``None`` if
        unconditional."""
        if not self.conditional:
            check_class_labels(self.class_embed, class_labels, "DDPM")
            return None
        m = self.all_modules
        temb = m[1](self.act(m[0](sinusoidal_embedding(labels, self.nf, dtype=dtype))))
        return add_class_embedding(temb, self.class_embed, class_labels, "DDPM")

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Output for images ``x (B, C, H, W)`` at noise ``labels (B,)``: ``(B, C, H, W)``.

        ``labels`` are the official ``time_cond``: DDPM step indices / ``999 t`` for VP and
        sub-VP, noise-level indices for ``ve/cifar10_ddpm`` (also used by ``scale_by_sigma``).
        ``class_labels (B,)`` (int64) needs ``num_classes``; ``None``, or
        :data:`~scoresde.nn.embeddings.NULL_LABEL` in a row, adds no class embedding (to that
        row).
        """
        m = self.all_modules
        temb = self._embed(labels, class_labels, x.dtype)
        hs = [m[self._input_conv](x if self.centered else 2 * x - 1.0)]
        for pairs, down in self._down:
            for block, attn in pairs:
                h = m[block](hs[-1], temb)
                hs.append(m[attn](h) if attn is not None else h)
            if down is not None:
                hs.append(m[down](hs[-1]))

        block_a, attn, block_b = self._middle
        h = m[block_b](m[attn](m[block_a](hs[-1], temb)), temb)

        for blocks, attn, up in self._up:
            for block in blocks:
                h = m[block](torch.cat([h, hs.pop()], dim=1), temb)
            if attn is not None:
                h = m[attn](h)
            if up is not None:
                h = m[up](h)

        norm, conv = self._output
        h = m[conv](self.act(m[norm](h)))
        if self.scale_by_sigma:
            used_sigmas = self.sigmas[labels.long()].to(h.dtype)
            h = h / used_sigmas.reshape(-1, *([1] * (h.ndim - 1)))
        return h
