"""Trained runs loaded from a checkpoint: :class:`TrainedModel` (a score model) and
:class:`TrainedClassifier` (a noise-conditional classifier), with :func:`load_trained` and
:func:`load_classifier`. :mod:`scoresde.jobs.runs` re-exports all of them; the jobs on a run live
there.

:attr:`TrainedModel.score_fn` is the one place where a trained score model becomes a score
function, and it runs the network as ``run.cfg.sample`` says: ``sample.compute_dtype``
(``"float32"``: no autocast; ``"bfloat16"``: the network under bf16 autocast, the score in
float32) and ``sample.compile`` (``torch.compile`` of the network, built once per run and
reused). ``scoresde sample``, ``scoresde evaluate`` and the training hooks all sample through
it. The likelihood uses :attr:`TrainedModel.float32_score_fn` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from scoresde.core.classifier import NoiseClassifier
from scoresde.core.score import ScoreModel
from scoresde.core.sdes import SDE
from scoresde.infra.checkpoint import CheckpointError, ema_model_state_dict, load_checkpoint
from scoresde.infra.devices import resolve_device
from scoresde.infra.rundir import CHECKPOINT_NAME
from scoresde.setup.build import (
    build_classifier_fn,
    build_model,
    build_sampling_score_fn,
    build_score_fn,
    build_sde,
    compile_network,
    is_classifier,
)
from scoresde.setup.config import Config, SampleConfig
from scoresde.setup.config_io import config_from_dict
from scoresde.setup.data.pipeline import data_shape


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
    """A trained score model ready for sampling.

    ``compiled_cache`` holds ``torch.compile(model)`` (``sample.compile``) as
    ``{id(model): (model, compiled)}``, so the network is compiled once per run and reused by
    every batch and every :func:`scoresde.jobs.runs.generate` call. The entry is keyed on the
    network itself, never on the settings, which are read afresh from ``cfg`` on every access
    of :attr:`score_fn`: a run whose ``cfg`` changes, or a ``dataclasses.replace(run,
    cfg=...)`` (which shares the cache), gets its own settings and reuses the compiled network
    of the same ``model`` only.
    """

    compiled_cache: dict[int, tuple[nn.Module, nn.Module]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def score_fn(self) -> ScoreModel:
        """The score of the network run as ``cfg.sample`` says (``compute_dtype``,
        ``compile``): what every sampler of this run uses (:meth:`sampling_score_fn`)."""
        return self.sampling_score_fn()

    @property
    def float32_score_fn(self) -> ScoreModel:
        """The score of the network as it is (float32, no autocast, not compiled), whatever
        ``cfg.sample`` says: what the likelihood uses."""
        return build_score_fn(self.model, self.sde, self.cfg)

    def sampling_score_fn(self, sample: SampleConfig | None = None) -> ScoreModel:
        """The score with the sampling settings of ``sample`` (default ``cfg.sample``): the
        network under bf16 autocast for ``compute_dtype="bfloat16"`` (the score in float32)
        and the run's cached compiled network for ``compile=True``
        (:func:`scoresde.setup.build.build_sampling_score_fn`)."""
        sample = self.cfg.sample if sample is None else sample
        compiled = self.compiled_network() if sample.compile else None
        return build_sampling_score_fn(self.model, self.sde, self.cfg, sample, compiled=compiled)

    def compiled_network(self) -> nn.Module:
        """``torch.compile(model)``, built on the first call for this ``model`` and cached."""
        entry = self.compiled_cache.get(id(self.model))
        if entry is None or entry[0] is not self.model:
            entry = (self.model, compile_network(self.model))
            self.compiled_cache[id(self.model)] = entry
        return entry[1]

    def with_sample(self, sample: SampleConfig) -> TrainedModel:
        """This run with ``cfg.sample`` replaced by ``sample`` (the same network, device and
        compiled-network cache): ``self`` itself when nothing changes."""
        if sample == self.cfg.sample:
            return self
        return replace(self, cfg=replace(self.cfg, sample=sample))

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


@dataclass
class TrainedClassifier(TrainedRun):
    """A trained noise-conditional classifier ``p_t(y | x)`` (``scoresde train-classifier``).
    It runs in float32, uncompiled, whatever ``cfg.sample`` says."""

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


def check_run_kind(cfg: Config, path: Path, *, classifier: bool) -> None:
    """Refuse a classifier's run where a score model is wanted, or the reverse (one line)."""
    if is_classifier(cfg) != classifier:
        kinds = ("classifier", "score model")
        want, got = kinds if classifier else kinds[::-1]
        hint = " (pass it as --classifier)" if got == "classifier" else ""
        raise CheckpointError(
            f"{path}: this is a {got} run (model.name={cfg.model.name!r}), not a {want}{hint}"
        )


def _load(path: Path, device: str, use_ema: bool, classifier: bool):
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt.config)
        check_run_kind(cfg, path, classifier=classifier)
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
    """Load a score model written by ``scoresde train``, ``scoresde demo`` or ``scoresde
    convert``: its run folder or its checkpoint file (EMA weights unless ``use_ema=False``).

    Raises :class:`CheckpointError` (one-line message) for a missing, corrupt or foreign file,
    or a classifier's checkpoint.
    """
    return _load(checkpoint_file(path), device, use_ema, classifier=False)


def load_classifier(
    path: str | Path, *, device: str = "auto", use_ema: bool = True
) -> TrainedClassifier:
    """Load a noise-conditional classifier written by ``scoresde train-classifier``: its run
    folder or its checkpoint file (EMA weights unless ``use_ema=False``).

    Raises :class:`CheckpointError` (one line) for a missing, corrupt or foreign file, or a
    score model's checkpoint.
    """
    return _load(checkpoint_file(path), device, use_ema, classifier=True)
