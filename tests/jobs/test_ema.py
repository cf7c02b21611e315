import pytest
import torch
from torch import nn

from scoresde.infra.checkpoint import ema_model_state_dict
from scoresde.jobs.training.ema import EMA


def _linear(w: float, b: float) -> nn.Linear:
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(w)
        lin.bias.fill_(b)
    return lin


def _set(lin: nn.Linear, w: float, b: float) -> None:
    with torch.no_grad():
        lin.weight.fill_(w)
        lin.bias.fill_(b)


def _wb(ema: EMA) -> tuple[float, float]:
    return ema.shadow.weight.item(), ema.shadow.bias.item()


def test_warmup_updates_exact_numbers():
    model = _linear(1.0, 0.0)
    ema = EMA(model, 0.9)
    assert ema.current_decay() == pytest.approx(2 / 11)
    _set(model, 2.0, 1.0)
    ema.update(model)  # decay min(0.9, 2/11): 1 + (9/11) * (2 - 1)
    assert _wb(ema) == pytest.approx((20 / 11, 9 / 11), rel=1e-6)
    _set(model, 4.0, 1.0)
    ema.update(model)  # decay min(0.9, 3/12): 20/11 + 0.75 * (4 - 20/11)
    assert _wb(ema) == pytest.approx((38 / 11, 1 - 0.25 * 2 / 11), rel=1e-6)
    assert ema.num_updates == 2
    ema.num_updates = 80
    assert ema.current_decay() == pytest.approx(0.9)  # (1 + 81) / (10 + 81) > 0.9


def test_no_warmup_uses_the_plain_decay():
    model = _linear(1.0, 0.0)
    ema = EMA(model, 0.9, warmup=False)
    _set(model, 2.0, 1.0)
    ema.update(model)
    assert _wb(ema) == pytest.approx((1.1, 0.1), rel=1e-6)
    _set(model, 4.0, 1.0)
    ema.update(model)
    assert _wb(ema) == pytest.approx((1.1 + 0.1 * 2.9, 0.1 + 0.1 * 0.9), rel=1e-6)


def test_shadow_is_a_frozen_eval_copy():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    ema = EMA(model, 0.99)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    assert all(p.requires_grad for p in model.parameters())
    before = ema.shadow[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(ema.shadow[0].weight, before)
    x = torch.randn(3, 2)
    torch.testing.assert_close(ema.shadow(x), ema.shadow(x), rtol=0, atol=0)


def test_buffers_and_frozen_parameters_are_copied_not_averaged():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    ema = EMA(model, 0.9, warmup=False)
    model.train()
    model(torch.tensor([[1.0, 2.0], [3.0, 5.0]]))  # moves the BatchNorm running stats
    with torch.no_grad():
        model[0].bias.fill_(7.0)
        model[0].weight.fill_(1.0)
    old_weight = ema.shadow[0].weight.clone()
    ema.update(model)
    assert torch.equal(ema.shadow[1].running_mean, model[1].running_mean)
    assert torch.equal(ema.shadow[1].num_batches_tracked, torch.tensor(1))
    assert torch.equal(ema.shadow[0].bias, torch.full((2,), 7.0))
    torch.testing.assert_close(ema.shadow[0].weight, 0.9 * old_weight + 0.1)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.95)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.5)
        ema.update(model)
    state = ema.state_dict()
    assert set(state) == {"shadow.weight", "shadow.bias", "num_updates"}
    assert state["num_updates"].dtype == torch.int64 and int(state["num_updates"]) == 3

    restored = EMA(nn.Linear(3, 2), 0.95)
    restored.load_state_dict(state)
    assert restored.num_updates == 3
    torch.testing.assert_close(restored.shadow.weight, ema.shadow.weight, rtol=0, atol=0)
    ema.update(model)
    restored.update(model)
    torch.testing.assert_close(restored.shadow.weight, ema.shadow.weight, rtol=0, atol=0)
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(ema_model_state_dict(state))  # strict: exactly the model's keys
    assert torch.equal(fresh.weight, state["shadow.weight"])
    with pytest.raises(KeyError, match="num_updates"):
        restored.load_state_dict({"shadow.weight": state["shadow.weight"]})


def test_rejects_mismatched_model_and_bad_decay():
    ema = EMA(nn.Linear(2, 2), 0.9)
    with pytest.raises(ValueError, match="do not match"):
        ema.update(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), 1.5)


def test_the_foreach_update_equals_one_lerp_per_parameter():
    """The fused update is the per-parameter ``lerp_`` it replaced, to float rounding, on a
    network with several dtypes, a frozen parameter, an integer buffer and a float buffer."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3))
    model[2].to(torch.float64)
    model[0].bias.requires_grad_(False)
    ema = EMA(model, 0.99)
    reference = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        decay = ema.current_decay()
        for name, value in model.state_dict().items():
            param = dict(model.named_parameters()).get(name)
            if param is not None and param.requires_grad:
                reference[name].lerp_(value, 1.0 - decay)  # the per-parameter update
            else:
                reference[name].copy_(value)
        ema.update(model)
    found = ema.shadow.state_dict()
    assert found.keys() == reference.keys()
    for name, value in reference.items():
        assert found[name].dtype == value.dtype
        torch.testing.assert_close(found[name], value, rtol=1e-6, atol=1e-7)
    assert not torch.equal(found["0.weight"], model[0].weight)  # it averaged, not copied
    assert torch.equal(found["0.bias"], model[0].bias)  # frozen: copied
    assert int(found["1.num_batches_tracked"]) == 5
