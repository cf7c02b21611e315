"""The paper's baseline networks (DDPM, NCSN, NCSNv2) against the official implementation.

Every hard-coded number below was measured on the official ``score_sde_pytorch`` code (last
commit cb1f359: ``models/ddpm.py``, ``ncsnv2.py``, ``layers.py``, ``normalization.py``) on CPU
with torch 2.13, after the fixes its NCSN/NCSNv2 need to be built and run at all (none changes a
parameter or the random draws of the initialisation):

- ``ncsn_conv3x3(bias=False)``: skip the bias scaling (it raises ``AttributeError`` otherwise);
- dilated 3x3 convolutions padded by their dilation (score_sde_pytorch issue #48);
- ``'ncsn'`` built with ``ConditionalInstanceNorm2dPlus`` and ``ConditionalResidualBlock``'s
  default ``dilation=1`` (it is ``None`` and compared with ``>``);
- DDPM with ``conditional=False`` starts from an empty module list (it is undefined otherwise).

The big presets are built on the meta device (no memory, no random numbers).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from scoresde.interop.official import official_ema_state_dict, official_state_dict_to_ours
from scoresde.nn.ddpm import DDPM
from scoresde.nn.ncsn import NCSN, NCSNv2, ncsnv2_variant
from scoresde.setup.presets.networks_baselines import (
    OFFICIAL_CONFIGS,
    PRESET_NETWORKS,
    PRESETS,
    build_baseline,
)

# Preset -> (official parameter count, number of state-dict entries, sha256[:16] of the official
# state dict's "key:shape" lines in order).
OFFICIAL_LAYOUT = {
    "ddpm_cifar10": (35_218_947, 309, "76abe18bfe6594b9"),
    "ddpm_cifar10_unconditional": (34_890_243, 305, "4a834cd807b6fab2"),
    "ddpm_cifar10_ve": (35_218_947, 309, "76abe18bfe6594b9"),
    "ddpm_bedroom": (111_569_923, 431, "77c2b44366e23386"),
    "ddpm_church": (111_569_923, 431, "77c2b44366e23386"),
    "ddpm_celebahq": (111_569_923, 431, "77c2b44366e23386"),
    "ncsn_cifar10": (30_117_635, 173, "8eae54a6c94fbf8a"),
    "ncsn_cifar10_124": (39_750_659, 173, "80aaa653d31482c6"),
    "ncsn_celeba": (30_117_635, 173, "8eae54a6c94fbf8a"),
    "ncsn_celeba_124": (51_379_715, 173, "6f12a57afd6670f4"),
    "ncsnv2_cifar10": (29_694_083, 154, "9250c60d9c0558cd"),
    "ncsnv2_celeba": (29_694_083, 154, "cfcebb6adbeff145"),
    "ncsnv2_bedroom": (83_445_379, 192, "5a76d760c440aaa6"),
}

# Key -> shape spot checks in the official state dicts.
OFFICIAL_KEYS = {
    "ddpm_cifar10": {
        "sigmas": (1000,),
        "all_modules.0.weight": (512, 128),
        "all_modules.2.weight": (128, 3, 3, 3),
        "all_modules.3.Dense_0.weight": (128, 512),
        "all_modules.5.Conv_0.weight": (128, 128, 3, 3),
        "all_modules.6.NIN_0.W": (128, 256),
        "all_modules.7.NIN_3.W": (256, 256),
        "all_modules.35.weight": (128,),
        "all_modules.36.weight": (3, 128, 3, 3),
    },
    "ncsnv2_cifar10": {
        "sigmas": (232,),
        "normalizer.beta": (128,),
        "res2.0.conv2.conv.weight": (256, 128, 3, 3),
        "res2.0.shortcut.conv.weight": (256, 128, 1, 1),
        "res3.0.shortcut.weight": (256, 256, 3, 3),
        "refine1.crp.convs.1.weight": (256, 256, 3, 3),
        "refine2.msf.convs.1.bias": (256,),
        "refine4.output_convs.3_2_conv.weight": (128, 128, 3, 3),
    },
    "ncsn_cifar10": {
        "normalizer.embed.weight": (10, 384),
        "res1.0.normalize1.embed.weight": (10, 384),
        "refine1.crp.norms.0.embed.weight": (10, 768),
        "refine2.adapt_convs.1.2_2_norm.embed.weight": (10, 768),
        "refine2.msf.norms.0.embed.weight": (10, 768),
    },
}

# Small networks at 16x16 for the numerical checks.
SMALL = {
    "ddpm": (DDPM, {"image_size": 16, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                    "attn_resolutions": (8,)}),
    "ddpm_ve": (DDPM, {"image_size": 16, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                       "attn_resolutions": (8,), "scale_by_sigma": True, "centered": False,
                       "num_scales": 10}),
    "ddpm_uncond": (DDPM, {"image_size": 16, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                           "attn_resolutions": (16,), "resamp_with_conv": False,
                           "conditional": False}),
    "ncsn": (NCSN, {"image_size": 16, "nf": 8, "num_scales": 10}),
    "ncsnv2_64": (NCSNv2, {"image_size": 16, "nf": 8, "num_scales": 10, "variant": 64}),
    "ncsnv2_128": (NCSNv2, {"image_size": 16, "nf": 8, "num_scales": 10, "variant": 128}),
    "ncsnv2_256": (NCSNv2, {"image_size": 16, "nf": 8, "num_scales": 10, "variant": 256}),
}  # fmt: skip

# Official outputs of the SMALL networks: init after torch.manual_seed(0) (our layers draw the
# same numbers in the same order, so the weights are identical), every parameter in order then
# perturbed by 0.02 N(0, 1) from a generator seeded 1, eval mode, x = rand(2, 3, 16, 16) from a
# generator seeded 2, labels (0, 299.7) for VP DDPM and noise indices (0, 7) otherwise.
# (sum, sum of |out|, first four values of out.flatten()).
OFFICIAL_OUTPUTS = {
    "ddpm": (-23.4553111, 238.627893, (-0.0508816764, 0.0335973874, -0.0634864271, -0.122270226)),
    "ddpm_ve": (-174.755837, 1835.32903, (-0.00181367621, 0.000380562327, 0.00274373079,
                                          -0.00434191246)),
    "ddpm_uncond": (-18.6888047, 248.549101, (0.189814776, 0.000636747107, -0.044945959,
                                              0.198718369)),
    "ncsn": (310.770477, 589.755531, (-0.385197222, -0.217325345, 0.456136703, 0.720810533)),
    "ncsnv2_64": (6372.34903, 8021.24551, (0.0031144165, 0.000172645334, 0.000218113331,
                                           0.00327141676)),
    "ncsnv2_128": (-55.4324045, 7736.68934, (-0.0106242169, -0.0183066707, -0.0164522324,
                                             -0.0122369267)),
    "ncsnv2_256": (-1378.69518, 6015.98034, (-0.0130415307, -0.0206508022, -0.0212586876,
                                             -0.0120748244)),
}  # fmt: skip


def _layout_hash(model: nn.Module) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _meta(build) -> nn.Module:
    with torch.device("meta"):
        return build()


def _labels(name: str) -> torch.Tensor:
    return torch.tensor([0.0, 299.7]) if name in ("ddpm", "ddpm_uncond") else torch.tensor([0, 7])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_official_layout(name):
    model = _meta(lambda: build_baseline(name))
    count, entries, digest = OFFICIAL_LAYOUT[name]
    assert sum(p.numel() for p in model.parameters()) == count
    assert len(model.state_dict()) == entries
    assert _layout_hash(model) == digest
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in OFFICIAL_KEYS.get(name, {}).items():
        assert shapes[key] == shape, key


def test_ncsnv2_256_matches_official_layout():
    model = _meta(lambda: NCSNv2(image_size=256, sigma_max=348.0, num_scales=2311))
    assert model.variant == 256
    assert sum(p.numel() for p in model.parameters()) == 94_132_611
    assert len(model.state_dict()) == 230
    assert _layout_hash(model) == "b579dd6b4c9cb94c"


def test_every_official_config_has_a_preset():
    assert set(OFFICIAL_LAYOUT) == set(PRESETS)
    assert set(OFFICIAL_CONFIGS.values()) <= set(PRESETS)
    assert len(OFFICIAL_CONFIGS) == 19
    for name, cls in PRESET_NETWORKS.items():
        assert isinstance(_meta(lambda name=name: build_baseline(name)), cls)


def _small(name: str) -> nn.Module:
    cls, kwargs = SMALL[name]
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("name", sorted(SMALL))
def test_seeded_outputs_match_official(name, single_thread):
    model = _small(name)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, _labels(name))
    assert out.shape == x.shape and out.dtype == torch.float32
    total, abs_total, first = OFFICIAL_OUTPUTS[name]
    assert abs(out.double().sum().item() - total) <= 1e-5 * abs_total
    assert out.double().abs().sum().item() == pytest.approx(abs_total, rel=1e-5)
    scale = out.abs().max().item()
    torch.testing.assert_close(out.flatten()[:4].double(), torch.tensor(first).double(),
                               rtol=1e-4, atol=1e-6 * scale)  # fmt: skip


@pytest.mark.parametrize("variant, size", [(64, 28), (128, 20), (256, 24)])
def test_ncsnv2_shapes_and_sigma_scaling(variant, size, single_thread):
    model = NCSNv2(image_size=size, nf=8, num_scales=5, num_channels=1, variant=variant).eval()
    x = torch.rand(1, 1, size, size).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 3]))
    assert out.shape == x.shape
    # The network is unconditional apart from the 1 / sigma scaling of its output.
    sigmas = model.sigmas[[0, 3]].float()
    torch.testing.assert_close(out[0] * sigmas[0], out[1] * sigmas[1])


def test_ncsnv2_variant_and_validation():
    assert [ncsnv2_variant(s) for s in (32, 64, 95, 96, 128, 129, 256)] == [
        64, 64, 64, 128, 128, 256, 256
    ]  # fmt: skip
    with pytest.raises(ValueError):
        ncsnv2_variant(512)
    with pytest.raises(ValueError):
        NCSNv2(image_size=20, nf=8, variant=256)
    with pytest.raises(ValueError):
        NCSNv2(image_size=32, nf=8, variant=32)


def test_ncsn_is_noise_conditional_and_rejects_class_labels(single_thread):
    model = NCSN(image_size=8, nf=8, num_scales=4).eval()
    x = torch.rand(1, 3, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 3]))
    assert out.shape == x.shape and not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError):
        model(x, torch.tensor([0, 3]), class_labels=torch.tensor([1, 2]))


def test_ddpm_conditioning(single_thread):
    torch.manual_seed(0)
    kwargs = {"image_size": 8, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "dropout": 0.0}
    model = DDPM(**kwargs, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        x = torch.randn(2, 3, 8, 8)
        t = torch.tensor([10.0, 500.0])
        base = model(x, t)
        assert base.shape == x.shape
        assert not torch.allclose(base, model(x, t.flip(0)))
        assert not torch.allclose(base, model(x, t, class_labels=torch.tensor([0, 2])))
    uncond = DDPM(**kwargs, conditional=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(uncond(x, t), uncond(x, t.flip(0)))
    with pytest.raises(ValueError):
        DDPM(**kwargs, conditional=False, num_classes=3)
    with pytest.raises(ValueError):
        DDPM(**{**kwargs, "nf": 48})


def test_ddpm_official_checkpoint_mapping():
    """An official-style DDPM checkpoint (``module.`` keys, EMA ``shadow_params`` in parameter
    order) maps onto ``DDPM`` with the NCSN++ helpers of ``scoresde.interop.official``."""
    model = DDPM(**SMALL["ddpm"][1])
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    shadow = [p.detach() + 1.0 for p in model.parameters()]
    checkpoint = {"model": sd, "ema": {"shadow_params": shadow}, "step": 0}
    model.load_state_dict(official_state_dict_to_ours(sd), strict=True)
    ema = official_ema_state_dict(checkpoint)
    model.load_state_dict(ema, strict=True)
    for p, s in zip(model.parameters(), shadow, strict=True):
        assert torch.equal(p, s)
