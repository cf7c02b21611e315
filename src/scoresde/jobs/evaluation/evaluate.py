"""``scoresde evaluate``: sample quality (FID, IS, KID) and bits/dim of a trained model, one JSON.

The paper's evaluation (section 4.2, appendix D): ``eval.num_samples`` samples (50k) from any
sampler, compared with a dataset in the feature space of the TF-ported Inception-v3 (or, for
8x8 digits, of the package's own digits classifier,
:mod:`scoresde.jobs.evaluation.digits_classifier`),
and the negative log-likelihood of a data split through the probability-flow ODE in bits/dim
with uniform dequantization, averaged over ``eval.bpd_repeats`` draws and reported with its
standard error (``bpd``), and beside it the variational bound of the reverse-SDE model
(``bound``, :mod:`scoresde.methods.likelihood_bound`) with the same protocol. Under ``torchrun`` the
samples and the likelihood's examples are shared out over the ranks by index
(:mod:`scoresde.jobs.evaluation.samples`), so the result does not depend on the number of devices;
features and metrics are computed by rank 0.

An evaluation folder holds ``evaluation.json`` (what is being evaluated: checkpoint step,
sampler, seed), ``parts/`` (the samples, written as they are made: an interrupted evaluation
resumes there), ``samples.npz`` and ``samples.png`` (all samples, and a grid), and
``results.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scoresde.core.seeding import derive_seed
from scoresde.infra import distributed
from scoresde.infra.distributed import World
from scoresde.infra.rundir import (
    OutputExistsError,
    atomic_save_arrays,
    atomic_write,
    check_output_dir,
)
from scoresde.jobs.evaluation.features import EvaluationError, FeatureExtractor, extract_features
from scoresde.jobs.evaluation.inception import check_inception_available
from scoresde.jobs.evaluation.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from scoresde.jobs.evaluation.reference import Reference, load_reference
from scoresde.jobs.evaluation.samples import SampleStore, as_uint8_images, generate_into
from scoresde.jobs.evaluation.split_likelihood import likelihood_on_ranks
from scoresde.jobs.runs import TrainedModel, evaluate_bound, evaluate_likelihood
from scoresde.setup.build import sampler_config
from scoresde.setup.config import Config, EvalConfig
from scoresde.setup.config_io import save_config
from scoresde.setup.config_rules import sample_for_method
from scoresde.setup.data.pipeline import is_image_data, load_split

RESULTS_NAME = "results.json"
MANIFEST_NAME = "evaluation.json"
PARTS_DIR = "parts"
OUTPUTS = (RESULTS_NAME,)  # an evaluation is finished when its results are written
SAMPLE_METRICS = ("fid", "is", "kid")


def check_evaluation(cfg: Config) -> None:
    """Refuse an evaluation that cannot finish, before any sample is drawn.

    Checks that the sample-quality metrics have image data, that the digits classifier is
    asked only for 8x8 digits, that the Inception weights file exists and torch-fidelity can
    be imported, and that the reference exists (and, for KID, holds activations).

    Raises:
        EvaluationError: with a one-line message saying what to change.
    """
    ec = cfg.eval
    wanted = [m for m in ec.metrics if m in SAMPLE_METRICS]
    if not wanted:
        return
    if not is_image_data(cfg.data):
        raise EvaluationError(
            f"eval.metrics {wanted} need image data, not {cfg.data.dataset!r}; use "
            "eval.metrics=bpd (the likelihood in nats)"
        )
    if ec.features == "digits":
        if cfg.data.dataset != "digits":
            raise EvaluationError(
                "eval.features=digits (the digits classifier) is for 8x8 digits only; use "
                "eval.features=inception with eval.inception_weights=PATH"
            )
        if ec.reference:
            _check_reference_file(ec.reference, "kid" in wanted)
        return
    check_inception_available(ec.inception_weights)
    if "fid" in wanted or "kid" in wanted:
        if not ec.reference:
            raise EvaluationError(
                "FID and KID need reference statistics: set eval.reference=PATH (an npz of "
                "mu/sigma or pool_3 activations, e.g. the official cifar10_stats.npz, or a "
                "folder of dataset images)"
            )
        _check_reference_file(ec.reference, "kid" in wanted)


def _check_reference_file(path_text: str, needs_activations: bool) -> None:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise EvaluationError(f"eval.reference {path} does not exist")
    if path.is_file():
        try:
            with np.load(path) as f:
                keys = set(f.files)
        except (OSError, ValueError) as e:
            raise EvaluationError(f"eval.reference {path} is not an npz file: {e}") from None
        if needs_activations and not keys & {"pool_3", "features"}:
            raise EvaluationError(
                f"KID needs activations, but {path} holds only {sorted(keys)}: give an npz "
                "with pool_3 or features, or a folder of images, or drop kid from eval.metrics"
            )


def evaluate(
    run: TrainedModel,
    out: str | Path,
    *,
    checkpoint: str | Path = "",
    method: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    world: World | None = None,
    progress: bool = False,
    overwrite: bool = False,
    extractor: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Evaluate ``run`` as ``run.cfg.eval`` says and write ``results.json`` to ``out``.

    Samples come from ``method`` (default ``run.cfg.sample.method``) with the options of
    ``run.cfg.sample`` (another method with its own ``num_steps`` and ``grid``,
    :data:`scoresde.setup.config_rules.SAMPLER_STEPS`); sample ``i`` from the stream ``(seed, i)``
    (default seed: the config's), made in batches of ``batch_size`` (default
    ``sample.batch_size``), which do not change them. Running the same evaluation again resumes
    it; a finished one is refused unless ``overwrite``, and a folder holding the samples of
    another checkpoint, sampler or seed is refused. ``extractor`` replaces the configured
    feature network (tests use a tiny one).

    Returns:
        The results (on every rank): ``metrics`` (``fid``, ``is``, ``is_std``, ``kid``,
        ``kid_std`` as asked), for the digits classifier ``real_data`` (the same metrics of the
        held-out digits at the same sample size, the yardstick), ``bpd`` (``mean``,
        ``stderr``, ...), ``bound_bpd`` (the same fields, for ``bound``), the sampler and its
        options, NFE, seed, number of samples, checkpoint step, wall time and number of devices.

    Raises:
        EvaluationError, OutputExistsError, ValueError: before any sample is drawn.
        NonFiniteSamplesError: a batch of samples holds NaN or infinite values; the batches
            made before it stay in ``parts/``, nothing else is written.
    """
    start = time.perf_counter()
    world = world or World(0, 1, run.device)
    cfg = run.cfg
    ec = cfg.eval
    out = Path(out)
    seed = cfg.seed if seed is None else seed
    cfg = replace(cfg, sample=sample_for_method(cfg.sample, method))  # its own steps and grid
    run = replace(run, cfg=cfg)
    method, options = sampler_config(cfg.sample)
    batch_size = batch_size or cfg.sample.batch_size
    wants_samples = any(m in SAMPLE_METRICS for m in ec.metrics)
    check_evaluation(cfg)
    manifest = {
        "checkpoint_step": run.step,
        "seed": seed,
        "sample": {**asdict(cfg.sample), "method": method, "batch_size": 0, "num_samples": 0},
        "data": asdict(cfg.data),
    }
    _prepare_folder(out, manifest, world, overwrite)
    if world.is_main:
        used = replace(cfg.sample, method=method, batch_size=batch_size)
        save_config(replace(cfg, seed=seed, sample=used), out / "config.json")
    distributed.barrier()

    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_step": run.step,
        "num_devices": world.size,
        "seed": seed,
        "eval": asdict(ec),
    }
    if wants_samples:
        store = SampleStore(out / PARTS_DIR, ec.num_samples)
        generate_into(
            store,
            run,
            world,
            method=method,
            seed=seed,
            batch_size=batch_size,
            progress=progress and world.is_main,
        )
        distributed.barrier()
        if world.is_main:
            samples, nfes = store.load()
            _write_samples(out, samples)
            results["num_samples"] = ec.num_samples
            results["sampler"] = {"method": method, "options": options}
            results["nfe"] = {"mean": float(np.mean(nfes)), "max": max(nfes)}
            results.update(
                sample_quality(
                    cfg,
                    samples,
                    device=run.device,
                    seed=seed,
                    extractor=extractor,
                    progress=progress,
                )
            )
    if "bpd" in ec.metrics:
        results["bpd" if is_image_data(cfg.data) else "nll_nats"] = _likelihood(
            run, world, seed, progress
        )
    if "bound" in ec.metrics:
        results["bound_bpd" if is_image_data(cfg.data) else "bound_nll_nats"] = _likelihood(
            run, world, seed, progress, score=evaluate_bound
        )
    results["seconds"] = round(time.perf_counter() - start, 2)
    if world.is_main:
        atomic_write(out / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    return distributed.broadcast_object(results)


def _prepare_folder(out: Path, manifest: dict, world: World, overwrite: bool) -> None:
    """A new folder, or the same evaluation to resume; ``overwrite`` starts afresh."""
    check_output_dir(out, list(OUTPUTS), overwrite=overwrite, what="an evaluation")
    path = out / MANIFEST_NAME
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old != manifest:
            keys = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise OutputExistsError(
                f"{out} holds an evaluation of another {', '.join(keys)}; use a new --out, or "
                "--overwrite to replace it"
            )
    distributed.barrier()  # every rank has checked before rank 0 changes anything
    if world.is_main:
        if overwrite and (out / PARTS_DIR).exists():
            shutil.rmtree(out / PARTS_DIR)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(manifest, indent=2) + "\n")


def _write_samples(out: Path, samples: Tensor) -> None:
    from scoresde.infra.viz import save_image_grid, save_scatter

    arrays = {"samples": samples.numpy()}
    if samples.ndim == 4:
        arrays["images_uint8"] = as_uint8_images(samples)
    atomic_save_arrays(out / "samples.npz", **arrays)
    if samples.ndim == 4:
        save_image_grid(samples[:64], out / "samples.png", nrow=8)
    else:
        save_scatter(samples, out / "samples.png", title="samples")


def sample_quality(
    cfg: Config,
    samples: Tensor,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FID / IS / KID (those of ``cfg.eval.metrics``) of ``samples`` ``(N, C, H, W)`` in
    ``[0, 1]`` in the feature space of ``cfg.eval.features`` against ``cfg.eval.reference``.

    For the digits classifier (default reference: the training digits) the same metrics of as
    many real held-out digits (at most the 359 of the test split) come beside them as
    ``real_data``, and, when there are more samples than that, those of the first samples as
    ``samples_at_real_size``: FID is biased by the sample size, so only values at the same size
    compare.

    Returns:
        ``{"features", "reference", "metrics": {...}, "real_data": {...}, ...}``.
    """
    device = torch.device(device)
    ec = cfg.eval
    if extractor is None:
        extractor = _configured_extractor(ec, device)
    batch = min(ec.batch_size, 250)
    fake = extract_features(extractor, samples, batch_size=batch, device=device, progress=progress)
    reference = _reference(cfg, extractor, device)
    found: dict[str, Any] = {"features": extractor.name, "reference": reference.source}
    found["metrics"] = _metrics(ec, fake, reference, seed)
    if ec.features == "digits":
        real = load_split(cfg.data, "test")
        n = min(real.shape[0], samples.shape[0])
        real_features = extract_features(extractor, real[:n], batch_size=batch, device=device)
        found["real_data"] = {"num_examples": n, **_metrics(ec, real_features, reference, seed)}
        if n < samples.shape[0]:
            first = {k: v[:n] for k, v in fake.items()}
            found["samples_at_real_size"] = {
                "num_samples": n,
                **_metrics(ec, first, reference, seed),
            }
    return found


def _configured_extractor(ec: EvalConfig, device: torch.device) -> FeatureExtractor:
    if ec.features == "digits":
        from scoresde.jobs.evaluation.digits_classifier import load_digits_classifier

        return load_digits_classifier(device=device)
    from scoresde.jobs.evaluation.inception import InceptionV3Features

    return InceptionV3Features(ec.inception_weights, device=device)


def _reference(cfg: Config, extractor: FeatureExtractor, device: torch.device) -> Reference:
    """``eval.reference``, or for the digits classifier by default the training digits."""
    if cfg.eval.reference:
        return load_reference(cfg.eval.reference, extractor, device=device)
    if cfg.eval.features != "digits":
        raise EvaluationError("set eval.reference=PATH")
    train = load_split(cfg.data, "train")
    features = extract_features(extractor, train, device=device)["features"]
    return Reference(feature_statistics(features), features, "digits training split")


def _metrics(
    ec: EvalConfig, found: dict[str, Tensor], reference: Reference, seed: int
) -> dict[str, float]:
    values: dict[str, float] = {}
    if "fid" in ec.metrics:
        values["fid"] = frechet_distance(feature_statistics(found["features"]), reference.stats)
    if "is" in ec.metrics:
        values["is"], values["is_std"] = inception_score(found["logits"], splits=ec.is_splits)
    if "kid" in ec.metrics:
        if reference.features is None:
            raise EvaluationError(f"KID needs activations; {reference.source} has only mu/sigma")
        generator = torch.Generator().manual_seed(derive_seed(seed, "kid"))
        values["kid"], values["kid_std"] = kernel_inception_distance(
            found["features"],
            reference.features,
            subsets=ec.kid_subsets,
            subset_size=ec.kid_subset_size,
            generator=generator,
        )
    return values


def _likelihood(
    run: TrainedModel, world: World, seed: int, progress: bool, score=evaluate_likelihood
) -> dict[str, Any]:
    """Bits/dim (nats for vectors) of ``eval.bpd_split``, ``eval.bpd_repeats`` times with
    independent dequantizations (:func:`likelihood_on_ranks`)."""
    ec = run.cfg.eval
    data = load_split(run.cfg.data, ec.bpd_split, limit=ec.num_examples)
    found = likelihood_on_ranks(
        run, data, world, seed=seed, repeats=ec.bpd_repeats, progress=progress, score=score
    )
    return {"split": ec.bpd_split, **found}
