"""Every score network runs in the dtype of its input, float64 included.

Each network is built small, its parameters are perturbed (so that zero-initialised output layers
do not hide anything), and the same weights are run in float32 and, after ``.double()``, in
float64: the float64 output must be float64, finite and agree with the float32 one to float32
accuracy.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from scoresde.nn.ddpm import DDPM
from scoresde.nn.embeddings import GaussianFourierProjection, sinusoidal_embedding
from scoresde.nn.mlp import ScoreMLP
from scoresde.nn.ncsn import NCSN, NCSNv2
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.nn.unet import SmallUNet
from scoresde.setup.presets.networks_ncsnpp import (
    ddpmpp_cifar10_continuous,
    ncsnpp_cifar10_continuous,
)

_NCSNPP_SMALL = {"image_size": 8, "nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1,
                 "attn_resolutions": (4,), "dropout": 0.0, "num_scales": 10}  # fmt: skip
_DDPM_SMALL = {"image_size": 8, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
               "attn_resolutions": (4,), "dropout": 0.0}  # fmt: skip

SIGMA_LABELS = torch.tensor([0.05, 7.0])
TIME_LABELS = torch.tensor([5.0, 900.0])  # 999 t
INDEX_LABELS = torch.tensor([0, 7])  # noise-level indices

# name -> (constructor, input shape, labels)
NETWORKS = {
    # NCSN++ (VE): Fourier features of log sigma, FIR, residual input pyramid, 1/sigma output.
    "ncsnpp_fourier": (
        lambda: NCSNpp(**{**ncsnpp_cifar10_continuous(), **_NCSNPP_SMALL}),
        (2, 3, 8, 8), SIGMA_LABELS,
    ),
    # NCSN++ with both pyramids (output_skip / input_skip with 'cat').
    "ncsnpp_fourier_pyramids": (
        lambda: NCSNpp(**{**ncsnpp_cifar10_continuous(), **_NCSNPP_SMALL, "resblock_type": "ddpm",
                          "progressive": "output_skip", "progressive_input": "input_skip",
                          "progressive_combine": "cat"}),
        (2, 3, 8, 8), SIGMA_LABELS,
    ),
    # DDPM++ (VP): positional embedding of 999 t.
    "ddpmpp_positional": (
        lambda: NCSNpp(**{**ddpmpp_cifar10_continuous(), **_NCSNPP_SMALL}),
        (2, 3, 8, 8), TIME_LABELS,
    ),
    # Positional embedding of noise indices with the float64 ``sigmas`` buffer (scale_by_sigma),
    # BigGAN blocks, FIR and the residual output pyramid.
    "ncsnpp_positional_sigmas": (
        lambda: NCSNpp(**{**ncsnpp_cifar10_continuous(), **_NCSNPP_SMALL,
                          "embedding_type": "positional", "progressive": "residual"}),
        (2, 3, 8, 8), INDEX_LABELS.double(),
    ),
    "ddpm": (lambda: DDPM(**_DDPM_SMALL), (2, 3, 8, 8), TIME_LABELS),
    "ddpm_ve": (
        lambda: DDPM(**_DDPM_SMALL, scale_by_sigma=True, centered=False, num_scales=10),
        (2, 3, 8, 8), INDEX_LABELS,
    ),
    "ddpm_unconditional": (
        lambda: DDPM(**_DDPM_SMALL, conditional=False, resamp_with_conv=False),
        (2, 3, 8, 8), TIME_LABELS,
    ),
    "ncsn": (lambda: NCSN(image_size=8, nf=8, num_scales=10), (2, 3, 8, 8), INDEX_LABELS),
    "ncsnv2_64": (
        lambda: NCSNv2(image_size=8, nf=8, num_scales=10, variant=64), (2, 3, 8, 8), INDEX_LABELS,
    ),
    "ncsnv2_128": (
        lambda: NCSNv2(image_size=8, nf=8, num_scales=10, variant=128), (2, 3, 8, 8), INDEX_LABELS,
    ),
    "ncsnv2_256": (
        lambda: NCSNv2(image_size=16, nf=8, num_scales=10, variant=256), (2, 3, 16, 16),
        INDEX_LABELS,
    ),
    "unet_fourier": (
        lambda: SmallUNet(base_channels=16, num_res_blocks=1, attention=True, scale_by_sigma=True),
        (2, 1, 8, 8), SIGMA_LABELS,
    ),
    "unet_positional": (
        lambda: SmallUNet(base_channels=16, num_res_blocks=1, embedding_type="positional"),
        (2, 1, 8, 8), TIME_LABELS,
    ),
    "mlp_fourier": (lambda: ScoreMLP(hidden=32, depth=2, scale_by_sigma=True), (2, 2),
                    SIGMA_LABELS),
    "mlp_positional": (lambda: ScoreMLP(hidden=32, depth=2, embedding_type="positional"), (2, 2),
                       TIME_LABELS),
}  # fmt: skip


def _perturbed(build) -> nn.Module:
    torch.manual_seed(0)
    model = build().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _as_double(labels: torch.Tensor) -> torch.Tensor:
    return labels.double() if labels.is_floating_point() else labels


def _run_recording_dtypes(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, set[torch.dtype]]:
    """``model(x, labels)`` and the dtypes of every floating tensor entering or leaving any of its
    submodules meanwhile."""
    seen: set[torch.dtype] = set()

    def record(_module, inputs, output) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        for value in (*inputs, *outputs):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                seen.add(value.dtype)

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        out = model(x, labels)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_runs_in_float64_and_matches_float32(name, single_thread):
    build, shape, labels = NETWORKS[name]
    model32 = _perturbed(build)
    model64 = copy.deepcopy(model32).double()
    x32 = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    x64 = x32.double()
    labels32 = labels.float() if labels.is_floating_point() else labels
    with torch.no_grad():
        out32 = model32(x32, labels32)
        # (no layer of the float64 network may see or make anything but float64)
        out64, dtypes = _run_recording_dtypes(model64, x64, _as_double(labels))
        # Labels of the other dtype: float32 labels into the float64 network are exactly
        # representable, so the result is that of float64 labels; float64 labels into the float32
        # network run it in float32 (the Fourier features of log sigma may be computed in float64,
        # which moves the float32 output within float32 accuracy).
        out64_from32 = model64(x64, labels32)
        out32_from64 = model32(x32, _as_double(labels))

    assert dtypes == {torch.float64}
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert out64.shape == x64.shape
    assert torch.isfinite(out64).all()
    scale = out64.abs().max().item()
    assert scale > 1e-3  # the comparison below is not vacuous
    # float32 rounding through a few layers: relative 1e-4 of the output's scale.
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(out64_from32, out64, rtol=1e-12, atol=1e-12 * scale)
    assert out32_from64.dtype == torch.float32
    torch.testing.assert_close(out32_from64, out32, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["ncsnpp_fourier", "ddpmpp_positional", "ddpm", "unet_fourier"])
def test_float64_gradients(name, single_thread):
    """Back-propagation works in float64 too (the likelihood's divergence needs it)."""
    build, shape, labels = NETWORKS[name]
    model = _perturbed(build).double()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, _as_double(labels)).square().sum(), x)
    assert grad.dtype == torch.float64 and torch.isfinite(grad).all() and grad.abs().max() > 0


def test_sinusoidal_embedding_follows_timestep_dtype():
    t32 = torch.tensor([0.0, 1.0, 250.5, 999.0])
    e32 = sinusoidal_embedding(t32, 16)
    e64 = sinusoidal_embedding(t32.double(), 16)
    assert e32.dtype == torch.float32 and e64.dtype == torch.float64
    # closed form: [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / 7), in float64
    k = torch.arange(8, dtype=torch.float64)
    args = t32.double()[:, None] * torch.exp(-math.log(10000) / 7 * k)[None, :]
    expected = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    torch.testing.assert_close(e64, expected, rtol=0, atol=1e-12)
    # float32 is accurate to the float32 rounding of t w_k (|t w_k| <= 999)
    torch.testing.assert_close(e32.double(), expected, rtol=0, atol=2e-4)
    # an explicit dtype wins; integer timesteps default to the default dtype
    assert sinusoidal_embedding(t32, 16, dtype=torch.float64).dtype == torch.float64
    torch.testing.assert_close(sinusoidal_embedding(t32, 16, dtype=torch.float64), e64)
    ints = sinusoidal_embedding(torch.tensor([0, 3]), 5)
    assert ints.dtype == torch.get_default_dtype() and ints.shape == (2, 5)
    assert torch.equal(ints[:, -1], torch.zeros(2))  # odd dimension: zero padded


def test_fourier_projection_in_float64():
    torch.manual_seed(0)
    proj = GaussianFourierProjection(embedding_size=4, scale=16.0).double()
    x = torch.tensor([-3.0, 0.5, 3.9], dtype=torch.float64)
    out = proj(x)
    assert out.dtype == torch.float64
    args = 2 * math.pi * x[:, None] * proj.W[None, :]
    # |args| reaches ~1e3, where a float64 ulp is ~1e-13 (float32 would be off by ~1e-4)
    torch.testing.assert_close(out, torch.cat([args.sin(), args.cos()], 1), rtol=0, atol=1e-10)
