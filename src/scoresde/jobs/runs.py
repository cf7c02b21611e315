"""Jobs on a trained run: load it from a checkpoint, sample (unconditionally, or of given
classes with a label-conditional model or a noise-conditional classifier), evaluate likelihood
and a classifier's accuracy.

These are the library functions behind ``scoresde sample``, ``scoresde likelihood``,
``scoresde train-classifier`` and the demo. Images go in and come out in data scale
(``[0, 1]``); the model scale is handled here. The runs themselves and their loading live in
:mod:`scoresde.jobs.run_models` (re-exported here): sampling runs the network as
``sample.compute_dtype``
and ``sample.compile`` say, the likelihood always in float32, uncompiled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.core.classifier import accuracy_by_time, accuracy_times
from scoresde.core.seeding import SampleStreams, derive_seed
from scoresde.jobs.conditioning import check_conditioning, conditional_score_fn
from scoresde.jobs.finite import NonFiniteSamplesError, check_finite
from scoresde.jobs.run_models import (
    TrainedClassifier,
    TrainedModel,
    TrainedRun,
    checkpoint_file,
    load_classifier,
    load_trained,
)
from scoresde.methods.likelihood import dequantized_bpd, log_likelihood
from scoresde.methods.likelihood_bound import bound_bpd, likelihood_bound
from scoresde.methods.sampling import sample
from scoresde.methods.sampling.ode import TimeProgress
from scoresde.setup.build import sampler_config
from scoresde.setup.config import EvalConfig
from scoresde.setup.data.pipeline import (
    from_model_scale,
    is_image_data,
    load_labeled_split,
    to_model_scale,
)

__all__ = [
    "NonFiniteSamplesError",
    "TrainedClassifier",
    "TrainedModel",
    "TrainedRun",
    "checkpoint_file",
    "classifier_accuracy",
    "evaluate_bound",
    "evaluate_likelihood",
    "generate",
    "generate_classes",
    "load_classifier",
    "load_trained",
]


@torch.no_grad()
def generate(
    run: TrainedModel,
    num_samples: int,
    *,
    method: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    first_index: int = 0,
    progress: bool = False,
    labels: Tensor | int | None = None,
    guidance: float = 1.0,
    classifier: TrainedClassifier | None = None,
    check_finite_samples: bool = True,
    **overrides: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Draw samples ``first_index .. first_index + num_samples - 1`` of seed ``seed``, in data
    scale, with the sampler ``method`` (default: ``run.cfg.sample.method``).

    ``labels`` (an int, or ``(num_samples,)`` int64) asks for those classes, with
    ``guidance`` and an optional ``classifier`` as
    :func:`scoresde.jobs.conditioning.conditional_score_fn` says; every
    sampler works with them unchanged (they only change the score function).

    Every random draw of sample ``i`` comes from its own stream ``(seed, i)``
    (:class:`scoresde.core.seeding.SampleStreams`), so a sample does not depend on the batch size
    (default ``sample.batch_size``) or on which other samples are drawn with it, up to float
    rounding (and, for the adaptive ODE solver, whose steps depend on the whole batch, up to
    its tolerance). ``overrides`` replace fields of ``run.cfg.sample`` (e.g. ``num_steps=500``),
    the network's ``compute_dtype`` (``"float32"`` or ``"bfloat16"``: bf16 autocast, the score
    and the sampler in float32) and ``compile`` included: the network runs as
    :attr:`TrainedModel.score_fn` says, its compiled module built once per run and reused by
    every batch and call.

    A ``method`` other than ``sample.method`` runs with its own ``num_steps`` and ``grid``
    (:data:`scoresde.setup.config_rules.SAMPLER_STEPS`, about 20 NFE for the fast samplers) unless
    ``overrides`` set them. ``progress`` shows the sampler's bar (for the ODE, one in
    integration time).

    Returns:
        ``(samples (num_samples, *shape), info)`` with ``info["method"]``, ``info["nfe"]``
        (score evaluations per sample; for the ODE the largest over the batches) and, for the
        samplers on a time grid, ``info["num_steps"]`` (also ``info["pc_steps"]`` for PC).

    Raises:
        NonFiniteSamplesError: a batch holds NaN or infinite samples (one line: how many, the
            likely cause); raised at that batch, before anything is returned
            (``check_finite_samples=False`` returns them as they are).
    """
    method = method or overrides.pop("method", None)
    sc = run.cfg.sample.updated(method=method, **overrides)
    method, options = sampler_config(sc)
    run = run.with_sample(sc)  # the score function below runs the network as ``sc`` says
    batch_size = sc.batch_size if batch_size is None else batch_size
    if num_samples < 1 or batch_size < 1 or first_index < 0:
        raise ValueError(
            f"need num_samples >= 1, batch_size >= 1 and first_index >= 0, got {num_samples}, "
            f"{batch_size}, {first_index}"
        )
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() not in (1, num_samples):
            raise ValueError(f"{labels.numel()} labels for {num_samples} samples")
        labels = labels.expand(num_samples)
    check_conditioning(run, labels, guidance, classifier)
    out, info = [], {"method": method, "nfe": 0}
    starts = range(first_index, first_index + num_samples, batch_size)
    # The ODE solve is a black box without a bar of its own: one in integration time.
    with TimeProgress(
        run.sde.T, sc.sampler_options().eps, desc="ODE sampling",
        enabled=progress and method == "ode", parts=len(starts),
    ) as bar:
        callback = (lambda i, t, x: bar.update(t.reshape(-1)[0])) if progress else None
        for start in starts:
            indices = range(start, min(start + batch_size, first_index + num_samples))
            streams = SampleStreams(seed, indices, device=run.device)
            x_T = run.sde.prior_sampling((len(indices), *run.shape), streams, device=run.device)
            rows = slice(start - first_index, start - first_index + len(indices))
            batch_labels = labels[rows] if labels is not None else None
            x, batch_info = sample(
                run.sde,
                conditional_score_fn(run, batch_labels, guidance, classifier),
                x_T,
                method=method,
                generator=streams,
                progress=progress and method != "ode",  # the ODE: the one bar above
                callback=callback if method == "ode" else None,
                **options,
            )
            bar.next_part()
            if check_finite_samples:
                check_finite(x, run.model, method=method, guidance=guidance, first_index=start)
            info["nfe"] = max(info["nfe"], batch_info["nfe"])
            if "num_steps" in batch_info:
                info["num_steps"] = batch_info["num_steps"]
                if method == "pc":
                    info["pc_steps"] = batch_info["num_steps"]
            out.append(from_model_scale(x, run.cfg.data).cpu())
    return torch.cat(out), info


def _example_batches(
    run: TrainedModel, data: Tensor, ec: EvalConfig, stream_seed: int, indices: range | None,
    desc: str, progress: bool,
) -> Iterator[tuple[Tensor, SampleStreams]]:
    """Batches ``(x, streams)`` of ``ec.batch_size`` of the first ``ec.num_examples`` examples
    (all for 0), on the run's device: example ``k`` is example ``indices[k]`` of its split
    (default ``0, 1, ...``) and draws from the stream ``(stream_seed, indices[k])``."""
    if ec.num_examples:
        data = data[: ec.num_examples]
    indices = range(data.shape[0]) if indices is None else indices[: data.shape[0]]
    if len(indices) != data.shape[0]:
        raise ValueError(f"{len(indices)} indices for {data.shape[0]} examples")
    for start in tqdm(range(0, data.shape[0], ec.batch_size), desc=desc, disable=not progress):
        x = data[start : start + ec.batch_size].to(run.device)
        yield x, SampleStreams(stream_seed, indices[start : start + x.shape[0]], device=run.device)


def evaluate_likelihood(
    run: TrainedModel,
    data: Tensor,
    *,
    seed: int = 0,
    indices: range | None = None,
    repeat: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Negative log-likelihood of ``data`` (data scale) under the probability-flow ODE.

    Images are uniformly dequantized and scored in bits/dim (:func:`scoresde.bits_per_dim`);
    toy vectors in nats per example. ``overrides`` replace fields of ``run.cfg.eval``.
    Example ``k`` of ``data`` is example ``indices[k]`` of its split (default ``0, 1, ...``)
    and draws its dequantization and trace probe from its own stream ``(seed, repeat, index)``,
    so its value does not depend on the batch or the shard it is scored in (up to the adaptive
    solver's tolerance, whose steps depend on the batch); ``repeat`` numbers independent
    dequantization draws.

    The network runs in float32 and uncompiled (:attr:`TrainedModel.float32_score_fn`),
    whatever ``sample.compute_dtype`` and ``sample.compile`` say: the ODE solve's tolerances
    (``eval.rtol``/``eval.atol``, ~1e-5) are finer than bf16's resolution (~4e-3), so bf16
    would only add noise to the bits/dim.

    Returns:
        ``{"bpd" | "nll_nats": mean, "per_example": list, "nfe": mean NFE, "num_examples": N}``.
    """
    ec = replace(run.cfg.eval, **overrides)
    image = is_image_data(run.cfg.data)
    opts = dict(rtol=ec.rtol, atol=ec.atol, trace=ec.trace, eps=ec.eps, method=ec.method,
                error_norm=ec.error_norm, num_steps=ec.num_steps or None, grid=ec.grid)
    stream_seed = derive_seed(seed, "likelihood", repeat)
    values, nfes, score_fn = [], [], run.float32_score_fn
    count = min(ec.num_examples or data.shape[0], data.shape[0])
    # One bar in integration time (eps to T) per batch: the solves are long and black boxes.
    bar = TimeProgress(ec.eps, run.sde.T, desc="likelihood", enabled=progress,
                       parts=-(-count // ec.batch_size))
    with bar:
        for x, gen in _example_batches(run, data, ec, stream_seed, indices, "", False):
            if image:
                v, nfe = dequantized_bpd(
                    run.sde, score_fn, x, levels=run.cfg.data.levels,
                    centered=run.cfg.data.centered, generator=gen, progress=bar, **opts,
                )
            else:
                y = to_model_scale(x, run.cfg.data, generator=gen)
                logp, _, nfe = log_likelihood(
                    run.sde, score_fn, y, generator=gen, progress=bar, **opts
                )
                v = -logp
            values.append(v.detach().cpu())
            nfes.append(nfe)
    per_example = torch.cat(values)
    return {
        "bpd" if image else "nll_nats": per_example.mean().item(),
        "per_example": per_example.tolist(),
        "nfe": sum(nfes) / len(nfes),
        "num_examples": int(per_example.numel()),
    }


@torch.no_grad()
def evaluate_bound(
    run: TrainedModel,
    data: Tensor,
    *,
    seed: int = 0,
    indices: range | None = None,
    repeat: int = 0,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """The variational bound on the NLL of ``data`` (data scale) under the reverse-SDE model
    (:func:`scoresde.methods.likelihood_bound.likelihood_bound`) with :func:`evaluate_likelihood`'s
    protocol: bits/dim for images, nats for vectors; ``eval.bound_times`` importance-sampled
    times per example from ``eval.eps``; example ``indices[k]`` draws from the stream
    ``(derive_seed(seed, "bound", repeat), index)``, so its value does not depend on the batch.
    Like the likelihood, it runs the network in float32 and uncompiled, whatever ``sample.*``
    says.

    Returns:
        ``{"bound_bpd" | "bound_nll_nats": mean, "per_example": list, "nfe": score
        evaluations per example, "num_examples": N}``.
    """
    ec = replace(run.cfg.eval, **overrides)
    image = is_image_data(run.cfg.data)
    opts: dict[str, Any] = dict(eps=ec.eps, num_times=ec.bound_times)
    if image:
        opts.update(levels=run.cfg.data.levels, centered=run.cfg.data.centered)
    fn, values, score_fn = bound_bpd if image else likelihood_bound, [], run.float32_score_fn
    stream_seed = derive_seed(seed, "bound", repeat)
    for x, gen in _example_batches(run, data, ec, stream_seed, indices, "bound", progress):
        y = x if image else to_model_scale(x, run.cfg.data, generator=gen)
        values.append(fn(run.sde, score_fn, y, generator=gen, **opts).cpu())
    per_example = torch.cat(values)
    return {
        "bound_bpd" if image else "bound_nll_nats": per_example.mean().item(),
        "per_example": per_example.tolist(),
        "nfe": float(ec.bound_times),
        "num_examples": int(per_example.numel()),
    }


def classifier_accuracy(
    classifier: TrainedClassifier,
    *,
    split: str = "test",
    times: Tensor | None = None,
    seed: int = 0,
    num_examples: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """The classifier's top-1 accuracy on the labelled ``split`` at each time of ``times``
    (default :func:`scoresde.core.classifier.accuracy_times`), the data dequantized as in training
    and perturbed once per example and time, all from streams of ``seed``.

    Returns:
        ``{"times": [...], "accuracy": [...], "num_examples": N, "chance": 1 / K}``.
    """
    data_cfg = classifier.cfg.data
    x, y = load_labeled_split(data_cfg, split, limit=num_examples)
    times = accuracy_times(classifier.sde) if times is None else times
    gen = torch.Generator(device=classifier.device).manual_seed(derive_seed(seed, "accuracy"))
    x = to_model_scale(x.to(classifier.device), data_cfg, generator=gen)
    acc = accuracy_by_time(
        classifier.sde,
        classifier.log_prob_fn,
        x,
        y.to(classifier.device),
        times,
        generator=gen,
        batch_size=batch_size,
    )
    return {
        "times": [round(float(v), 6) for v in torch.as_tensor(times)],
        "accuracy": acc.tolist(),
        "num_examples": int(x.shape[0]),
        "chance": 1.0 / classifier.num_classes,
    }


def generate_classes(
    run: TrainedModel,
    classes: list[int] | None,
    num_per_class: int,
    *,
    guidance: float = 1.0,
    classifier: TrainedClassifier | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """``num_per_class`` samples of each class in ``classes`` (class-major order), or as many
    unconditional samples for ``classes=None``, with :func:`generate` (``kwargs``: ``method``,
    ``seed``, ``batch_size``, ``progress`` and sampler overrides). Sample ``j`` of every class
    starts from the same noise, the stream ``(seed, j)``, so a row of classes differs only by
    the class.

    Returns:
        ``(samples (L * N, *shape), labels (L * N,) int64 or None, info)``; ``info["nfe"]`` is
        the largest over the classes.
    """
    if classes is None:
        x, info = generate(run, num_per_class, **kwargs)
        return x, None, info
    labels = torch.tensor(classes, dtype=torch.long)
    check_conditioning(run, labels, guidance, classifier)
    out, info = [], {}
    for k in classes:
        x, class_info = generate(
            run, num_per_class, labels=k, guidance=guidance, classifier=classifier, **kwargs
        )
        out.append(x)
        info = {**class_info, "nfe": max(info.get("nfe", 0), class_info["nfe"])}
    return torch.cat(out), labels.repeat_interleave(num_per_class), info
