"""The performance switches: activation checkpointing, channels-last, TF32 flags, compile.

Every network kind is built tiny through :func:`scoresde.setup.build.build_model`, its parameters
are
replaced by noise (zero-initialised output layers would hide everything) and one training loss
is differentiated with and without activation checkpointing: the loss and every gradient must
agree to float64 round-off, dropout included (the recomputation replays the random state).
"""

from __future__ import annotations

import copy
import io
import shutil

import pytest
import torch
from torch import nn

from scoresde.jobs.training.performance import prepare_network, tf32, to_memory_format
from scoresde.nn.checkpointing import enable_activation_checkpointing, is_activation_checkpointed
from scoresde.setup.build import build_loss, build_model, build_score_fn, build_sde
from scoresde.setup.config import Config, DataConfig, ModelConfig, SDEConfig, TrainConfig
from scoresde.setup.data.pipeline import data_shape

_DIGITS = DataConfig(dataset="digits")
_VE = SDEConfig(kind="ve", sigma_min=0.01, sigma_max=10.0, N=10)
_VP = SDEConfig(kind="vp", N=10)

# name -> config of a tiny network of each kind (8x8 digits, 1 channel; 2-D points for the MLP)
CONFIGS = {
    # NCSN++: BigGAN blocks (resampling ones between the two levels), FIR, residual input and
    # output pyramids, Fourier features of sigma, attention at 4x4.
    "ncsnpp": Config(
        data=_DIGITS,
        sde=_VE,
        model=ModelConfig(
            name="ncsnpp", nf=8, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,),
            dropout=0.2, embedding_type="fourier", scale_by_sigma=True, resblock_type="biggan",
            fir=True, progressive="residual", progressive_input="residual",
        ),
    ),
    # DDPM++: one resolution level, DDPM-type blocks, positional embedding of 999 t.
    "ddpmpp": Config(
        data=_DIGITS,
        sde=_VP,
        model=ModelConfig(
            name="ncsnpp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
            dropout=0.2, resblock_type="ddpm",
        ),
    ),
    "ddpm": Config(
        data=_DIGITS,
        sde=_VP,
        model=ModelConfig(
            name="ddpm", nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
            dropout=0.2,
        ),
    ),
    "ncsn": Config(data=_DIGITS, sde=_VE, model=ModelConfig(name="ncsn", nf=8, continuous=False,
                                                            nonlinearity="elu")),
    "ncsnv2": Config(data=_DIGITS, sde=_VE, model=ModelConfig(name="ncsnv2", nf=8,
                                                              continuous=False,
                                                              nonlinearity="elu")),
    "unet": Config(
        data=_DIGITS,
        sde=_VP,
        model=ModelConfig(name="unet", nf=8, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(1,), dropout=0.2),
    ),
    "mlp": Config(data=DataConfig(dataset="gmm"), sde=_VE,
                  model=ModelConfig(name="mlp", hidden=16, depth=2, embedding_type="fourier")),
}  # fmt: skip

IMAGE_NETWORKS = [name for name in CONFIGS if name != "mlp"]

# torch.compile's first use imports TorchScript helpers that warn about their own deprecation
_TORCH_COMPILE_IMPORT_WARNING = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: extra intra-op threads only add overhead (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _network(name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The tiny network ``name`` in ``dtype``, every parameter replaced by seeded noise (small
    enough to keep the activations of order one)."""
    model = build_model(CONFIGS[name]).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _batch(name: str, dtype: torch.dtype = torch.float64, batch: int = 3) -> torch.Tensor:
    """Training data ``(batch, *example_shape)`` in ``[-1, 1]``."""
    shape = (batch, *data_shape(CONFIGS[name].data))
    return 2 * torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=dtype) - 1


def _loss_and_grads(name: str, model: nn.Module, x0: torch.Tensor, net: nn.Module | None = None):
    """The training loss of ``model`` on ``x0`` (train mode, dropout on) and the gradient of every
    parameter, with the global RNG (dropout) seeded inside ``fork_rng``. ``net`` is the module
    called (default ``model``; e.g. its compiled wrapper)."""
    cfg = CONFIGS[name]
    sde = build_sde(cfg.sde)
    loss_fn = build_loss(cfg, sde)
    score_fn = build_score_fn(model if net is None else net, sde, cfg)
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        loss = loss_fn(score_fn, x0, torch.Generator().manual_seed(4)).mean()
        loss.backward()
    return loss.detach(), _grads(model)


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Each parameter's gradient (``None`` for those the loss does not use, e.g. the fixed
    Fourier frequencies)."""
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _saved_numel(name: str, model: nn.Module, x0: torch.Tensor) -> int:
    """Elements of the tensors autograd saves for the backward pass of one loss (outside the
    checkpointed regions, which save through their own hooks)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _loss_and_grads(name, model, x0)
    return total


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpointing_keeps_loss_and_gradients(name):
    plain = _network(name)
    checkpointed = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    wrapped = enable_activation_checkpointing(checkpointed)
    if name == "mlp":
        assert wrapped == 0
    else:
        assert wrapped > 0
    assert list(checkpointed.state_dict()) == keys
    assert [n for n, _ in checkpointed.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]

    x0 = _batch(name)
    loss, grads = _loss_and_grads(name, plain, x0)
    loss_ckpt, grads_ckpt = _loss_and_grads(name, checkpointed, x0)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-10)
    assert grads_ckpt.keys() == grads.keys()
    for key, grad in grads.items():
        if grad is None:
            assert grads_ckpt[key] is None, key
        else:
            torch.testing.assert_close(grads_ckpt[key], grad, rtol=0, atol=1e-10, msg=key)
    assert sum(g is not None and bool(g.abs().max() > 0) for g in grads.values()) > 0.8 * len(grads)


@pytest.mark.parametrize("name", ["ncsnpp", "ddpm", "unet"])
def test_dropout_is_replayed_not_redrawn(name):
    """With dropout, the checkpointed loss equals the plain one for the same seed, but not for
    another: the agreement above is not that of dropout-free networks."""
    x0 = _batch(name)
    model = _network(name)
    loss, _ = _loss_and_grads(name, model, x0)
    enable_activation_checkpointing(model)
    assert torch.equal(_loss_and_grads(name, model, x0)[0], loss)
    model.eval()
    sde = build_sde(CONFIGS[name].sde)
    with torch.no_grad():
        score_fn = build_score_fn(model, sde, CONFIGS[name])
        eval_loss = build_loss(CONFIGS[name], sde)(score_fn, x0, torch.Generator().manual_seed(4))
    assert not torch.equal(eval_loss.mean(), loss)


@pytest.mark.parametrize("name", ["ncsnpp", "ddpm", "ncsnv2", "unet"])
def test_checkpointing_saves_fewer_activations(name):
    x0 = _batch(name)
    model = _network(name)
    before = _saved_numel(name, model, x0)
    enable_activation_checkpointing(model)
    assert _saved_numel(name, model, x0) < 0.6 * before


@pytest.mark.parametrize("name", IMAGE_NETWORKS)
def test_checkpointing_is_idempotent_and_survives_copies(name):
    model = _network(name, torch.float32)
    first = enable_activation_checkpointing(model)
    assert first > 0
    assert enable_activation_checkpointing(model) == 0
    blocks = [m for m in model.modules() if is_activation_checkpointed(m)]
    assert len(blocks) == first
    assert all(getattr(type(m), "checkpointable", False) for m in blocks)
    # no block inside another one is wrapped (no nested recomputation)
    for block in blocks:
        assert not any(is_activation_checkpointed(m) for m in list(block.modules())[1:])

    twin = copy.deepcopy(model)
    twin_blocks = [m for m in twin.modules() if is_activation_checkpointed(m)]
    assert len(twin_blocks) == first
    assert all(m.forward.block is m for m in twin_blocks)  # each copy runs its own weights
    assert enable_activation_checkpointing(twin) == 0


def test_checkpointed_model_pickles_and_loads_plain_state_dicts():
    model = _network("unet", torch.float32)
    plain = copy.deepcopy(model)
    enable_activation_checkpointing(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert sum(map(is_activation_checkpointed, loaded.modules())) == sum(
        map(is_activation_checkpointed, model.modules())
    )
    # state dicts go both ways between checkpointed and plain networks
    fresh = build_model(CONFIGS["unet"])
    enable_activation_checkpointing(fresh)
    fresh.load_state_dict(plain.state_dict())
    plain.load_state_dict(loaded.state_dict())
    x, labels = _batch("unet", torch.float32), torch.full((3,), 500.0)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, labels), plain.eval()(x, labels))


@pytest.mark.parametrize("name", IMAGE_NETWORKS)
def test_channels_last_outputs_equal_contiguous_ones(name):
    model = _network(name, torch.float32).eval()
    x0 = _batch(name, torch.float32)
    cfg = CONFIGS[name]
    sde = build_sde(cfg.sde)
    labels = build_score_fn(model, sde, cfg).network_labels(torch.linspace(0.2, 0.9, 3))
    with torch.no_grad():
        expected = model(x0, labels)
        tc = TrainConfig(channels_last=True)
        net = prepare_network(model, tc)
        assert net is model
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        x = to_memory_format(x0, tc)
        assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, x0)
        out = net(x, labels)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_to_memory_format_leaves_other_batches_alone():
    x = torch.rand(2, 3, 4, 4)
    assert to_memory_format(x, TrainConfig()) is x
    points = torch.rand(5, 2)
    assert to_memory_format(points, TrainConfig(channels_last=True)) is points


def test_prepare_network_without_switches_is_the_identity():
    model = _network("unet", torch.float32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_network(model, TrainConfig()) is model
    assert not any(is_activation_checkpointed(m) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@_TORCH_COMPILE_IMPORT_WARNING
def test_prepare_network_checkpointing_and_compile_wrapper():
    """``compile`` returns a wrapper sharing the parameters (compilation itself is lazy)."""
    model = _network("unet", torch.float32)
    keys = list(model.state_dict())
    net = prepare_network(model, TrainConfig(activation_checkpointing=True, compile=True))
    assert net is not model and net._orig_mod is model
    assert any(is_activation_checkpointed(m) for m in model.modules())
    assert list(model.state_dict()) == keys
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]


def _flags() -> tuple[bool, bool, str]:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_sets_and_restores_the_flags(enabled):
    before = _flags()
    with tf32(enabled):
        assert torch.backends.cuda.matmul.allow_tf32 is enabled
        assert torch.backends.cudnn.allow_tf32 is enabled
        with tf32(not enabled):
            assert torch.backends.cuda.matmul.allow_tf32 is (not enabled)
        assert torch.backends.cudnn.allow_tf32 is enabled
    assert _flags() == before
    with pytest.raises(KeyError), tf32(enabled):
        raise KeyError("restored on errors too")
    assert _flags() == before


def test_tf32_restores_non_default_flags():
    before = _flags()
    try:
        for precision in ("high", "medium", "highest"):
            for cudnn in (False, True):
                torch.set_float32_matmul_precision(precision)
                torch.backends.cudnn.allow_tf32 = cudnn
                state = _flags()
                for enabled in (True, False):
                    with tf32(enabled):
                        pass
                    assert _flags() == state
    finally:
        torch.set_float32_matmul_precision(before[2])
        torch.backends.cudnn.allow_tf32 = before[1]
    assert _flags() == before


@pytest.mark.slow
@_TORCH_COMPILE_IMPORT_WARNING
def test_compiled_mlp_matches_eager():
    """A real ``torch.compile`` (inductor; needs a C++ compiler): some 30 s on 2 cores when the
    compile caches are cold, a few seconds when warm."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler (none on PATH)")
    model = _network("mlp", torch.float32)
    eager = copy.deepcopy(model)
    net = prepare_network(model, TrainConfig(compile=True))
    x0 = _batch("mlp", torch.float32)
    loss, grads = _loss_and_grads("mlp", eager, x0)
    compiled_loss, compiled_grads = _loss_and_grads("mlp", model, x0, net)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for key, grad in grads.items():
        if grad is not None:
            torch.testing.assert_close(compiled_grads[key], grad, rtol=1e-5, atol=1e-6, msg=key)
