"""Noise-conditional classifiers (classifier guidance) and the null class label (classifier-free
guidance) of the class-conditional score networks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scoresde.nn import (
    DDPM,
    NCSNpp,
    NoiseConditionalMLPClassifier,
    NoiseConditionalWideResNet,
    ScoreMLP,
    SmallUNet,
)
from scoresde.nn.checkpointing import enable_activation_checkpointing
from scoresde.nn.classifiers import WideResBlock
from scoresde.nn.embeddings import NULL_LABEL, embed_classes
from scoresde.setup.presets.networks_ncsnpp import (
    ddpmpp_cifar10_continuous,
    ncsnpp_cifar10_continuous,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only add overhead


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(net: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Replace every trainable parameter (zero-initialised ones included) by small noise."""
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def _small_wrn(**kwargs) -> NoiseConditionalWideResNet:
    torch.manual_seed(0)
    return NoiseConditionalWideResNet(**{"depth": 10, "widen_factor": 1, **kwargs}).eval()


SIGMAS = torch.tensor([0.01, 0.5, 3.0, 50.0])


# --- noise-conditional classifiers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"in_channels": 1, "num_classes": 5, "depth": 10, "widen_factor": 1}, (4, 1, 8, 8)),
        ({"depth": 10, "widen_factor": 2}, (2, 3, 32, 32)),
        ({"in_channels": 1, "num_classes": 2, "depth": 16, "widen_factor": 1}, (3, 1, 12, 20)),
    ],
)
def test_wrn_logit_shapes(kwargs, shape):
    net = NoiseConditionalWideResNet(**kwargs).eval()
    x = torch.randn(shape, generator=_gen(0))
    with torch.no_grad():
        logits = net(x, SIGMAS[: shape[0]])
    assert logits.shape == (shape[0], kwargs.get("num_classes", 10))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert len(net.blocks) == 3 * (kwargs["depth"] - 4) // 6


@pytest.mark.parametrize(("dim", "num_classes", "batch"), [(2, 8, 4), (5, 3, 1), (1, 2, 7)])
def test_mlp_logit_shapes(dim, num_classes, batch):
    net = NoiseConditionalMLPClassifier(dim=dim, num_classes=num_classes, hidden=32)
    x = torch.randn(batch, dim, generator=_gen(0))
    with torch.no_grad():
        logits = net(x, torch.full((batch,), 0.7))
    assert logits.shape == (batch, num_classes) and torch.isfinite(logits).all()


def test_wrn_28_10_parameter_count():
    net = NoiseConditionalWideResNet()
    total = sum(p.numel() for p in net.parameters())
    embedding = sum(p.numel() for p in net.embed.parameters())
    noise_proj = sum(p.numel() for b in net.blocks for p in b.temb_proj.parameters())
    assert len(net.blocks) == 12
    assert total == 39_171_802
    assert total - embedding - noise_proj == 36_479_194  # the plain WRN-28-10 (36.5M)
    assert noise_proj == 4 * 512 * (160 + 320 + 640) + 4 * (160 + 320 + 640)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == total - 128
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {16: 4, 160: 32, 320: 32, 640: 32}  # min(C // 4, 32)


@pytest.mark.parametrize("depth", [0, 4, 9, 11, 27, 29])
def test_wrn_depth_must_be_6n_plus_4(depth):
    with pytest.raises(ValueError, match=r"6n\+4") as info:
        NoiseConditionalWideResNet(depth=depth, widen_factor=1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (NoiseConditionalWideResNet, {"num_classes": 1}, "num_classes"),
        (NoiseConditionalWideResNet, {"widen_factor": 0}, "widen_factor"),
        (NoiseConditionalMLPClassifier, {"num_classes": 1}, "num_classes"),
        (NoiseConditionalMLPClassifier, {"hidden": 30}, "multiple of 4"),
        (NoiseConditionalMLPClassifier, {"depth": 0}, "depth"),
    ],
)
def test_invalid_classifier_options(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def _classifiers():
    torch.manual_seed(0)
    wrn = _small_wrn(in_channels=1, num_classes=4)
    mlp = NoiseConditionalMLPClassifier(hidden=32, num_classes=4)
    return [
        (wrn, torch.randn(4, 1, 8, 8, generator=_gen(1))),
        (mlp, torch.randn(4, 2, generator=_gen(1))),
    ]


def test_classifiers_run_in_float64_and_agree_with_float32():
    for net, x in _classifiers():
        net64 = copy.deepcopy(net).double()
        with torch.no_grad():
            out32 = net(x, SIGMAS)
            out64 = net64(x.double(), SIGMAS.double())
        assert out64.dtype == torch.float64
        rel = (out64 - out32.double()).abs().max() / out64.abs().max()
        assert rel < 1e-4, rel
        assert not torch.equal(out64, out32.double())  # really computed in float64


def test_classifiers_depend_on_the_noise_level_and_not_on_other_examples():
    for net, x in _classifiers():
        with torch.no_grad():
            out = net(x, SIGMAS)
            flipped = net(x, SIGMAS.flip(0))
            alone = net(x[1:2], SIGMAS[1:2])
        for i in range(4):
            assert (out[i] - flipped[i]).abs().max() > 1e-3
        torch.testing.assert_close(alone[0], out[1], rtol=1e-5, atol=1e-6)


def test_wrn_is_invariant_to_per_image_affine_changes():
    net = _small_wrn(num_classes=6)
    x = torch.randn(3, 3, 16, 16, generator=_gen(2))
    scale = torch.tensor([0.5, 1.7, 3.0]).reshape(3, 1, 1, 1)
    shift = torch.tensor([-1.0, 0.3, 2.0]).reshape(3, 1, 1, 1)
    labels = SIGMAS[:3]
    with torch.no_grad():
        out = net(x, labels)
        moved = net(x * scale + shift, labels)
    assert (moved - out).abs().max() < 1e-5
    with torch.no_grad():  # a constant image is not divided by its zero std
        flat = net(torch.full((1, 3, 16, 16), 0.4), labels[:1])
    assert torch.isfinite(flat).all()


def test_input_gradients_exist_and_are_finite():
    for net, x in _classifiers():
        x = x.clone().requires_grad_(True)
        log_p = torch.log_softmax(net(x, SIGMAS), dim=-1)[
            torch.arange(4), torch.tensor([0, 1, 2, 3])
        ]
        (grad,) = torch.autograd.grad(log_p.sum(), x)
        assert grad.shape == x.shape and torch.isfinite(grad).all()
        assert (grad.flatten(1).abs().amax(dim=1) > 0).all()


def test_wrn_blocks_are_checkpointable_with_the_same_gradients():
    net = _small_wrn(num_classes=3, dropout=0.2).train()
    x = torch.randn(2, 3, 8, 8, generator=_gen(3))

    def grads(model):
        torch.manual_seed(5)
        loss = model(x, SIGMAS[:2]).square().sum()
        parameters = [p for p in model.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, parameters)

    checkpointed = copy.deepcopy(net)
    assert WideResBlock.checkpointable
    assert enable_activation_checkpointing(checkpointed) == 3
    for a, b in zip(grads(net), grads(checkpointed), strict=True):
        assert torch.equal(a, b)


# --- the null label of the class-conditional score networks ------------------------------------

_NCSNPP_TINY = {"image_size": 8, "nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1,
                "attn_resolutions": (4,), "dropout": 0.0, "num_scales": 10}  # fmt: skip
_DDPM_TINY = {"image_size": 8, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
              "attn_resolutions": (4,), "dropout": 0.0}  # fmt: skip
TIMES = torch.tensor([5.0, 300.0, 600.0, 900.0])  # 999 t

# name -> (constructor taking num_classes, input shape, noise labels)
NETWORKS = {
    "SmallUNet": (
        lambda n: SmallUNet(base_channels=16, num_res_blocks=1, num_classes=n),
        (4, 1, 8, 8),
        SIGMAS,
    ),
    "ScoreMLP": (lambda n: ScoreMLP(hidden=32, depth=2, num_classes=n), (4, 2), SIGMAS),
    "NCSNpp": (
        lambda n: NCSNpp(**{**ncsnpp_cifar10_continuous(), **_NCSNPP_TINY, "num_classes": n}),
        (4, 3, 8, 8),
        SIGMAS,
    ),
    "DDPMpp": (
        lambda n: NCSNpp(**{**ddpmpp_cifar10_continuous(), **_NCSNPP_TINY, "num_classes": n}),
        (4, 3, 8, 8),
        TIMES,
    ),
    "DDPM": (lambda n: DDPM(**_DDPM_TINY, num_classes=n), (4, 3, 8, 8), TIMES),
}


def _conditional(name: str, num_classes: int = 3):
    make, shape, labels = NETWORKS[name]
    torch.manual_seed(0)
    net = _randomize(make(num_classes)).eval()
    return net, torch.randn(shape, generator=_gen(4)), labels


@pytest.mark.parametrize("name", list(NETWORKS))
def test_null_label_is_exactly_no_label(name):
    net, x, labels = _conditional(name)
    null = torch.full((4,), NULL_LABEL)
    with torch.no_grad():
        unconditional = net(x, labels)
        assert torch.equal(net(x, labels, null), unconditional)
        assert torch.equal(net(x, labels, torch.tensor([-1, -2, -7, -1])), unconditional)
        conditional = net(x, labels, torch.tensor([0, 1, 2, 0]))
    for i in range(4):
        assert (conditional[i] - unconditional[i]).abs().max() > 1e-4
    assert (conditional[0] - net(x, labels, torch.tensor([1, 1, 2, 0]))[0]).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(NETWORKS))
def test_mixed_batch_is_row_wise_the_separate_calls(name):
    net, x, labels = _conditional(name)
    mixed_labels = torch.tensor([2, NULL_LABEL, 0, NULL_LABEL])
    with torch.no_grad():
        mixed = net(x, labels, mixed_labels)
        labelled = net(x, labels, torch.tensor([2, 1, 0, 1]))
        unlabelled = net(x, labels)
        separate = [
            net(x[i : i + 1], labels[i : i + 1], None if y < 0 else mixed_labels[i : i + 1])
            for i, y in enumerate(mixed_labels.tolist())
        ]
    assert torch.equal(mixed[[0, 2]], labelled[[0, 2]])
    assert torch.equal(mixed[[1, 3]], unlabelled[[1, 3]])
    torch.testing.assert_close(mixed, torch.cat(separate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_class_labels_out_of_range_or_without_num_classes_raise(name):
    net, x, labels = _conditional(name)
    with pytest.raises(IndexError):
        net(x, labels, torch.tensor([0, 3, 1, 1]))
    make, _, _ = NETWORKS[name]
    unconditional = make(None).eval()
    with pytest.raises(ValueError, match="num_classes") as info:
        unconditional(x, labels, torch.tensor([0, 1, 2, 0]))
    assert "\n" not in str(info.value)
    assert "class_embed.weight" not in unconditional.state_dict()


@pytest.mark.parametrize("name", ["SmallUNet", "ScoreMLP"])
def test_class_embedding_leaves_the_seeded_weights_and_keys_alone(name):
    make, _, _ = NETWORKS[name]
    torch.manual_seed(0)
    plain = make(None).state_dict()
    torch.manual_seed(0)
    conditional = make(5).state_dict()
    assert list(conditional) == [*plain, "class_embed.weight"]
    assert conditional["class_embed.weight"].shape[0] == 5
    assert all(torch.equal(plain[k], conditional[k]) for k in plain)


def test_embed_classes_zero_rows_dtype_and_gradient():
    embedding = nn.Embedding(4, 6).double()
    labels = torch.tensor([3, NULL_LABEL, 0, -3])
    out = embed_classes(embedding, labels)
    assert out.shape == (4, 6) and out.dtype == torch.float64
    assert torch.equal(out[[0, 2]], embedding(torch.tensor([3, 0])))
    assert torch.equal(out[[1, 3]], torch.zeros(2, 6, dtype=torch.float64))
    out.sum().backward()
    assert torch.equal(embedding.weight.grad.sum(dim=1), torch.tensor([6.0, 0, 0, 6.0]).double())
    with pytest.raises(IndexError):
        embed_classes(embedding, torch.tensor([4]))
