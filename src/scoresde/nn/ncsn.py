"""NCSN (Song & Ermon, 2019) and NCSNv2 (Song & Ermon, 2020): dilated RefineNets, as in the paper's
baselines (Song et al., 2021, table 1/3) and the official ``score_sde_pytorch`` models ``'ncsn'``,
``'ncsnv2_64'``, ``'ncsnv2_128'`` and ``'ncsnv2_256'`` (``models/ncsnv2.py``, ``models/layers.py``).

Module names, parameter registration order and initialisation are the official ones, so official
state dicts load unchanged, ``parameters()`` has the official order (that of the EMA
``shadow_params``) and with the same seed the initial weights are identical. Convolutions keep
PyTorch's default initialisation, as in the original NCSN code.

Differences from the official PyTorch port, which fails on these networks:

- dilated 3x3 convolutions are padded by their dilation ("same" padding, as in the original
  NCSN/NCSNv2 code and the JAX port); the official PyTorch port pads them by 1, so the residual
  branch and its shortcut disagree in size and the forward pass raises (score_sde_pytorch issue
  #48). Parameters and state dicts are unaffected.
- NCSN v1 uses ``ConditionalInstanceNorm2dPlus`` throughout (the official ``'ncsn'`` asks its
  config for the unconditional ``InstanceNorm2dPlus`` and cannot be built); this is the network of
  the original ``CondRefineNetDilated``.
- the ``adjust_padding`` option of the official blocks is dropped: it only affects undilated
  downsampling blocks of 28x28 inputs, which these networks do not contain.
- NCSNv2 divides by ``sigmas`` cast to the output dtype (the official float64 buffer promotes the
  output to float64).

With these fixes the networks equal the original code (``ermongroup/ncsn``
``CondRefineNetDilated``; ``ermongroup/ncsnv2`` ``NCSNv2``, ``NCSNv2Deeper``, ``NCSNv2Deepest``):
same state-dict keys and shapes, same seeded initialisation, same outputs.

Images are ``(B, C, H, W)``; ``y``/``labels`` are int64 noise-level indices ``(B,)`` into the
geometric sequence ``sigma_max -> sigma_min`` of ``num_scales`` levels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from scoresde.nn.layers import get_act
from scoresde.nn.normalization import ConditionalInstanceNorm2dPlus, InstanceNorm2dPlus
from scoresde.nn.refinenet import (
    ConvMeanPool,
    CRPBlock,
    MSFBlock,
    NormFactory,
    RCUBlock,
    RefineBlock,
    ResidualBlock,
    ncsn_conv3x3,
)

__all__ = [
    "NCSN",
    "CRPBlock",
    "ConvMeanPool",
    "MSFBlock",
    "NCSNv2",
    "NormFactory",
    "RCUBlock",
    "RefineBlock",
    "ResidualBlock",
    "ncsn_conv3x3",
    "ncsnv2_variant",
]


# Encoder stages: (name, input channels / nf, output channels / nf, downsample, dilation).
_Stage = tuple[str, int, int, bool, int]
# Refine blocks in registration order: (name, encoder stage it refines, output channels / nf).
_Refine = tuple[str, str, int]

_LAYOUTS: dict[int, tuple[tuple[_Stage, ...], tuple[_Refine, ...]]] = {
    64: (
        (("res1", 1, 1, False, 1), ("res2", 1, 2, True, 1), ("res3", 2, 2, True, 2),
         ("res4", 2, 2, True, 4)),
        (("refine1", "res4", 2), ("refine2", "res3", 2), ("refine3", "res2", 1),
         ("refine4", "res1", 1)),
    ),
    128: (
        (("res1", 1, 1, False, 1), ("res2", 1, 2, True, 1), ("res3", 2, 2, True, 1),
         ("res4", 2, 4, True, 2), ("res5", 4, 4, True, 4)),
        (("refine1", "res5", 4), ("refine2", "res4", 2), ("refine3", "res3", 2),
         ("refine4", "res2", 1), ("refine5", "res1", 1)),
    ),
    256: (
        (("res1", 1, 1, False, 1), ("res2", 1, 2, True, 1), ("res3", 2, 2, True, 1),
         ("res31", 2, 2, True, 1), ("res4", 2, 4, True, 2), ("res5", 4, 4, True, 4)),
        (("refine1", "res5", 4), ("refine2", "res4", 2), ("refine3", "res3", 2),
         ("refine31", "res31", 2), ("refine4", "res2", 1), ("refine5", "res1", 1)),
    ),
}  # fmt: skip


def _sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """The official ``get_sigmas``: ``(num_scales,)`` float64, geometric, ``sigma_max`` first."""
    return torch.tensor(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)))


class _RefineNet(nn.Module):
    """Dilated RefineNet shared by NCSN and NCSNv2: ``begin_conv``, ``normalizer``, ``end_conv``,
    residual stages ``res*`` (two blocks each) and refine blocks ``refine*``, in official order.

    The refine blocks run from the deepest stage up: each fuses its stage's features with the
    previous refine output, at the stage's resolution.
    """

    def __init__(
        self,
        layout: int,
        num_channels: int,
        nf: int,
        act: nn.Module,
        block_norm: NormFactory,
        refine_norm: NormFactory | None,
        centered: bool,
    ) -> None:
        super().__init__()
        stages, refines = _LAYOUTS[layout]
        self.centered = centered
        self.act = act
        self.begin_conv = nn.Conv2d(num_channels, nf, 3, padding=1)
        self.normalizer = block_norm(nf)
        self.end_conv = nn.Conv2d(nf, num_channels, 3, padding=1)
        self._stages = [name for name, *_ in stages]
        for name, c_in, c_out, down, dilation in stages:
            first = ResidualBlock(c_in * nf, c_out * nf, act, block_norm, down, dilation)
            second = ResidualBlock(c_out * nf, c_out * nf, act, block_norm, dilation=dilation)
            setattr(self, name, nn.ModuleList([first, second]))
        stage_ch = {name: c_out * nf for name, _, c_out, _, _ in stages}
        order = sorted(refines, key=lambda r: self._stages.index(r[1]), reverse=True)
        self._refines = [(name, stage) for name, stage, _ in order]
        in_planes, prev = {}, None
        for name, stage, mult in order:
            in_planes[name] = [stage_ch[stage]] + ([] if prev is None else [prev])
            prev = mult * nf
        for name, _, mult in refines:
            start, end = name == order[0][0], name == order[-1][0]
            block = RefineBlock(in_planes[name], mult * nf, act, refine_norm, start, end)
            setattr(self, name, block)

    def _features(self, x: Tensor, y: Tensor | None) -> Tensor:
        """Network output before any sigma scaling: ``(B, C, H, W)``."""
        h = self.begin_conv(x if self.centered else 2 * x - 1.0)
        skips = {}
        for name in self._stages:
            for block in getattr(self, name):
                h = block(h, y)
            skips[name] = h
        ref = None
        for name, stage in self._refines:
            xs = [skips[stage]] if ref is None else [skips[stage], ref]
            ref = getattr(self, name)(xs, y, skips[stage].shape[2:])
        return self.end_conv(self.act(self.normalizer(ref, y)))


def _no_class_labels(class_labels: Tensor | None) -> None:
    if class_labels is not None:
        raise ValueError("NCSN/NCSNv2 are not class-conditional: class_labels must be None")


class NCSN(_RefineNet):
    """NCSN v1 (``CondRefineNetDilated``): ``(x: (B, C, H, W), labels: (B,)) -> (B, C, H, W)``.

    Every normalisation is ``ConditionalInstanceNorm2dPlus`` over ``num_scales`` noise levels, so
    ``labels`` are int64 noise-level indices (official name ``'ncsn'``, configs ``ve/ncsn/*``).
    The output is the score at the indexed noise level, not divided by sigma; the network has no
    ``sigmas`` buffer (as in the official code).

    Args:
        image_size: input side ``H = W`` (even; the network halves it once).
        num_channels: image channels ``C``.
        nf: base channel count (stages have ``nf`` and ``2 nf`` channels).
        num_scales: number of noise levels (rows of the conditional norms' embeddings).
        centered: inputs are in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped to ``2x - 1``.
        nonlinearity: ``'elu'`` (official), ``'relu'``, ``'lrelu'`` or ``'swish'``.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        nf: int = 128,
        num_scales: int = 10,
        centered: bool = False,
        nonlinearity: str = "elu",
    ) -> None:
        if image_size % 2:
            raise ValueError(f"NCSN needs an even image_size, got {image_size}")

        def norm(ch: int) -> nn.Module:
            return ConditionalInstanceNorm2dPlus(ch, num_scales)

        super().__init__(64, num_channels, nf, get_act(nonlinearity), norm, norm, centered)
        self.num_scales = num_scales

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Score of ``x (B, C, H, W)`` at noise-level indices ``labels (B,)``: ``(B, C, H, W)``."""
        _no_class_labels(class_labels)
        return self._features(x, labels.long())


class NCSNv2(_RefineNet):
    """NCSNv2 ``(x: (B, C, H, W), labels: (B,)) -> (B, C, H, W)``: unconditional dilated RefineNet
    with InstanceNorm++, output divided by ``sigmas[labels]`` (the noise-conditioning of NCSNv2,
    Song & Ermon 2020, technique 3).

    ``variant`` picks the official network: 64 (``'ncsnv2_64'``, 4 stages, up to 2 nf
    channels, for 32-64 px), 128 (``'ncsnv2_128'``, 5 stages, up to 4 nf) or 256
    (``'ncsnv2_256'``, 6 stages); ``None`` chooses as the official ``get_network``: 64 below 96 px,
    128 up to 128 px, 256 up to 256 px.

    Args:
        image_size: input side ``H = W`` (must be divisible by the total downsampling: 2, 4 or 8).
        num_channels: image channels ``C``.
        nf: base channel count.
        sigma_min, sigma_max, num_scales: the geometric noise levels of the ``sigmas`` buffer
            ``(num_scales,)`` float64 (official ``get_sigmas``), from ``sigma_max`` down.
        centered: inputs are in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped to ``2x - 1``.
        nonlinearity: ``'elu'`` (official), ``'relu'``, ``'lrelu'`` or ``'swish'``.
        variant: 64, 128, 256 or ``None`` (from ``image_size``).
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        nf: int = 128,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 232,
        centered: bool = False,
        nonlinearity: str = "elu",
        variant: int | None = None,
    ) -> None:
        variant = variant if variant is not None else ncsnv2_variant(image_size)
        if variant not in _LAYOUTS:
            raise ValueError(f"NCSNv2 variant must be one of {sorted(_LAYOUTS)}, got {variant}")
        factor = 2 ** sum(down and dil == 1 for _, _, _, down, dil in _LAYOUTS[variant][0])
        if image_size % factor:
            raise ValueError(f"ncsnv2_{variant} needs image_size divisible by {factor}")
        super().__init__(
            variant, num_channels, nf, get_act(nonlinearity), InstanceNorm2dPlus, None, centered
        )
        self.variant = variant
        self.register_buffer("sigmas", _sigmas(sigma_min, sigma_max, num_scales))

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Score of ``x (B, C, H, W)`` at noise-level indices ``labels (B,)``: ``(B, C, H, W)``."""
        _no_class_labels(class_labels)
        h = self._features(x, None)
        used_sigmas = self.sigmas[labels.long()].to(h.dtype)
        return h / used_sigmas.reshape(-1, *([1] * (h.ndim - 1)))


def ncsnv2_variant(image_size: int) -> int:
    """The official NCSNv2 network for ``image_size`` (``get_network``): 64, 128 or 256."""
    if image_size < 96:
        return 64
    if image_size <= 128:
        return 128
    if image_size <= 256:
        return 256
    raise ValueError(f"no NCSNv2 network for {image_size}px images (at most 256)")
