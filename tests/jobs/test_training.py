"""The training loop: it learns, it checkpoints, and it resumes bit-exactly."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from scoresde.infra.rundir import OutputExistsError
from scoresde.jobs.runs import evaluate_likelihood, generate, load_trained
from scoresde.jobs.training.ema import EMA
from scoresde.jobs.training.loop import train
from scoresde.jobs.training.state import warmup_lr
from scoresde.setup.build import build_model, build_sde
from scoresde.setup.config_io import apply_overrides
from scoresde.setup.data.toy import toy_gmm
from scoresde.setup.presets import get_preset


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


def _assert_same_weights(a, b):
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    for x, y in zip(a.ema.shadow.parameters(), b.ema.shadow.parameters(), strict=True):
        assert torch.equal(x, y)


def test_resume_is_bit_exact(tmp_path):
    straight = train(_tiny(20), tmp_path / "a", progress=False)
    train(_tiny(10), tmp_path / "b", progress=False)
    resumed = train(_tiny(20), tmp_path / "b", progress=False)
    assert (resumed.steps, resumed.resumed_from) == (20, 10)
    _assert_same_weights(straight, resumed)


def test_resume_refuses_another_model(tmp_path):
    train(_tiny(2), tmp_path, progress=False)
    with pytest.raises(OutputExistsError, match=r"another config \(model.hidden: 64 -> 32 \(1 key"):
        train(_tiny(4, **{"model.hidden": 32}), tmp_path, progress=False)


def test_the_same_config_gives_the_same_weights_and_the_global_rng_is_untouched(tmp_path):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = train(_tiny(15), tmp_path / "a", progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drew from or seeded it
    torch.manual_seed(99)  # whatever the caller's global RNG does, the run is the same
    b = train(_tiny(15), tmp_path / "b", progress=False)
    _assert_same_weights(a, b)
    c = train(_tiny(15, seed=1), tmp_path / "c", progress=False)
    first = next(iter(a.model.state_dict()))
    assert not torch.equal(a.model.state_dict()[first], c.model.state_dict()[first])


def test_initial_weights_depend_on_the_seed_only():
    cfg = _tiny(1)
    torch.manual_seed(5)
    a = build_model(cfg).state_dict()
    torch.manual_seed(6)
    b = build_model(cfg).state_dict()
    c = build_model(apply_overrides(cfg, ["seed=3"])).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dropout_is_seeded_and_resumes_bit_exactly(tmp_path):
    """The small U-Net with dropout on digits: dropout draws come from the run's seed too."""
    over = [
        "train.batch_size=16",
        "train.log_every=2",
        "train.checkpoint_every=0",
        "model.nf=8",
        "model.ch_mult=1",
        "model.num_res_blocks=1",
        "model.dropout=0.3",
        "device=cpu",
    ]
    cfg = apply_overrides(get_preset("digits_vp"), over)
    straight = train(replace(cfg, train=replace(cfg.train, steps=6)), tmp_path / "a",
                     progress=False)
    again = train(replace(cfg, train=replace(cfg.train, steps=6)), tmp_path / "b", progress=False)
    _assert_same_weights(straight, again)
    train(replace(cfg, train=replace(cfg.train, steps=3)), tmp_path / "c", progress=False)
    resumed = train(replace(cfg, train=replace(cfg.train, steps=6)), tmp_path / "c",
                    progress=False)
    _assert_same_weights(straight, resumed)
    no_dropout = train(apply_overrides(cfg, ["train.steps=6", "model.dropout=0"]),
                       tmp_path / "d", progress=False)
    first = next(iter(straight.model.state_dict()))
    assert not torch.equal(straight.model.state_dict()[first], no_dropout.model.state_dict()[first])


def test_time_cap_is_reported(tmp_path):
    result = train(_tiny(10**6, **{"train.minutes": 0.001}), tmp_path, progress=False)
    assert result.stopped_by == "time cap" and 0 < result.steps < 10**6


def test_make_optimizer_uses_the_config():
    from scoresde.jobs.training.optim import make_optimizer
    from scoresde.setup.config import TrainConfig

    tc = TrainConfig(lr=3e-4, beta1=0.8, adam_eps=1e-6, weight_decay=0.01)
    opt = make_optimizer(torch.nn.Linear(3, 3).parameters(), tc)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        3e-4, (0.8, 0.999), 1e-6, 0.01)
    assert group["fused"] is True  # this PyTorch has fused Adam on CPU


def test_conditional_batches_reach_the_network(tmp_path):
    """A class-conditional NCSN++ on labelled digits: the label embedding is trained."""
    over = [
        "model.name=ncsnpp", "model.nf=8", "model.ch_mult=1", "model.num_res_blocks=1",
        "model.num_classes=10", "train.steps=2", "train.batch_size=8", "train.warmup=0",
        "train.checkpoint_every=0", "device=cpu",
    ]
    cfg = apply_overrides(get_preset("digits_vp"), over)
    before = build_model(cfg).class_embed.weight.clone()
    result = train(cfg, tmp_path, progress=False)
    after = result.model.class_embed.weight
    changed = (after - before).abs().sum(dim=1) > 0
    assert 0 < int(changed.sum()) <= 10  # the rows of the labels that were drawn, and only them


def test_the_score_objective_passes_the_labels_on():
    from scoresde.jobs.training.objectives import build_objective
    from scoresde.jobs.training.state import MicroBatch, TrainState, train_step
    from scoresde.setup.data.pipeline import Batch

    seen = {}
    net = torch.nn.Linear(2, 2)

    def score_model(x, t, **condition):
        seen.update(condition)
        return net(x)

    cfg = _tiny(1, **{"model.num_classes": 8})
    objective = build_objective(cfg, build_sde(cfg.sde))
    state = TrainState(net, score_model, EMA(net, 0.9), torch.optim.SGD(net.parameters(), 0.1), 0)
    labels = torch.tensor([3, 1])
    micro = MicroBatch(Batch(torch.ones(2, 2), labels), torch.Generator().manual_seed(0), 0)
    train_step(state, [micro], objective.loss, cfg.train)
    assert torch.equal(seen["class_labels"], labels) and state.step == 1


def test_unlabelled_data_refuses_a_conditional_model(tmp_path):
    cfg = _tiny(1, **{"model.num_classes": 3, "data.dataset": "swissroll"})
    with pytest.raises(ValueError, match="'swissroll' has none"):
        train(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"model\.num_classes=3 but dataset 'gmm' has 8 classes"):
        train(_tiny(1, **{"model.num_classes": 3}), tmp_path, progress=False)
    assert not tmp_path.joinpath("config.json").exists()


def test_hooks_see_every_step_and_sample_grids_are_written(tmp_path):
    calls = []

    def hook(state, loss, last):
        calls.append((state.step, last))

    cfg = _tiny(6, **{"train.sample_every": 3, "sample.num_steps": 5})
    result = train(cfg, tmp_path, progress=False, hooks=[hook])
    assert calls == [(1, False), (2, False), (3, False), (4, False), (5, False), (6, True)]
    assert result.steps == 6
    for step in (3, 6):
        grid = tmp_path / "samples" / f"step_{step:07d}"
        assert grid.with_suffix(".png").exists()
        assert np.isfinite(np.load(grid.with_suffix(".npy"))).all()


def test_evaluation_hook_appends_the_test_likelihood(tmp_path):
    cfg = _tiny(4, **{"train.eval_every": 2, "eval.num_examples": 16, "eval.rtol": 1e-3,
                      "eval.atol": 1e-3})
    train(cfg, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(line["num_examples"] == 16 and 0 < line["nll_nats"] < 20 for line in lines)
    # Resuming with more steps appends, never rewrites.
    train(apply_overrides(cfg, ["train.steps=6"]), tmp_path, progress=False)
    text = (tmp_path / "eval.jsonl").read_text()
    assert [json.loads(line)["step"] for line in text.splitlines()] == [2, 4, 6]


def test_snapshots_are_kept_every_so_many_steps_and_never_rewritten(tmp_path):
    from scoresde.infra.checkpoint import load_checkpoint

    cfg = _tiny(6, **{"train.checkpoint_every": 4, "train.snapshot_every": 2})
    train(cfg, tmp_path, progress=False)
    snapshots = sorted((tmp_path / "snapshots").iterdir())
    assert [p.name for p in snapshots] == [f"step_{s:07d}.safetensors" for s in (2, 4, 6)]
    assert [load_checkpoint(p).step for p in snapshots] == [2, 4, 6]
    final = tmp_path / "checkpoint.safetensors"
    assert snapshots[-1].read_bytes() == final.read_bytes()  # step 6: the checkpoint, copied
    stamps = [p.stat().st_mtime_ns for p in snapshots]
    train(apply_overrides(cfg, ["train.steps=8"]), tmp_path, progress=False)
    assert [p.stat().st_mtime_ns for p in snapshots] == stamps
    assert load_checkpoint(tmp_path / "snapshots" / "step_0000008.safetensors").step == 8
