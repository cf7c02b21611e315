"""``key=value`` overrides of a :class:`~scoresde.setup.config.Config` and its JSON round trips.

Overrides are converted to each field's declared type; unknown keys and unparsable values raise
:class:`~scoresde.setup.config.ConfigError` with a one-line message. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from scoresde.core.sampler_options import OPTIONS
from scoresde.infra.rundir import atomic_write
from scoresde.setup.config import SAMPLE_FIELDS, Config, ConfigError, SampleConfig
from scoresde.setup.sample_config import LEGACY_SAMPLE_KEYS


def _convert(value: str, typ: Any, key: str) -> Any:
    """Parse the string ``value`` as the declared field type ``typ`` (floats must be finite)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null"):
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if typ is typing.Any:
        typ = str
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
    (:func:`scoresde.setup.config_rules.sample_for_method`) unless they are set too.
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
        if section:
            changes.setdefault(section, {})[name] = _checked_key(obj, name, value, key)
        else:
            changes.setdefault("", {})[name] = _converted(obj, name, value, key)
    sections = {k: _section_with(getattr(cfg, k), v) for k, v in changes.items() if k}
    return replace(cfg, **changes.get("", {}), **sections)


def _section_with(base: Any, changes: dict[str, Any]) -> Any:
    """``base`` with ``changes``; for the sample section, a new ``method`` first (it starts
    from its own defaults, :meth:`scoresde.setup.config.SampleConfig.updated`), then the options,
    parsed as the fields of that sampler's options class."""
    if not isinstance(base, SampleConfig):
        return replace(base, **{k: _convert(v, _field_types(type(base))[k], k2)
                                for k, (v, k2) in changes.items()})
    method = changes.pop("method", (base.method, ""))[0]
    own = {k: _convert(v, _field_types(SampleConfig)[k], key)
           for k, (v, key) in changes.items() if k in SAMPLE_FIELDS}
    option_types = _field_types(OPTIONS[method])
    options = {}
    for name, (value, key) in changes.items():
        if name in SAMPLE_FIELDS:
            continue
        name = LEGACY_SAMPLE_KEYS.get(name, {}).get(method, name)  # e.g. ode_rtol -> rtol
        if name not in option_types or name == "time_grid":
            valid = ", ".join(n for n in option_types if n != "time_grid")
            raise ConfigError(
                f"unknown config key {key!r}: sampler {method!r} takes no option {name!r}; "
                f"its options: {valid} (and sample.{', sample.'.join(SAMPLE_FIELDS)})"
            )
        options[name] = _convert(value, option_types[name], key)
    return base.updated(method=method, options=options, **own)


def _converted(obj: Any, name: str, value: str, key: str) -> Any:
    """``value`` as the type of field ``name`` of the dataclass ``obj`` (a leaf, not a section)."""
    _checked_key(obj, name, value, key)
    return _convert(value, _field_types(type(obj))[name], key)


def _checked_key(obj: Any, name: str, value: str, key: str) -> tuple[str, str]:
    """``(value, key)`` of field ``name`` of the section ``obj``, its name checked (the sample
    section's options are checked by :func:`_section_with`, against the final method)."""
    types = _field_types(type(obj))
    if isinstance(obj, SampleConfig) and name != "options":
        return value, key
    if name not in types or dataclasses.is_dataclass(types[name]):
        choices = ", ".join(n for n, t in types.items() if not dataclasses.is_dataclass(t))
        raise ConfigError(f"unknown config key {key!r} (fields here: {choices})")
    return value, key


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


def _legacy_sample(d: dict[str, Any]) -> dict[str, Any]:
    """A flat sample section of an older config as ``{..., "options": {...}}``."""
    if not set(d) & set(LEGACY_SAMPLE_KEYS):
        return d
    method = d.get("method", "pc")
    out = {k: v for k, v in d.items() if k not in LEGACY_SAMPLE_KEYS}
    options = dict(out.pop("options", {}))
    for key, by_method in LEGACY_SAMPLE_KEYS.items():
        if key in d and method in by_method:
            value = d[key]
            if key == "grid" and not value:
                continue  # "": the sampler's own grid
            if key == "adaptive_atol" and not value:
                value = None  # 0: the default
            options[by_method[key]] = value
    return {**out, "options": options}


def _section_from_dict(cls: type, d: Any, name: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {name!r} must be an object")
    if cls is SampleConfig:
        d = _legacy_sample(d)
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
