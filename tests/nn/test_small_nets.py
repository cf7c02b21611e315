import copy

import pytest
import torch
from torch import nn

from scoresde.nn.embeddings import sinusoidal_embedding
from scoresde.nn.mlp import ScoreMLP
from scoresde.nn.unet import SmallUNet
from scoresde.setup.data.toy import toy_gmm


@pytest.fixture
def one_thread():
    """Tiny tensors: extra intra-op threads only add overhead (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Replace every trainable parameter (zero-initialised ones included) by small noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


SIGMAS = torch.tensor([0.01, 0.3, 5.0, 50.0])


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (4, 1, 8, 8)),
        ({"embedding_type": "positional", "attention": True}, (4, 1, 8, 8)),
        ({"channel_mults": (1, 2, 2), "base_channels": 16, "attention": True}, (4, 1, 16, 16)),
        ({"in_channels": 3, "base_channels": 16, "num_res_blocks": 1}, (4, 3, 32, 32)),
        ({"channel_mults": (1,), "base_channels": 16}, (4, 1, 8, 8)),
    ],
)
def test_unet_shapes_and_zero_output_at_init(kwargs, shape):
    torch.manual_seed(0)
    net = SmallUNet(**kwargs)
    labels = SIGMAS if kwargs.get("embedding_type", "fourier") == "fourier" else SIGMAS * 10
    out = net(_images(shape), labels)
    assert out.shape == shape and out.is_contiguous()
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    _randomize(net)
    out = net(_images(shape), labels)
    assert out.abs().mean() > 1e-2


def test_unet_default_size():
    net = SmallUNet()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == 303_937
    with_attention = SmallUNet(attention=True)
    assert sum(p.numel() for p in with_attention.parameters()) - trainable == 16_768 + 32
    assert 0.3e6 <= trainable <= 1.5e6
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["embed.fourier.W"]


@pytest.mark.parametrize("net_cls", [SmallUNet, ScoreMLP])
def test_label_semantics_match_ncsnpp(net_cls):
    torch.manual_seed(0)
    fourier = net_cls(embedding_type="fourier")
    emb = fourier.embed
    expected = emb.dense(emb.fourier(torch.log(SIGMAS)))
    torch.testing.assert_close(emb(SIGMAS), expected, rtol=0, atol=0)

    positional = net_cls(embedding_type="positional")
    emb = positional.embed
    t_labels = 999 * torch.tensor([0.0, 0.25, 1.0])
    expected = emb.dense(sinusoidal_embedding(t_labels, emb.channels))
    torch.testing.assert_close(emb(t_labels), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="embedding_type"):
        net_cls(embedding_type="learned")


@pytest.mark.parametrize(
    ("net_cls", "x"), [(SmallUNet, _images((4, 1, 8, 8))), (ScoreMLP, _images((4, 2)))]
)
def test_scale_by_sigma_divides_output_by_labels(net_cls, x):
    torch.manual_seed(0)
    scaled = _randomize(net_cls(scale_by_sigma=True))
    plain = net_cls(scale_by_sigma=False)
    plain.load_state_dict(scaled.state_dict())
    shape = (-1,) + (1,) * (x.ndim - 1)
    torch.testing.assert_close(scaled(x, SIGMAS), plain(x, SIGMAS) / SIGMAS.reshape(shape))
    assert scaled(x, SIGMAS)[0].abs().mean() > 50 * scaled(x, SIGMAS)[2].abs().mean()
    with pytest.raises(ValueError, match="scale_by_sigma"):
        net_cls(scale_by_sigma=True, embedding_type="positional")


def test_unet_outputs_depend_on_labels_and_not_on_other_examples():
    torch.manual_seed(0)
    net = _randomize(SmallUNet(attention=True)).eval()
    x = _images((4, 1, 8, 8))
    out = net(x, SIGMAS)
    same_x = net(x[:1].expand(4, -1, -1, -1), SIGMAS)
    assert (same_x[0] - same_x[1]).abs().mean() > 1e-2  # labels matter
    torch.testing.assert_close(net(x[1:3], SIGMAS[1:3]), out[1:3], rtol=1e-4, atol=1e-5)


def test_unet_every_trainable_parameter_gets_gradient():
    torch.manual_seed(0)
    net = _randomize(SmallUNet(attention=True, dropout=0.1))
    net(_images((2, 1, 8, 8)), SIGMAS[:2]).square().sum().backward()
    dead = [n for n, p in net.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert dead == []
    assert net.embed.fourier.W.grad is None


def test_unet_dropout_only_in_train_mode():
    torch.manual_seed(0)
    net = _randomize(SmallUNet(dropout=0.5))
    x = _images((2, 1, 8, 8))
    net.eval()
    torch.testing.assert_close(net(x, SIGMAS[:2]), net(x, SIGMAS[:2]), rtol=0, atol=0)
    net.train()
    assert not torch.allclose(net(x, SIGMAS[:2]), net(x, SIGMAS[:2]))


def test_unet_rejects_indivisible_image_size():
    net = SmallUNet(channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 6, 6), torch.ones(1))


def test_unet_state_dict_is_plain_contiguous_tensors():
    state = SmallUNet().state_dict()
    assert all(v.is_contiguous() for v in state.values())


def test_mlp_shape_zero_init_and_params():
    torch.manual_seed(0)
    net = ScoreMLP(dim=3, hidden=64, depth=2)
    out = net(torch.randn(5, 3), torch.rand(5) + 0.1)
    assert out.shape == (5, 3) and torch.count_nonzero(out) == 0
    assert sum(p.numel() for p in ScoreMLP().parameters() if p.requires_grad) == 124_546
    with pytest.raises(ValueError, match="multiple of 4"):
        ScoreMLP(hidden=30)


@pytest.mark.parametrize(
    ("embedding_type", "label_scale"), [("fourier", 1.0), ("positional", 100.0)]
)
@pytest.mark.usefixtures("one_thread")
def test_mlp_fits_a_noise_conditional_score(embedding_type, label_scale):
    """Regress sigma * score of the 8-Gaussian mixture at two noise levels on the same points.

    A label-blind network cannot go below the spread between the two targets; the fit must.
    """
    torch.manual_seed(0)
    gmm = toy_gmm()
    g = torch.Generator().manual_seed(0)
    x = gmm.sample(128, generator=g) + torch.randn(128, 2, generator=g)
    x = x.repeat(2, 1)
    sigma = torch.tensor([0.5, 2.0]).repeat_interleave(128)
    target = gmm.score(x, 1.0, sigma) * sigma[:, None]
    blind_floor = (target[:128] - target[128:]).square().mean().item() / 4
    net = ScoreMLP(embedding_type=embedding_type)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        loss = (net(x, sigma * label_scale) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert blind_floor > 0.05
    assert loss.item() < 0.2 * blind_floor


def test_nets_copy_for_ema():
    net = SmallUNet()
    clone = copy.deepcopy(net)
    x = _images((2, 1, 8, 8))
    torch.testing.assert_close(clone(x, SIGMAS[:2]), net(x, SIGMAS[:2]))
