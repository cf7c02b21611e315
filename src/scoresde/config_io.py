"""``key=value`` overrides of a :class:`~scoresde.config.Config` and its JSON round trips.

Overrides are converted to each field's declared type; unknown keys and unparsable values raise
:class:`~scoresde.config.ConfigError` with a one-line message. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from scoresde.config import Config, ConfigError
from scoresde.config_rules import sample_for_method
from scoresde.rundir import atomic_write


def _convert(value: str, typ: Any, key: str) -> Any:
    """Parse the string ``value`` as the declared field type ``typ`` (floats must be finite)."""
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ in (int, float, str):
            parsed = typ(value)
        elif typing.get_origin(typ) is tuple:
            item = typing.get_args(typ)[0]
            parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
            parsed = tuple(item(p.strip()) for p in parts)
        else:
            raise ConfigError(f"{key}: unsupported field type {typ}")
    except ConfigError:
        raise
    except ValueError:
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"{key}: cannot parse {value!r} as {name}") from None
    if typ is float and not math.isfinite(parsed):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return parsed


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return ``cfg`` with ``section.key=value`` (or top-level ``key=value``) overrides applied.

    Values are converted to the declared field type; unknown keys and unparsable values raise
    :class:`ConfigError` with a one-line message. All overrides of a section are applied
    together (the last value of a key wins), so checks that relate two fields (e.g.
    ``train.importance_sampling`` needs ``train.likelihood_weighting``) see the final values
    whatever the order on the command line. ``sample.method=NAME`` naming another sampler
    brings that sampler's own ``num_steps`` and ``grid``
    (:func:`scoresde.config_rules.sample_for_method`) unless they are set too.
    """
    changes: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        path = key.strip().split(".")
        if len(path) == 1:
            section, name, obj = "", path[0], cfg
        elif len(path) == 2 and path[0] in _field_types(Config):
            section, name, obj = path[0], path[1], getattr(cfg, path[0])
        else:
            raise ConfigError(f"unknown config key {key!r}")
        changes.setdefault(section, {})[name] = _converted(obj, name, value, key)
    sections = {k: replace(_base(cfg, k, v), **v) for k, v in changes.items() if k}
    return replace(cfg, **changes.get("", {}), **sections)


def _base(cfg: Config, section: str, changes: dict[str, Any]) -> Any:
    """The section the ``changes`` apply to: for a new ``sample.method``, that sampler's own
    step count and grid first."""
    base = getattr(cfg, section)
    if section == "sample" and "method" in changes:
        return sample_for_method(base, changes["method"])
    return base


def _converted(obj: Any, name: str, value: str, key: str) -> Any:
    """``value`` as the type of field ``name`` of the dataclass ``obj`` (a leaf, not a section)."""
    types = _field_types(type(obj))
    if name not in types or dataclasses.is_dataclass(types[name]):
        choices = ", ".join(n for n, t in types.items() if not dataclasses.is_dataclass(t))
        raise ConfigError(f"unknown config key {key!r} (fields here: {choices})")
    return _convert(value, types[name], key)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A JSON-ready nested dict of ``cfg``."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict`'s output, checking every key."""
    if not isinstance(d, dict):
        raise ConfigError("config must be a JSON object")
    kwargs: dict[str, Any] = {}
    for name, typ in _field_types(Config).items():
        if name not in d:
            continue
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _section_from_dict(typ, d[name], name)
        else:
            kwargs[name] = d[name]
    unknown = set(d) - set(_field_types(Config))
    if unknown:
        raise ConfigError(f"unknown config sections: {sorted(unknown)}")
    return Config(**kwargs)


def _section_from_dict(cls: type, d: Any, name: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {name!r} must be an object")
    types = _field_types(cls)
    unknown = set(d) - set(types)
    if unknown:
        raise ConfigError(f"unknown keys in config section {name!r}: {sorted(unknown)}")
    values = {k: tuple(v) if typing.get_origin(types[k]) is tuple else v for k, v in d.items()}
    return cls(**values)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg`` as indented JSON to ``path`` (atomically: a crash leaves the old file)."""
    return atomic_write(path, json.dumps(config_to_dict(cfg), indent=2) + "\n")


def load_config(path: str | Path) -> Config:
    """Read a JSON config written by :func:`save_config` (clear one-line errors)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder; give its config.json") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config {path} is not a JSON text file (a binary file such as a checkpoint?); "
            "give a config.json"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {path}: {' '.join(str(e).split())}") from None
