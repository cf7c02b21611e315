"""The training loop: it learns, it checkpoints, and it resumes bit-exactly."""

import pytest
import torch

from scoresde.config import apply_overrides
from scoresde.data.toy import toy_gmm
from scoresde.presets import get_preset
from scoresde.runs import evaluate_likelihood, generate, load_trained
from scoresde.training.loop import train, warmup_lr


def _tiny(steps: int, **kw):
    over = [
        f"train.steps={steps}",
        "train.batch_size=256",
        "train.log_every=10",
        "train.checkpoint_every=0",
        "model.hidden=64",
        "model.depth=2",
        "device=cpu",
    ]
    return apply_overrides(get_preset("toy_gmm"), over + [f"{k}={v}" for k, v in kw.items()])


def test_warmup_starts_above_zero_and_reaches_lr():
    assert warmup_lr(0, 1e-3, 100) == pytest.approx(1e-5)
    assert warmup_lr(49, 1e-3, 100) == pytest.approx(5e-4)
    assert warmup_lr(500, 1e-3, 100) == 1e-3
    assert warmup_lr(0, 1e-3, 0) == 1e-3


def test_training_lowers_the_loss_and_learns_the_mixture(tmp_path):
    torch.manual_seed(0)  # model initialisation only
    result = train(_tiny(600), tmp_path, progress=False)
    first = sum(v for _, v in result.losses[:3]) / 3
    last = sum(v for _, v in result.losses[-3:]) / 3
    assert last < 0.8 * first
    run = load_trained(result.checkpoint, device="cpu")
    samples, info = generate(run, 1000, method="pc", seed=1, num_steps=100)
    assert info["pc_steps"] == 100
    # Samples sit on the ring of radius 4 and visit all 8 modes of the mixture.
    assert abs(samples.norm(dim=1).median().item() - 4.0) < 0.4
    mode = torch.remainder(
        torch.round(torch.atan2(samples[:, 1], samples[:, 0]) / (torch.pi / 4)), 8
    )
    assert torch.bincount(mode.long(), minlength=8).min() > 50
    # The learned density is within 1 nat of the data's entropy (an untrained model: ~10 nats).
    mix = toy_gmm()
    test = mix.sample(128, generator=torch.Generator().manual_seed(2))
    nll = evaluate_likelihood(run, test, seed=0, rtol=1e-4, atol=1e-4)["nll_nats"]
    entropy = -mix.log_prob(test).mean().item()
    assert entropy - 0.2 < nll < entropy + 1.0


def test_resume_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    straight = train(_tiny(20), tmp_path / "a", progress=False)
    torch.manual_seed(0)
    train(_tiny(10), tmp_path / "b", progress=False)
    torch.manual_seed(123)  # a different init must not matter: weights come from the checkpoint
    resumed = train(_tiny(20), tmp_path / "b", progress=False)
    assert resumed.steps == 20
    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.shadow.parameters(), resumed.ema.shadow.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_another_model(tmp_path):
    train(_tiny(2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another model config"):
        train(_tiny(4, **{"model.hidden": 32}), tmp_path, progress=False)


def test_make_optimizer_uses_the_config():
    from scoresde.config import TrainConfig
    from scoresde.training.optim import make_optimizer

    tc = TrainConfig(lr=3e-4, beta1=0.8, adam_eps=1e-6, weight_decay=0.01)
    opt = make_optimizer(torch.nn.Linear(3, 3).parameters(), tc)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        3e-4, (0.8, 0.999), 1e-6, 0.01)
    assert group["fused"] is True  # this PyTorch has fused Adam on CPU
