"""Instance normalisation "++" of NCSNv2 (Song & Ermon, 2020) and its noise-conditional form (NCSN).

Plain instance normalisation removes the mean of every feature map, which shifts the colours of
generated images. InstanceNorm++ (NCSN, Song & Ermon 2019, appendix A.1) adds the normalised
per-channel means back with a learned weight ``alpha``:

``out = gamma * (IN(x) + alpha * (mu - mean_c(mu)) / sqrt(var_c(mu) + 1e-5)) + beta``

where ``mu (B, C)`` are the spatial means of ``x`` and ``mean_c`` / ``var_c`` (unbiased) run over
the channels. Parameter names, shapes and initialisation follow the official
``score_sde_pytorch/models/normalization.py`` (``InstanceNorm2dPlus``,
``ConditionalInstanceNorm2dPlus``), so official state dicts load and seeded initialisations match.
Both modules take ``forward(x, y=None)`` so that the blocks of ``scoresde.nn.ncsn`` call any norm
the same way; only the conditional one uses the noise-level indices ``y``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _normalised_means(x: Tensor) -> Tensor:
    """Spatial means of ``x (B, C, H, W)``, standardised across channels: ``(B, C)``."""
    means = x.mean(dim=(2, 3))
    centre = means.mean(dim=-1, keepdim=True)
    spread = means.var(dim=-1, keepdim=True)
    return (means - centre) / torch.sqrt(spread + 1e-5)


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ ``(B, C, H, W) -> (B, C, H, W)`` with per-channel ``alpha``, ``gamma``
    (both initialised ``N(1, 0.02)``, in that order) and, if ``bias``, ``beta`` (zeros).

    The official NCSNv2 builds its final normaliser as ``InstanceNorm2dPlus(nf, num_scales)``: the
    second positional argument is ``bias``, so any non-zero value means "with ``beta``".
    """

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.gamma = nn.Parameter(torch.zeros(num_features))
        self.alpha.data.normal_(1, 0.02)
        self.gamma.data.normal_(1, 0.02)
        if self.bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Normalise ``x (B, C, H, W)``; ``y`` is ignored (unconditional)."""
        shift = _normalised_means(x)[..., None, None] * self.alpha[:, None, None]
        h = self.instance_norm(x) + shift
        out = self.gamma[:, None, None] * h
        return out + self.beta[:, None, None] if self.bias else out


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Noise-conditional InstanceNorm++ ``(B, C, H, W), (B,) -> (B, C, H, W)`` of NCSN v1.

    ``gamma``, ``alpha`` and ``beta`` are rows of one ``nn.Embedding`` ``embed`` indexed by the
    noise level ``y`` (int64): its weight is ``(num_classes, 3 C)`` laid out ``[gamma | alpha |
    beta]`` with the first ``2 C`` columns ``N(1, 0.02)`` and the rest zero; without ``bias`` it is
    ``(num_classes, 2 C)``, ``[gamma | alpha]``.
    """

    def __init__(self, num_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False)
        self.embed = nn.Embedding(num_classes, (3 if self.bias else 2) * num_features)
        self.embed.weight.data[:, : 2 * num_features].normal_(1, 0.02)
        self.embed.weight.data[:, 2 * num_features :].zero_()

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Normalise ``x (B, C, H, W)`` with the affine parameters of noise levels ``y (B,)``."""
        if y is None:
            raise ValueError("ConditionalInstanceNorm2dPlus needs the noise-level indices y")
        chunks = self.embed(y).chunk(3 if self.bias else 2, dim=-1)
        gamma, alpha = chunks[0][..., None, None], chunks[1][..., None, None]
        h = self.instance_norm(x) + _normalised_means(x)[..., None, None] * alpha
        return gamma * h + chunks[2][..., None, None] if self.bias else gamma * h
