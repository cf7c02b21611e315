"""FIR up/downsampling of StyleGAN2 as used by NCSN++, in pure PyTorch.

All images are ``(B, C, H, W)``. A FIR kernel ``k`` is given by its taps: a 1-D sequence/tensor
(separable; the 2-D kernel is ``outer(k, k)``) or a 2-D tensor. Kernels are normalised to sum to
one and scaled by ``gain`` (times ``factor**2`` when upsampling, so constant images keep their
value). Pixels outside the image are zero.

``upfirdn2d`` is a single depthwise ``conv2d`` (zero insertion, padding and the strided filter in
one call), with no Python loops over pixels or channels; the kernel setup runs on the input's
device, so nothing forces a host-device synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.nn.layers import default_init

KernelLike = Sequence[float] | Tensor


def setup_kernel(
    k: KernelLike, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Normalised 2-D FIR kernel ``(K, K)`` (sums to 1) from 1-D taps ``(K,)`` or a 2-D kernel."""
    k = torch.as_tensor(k, dtype=dtype or torch.float32, device=device)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {tuple(k.shape)}")
    return k / k.sum()


def _kernel_dtype(x: Tensor) -> torch.dtype:
    """The dtype the resampling functions build their kernel in: float32, or float64 for float64
    images (the kernel is cast to ``x``'s dtype for the convolution anyway)."""
    return torch.promote_types(x.dtype, torch.float32)


def upfirdn2d(
    x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample each channel.

    Same definition as StyleGAN2's ``upfirdn2d`` with equal factors and padding on both axes: each
    pixel is followed by ``up - 1`` zeros along each axis, the result is padded by ``pad[0]`` before
    and ``pad[1]`` after (negative values crop), convolved (true convolution, i.e. the kernel is
    flipped) with ``kernel`` and every ``down``-th sample is kept, starting with the first.

    Args:
        x: ``(B, C, H, W)``.
        kernel: ``(kh, kw)`` filter, used as given (no normalisation).
        up, down: integer factors >= 1.
        pad: ``(before, after)`` padding in the upsampled grid, applied to both axes.

    Returns:
        ``(B, C, (H * up + pad[0] + pad[1] - kh) // down + 1, ...)`` (likewise for the width).
    """
    _, C, H, W = x.shape
    kh, kw = kernel.shape
    if up > 1:
        x = F.pad(x.reshape(-1, C, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(-1, C, H * up, W * up)
    if pad != (0, 0):
        x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(device=x.device, dtype=x.dtype)
    weight = weight[None, None].expand(C, 1, kh, kw).contiguous()
    return F.conv2d(x, weight, stride=down, groups=C)


def upsample_2d(x: Tensor, k: KernelLike = (1, 1), factor: int = 2, gain: float = 1.0) -> Tensor:
    """FIR upsampling ``(B, C, H, W) -> (B, C, H * factor, W * factor)``.

    The default kernel ``(1,) * factor`` is nearest-neighbour upsampling.
    """
    kernel = setup_kernel(k, x.device, _kernel_dtype(x)) * (gain * factor**2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, k: KernelLike = (1, 1), factor: int = 2, gain: float = 1.0) -> Tensor:
    """FIR downsampling ``(B, C, H, W) -> (B, C, H // factor, W // factor)``.

    The default kernel ``(1,) * factor`` is average pooling.
    """
    kernel = setup_kernel(k, x.device, _kernel_dtype(x)) * gain
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(
    x: Tensor, w: Tensor, k: KernelLike = (1, 1), factor: int = 2, gain: float = 1.0
) -> Tensor:
    """FIR upsampling fused with a convolution: ``(B, in, H, W) -> (B, out, H * f, W * f)``.

    Equivalent to ``conv2d(upsample_2d(x, k), w, padding=K // 2)`` for an odd square ``w`` of shape
    ``(out, in, K, K)``, computed as a strided transposed convolution followed by the FIR filter.
    """
    conv_k = w.shape[-1]
    kernel = setup_kernel(k, x.device, _kernel_dtype(x)) * (gain * factor**2)
    p = (kernel.shape[0] - factor) - (conv_k - 1)
    x = F.conv_transpose2d(x, w.flip(2, 3).transpose(0, 1), stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(
    x: Tensor, w: Tensor, k: KernelLike = (1, 1), factor: int = 2, gain: float = 1.0
) -> Tensor:
    """A convolution fused with FIR downsampling: ``(B, in, H, W) -> (B, out, H // f, W // f)``.

    Equivalent to ``downsample_2d(conv2d(x, w, padding=K // 2), k)`` for an odd square ``w`` of
    shape ``(out, in, K, K)``, computed as the FIR filter followed by a strided convolution.
    """
    conv_k = w.shape[-1]
    kernel = setup_kernel(k, x.device, _kernel_dtype(x)) * gain
    p = (kernel.shape[0] - factor) + (conv_k - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


def naive_upsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling ``(B, C, H, W) -> (B, C, H * factor, W * factor)``."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1).expand(B, C, H, factor, W, factor)
    return x.reshape(B, C, H * factor, W * factor)


def naive_downsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Average pooling ``(B, C, H, W) -> (B, C, H // factor, W // factor)``."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


class FIRConv2d(nn.Module):
    """Convolution with optional fused FIR up- or downsampling (StyleGAN2's ``Conv2d``).

    Maps ``(B, in_ch, H, W)`` to ``(B, out_ch, H', W')`` with ``H' = 2 H`` (``up``), ``H // 2``
    (``down``) or ``H``. Parameters ``weight (out_ch, in_ch, kernel, kernel)`` and ``bias
    (out_ch,)`` carry the official names; the weight starts from ``default_init()``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        up: bool = False,
        down: bool = False,
        resample_kernel: Sequence[float] = (1, 3, 3, 1),
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d cannot both upsample and downsample")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"kernel size must be odd and positive, got {kernel}")
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        self.weight.data = default_init()(self.weight.shape)
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        else:
            self.register_parameter("bias", None)
        self.up = up
        self.down = down
        self.register_buffer(
            "resample_kernel", torch.tensor(resample_kernel, dtype=torch.float32), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x
