"""NCSN++ / DDPM++ against the official implementation's reference tensors and checkpoint.

The reference files come from the ``reference_path`` fixture (``tests/conftest.py``), which skips
when ``$SCORESDE_REFERENCE_DIR`` / ``../shared/reference`` lacks them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.infra.checkpoint import load_checkpoint
from scoresde.interop.convert import config_from_official, convert_official
from scoresde.interop.official import (
    OfficialCheckpointError,
    from_official_config,
    load_official_checkpoint,
    official_ema_state_dict,
    official_state_dict_to_ours,
)
from scoresde.jobs.runs import load_trained
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.setup.config_io import config_from_dict, load_config
from scoresde.setup.presets.networks_ncsnpp import (
    PRESETS,
    ddpmpp_cifar10_continuous,
    ncsnpp_cifar10_continuous,
)

TINY = ("ncsnpp_ve_tiny", "ddpmpp_vp_tiny")
CHECKPOINT = "ncsnpp_ve_nf8_checkpoint.pth"


@pytest.fixture(scope="module", params=TINY)
def tiny(request, reference_path):
    return torch.load(reference_path(f"{request.param}.pt"), weights_only=True)


def _tiny_model(reference: dict) -> NCSNpp:
    config = reference["config"]
    return NCSNpp(**from_official_config(config["model"], config["data"]))


def test_tiny_outputs_match_official(tiny):
    model = _tiny_model(tiny)
    model.load_state_dict(official_state_dict_to_ours(tiny["state_dict"]), strict=True)
    model.eval()
    cases = [(tiny["labels"], tiny["out"])]
    cases += [(entry["labels"], entry["out"]) for entry in tiny["score"].values()]
    assert len(cases) >= 2
    with torch.no_grad():
        for labels, expected in cases:
            out = model(tiny["x"], labels)
            assert out.shape == expected.shape and out.dtype == torch.float32
            assert (out - expected).abs().max().item() <= 1e-4


# ``torch.randn`` on CPU (Box-Muller, float32) has an AVX2 kernel (vectorised log/sin/cos) and a
# scalar one used otherwise (AVX-512 dispatch, ARM, ...), which differ in the last few ulps. The
# reference weights were drawn with the AVX2 kernel: bit-for-bit there, float32 rounding elsewhere.
_RANDN_AS_REFERENCE = torch.backends.cpu.get_cpu_capability() == "AVX2"


def test_tiny_initialisation_replays_official_bit_for_bit(tiny):
    """Same seed, same construction order: the official initial weights, then its perturbation.

    Parameters are compared bit for bit where ``torch.randn`` uses the reference's CPU kernel;
    floating buffers (``sigmas``) to 1e-12 relative, since numpy's vectorised ``exp`` is not the
    same on every CPU.
    """
    torch.manual_seed(0)
    model = _tiny_model(tiny)
    generator = torch.Generator().manual_seed(tiny["perturbation"]["seed"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(tiny["perturbation"]["scale"] * torch.randn(p.shape, generator=generator))
    expected = official_state_dict_to_ours(tiny["state_dict"])
    ours = model.state_dict()
    assert list(ours) == list(expected)
    parameters = {name for name, _ in model.named_parameters()}
    buffers = set(ours) - parameters
    assert buffers == {"sigmas"}
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        if key in parameters and _RANDN_AS_REFERENCE:
            assert torch.equal(ours[key], value), key
        elif key in parameters:
            # a wrong draw order would be off by O(1) of the scale; kernel rounding is ~5e-7
            _assert_close(ours[key], value, key, rtol=1e-6, atol=4e-6 * value.abs().max().item())
        else:
            # ``sigmas = exp(linspace(log sigma_max, log sigma_min))`` (float64): numpy's vectorised
            # exp may differ in the last ulp between CPUs (AVX2 / AVX-512 / ARM).
            _assert_close(ours[key], value, key, rtol=1e-12, atol=0.0)


def _assert_close(actual, expected, key: str, *, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


def _meta_model(kwargs: dict) -> NCSNpp:
    with torch.device("meta"):
        return NCSNpp(**kwargs)


@pytest.mark.parametrize(
    ("preset", "count"),
    [(ncsnpp_cifar10_continuous, 62_758_915), (ddpmpp_cifar10_continuous, 61_804_419)],
)
def test_cifar10_parameter_counts(preset, count):
    assert sum(p.numel() for p in _meta_model(preset()).parameters()) == count


def _official_keys(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    lines = path.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("## state_dict"))) + 1
    keys = {}
    for line in filter(None, lines[start:]):
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        keys[key] = (dims, dtype)
    return keys


@pytest.mark.parametrize(
    ("preset", "keys_file"),
    [
        (ncsnpp_cifar10_continuous, "keys_ncsnpp_cifar10_continuous.txt"),
        (ddpmpp_cifar10_continuous, "keys_ddpmpp_cifar10_continuous.txt"),
    ],
)
def test_cifar10_mapped_keys_and_shapes_match_official(reference_path, preset, keys_file):
    official = _official_keys(reference_path(keys_file))
    mapped = official_state_dict_to_ours({k: torch.empty(0) for k in official})
    expected = {new: official[old] for old, new in zip(official, mapped, strict=True)}
    ours = {
        key: (tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in _meta_model(preset()).state_dict().items()
    }
    assert ours == expected
    assert list(ours) == list(expected)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    kwargs = PRESETS[name]()
    model = _meta_model(kwargs)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_official_checkpoint_loads_safely(reference_path):
    checkpoint = load_official_checkpoint(reference_path(CHECKPOINT))
    assert set(checkpoint) == {"optimizer", "model", "ema", "step"}
    assert checkpoint["step"] == 2
    assert isinstance(checkpoint["optimizer"]["param_groups"][0]["lr"], np.floating)
    assert len(checkpoint["model"]) == 162
    assert len(checkpoint["ema"]["shadow_params"]) == 160
    ema = official_ema_state_dict(checkpoint)
    raw = official_state_dict_to_ours(checkpoint["model"])
    assert list(ema) == list(raw)
    # Two steps at a tiny warm-up learning rate: EMA and raw weights must pair up closely.
    assert max((ema[k] - raw[k]).abs().max().item() for k in raw) < 1e-6


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_refused(path: Path, match: str | None = None) -> None:
    with pytest.raises(OfficialCheckpointError, match=match) as info:
        load_official_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message


def test_malicious_and_foreign_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "ema": {}, "step": 0, "payload": _RunsCommand(marker)}, evil)
    _assert_refused(evil, "system")
    assert not marker.exists()

    numpy_array = tmp_path / "array.pth"
    torch.save({"model": {}, "ema": {}, "step": 0, "x": np.zeros(3)}, numpy_array)
    _assert_refused(numpy_array)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    _assert_refused(garbage)

    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(2)}, plain)
    _assert_refused(plain, "missing keys")

    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize("use_ema", [True, False])
def test_convert_round_trip(reference_path, tmp_path, use_ema):
    reference_path(CHECKPOINT.replace(".pth", ".config.json"))
    src = reference_path(CHECKPOINT)
    out_dir = tmp_path / "converted"
    result = convert_official(src, out_dir, use_ema=use_ema)
    assert sorted(p.name for p in out_dir.iterdir()) == ["checkpoint.safetensors", "config.json"]
    official_config = json.loads(src.with_suffix(".config.json").read_text())
    expected_cfg = config_from_official(official_config)
    assert load_config(result.config) == expected_cfg
    stored = load_checkpoint(result.checkpoint)
    assert config_from_dict(stored.config) == expected_cfg
    assert stored.extra == {"source": str(src), "weights": "ema" if use_ema else "model"}
    assert stored.step == result.step == 2 and stored.ema is None and stored.optimizer is None

    checkpoint = load_official_checkpoint(src)
    expected_sd = (
        official_ema_state_dict(checkpoint)
        if use_ema
        else official_state_dict_to_ours(checkpoint["model"])
    )
    assert set(stored.model) == set(expected_sd)
    assert all(torch.equal(stored.model[k], v) for k, v in expected_sd.items())

    reference = NCSNpp(**from_official_config(official_config["model"], official_config["data"]))
    reference.load_state_dict(expected_sd)
    reference.eval()
    model = load_trained(result.checkpoint, device="cpu").model
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.05, 7.0])
    with torch.no_grad():
        assert torch.equal(model(x, sigmas), reference(x, sigmas))


def test_class_conditional_embedding():
    kwargs = {**ddpmpp_cifar10_continuous(), "image_size": 8, "nf": 16, "ch_mult": (1, 2)}
    kwargs.update(num_res_blocks=1, attn_resolutions=(4,), num_classes=10)
    torch.manual_seed(0)
    model = NCSNpp(**kwargs).eval()
    assert model.class_embed.weight.shape == (10, 64)
    assert "class_embed.weight" in model.state_dict()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([10.0, 500.0, 900.0])
    with torch.no_grad():
        model.all_modules[-1].weight.normal_()  # make the output depend on the embedding
        a = model(x, t, torch.tensor([0, 1, 2]))
        b = model(x, t, torch.tensor([3, 1, 2]))
        c = model(x, t)
    assert a.shape == x.shape
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="conditional"):
        NCSNpp(**{**kwargs, "conditional": False})


@pytest.mark.parametrize(
    ("resblock_type", "fir", "progressive", "progressive_input", "combine", "embedding"),
    [
        ("ddpm", False, "none", "none", "sum", "positional"),
        ("ddpm", True, "output_skip", "input_skip", "cat", "fourier"),
        ("ddpm", False, "residual", "residual", "sum", "fourier"),
        ("biggan", True, "residual", "input_skip", "cat", "positional"),
    ],
)
def test_option_combinations_run_and_train(
    resblock_type, fir, progressive, progressive_input, combine, embedding
):
    kwargs = {
        **ncsnpp_cifar10_continuous(),
        "image_size": 8,
        "nf": 8,
        "ch_mult": (1, 2),
        "num_res_blocks": 1,
        "attn_resolutions": (4,),
        "resblock_type": resblock_type,
        "fir": fir,
        "progressive": progressive,
        "progressive_input": progressive_input,
        "progressive_combine": combine,
        "embedding_type": embedding,
        "init_scale": 1.0,
    }
    torch.manual_seed(0)
    model = NCSNpp(**kwargs)
    params = [name for name, _ in model.named_parameters()]
    assert params == [key for key in model.state_dict() if key != "sigmas"]
    x = torch.rand(2, 3, 8, 8)
    labels = torch.tensor([0.1, 10.0]) if embedding == "fourier" else torch.tensor([5.0, 900.0])
    out = model(x, labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
