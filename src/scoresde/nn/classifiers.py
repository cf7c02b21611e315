"""Noise-conditional classifiers ``p_t(y | x(t))`` for classifier guidance.

Class-conditional sampling with an unconditional score model adds the gradient of a time-dependent
classifier to the score, ``grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)``
(Song et al., 2021, "Score-based generative modeling through SDEs", section 5, eq. 14). The
classifier is trained on perturbed data ``x(t)`` at every noise level, and is told the level.

:class:`NoiseConditionalWideResNet` is the paper's CIFAR-10 classifier (appendix I.1): a
Wide-ResNet-28-10 (Zagoruyko & Komodakis, 2016) with GroupNorm + ReLU pre-activation blocks,
conditioned on ``log sigma`` through random Fourier features as NCSN++ is.
:class:`NoiseConditionalMLPClassifier` is its counterpart for flat vectors (the 2-D toy data).

Both take ``labels`` ``(B,)`` that are positive noise-to-signal ratios ``sigma`` (the standard
deviation of the noise of a VE SDE, ``sigma(t) / mean scale`` for a VP one) and return unnormalised
logits ``(B, num_classes)``; ``log_softmax`` of them is ``log p_t(y | x)``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from scoresde.nn.unet import NoiseEmbedding, _num_groups

__all__ = ["NoiseConditionalMLPClassifier", "NoiseConditionalWideResNet"]

_EMBED_CHANNELS = 128  # Fourier features of log sigma; the embedding has 4x as many channels


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the paper's ``min(channels // 4, 32)`` groups where that divides
    ``channels`` (every width of WRN-28-10), else :func:`scoresde.nn.unet._num_groups`."""
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:
        groups = _num_groups(channels)
    return nn.GroupNorm(groups, channels)


def _standardize(x: Tensor) -> Tensor:
    """Per-example standardisation ``(x - mean) / max(std, 1 / sqrt(n))`` over all but the batch
    dimension, ``n`` being the number of elements of one example (as TensorFlow's
    ``per_image_standardization``; population std). ``(B, *S) -> (B, *S)``."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, correction=0)
    floor = 1.0 / math.sqrt(x[0].numel())
    return (x - mean) / std.clamp(min=floor)


class WideResBlock(nn.Module):
    """Noise-conditional pre-activation Wide-ResNet block: ``(B, C_in, H, W), (B, T) ->
    (B, C_out, H / stride, W / stride)``.

    ``GroupNorm -> ReLU -> conv3x3 (stride) -> + Dense(temb) -> GroupNorm -> ReLU -> dropout ->
    conv3x3``, added to the input, or to a strided 1x1 conv of the pre-activated input when the
    shape changes (Zagoruyko & Komodakis, 2016). ``temb (B, T)`` is the noise embedding after SiLU
    (the network applies it once). Convolutions have no bias (each is followed by a norm).
    """

    checkpointable = True  # activation checkpointing: scoresde.nn.checkpointing

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, temb_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        a = F.relu(self.norm1(x))
        h = self.conv1(a) + self.temb_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.relu(self.norm2(h))))
        return (x if self.shortcut is None else self.shortcut(a)) + h


class NoiseConditionalWideResNet(nn.Module):
    """Noise-conditional Wide-ResNet ``(x (B, C, H, W), sigma (B,)) -> logits (B, num_classes)``
    (Song et al., 2021, appendix I.1).

    Each image is standardised (``(x - mean) / max(std, 1 / sqrt(C H W))``), a 3x3 conv lifts it
    to 16 channels, then three groups of ``(depth - 4) / 6`` :class:`WideResBlock` s with
    ``16 k, 32 k, 64 k`` channels (``k = widen_factor``) and strides ``1, 2, 2`` (the first block of
    a group changes width and resolution), a final GroupNorm + ReLU, global average pooling and a
    linear layer give the logits. The noise level enters every block: random Fourier features
    (128 frequencies, ``N(0, fourier_scale^2)``) of ``log sigma``, ``Linear -> SiLU -> Linear`` to
    512 channels (:class:`scoresde.nn.unet.NoiseEmbedding`), then per block ``SiLU -> Linear``
    added to the output of its first conv. Any ``H, W`` work (``H, W >= 4`` keeps every stride
    meaningful); the network runs in the dtype of its parameters (``x`` is cast to it), float64
    included.

    WRN-28-10 (the paper's CIFAR-10 classifier, the default) has 39,171,802 parameters: the
    36,479,194 of the plain WRN-28-10 (convolutions, norms, output layer), 2,298,240 in the
    per-block noise projections and 394,368 in the noise embedding, of which the 128 Fourier
    frequencies are frozen (39,171,674 trainable).

    Args:
        in_channels: image channels ``C``.
        num_classes: number of classes ``K >= 2``.
        depth: ``6 n + 4`` with ``n >= 1`` blocks per group (28: WRN-28).
        widen_factor: channel multiplier ``k >= 1`` (10: WRN-28-10).
        dropout: dropout rate between the two convs of every block (0: none, as in the paper).
        fourier_scale: standard deviation of the Fourier frequencies (16, as in NCSN++).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be at least 1, got {widen_factor}")
        blocks_per_group = (depth - 4) // 6
        temb_dim = 4 * _EMBED_CHANNELS
        self.embed = NoiseEmbedding(_EMBED_CHANNELS, "fourier", fourier_scale)
        self.conv_in = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks = []
        ch = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_group):
                out_ch = width * widen_factor
                blocks.append(WideResBlock(ch, out_ch, stride if i == 0 else 1, temb_dim, dropout))
                ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = _group_norm(ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x (B, C, H, W), labels (B,) positive noise-to-signal ratios sigma; returns logits
        (B, num_classes)."""
        temb = F.silu(self.embed(labels))  # (B, 512), in the parameters' dtype
        h = self.conv_in(_standardize(x.to(temb.dtype)))
        for block in self.blocks:
            h = block(h, temb)
        h = F.relu(self.norm_out(h)).mean(dim=(-2, -1))  # global average pooling: (B, 64 k)
        return self.head(h)


class NoiseConditionalMLPClassifier(nn.Module):
    """Noise-conditional residual MLP ``(x (B, D), sigma (B,)) -> logits (B, num_classes)``.

    The layers of :class:`scoresde.nn.mlp.ScoreMLP` with a Fourier embedding of ``log sigma``:
    ``x`` is lifted to ``hidden`` features, ``depth`` residual layers compute
    ``h <- h + Linear(SiLU(h + Dense(temb)))`` (``temb (B, hidden)`` the embedding after SiLU), and
    ``Linear(SiLU(h))`` gives the logits (default initialisation, not zero: the gradient of a
    classifier with constant logits would vanish). The input is not standardised (for 2-D toy
    data the position is the information).

    Args:
        dim: data dimension ``D``.
        num_classes: number of classes ``K >= 2`` (e.g. the components of a Gaussian mixture).
        hidden: width of the hidden layers, a multiple of 4.
        depth: number of residual hidden layers, at least 1.
        fourier_scale: standard deviation of the Fourier frequencies.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        num_classes: int = 8,
        hidden: int = 128,
        depth: int = 3,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if hidden % 4 or hidden < 4:
            raise ValueError(f"hidden must be a positive multiple of 4, got {hidden}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.embed = NoiseEmbedding(hidden // 4, "fourier", fourier_scale)  # -> hidden
        self.inp = nn.Linear(dim, hidden)
        self.temb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x (B, D), labels (B,) positive sigma; returns logits (B, num_classes)."""
        temb = F.silu(self.embed(labels))  # (B, hidden), in the parameters' dtype
        h = self.inp(x.to(temb.dtype))
        for proj, layer in zip(self.temb_proj, self.layers, strict=True):
            h = h + layer(F.silu(h + proj(temb)))
        return self.out(F.silu(h))
