"""What a trained score model can be conditioned on, checked before any sampling: classes
through a noise-conditional classifier (classifier guidance, eq. 14) or through the model's own
labels (a label-conditional model, with classifier-free guidance).

:func:`conditional_score_fn` turns the classes of a batch into one ``score_fn(x, t)``, so every
sampler samples them unchanged. The runs are :class:`scoresde.jobs.run_models.TrainedModel` and
:class:`scoresde.jobs.run_models.TrainedClassifier`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scoresde.core.score import ScoreFn
from scoresde.core.sdes import SDE
from scoresde.methods.guidance import classifier_free_guidance, classifier_guidance

if TYPE_CHECKING:
    from scoresde.jobs.run_models import TrainedClassifier, TrainedModel


def _check_labels_range(labels: Tensor, classes: int, what: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"class {int(labels.min()) if int(labels.min()) < 0 else int(labels.max())} is out "
            f"of range: {what} has classes 0..{classes - 1}"
        )


def check_conditioning(
    run: TrainedModel,
    labels: Tensor | None,
    guidance: float = 1.0,
    classifier: TrainedClassifier | None = None,
) -> None:
    """Refuse, before any sampling, a conditioning the run cannot do (one-line ``ValueError``).

    ``labels`` ``(N,)`` int64 classes or ``None`` (unconditional). With a ``classifier``, the
    score model must be unconditional and both must share the SDE and the example shape; without
    one, classes need a label-conditional model (``model.num_classes`` > 0), and ``guidance``
    other than 1 (or unconditional samples of it) one trained with ``train.label_dropout`` > 0.
    """
    classes = run.cfg.model.num_classes
    dropout = run.cfg.train.label_dropout > 0
    if labels is None:
        if classifier is not None or guidance != 1.0:
            raise ValueError("guidance and a classifier need a class to sample (--class K)")
        if classes and not dropout:
            raise ValueError(
                f"this model is label-conditional ({classes} classes) and was trained without "
                "label dropout, so it has no unconditional score: give a class (--class K)"
            )
        return
    if classifier is not None:
        if classes:
            raise ValueError(
                "this model is label-conditional: sample its classes without a classifier"
            )
        if not same_perturbation(classifier.sde, run.sde):
            raise ValueError(
                f"the classifier was trained for another SDE ({classifier.cfg.sde}) than the "
                f"model's ({run.cfg.sde}); train one with the model's preset"
            )
        ours, theirs = classifier.cfg.data, run.cfg.data
        if (ours.dataset, ours.centered, classifier.shape) != (
            theirs.dataset,
            theirs.centered,
            run.shape,
        ):
            raise ValueError(
                f"the classifier was trained on other data ({ours.dataset}, centered="
                f"{ours.centered}, {classifier.shape}) than the model ({theirs.dataset}, "
                f"centered={theirs.centered}, {run.shape})"
            )
        _check_labels_range(labels, classifier.num_classes, "the classifier")
        return
    if not classes:
        raise ValueError(
            "this model is unconditional: class-conditional sampling needs a noise-conditional "
            "classifier (--classifier RUN, from scoresde train-classifier)"
        )
    if guidance != 1.0 and not dropout:
        raise ValueError(
            "classifier-free guidance other than 1 needs a model trained with "
            "train.label_dropout > 0 (it has no unconditional score)"
        )
    _check_labels_range(labels, classes, "the model")


def same_perturbation(a: SDE, b: SDE, points: int = 17) -> bool:
    """Whether two SDEs perturb data alike: the same ``T`` and the same marginal coefficients
    ``m(t), s(t)`` on an even float64 grid of ``[0, T]`` (to 1e-9), which is what a
    noise-conditional classifier depends on (settings an SDE does not use do not count)."""
    if float(a.T) != float(b.T):
        return False
    t = torch.linspace(0.0, float(a.T), points, dtype=torch.float64)
    return all(
        torch.allclose(u, v, rtol=1e-9, atol=1e-12)
        for u, v in zip(a.marginal_coeffs(t), b.marginal_coeffs(t), strict=True)
    )


def conditional_score_fn(
    run: TrainedModel,
    labels: Tensor | None,
    guidance: float = 1.0,
    classifier: TrainedClassifier | None = None,
) -> ScoreFn:
    """The score ``(x (B, ...), t (B,)) -> (B, ...)`` that samples ``labels`` (``(B,)``, one per
    example; ``None``: unconditional), checked by :func:`check_conditioning`.

    With a ``classifier``: classifier guidance ``s(x, t) + guidance * grad log p_t(y | x)``
    (eq. 14 at ``guidance`` 1, :func:`scoresde.methods.guidance.classifier_guidance`). With a
    label-conditional model: classifier-free guidance
    ``s(x, t) + guidance * (s(x, t, y) - s(x, t))`` (the model's own conditional score at
    ``guidance`` 1, :func:`scoresde.methods.guidance.classifier_free_guidance`).
    """
    check_conditioning(run, labels, guidance, classifier)
    score_model = run.score_fn
    if labels is None:
        return score_model
    labels = labels.to(run.device)
    if classifier is not None:
        return classifier_guidance(score_model, classifier.log_prob_fn, labels, guidance)

    def conditional(x: Tensor, t: Tensor) -> Tensor:
        return score_model(x, t, class_labels=labels)

    return classifier_free_guidance(conditional, score_model, guidance)
