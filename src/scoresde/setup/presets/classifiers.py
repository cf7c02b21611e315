"""The noise-conditional classifier that goes with each preset (``scoresde train-classifier``).

A classifier ``p_t(y | x)`` for classifier guidance (Song et al., 2021, appendix I.1) must be
trained on the same data, perturbed by the same SDE, as the score model it guides; so it is the
score preset's config with the network and the optimisation replaced. The paper's CIFAR-10
classifier is a Wide-ResNet-28-10 conditioned on the noise level; it does not publish its
training schedule, so the ones here are this package's choice.
"""

from __future__ import annotations

from dataclasses import replace

from scoresde.setup.config import Config, ModelConfig, TrainConfig
from scoresde.setup.data.pipeline import num_classes
from scoresde.setup.data.toy import TOY_DATASETS


def classifier_preset(cfg: Config) -> Config:
    """The classifier run for the score run ``cfg``: its data, SDE, seed and device, with

    - 2-D toys: a residual MLP classifier (``"mlp_classifier"``, 128 wide, 3 blocks), 2000
      steps of batch 256;
    - 8x8 digits: a small Wide-ResNet (depth 10, widen factor 2, 0.8M parameters), 2000 steps
      of batch 128;
    - other images (CIFAR-10, ...): the paper's Wide-ResNet-28-10 (39.2M parameters with the
      noise embedding), 100k steps of batch 128 at learning rate 2e-4 with 5000 warmup steps.

    Adam with gradient clipping at 1 and an EMA of 0.999, as the score models; ``train.eps``
    (the smallest training time) is the score run's. Raises ``ValueError`` (one line) for a
    dataset without class labels.
    """
    classes = num_classes(cfg.data)
    common = dict(eps=cfg.train.eps, grad_clip=1.0, ema_decay=0.999, log_every=100)
    if cfg.data.dataset in TOY_DATASETS:
        model = ModelConfig(name="mlp_classifier", num_classes=classes, hidden=128, depth=3)
        train = TrainConfig(steps=2000, batch_size=256, lr=1e-3, warmup=100, **common)
    elif cfg.data.dataset == "digits":
        model = ModelConfig(name="wideresnet", num_classes=classes, depth=10, widen_factor=2)
        train = TrainConfig(steps=2000, batch_size=128, lr=1e-3, warmup=100, **common)
    else:
        model = ModelConfig(name="wideresnet", num_classes=classes, depth=28, widen_factor=10)
        train = TrainConfig(
            steps=100_000, batch_size=128, lr=2e-4, warmup=5000, checkpoint_every=5000, **common
        )
    return replace(cfg, model=model, train=train)
