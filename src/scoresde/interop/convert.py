"""Turn a released official score_sde_pytorch checkpoint into a scoresde run.

``convert_official(src, out_dir, preset=...)`` loads the ``.pth`` file safely
(:func:`scoresde.interop.official.load_official_checkpoint`: ``weights_only=True`` plus the few
numpy scalar globals such files need), puts its EMA (or raw) weights into the network of a scoresde
config and writes ``out_dir/checkpoint.safetensors`` and ``out_dir/config.json``, which
``scoresde sample`` and ``scoresde likelihood`` take like any trained run. The config is a
preset (the released CIFAR-10 checkpoints go with ``ve_cifar10_ncsnpp_continuous`` and friends)
or is read from the official config as JSON (:func:`config_from_official`). This is the one
conversion: the weights go through :func:`scoresde.setup.build.build_model`,
:func:`scoresde.infra.checkpoint.save_checkpoint` and :func:`scoresde.setup.config_io.save_config`,
as a trained
run's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoresde.infra.checkpoint import save_checkpoint
from scoresde.infra.rundir import CHECKPOINT_NAME, CONFIG_NAME, check_output_dir
from scoresde.interop.official import (
    OfficialCheckpointError,
    check_official_file,
    load_official_checkpoint,
    load_strict,
    official_ema_state_dict,
    official_network,
    official_state_dict_to_ours,
)
from scoresde.setup.build import build_model
from scoresde.setup.config import Config, DataConfig, SampleConfig, SDEConfig, TrainConfig
from scoresde.setup.config_io import config_to_dict, save_config
from scoresde.setup.networks import model_config_from_network
from scoresde.setup.presets import get_preset

_DATASETS = {
    "CIFAR10": "cifar10",
    "CELEBA": "celeba",
    "LSUN": "lsun",
    "CelebAHQ": "celebahq",
    "FFHQ": "ffhq",
}
_SDES = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}


def config_from_official(official: dict[str, Any]) -> Config:
    """A scoresde :class:`Config` from an official config (its ``ml_collections`` tree as a dict).

    Needs the sections ``data``, ``model``, ``training``, ``sampling`` and ``optim``.
    """
    try:
        data, model, training = official["data"], official["model"], official["training"]
        sampling, optim = official["sampling"], official["optim"]
        network = official_network(model, data)
        net = model_config_from_network(
            network.name, network.kwargs, continuous=bool(training["continuous"])
        )
        return Config(
            data=DataConfig(
                dataset=_DATASETS.get(data["dataset"], "folder"),
                image_size=int(data["image_size"]),
                centered=bool(data["centered"]),
                dequantize=bool(data.get("uniform_dequantization", False)),
                random_flip=bool(data.get("random_flip", True)),
                levels=256,
            ),
            sde=SDEConfig(
                kind=_SDES[training["sde"]],
                sigma_min=float(model["sigma_min"]),
                sigma_max=float(model["sigma_max"]),
                beta_min=float(model.get("beta_min", 0.1)),
                beta_max=float(model.get("beta_max", 20.0)),
                N=int(model["num_scales"]),
            ),
            model=net,
            train=TrainConfig(
                steps=int(training["n_iters"]),
                batch_size=int(training["batch_size"]),
                lr=float(optim["lr"]),
                beta1=float(optim["beta1"]),
                adam_eps=float(optim["eps"]),
                weight_decay=float(optim["weight_decay"]),
                warmup=int(optim["warmup"]),
                grad_clip=float(optim["grad_clip"]),
                ema_decay=float(model["ema_rate"]),
                likelihood_weighting=bool(training["likelihood_weighting"]),
                reduce="mean" if training["reduce_mean"] else "sum",
            ),
            sample=SampleConfig(
                method="pc",
                options=dict(
                    predictor=sampling["predictor"],
                    corrector=sampling["corrector"],
                    snr=float(sampling["snr"]),
                    n_steps=int(sampling["n_steps_each"]),
                    num_steps=int(model["num_scales"]),
                    denoise=bool(sampling["noise_removal"]),
                ),
            ),
            seed=int(official.get("seed", 42)),
        )
    except KeyError as e:
        raise ValueError(f"official config lacks the field {e.args[0]!r}") from None


UNTRAINED_STEPS = 1000
"""Below this training step a checkpoint is reported as essentially untrained (the paper's
models train for 0.95 to 2.4 million steps)."""


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_official` wrote, and the training step of the source checkpoint."""

    checkpoint: Path
    config: Path
    step: int


def convert_official(
    src: str | Path,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    official_config: str | Path | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert an official checkpoint into a scoresde run folder.

    Args:
        src: the official ``.pth`` (a dict with ``model``, ``ema``, ``optimizer``, ``step``).
        out_dir: where ``checkpoint.safetensors`` and ``config.json`` go (written atomically).
        preset: the scoresde preset of the experiment (e.g. ``ve_cifar10_ncsnpp_continuous``).
        official_config: instead of ``preset``, the official config saved as JSON; by default
            ``<src stem>.config.json`` next to ``src`` is used when no preset is given.
        use_ema: take the EMA weights (what the paper samples with) rather than the raw ones.
        overwrite: replace a run already in ``out_dir``; without it such a folder is refused
            before anything is read.

    Raises:
        OutputExistsError: ``out_dir`` is a file or already holds a run (and not ``overwrite``).
        OfficialCheckpointError: ``src`` is not a safely loadable official checkpoint (for
            instance a scoresde checkpoint, which needs no conversion) or does not fit the config.
    """
    src, out_dir = Path(src), Path(out_dir)
    check_output_dir(out_dir, [CHECKPOINT_NAME, CONFIG_NAME], overwrite=overwrite, what="a run")
    check_official_file(src)
    cfg = get_preset(preset) if preset else _read_official_config(src, official_config)
    checkpoint = load_official_checkpoint(src)
    model = build_model(cfg)
    if use_ema:
        weights = official_ema_state_dict(checkpoint, model)
    else:
        weights = official_state_dict_to_ours(checkpoint["model"])
    load_strict(model, weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = int(checkpoint["step"])
    path = save_checkpoint(
        out_dir / CHECKPOINT_NAME,
        model=model.state_dict(),
        ema=None,
        optimizer=None,
        step=step,
        config=config_to_dict(cfg),
        extra={"source": str(src), "weights": "ema" if use_ema else "model"},
    )
    config_path = save_config(cfg, out_dir / CONFIG_NAME)
    return ConvertResult(path, config_path, step)


def _read_official_config(src: Path, path: str | Path | None) -> Config:
    path = Path(path) if path else src.with_suffix(".config.json")
    if not path.is_file():
        raise FileNotFoundError(
            f"no config for {src}: give a preset (--preset NAME) or the official config as JSON "
            f"({path} not found)"
        )
    try:
        official = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OfficialCheckpointError(f"{path} is not valid JSON: {e.msg}") from None
    return config_from_official(official)
