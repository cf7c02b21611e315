import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from scoresde.infra.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from scoresde.jobs.training.ema import EMA

CONFIG = {"sde": "vesde", "sigma_max": 50.0, "channel_mults": [1, 2], "nested": {"lr": 2e-4}}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2))


def _train_steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 3, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _save(path, model=None, step=7, **kw):
    model = model or _model()
    return save_checkpoint(path, model=model.state_dict(), step=step, config=CONFIG, **kw)


def test_round_trip_with_adam_continues_bit_exactly(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    ema = EMA(model, 0.99)
    _train_steps(model, opt, 3, seed=1)
    ema.update(model)
    path = save_checkpoint(
        tmp_path / "run" / "ckpt.safetensors",
        model=model.state_dict(),
        ema=ema.state_dict(),
        optimizer=opt.state_dict(),
        step=3,
        config=CONFIG,
        extra={"note": "hi", "losses": [0.5, 0.25]},
    )
    assert path == tmp_path / "run" / "ckpt.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.safetensors"]

    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.step == 3 and ckpt.config == CONFIG
    assert ckpt.extra == {"note": "hi", "losses": [0.5, 0.25]}
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt.model[name], value)
    assert int(ckpt.ema["num_updates"]) == 1
    assert ckpt.optimizer["param_groups"][0]["betas"] == (0.8, 0.95)
    assert ckpt.optimizer["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert set(ckpt.optimizer["state"]) == {0, 1, 2, 3}
    assert list(ckpt.optimizer["state"][0]) == ["step", "exp_avg", "exp_avg_sq"]

    model2 = _model(seed=123)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    model2.load_state_dict(ckpt.model)
    opt2.load_state_dict(ckpt.optimizer)
    ema2 = EMA(model2, 0.99)
    ema2.load_state_dict(ckpt.ema)
    _train_steps(model, opt, 4, seed=2)
    _train_steps(model2, opt2, 4, seed=2)
    ema.update(model)
    ema2.update(model2)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, p2)
    for p, p2 in zip(ema.shadow.parameters(), ema2.shadow.parameters(), strict=True):
        assert torch.equal(p, p2)


def test_tensor_layout_and_metadata_in_the_file(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, 1, seed=0)
    path = _save(tmp_path / "c.safetensors", model, optimizer=opt.state_dict())
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "model.0.weight" in keys and "optim.state.3.momentum_buffer" in keys
    assert not any(k.startswith("ema.") for k in keys)
    assert meta["format"] == "scoresde-checkpoint" and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == CONFIG and meta["step"] == "7"
    ckpt = load_checkpoint(path)
    assert ckpt.ema is None and ckpt.extra is None
    assert ckpt.optimizer["param_groups"][0]["momentum"] == 0.9


def test_without_optimizer_and_with_tied_and_noncontiguous_tensors(tmp_path):
    w = torch.randn(4, 3)
    state = {"a": w, "tied": w, "t": w.t(), "scalar": torch.tensor(2.5, dtype=torch.float64)}
    path = save_checkpoint(
        tmp_path / "t.safetensors", model=state, ema={}, optimizer=None, step=0, config={}
    )
    ckpt = load_checkpoint(path, map_location=torch.device("cpu"))
    assert ckpt.optimizer is None and ckpt.ema == {}
    assert torch.equal(ckpt.model["tied"], w) and torch.equal(ckpt.model["t"], w.t())
    assert ckpt.model["scalar"].dtype == torch.float64 and ckpt.model["scalar"].item() == 2.5


def test_overwrite_replaces_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    _save(path, step=1)
    _save(path, step=2)
    assert load_checkpoint(path).step == 2
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    _save(path, step=1)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", crash)  # after the new bytes were written to the temp file
    with pytest.raises(OSError, match="disk on fire"):
        _save(path, model=_model(seed=5), step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.safetensors"]  # the temp file was removed
    assert load_checkpoint(path).step == 1


def test_unserializable_values_fail_before_touching_the_file(tmp_path):
    path = tmp_path / "c.safetensors"
    _save(path, step=1)
    with pytest.raises(TypeError, match="config is not JSON-serializable"):
        save_checkpoint(path, model={}, step=2, config={"f": object()})
    with pytest.raises(TypeError, match="not a tensor"):
        save_checkpoint(path, model={"w": [1.0]}, step=2, config={})
    assert load_checkpoint(path).step == 1


def _assert_one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_file_and_directory(tmp_path):
    _assert_one_line_error(tmp_path / "nope.safetensors", "not found")
    _assert_one_line_error(tmp_path, "is a directory")


def test_truncated_file(tmp_path):
    path = _save(tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    _assert_one_line_error(path, "truncated or corrupt")
    path.write_bytes(data[:20])
    _assert_one_line_error(path, "truncated or corrupt")
    path.write_bytes(b"")
    _assert_one_line_error(path, "truncated or corrupt")


def test_corrupt_files(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(os.urandom(4096))
    _assert_one_line_error(path, "truncated or corrupt")
    path.write_bytes(b"PK\x03\x04 this is a zip, or a pickle, anything but safetensors")
    _assert_one_line_error(path, "truncated or corrupt")
    good = _save(tmp_path / "good.safetensors").read_bytes()
    header_len = struct.unpack("<Q", good[:8])[0]
    broken = bytearray(good)
    broken[8 : 8 + header_len] = b"{" * header_len  # same length, invalid JSON header
    path.write_bytes(bytes(broken))
    _assert_one_line_error(path, "truncated or corrupt")


def test_plain_safetensors_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    _assert_one_line_error(path, "not a scoresde checkpoint")
    save_file({"w": torch.zeros(2)}, path, metadata={"format": "pt"})
    _assert_one_line_error(path, "not a scoresde checkpoint")


def test_newer_format_version_and_damaged_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"format": "scoresde-checkpoint", "format_version": "99"}
    save_file({"model.w": torch.zeros(2)}, path, metadata=meta)
    _assert_one_line_error(path, "unsupported checkpoint format version '99'")
    save_file({"model.w": torch.zeros(2)}, path, metadata={**meta, "format_version": "1"})
    _assert_one_line_error(path, "corrupt checkpoint metadata")
