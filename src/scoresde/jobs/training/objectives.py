"""What a run trains: a score model (denoising score matching, eq. 7, optionally label
conditional) or a noise-conditional classifier ``p_t(y | x)`` (appendix I.1).

An :class:`Objective` is the pair the training loop needs: how the network becomes the function
the loss calls (``wrap``) and the per-example loss of a batch (``loss``). The loop, its
checkpoints, resume and distributed steps are the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.core._tensor import NoiseSource, rand
from scoresde.core.classifier import classifier_loss
from scoresde.core.sdes import SDE
from scoresde.nn.embeddings import NULL_LABEL
from scoresde.setup.build import build_classifier_fn, build_loss, build_score_fn, is_classifier
from scoresde.setup.config import Config
from scoresde.setup.data.pipeline import LABELED_DATASETS, Batch, num_classes

BatchLoss = Callable[[Any, Batch, NoiseSource], Tensor]
"""``loss(model_fn, batch, noise) -> (B,)``: one loss per example of ``batch``."""


@dataclass(frozen=True)
class Objective:
    """How a run's network is trained.

    Attributes:
        kind: ``"score"`` or ``"classifier"``.
        wrap: ``wrap(network, compute_dtype) -> model_fn``: a :class:`~scoresde.ScoreModel`
            ``score_fn(x, t, **condition)`` or a :class:`~scoresde.core.classifier.NoiseClassifier`
            ``log_prob_fn(x, t)``.
        loss: ``loss(model_fn, batch, noise) -> (B,)``, drawing only from ``noise``.
        uses_labels: whether batches must carry class labels.
    """

    kind: str
    wrap: Callable[[nn.Module, torch.dtype | None], Any]
    loss: BatchLoss
    uses_labels: bool


def check_labels(cfg: Config) -> None:
    """Refuse, before any work, a run that needs labels its dataset does not have, or whose
    ``model.num_classes`` differs from the dataset's number of classes (one-line
    ``ValueError``)."""
    classifier = is_classifier(cfg)
    if not classifier and cfg.model.num_classes == 0:
        if cfg.train.label_dropout:
            raise ValueError(
                "train.label_dropout needs a label-conditional model: model.num_classes > 0"
            )
        return
    what = "a noise-conditional classifier" if classifier else "a label-conditional model"
    if cfg.data.dataset not in LABELED_DATASETS:
        raise ValueError(
            f"{what} needs class labels; dataset {cfg.data.dataset!r} has none (labelled: "
            f"{', '.join(LABELED_DATASETS)})"
        )
    classes = num_classes(cfg.data)
    if cfg.model.num_classes != classes:
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes} but dataset {cfg.data.dataset!r} has "
            f"{classes} classes"
        )
    if classifier and cfg.train.label_dropout:
        raise ValueError(
            "train.label_dropout is for label-conditional score models, not classifiers"
        )


def build_objective(cfg: Config, sde: SDE) -> Objective:
    """The :class:`Objective` of ``cfg`` (checked with :func:`check_labels`).

    A classifier is trained with :func:`scoresde.core.classifier.classifier_loss` at
    ``t ~ U(train.eps, T)``. A score model with the loss of :func:`scoresde.setup.build.build_loss`;
    a label-conditional one gets its batch's labels as ``class_labels``, each replaced by the
    null label with probability ``train.label_dropout`` (drawn from ``noise`` before the
    loss's own draws).
    """
    check_labels(cfg)
    if is_classifier(cfg):
        eps = cfg.train.eps

        def classifier_batch_loss(model_fn: Any, batch: Batch, noise: NoiseSource) -> Tensor:
            return classifier_loss(
                sde, model_fn, batch.data, batch.labels, eps=eps, generator=noise
            )

        return Objective(
            "classifier",
            lambda net, dtype: build_classifier_fn(net, sde, compute_dtype=dtype),
            classifier_batch_loss,
            uses_labels=True,
        )

    score_loss = build_loss(cfg, sde)
    dropout = cfg.train.label_dropout

    def score_batch_loss(model_fn: Any, batch: Batch, noise: NoiseSource) -> Tensor:
        labels = batch.labels
        if labels is None:
            return score_loss(model_fn, batch.data, noise)
        if dropout:
            drop = rand(labels.shape, noise, device=labels.device) < dropout
            labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)

        def conditioned(x: Tensor, t: Tensor) -> Tensor:
            return model_fn(x, t, class_labels=labels)

        return score_loss(conditioned, batch.data, noise)

    return Objective(
        "score",
        lambda net, dtype: build_score_fn(net, sde, cfg, compute_dtype=dtype),
        score_batch_loss,
        uses_labels=cfg.model.num_classes > 0,
    )
