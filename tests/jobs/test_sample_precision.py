"""``sample.compute_dtype`` and ``sample.compile``: how the network runs when sampling.

A tiny trained toy run (eight Gaussians on a ring of radius 4, VP SDE, MLP) samples in float32
and in bf16 autocast from the same seed with a deterministic few-step sampler; the compiled
network is built once per run (``torch.compile`` replaced by a counting wrapper); the
likelihood ignores both settings.
"""

from dataclasses import replace

import pytest
import torch

from scoresde.jobs.runs import TrainedModel, evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.loop import train
from scoresde.setup.build import build_model, build_sde
from scoresde.setup.config import ConfigError
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.presets import get_preset

# bf16 keeps 8 bits of mantissa (relative resolution 2^-8 ~ 4e-3): over 8 Heun steps the samples
# (radius ~4) move by ~1e-2 on average and by at most ~5e-2; float32 rounding alone is ~1e-6.
BF16_MAX_DIFF = 0.15
BF16_MEAN_DIFF = 0.05
BF16_MIN_DIFF = 1e-4


def _with(run: TrainedModel, *overrides: str) -> TrainedModel:
    """``run`` with config overrides (sharing its compiled-network cache)."""
    return replace(run, cfg=apply_overrides(run.cfg, list(overrides)))


def _fresh(run: TrainedModel, *overrides: str) -> TrainedModel:
    """A newly loaded copy of ``run`` (the same network, an empty compiled-network cache)."""
    cfg = apply_overrides(run.cfg, list(overrides))
    return TrainedModel(cfg, run.sde, run.model, run.device, run.step)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> TrainedModel:
    over = [
        "train.steps=200",
        "train.batch_size=256",
        "train.log_every=50",
        "train.checkpoint_every=0",
        "model.hidden=64",
        "model.depth=2",
        "device=cpu",
    ]
    folder = tmp_path_factory.mktemp("toy_run")
    result = train(apply_overrides(get_preset("toy_gmm"), over), folder, progress=False)
    return load_trained(result.checkpoint, device="cpu")


@pytest.fixture
def compile_calls(monkeypatch):
    """``torch.compile`` replaced by a counting wrapper that returns the module unchanged."""
    calls = []

    def counting_compile(model, *args, **kwargs):
        calls.append(model)
        return model

    monkeypatch.setattr(torch, "compile", counting_compile)
    return calls


@pytest.mark.parametrize("method", ["heun", "ddim"])
def test_bf16_samples_are_finite_close_to_float32_and_not_equal(toy_run, method):
    kw = dict(method=method, seed=0, batch_size=24, num_steps=8)
    fp32, _ = generate(toy_run, 64, **kw)
    bf16, info = generate(toy_run, 64, compute_dtype="bfloat16", **kw)
    assert fp32.dtype == bf16.dtype == torch.float32 and info["nfe"] > 0
    assert torch.isfinite(bf16).all()
    diff = (bf16 - fp32).abs()
    assert diff.max().item() > BF16_MIN_DIFF  # bf16 really ran
    assert diff.max().item() < BF16_MAX_DIFF and diff.mean().item() < BF16_MEAN_DIFF
    # The samples are the model's: on the ring of radius 4 in both precisions.
    assert abs(fp32.norm(dim=1).median().item() - 4.0) < 1.0
    # The config's setting and the call's override are the same thing.
    via_cfg, _ = generate(_with(toy_run, "sample.compute_dtype=bfloat16"), 64, **kw)
    assert torch.equal(via_cfg, bf16)
    # Float32 is bit-identical to the default.
    again, _ = generate(toy_run, 64, compute_dtype="float32", **kw)
    assert torch.equal(again, fp32)


def test_the_score_stays_float32_under_bf16(toy_run):
    bf16 = _with(toy_run, "sample.compute_dtype=bfloat16")
    assert toy_run.score_fn.compute_dtype is None  # float32: no autocast
    assert bf16.score_fn.compute_dtype is torch.bfloat16
    assert bf16.float32_score_fn.compute_dtype is None
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 1.0, 16)
    with torch.no_grad():
        s32, s16 = toy_run.score_fn(x, t), bf16.score_fn(x, t)
    assert s32.dtype == s16.dtype == torch.float32
    rel = ((s16 - s32).norm() / s32.norm()).item()
    assert 1e-5 < rel < 3e-2


def test_an_image_network_runs_in_bf16_with_a_float32_score():
    """The digits U-Net (convolutions under CPU bf16 autocast), random weights off their zero
    initialisation: the eps prediction moves by bf16 rounding, and stays float32."""
    cfg = apply_overrides(get_preset("digits_vp"), ["model.nf=8", "device=cpu"])
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    run = TrainedModel(cfg, build_sde(cfg.sde), model, torch.device("cpu"))
    x = torch.randn(4, *run.shape, generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    with torch.no_grad():
        e32 = run.score_fn.eps(x, t)
        e16 = run.sampling_score_fn(replace(cfg.sample, compute_dtype="bfloat16")).eps(x, t)
    assert e32.dtype == e16.dtype == torch.float32 and torch.isfinite(e16).all()
    rel = ((e16 - e32).norm() / e32.norm()).item()
    assert 1e-4 < rel < 5e-2


def test_the_network_is_compiled_once_per_run(toy_run, compile_calls):
    kw = dict(method="heun", seed=3, batch_size=10, num_steps=4)
    plain, _ = generate(toy_run, 25, **kw)  # three batches, uncompiled
    assert compile_calls == []
    run = _fresh(toy_run, "sample.compile=true")
    first, _ = generate(run, 25, **kw)
    second, _ = generate(run, 25, **kw)
    assert len(compile_calls) == 1 and compile_calls[0] is run.model
    assert torch.equal(first, plain) and torch.equal(second, plain)
    # An override on the same run, and a bf16 run replaced from it, reuse the compiled network.
    generate(_with(run, "sample.compute_dtype=bfloat16"), 5, **kw)
    generate(_with(run, "sample.compile=false"), 5, compile=True, **kw)
    assert len(compile_calls) == 1
    # A run whose cfg no longer compiles uses the network itself.
    assert _with(run, "sample.compile=false").score_fn.net is run.model
    # A fresh run of the same network, or the run given another network, compiles its own.
    generate(_fresh(run), 5, **kw)
    assert len(compile_calls) == 2
    other = replace(run, model=torch.nn.Sequential())
    assert other.compiled_network() is other.model and len(compile_calls) == 3


def test_a_really_compiled_network_samples_as_the_plain_one(toy_run, monkeypatch):
    """Dynamo's tracing with the ``eager`` backend (no code generation, so quick on a CPU): the
    compiled module sits inside the score model and gives bit-identical samples, in float32 and
    in bf16."""
    real_compile, calls = torch.compile, []

    def eager_compile(model, *args, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    kw = dict(method="heun", seed=3, batch_size=10, num_steps=4)
    run = _fresh(toy_run, "sample.compile=true")
    try:
        assert isinstance(run.score_fn.net, torch._dynamo.eval_frame.OptimizedModule)
        for dtype in ("float32", "bfloat16"):
            plain, _ = generate(toy_run, 25, compute_dtype=dtype, **kw)
            compiled, _ = generate(run, 25, compute_dtype=dtype, **kw)
            assert torch.equal(compiled, plain)
        assert len(calls) == 1
    finally:
        torch._dynamo.reset()


def test_the_likelihood_is_float32_and_uncompiled(toy_run, compile_calls):
    data = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)) + 2.0
    kw = dict(seed=0, rtol=1e-3, atol=1e-3)
    plain = evaluate_likelihood(toy_run, data, **kw)
    fast = _fresh(toy_run, "sample.compute_dtype=bfloat16", "sample.compile=true")
    assert evaluate_likelihood(fast, data, **kw) == plain
    assert compile_calls == []


def test_an_unknown_compute_dtype_is_refused_in_one_line(toy_run):
    with pytest.raises(ConfigError) as err:
        apply_overrides(toy_run.cfg, ["sample.compute_dtype=float16"])
    message = str(err.value)
    assert "\n" not in message and "float16" in message and "bfloat16" in message
    with pytest.raises(ConfigError, match=r"sample\.compute_dtype"):
        generate(toy_run, 2, method="heun", num_steps=2, compute_dtype="fp8")
