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

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.nn.layers import get_act
from scoresde.nn.normalization import ConditionalInstanceNorm2dPlus, InstanceNorm2dPlus

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
        out = torch.zeros(xs[0].shape[0], self.features, *shape, device=xs[0].device)
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
