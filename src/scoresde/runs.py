"""Jobs on a trained run: load it from a checkpoint, sample (unconditionally, or of given
classes with a label-conditional model or a noise-conditional classifier), evaluate likelihood
and a classifier's accuracy.

These are the library functions behind ``scoresde sample``, ``scoresde likelihood``,
``scoresde train-classifier`` and the demo. Images go in and come out in data scale
(``[0, 1]``); the model scale is handled here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from scoresde.build import (
    build_classifier_fn,
    build_model,
    build_score_fn,
    build_sde,
    is_classifier,
    sampler_config,
)
from scoresde.checkpoint import CheckpointError, ema_model_state_dict, load_checkpoint
from scoresde.classifier import NoiseClassifier, accuracy_by_time, accuracy_times
from scoresde.conditioning import check_conditioning, conditional_score_fn
from scoresde.config import Config, EvalConfig
from scoresde.config_io import config_from_dict
from scoresde.data.pipeline import (
    data_shape,
    from_model_scale,
    is_image_data,
    load_labeled_split,
    to_model_scale,
)
from scoresde.devices import resolve_device
from scoresde.likelihood import dequantized_bpd, log_likelihood
from scoresde.likelihood_bound import bound_bpd, likelihood_bound
from scoresde.rundir import CHECKPOINT_NAME
from scoresde.sampling import sample
from scoresde.score import ScoreFn
from scoresde.sdes import SDE
from scoresde.seeding import SampleStreams, derive_seed


@dataclass
class TrainedRun:
    """A trained network loaded from a run: config, SDE, network (eval mode), device, and the
    training step its checkpoint was saved at."""

    cfg: Config
    sde: SDE
    model: nn.Module
    device: torch.device
    step: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return data_shape(self.cfg.data)


@dataclass
class TrainedModel(TrainedRun):
    """A trained score model ready for sampling."""

    @property
    def score_fn(self) -> ScoreFn:
        return build_score_fn(self.model, self.sde, self.cfg)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


@dataclass
class TrainedClassifier(TrainedRun):
    """A trained noise-conditional classifier ``p_t(y | x)`` (``scoresde train-classifier``)."""

    @property
    def log_prob_fn(self) -> NoiseClassifier:
        """``log_prob_fn(x (B, ...), t (B,)) -> (B, K)`` logits, in model scale."""
        return build_classifier_fn(self.model, self.sde)

    @property
    def num_classes(self) -> int:
        return self.cfg.model.num_classes


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the rolling checkpoint of the run folder ``path``."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def _load(path: Path, device: str, use_ema: bool, classifier: bool):
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt.config)
        if is_classifier(cfg) != classifier:
            kinds = ("classifier", "score model")
            want, got = kinds if classifier else kinds[::-1]
            hint = " (pass it as --classifier)" if got == "classifier" else ""
            raise CheckpointError(
                f"{path}: this is a {got} run (model.name={cfg.model.name!r}), "
                f"not a {want}{hint}"
            )
        model = build_model(cfg)
        use = use_ema and ckpt.ema is not None
        weights = ema_model_state_dict(ckpt.ema) if use else ckpt.model
        model.load_state_dict(weights)
    except (ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model: {first}") from None
    kind = TrainedClassifier if classifier else TrainedModel
    return kind(
        replace(cfg, device=str(dev)), build_sde(cfg.sde), model.to(dev).eval(), dev, ckpt.step
    )


def load_trained(path: str | Path, *, device: str = "auto", use_ema: bool = True) -> TrainedModel:
    """Load a score model's checkpoint written by ``scoresde train``, ``scoresde demo`` or
    ``scoresde convert`` (EMA weights unless ``use_ema=False``).

    Raises :class:`CheckpointError` (one-line message) for a missing, corrupt or foreign file,
    or a classifier's checkpoint.
    """
    return _load(Path(path), device, use_ema, classifier=False)


def load_classifier(
    path: str | Path, *, device: str = "auto", use_ema: bool = True
) -> TrainedClassifier:
    """Load a noise-conditional classifier written by ``scoresde train-classifier``: its run
    folder or its checkpoint file (EMA weights unless ``use_ema=False``).

    Raises :class:`CheckpointError` (one line) for a missing, corrupt or foreign file, or a
    score model's checkpoint.
    """
    return _load(checkpoint_file(path), device, use_ema, classifier=True)


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
    **overrides: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Draw samples ``first_index .. first_index + num_samples - 1`` of seed ``seed``, in data
    scale, with the sampler ``method`` (default: ``run.cfg.sample.method``).

    ``labels`` (an int, or ``(num_samples,)`` int64) asks for those classes, with
    ``guidance`` and an optional ``classifier`` as
    :func:`scoresde.conditioning.conditional_score_fn` says; every
    sampler works with them unchanged (they only change the score function).

    Every random draw of sample ``i`` comes from its own stream ``(seed, i)``
    (:class:`scoresde.seeding.SampleStreams`), so a sample does not depend on the batch size
    (default ``sample.batch_size``) or on which other samples are drawn with it, up to float
    rounding (and, for the adaptive ODE solver, whose steps depend on the whole batch, up to
    its tolerance). ``overrides`` replace fields of ``run.cfg.sample`` (e.g. ``num_steps=500``).

    Returns:
        ``(samples (num_samples, *shape), info)`` with ``info["method"]``, ``info["nfe"]``
        (score evaluations per sample; for the ODE the largest over the batches) and, for the
        samplers on a time grid, ``info["num_steps"]`` (also ``info["pc_steps"]`` for PC).
    """
    sc = replace(run.cfg.sample, **overrides)
    method, options = sampler_config(sc, method)
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
    for start in range(first_index, first_index + num_samples, batch_size):
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
            progress=progress,
            **options,
        )
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

    Returns:
        ``{"bpd" | "nll_nats": mean, "per_example": list, "nfe": mean NFE, "num_examples": N}``.
    """
    ec = replace(run.cfg.eval, **overrides)
    image = is_image_data(run.cfg.data)
    opts = dict(rtol=ec.rtol, atol=ec.atol, trace=ec.trace, eps=ec.eps, method=ec.method,
                error_norm=ec.error_norm, num_steps=ec.num_steps or None, grid=ec.grid)
    stream_seed = derive_seed(seed, "likelihood", repeat)
    values, nfes = [], []
    for x, gen in _example_batches(run, data, ec, stream_seed, indices, "likelihood", progress):
        if image:
            v, nfe = dequantized_bpd(
                run.sde, run.score_fn, x, levels=run.cfg.data.levels,
                centered=run.cfg.data.centered, generator=gen, **opts,
            )
        else:
            y = to_model_scale(x, run.cfg.data, generator=gen)
            logp, _, nfe = log_likelihood(run.sde, run.score_fn, y, generator=gen, **opts)
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
    (:func:`scoresde.likelihood_bound.likelihood_bound`) with :func:`evaluate_likelihood`'s
    protocol: bits/dim for images, nats for vectors; ``eval.bound_times`` importance-sampled
    times per example from ``eval.eps``; example ``indices[k]`` draws from the stream
    ``(derive_seed(seed, "bound", repeat), index)``, so its value does not depend on the batch.

    Returns:
        ``{"bound_bpd" | "bound_nll_nats": mean, "per_example": list, "nfe": score
        evaluations per example, "num_examples": N}``.
    """
    ec = replace(run.cfg.eval, **overrides)
    image = is_image_data(run.cfg.data)
    opts: dict[str, Any] = dict(eps=ec.eps, num_times=ec.bound_times)
    if image:
        opts.update(levels=run.cfg.data.levels, centered=run.cfg.data.centered)
    fn, values = bound_bpd if image else likelihood_bound, []
    stream_seed = derive_seed(seed, "bound", repeat)
    for x, gen in _example_batches(run, data, ec, stream_seed, indices, "bound", progress):
        y = x if image else to_model_scale(x, run.cfg.data, generator=gen)
        values.append(fn(run.sde, run.score_fn, y, generator=gen, **opts).cpu())
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
    (default :func:`scoresde.classifier.accuracy_times`), the data dequantized as in training
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
