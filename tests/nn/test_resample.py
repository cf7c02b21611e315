"""FIR resampling against direct reference computations (explicit sums, transposed convolutions)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scoresde.nn.blocks import Downsample, Upsample
from scoresde.nn.resample import (
    FIRConv2d,
    conv_downsample_2d,
    downsample_2d,
    naive_downsample_2d,
    naive_upsample_2d,
    setup_kernel,
    upfirdn2d,
    upsample_2d,
    upsample_conv_2d,
)

FIR = (1.0, 3.0, 3.0, 1.0)


def _upfirdn2d_by_definition(x, kernel, up, down, pad):
    """Zero insertion, padding/cropping and a true convolution, written out pixel by pixel."""
    B, C, H, W = x.shape
    kh, kw = kernel.shape
    u = torch.zeros(B, C, H * up, W * up, dtype=x.dtype)
    u[:, :, ::up, ::up] = x
    p0, p1 = pad
    size_h, size_w = H * up + p0 + p1, W * up + p0 + p1
    padded = torch.zeros(B, C, size_h, size_w, dtype=x.dtype)
    for i in range(size_h):
        for j in range(size_w):
            si, sj = i - p0, j - p0
            if 0 <= si < H * up and 0 <= sj < W * up:
                padded[:, :, i, j] = u[:, :, si, sj]
    out = torch.zeros(B, C, size_h - kh + 1, size_w - kw + 1, dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for a in range(kh):
                for b in range(kw):
                    out[:, :, i, j] += kernel[a, b] * padded[:, :, i + kh - 1 - a, j + kw - 1 - b]
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(
    ("up", "down", "pad"),
    [
        (1, 1, (0, 0)),
        (2, 1, (2, 1)),
        (1, 2, (1, 1)),
        (2, 2, (1, 2)),
        (3, 1, (-1, 2)),
        (1, 2, (0, -1)),
    ],
)
def test_upfirdn2d_matches_definition(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    kernel = torch.randn(3, 4, dtype=torch.float64)  # asymmetric: catches a missing flip
    expected = _upfirdn2d_by_definition(x, kernel, up, down, pad)
    torch.testing.assert_close(upfirdn2d(x, kernel, up=up, down=down, pad=pad), expected)


def test_setup_kernel_is_normalised_outer_product():
    k = setup_kernel(FIR)
    torch.testing.assert_close(k, torch.outer(torch.tensor(FIR), torch.tensor(FIR)) / 64)
    with pytest.raises(ValueError, match="square"):
        setup_kernel(torch.ones(2, 3))


def _depthwise(kernel_2d, channels):
    return kernel_2d[None, None].expand(channels, 1, *kernel_2d.shape).contiguous()


def test_upsample_2d_is_a_strided_transposed_convolution():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    weight = _depthwise(setup_kernel(FIR, dtype=torch.float64) * 4, 3)
    expected = F.conv_transpose2d(x, weight, stride=2, padding=1, groups=3)
    out = upsample_2d(x, FIR)
    assert out.shape == (2, 3, 12, 12)
    torch.testing.assert_close(out, expected)


def test_downsample_2d_is_a_strided_convolution():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weight = _depthwise(setup_kernel(FIR, dtype=torch.float64), 3)
    expected = F.conv2d(x, weight, stride=2, padding=1, groups=3)
    out = downsample_2d(x, FIR)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out, expected)


def test_default_kernels_are_nearest_and_average_pooling():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    nearest = F.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(upsample_2d(x), nearest)
    torch.testing.assert_close(naive_upsample_2d(x), nearest)
    torch.testing.assert_close(downsample_2d(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(naive_downsample_2d(x), F.avg_pool2d(x, 2))


def test_constant_image_keeps_its_value_away_from_the_border():
    x = torch.full((1, 1, 8, 8), 3.0, dtype=torch.float64)
    torch.testing.assert_close(
        upsample_2d(x, FIR)[..., 2:-2, 2:-2], torch.full((1, 1, 12, 12), 3.0, dtype=torch.float64)
    )
    torch.testing.assert_close(
        downsample_2d(x, FIR)[..., 1:-1, 1:-1], torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)
    )


def test_fused_upsample_conv_equals_unfused_on_zero_extended_input():
    """StyleGAN2's fused op pads once: it is upsample then conv on a zero-extended image."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    unfused = F.conv2d(upsample_2d(F.pad(x, (1, 1, 1, 1)), FIR), w, padding=1)[..., 2:-2, 2:-2]
    torch.testing.assert_close(upsample_conv_2d(x, w, FIR), unfused)


def test_fused_conv_downsample_equals_unfused_on_zero_extended_input():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    unfused = downsample_2d(F.conv2d(F.pad(x, (2, 2, 2, 2)), w, padding=1), FIR)[..., 1:-1, 1:-1]
    torch.testing.assert_close(conv_downsample_2d(x, w, FIR), unfused)


def test_fir_conv_and_resampling_modules_shapes():
    x = torch.randn(2, 4, 8, 8)
    assert FIRConv2d(4, 6, up=True)(x).shape == (2, 6, 16, 16)
    assert FIRConv2d(4, 6, down=True)(x).shape == (2, 6, 4, 4)
    assert FIRConv2d(4, 6)(x).shape == (2, 6, 8, 8)
    for fir in (False, True):
        assert Upsample(4, 6, with_conv=True, fir=fir)(x).shape == (2, 6, 16, 16)
        assert Downsample(4, 6, with_conv=True, fir=fir)(x).shape == (2, 6, 4, 4)
        assert Upsample(fir=fir)(x).shape == (2, 4, 16, 16)
        assert Downsample(fir=fir)(x).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError):
        FIRConv2d(4, 6, up=True, down=True)
