"""Preset files: technique configs as JSON, and configs that differ per transformer role.

A preset file is what ``vidaccel tune`` writes and what ``accel="tuned.json"``, ``vidaccel generate --preset
tuned.json`` and ``vidaccel.apply(pipe, "tuned.json")`` load. It is read with :mod:`json` only (nothing in it
is executed or unpickled) and validated field by field::

    {"format": "vidaccel-preset", "version": 1,
     "configs": [{"type": "CacheConfig", "args": {"policy": "call", "interval": 5, ...}}, ...],
     ...}

``configs`` is either a list (every transformer of the pipeline gets every config, as ``vidaccel.apply`` does
with configs given directly) or an object keyed by transformer role, for Wan 2.2's two experts::

     "configs": {"transformer": [...],        # the high-noise expert
                 "transformer_2": [...]}      # the low-noise expert

Any other top-level field (the tuner writes the budget, the measured front, the device and versions) is
kept in the document and ignored when configs are loaded. Non-finite floats are written as the strings
``"inf"``, ``"-inf"`` and ``"nan"`` (JSON has no literal for them).

:class:`RoleConfigs` is the in-memory form of per-role configs; ``vidaccel.apply`` applies each role's
configs to that role's transformer only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping

from ..families import EXPERT_ATTRS

__all__ = ["PRESET_FORMAT", "PRESET_VERSION", "RoleConfigs", "register_config_type", "config_type_named",
           "is_preset_path", "config_to_json", "configs_to_json", "configs_from_json", "read_preset",
           "write_preset", "load_preset_configs"]

PRESET_FORMAT = "vidaccel-preset"
PRESET_VERSION = 1

_CONFIG_TYPES: dict[str, type] = {}


def register_config_type(config_type: type) -> None:
    """Make ``config_type`` loadable from preset files under its class name."""
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"{config_type!r} is not a dataclass type")
    _CONFIG_TYPES[config_type.__name__] = config_type


def config_type_named(name: str) -> type | None:
    """The config type a preset file calls ``name`` (registered here or with a technique), or ``None``."""
    if name in _CONFIG_TYPES:
        return _CONFIG_TYPES[name]
    from .technique import registered_config_types

    return next((t for t in registered_config_types() if t.__name__ == name), None)


class RoleConfigs:
    """Technique configs per transformer role: ``{"transformer": [...], "transformer_2": [...]}``.

    Given to :func:`vidaccel.apply` (directly, as a dict of that shape, or loaded from a preset file), each
    role's configs are applied to that role's transformer only. A role the pipeline does not have is an error.
    """

    def __init__(self, configs: Mapping[str, Iterable[Any]]):
        if not isinstance(configs, Mapping) or not configs:
            raise ValueError(f"per-role configs must be a non-empty mapping role -> configs, got {configs!r}")
        self.configs: dict[str, tuple] = {}
        for role, items in configs.items():
            if role not in EXPERT_ATTRS:
                raise ValueError(f"per-role configs: role {role!r} is not allowed; allowed roles: "
                                 f"{', '.join(EXPERT_ATTRS)}")
            items = tuple(items)
            if any(isinstance(c, RoleConfigs) for c in items):
                raise ValueError(f"per-role configs: role {role!r} holds per-role configs itself")
            self.configs[role] = items

    def __eq__(self, other):
        return isinstance(other, RoleConfigs) and self.configs == other.configs

    def __repr__(self):
        return f"RoleConfigs({self.configs!r})"

    def roles(self) -> list[str]:
        return list(self.configs)


def is_preset_path(accel: Any) -> bool:
    """``accel`` names a preset file: a path object, or a string ending in ``.json``."""
    if isinstance(accel, os.PathLike):
        return True
    return isinstance(accel, str) and accel.lower().endswith(".json")


# -- configs <-> JSON ----------------------------------------------------------------------------------
def _fields(config_type: type) -> dict[str, dataclasses.Field]:
    # compare=False marks derived fields (e.g. an adapter's metadata read from the adapter file itself)
    return {f.name: f for f in dataclasses.fields(config_type) if f.init and f.compare}


def _to_json_value(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: only string keys can be written to a preset file, got {list(value)}")
        return {k: _to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"{where}={value!r} cannot be written to a preset file: JSON holds numbers, strings, lists "
                     "and objects only")


def config_to_json(config: Any) -> dict:
    """``{"type": class name, "args": {field: value}}`` of a technique config dataclass."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"{config!r} is not a technique config (a dataclass instance such as CacheConfig(...))")
    name = type(config).__name__
    args = {k: _to_json_value(getattr(config, k), f"{name}.{k}") for k in _fields(type(config))}
    return {"type": name, "args": args}


def configs_to_json(configs: Any) -> list | dict:
    """A list of configs → a JSON list; a :class:`RoleConfigs` → a JSON object keyed by role."""
    if isinstance(configs, RoleConfigs):
        return {role: [config_to_json(c) for c in items] for role, items in configs.configs.items()}
    return [config_to_json(c) for c in configs]


def _float_field(field: dataclasses.Field) -> bool:
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return "float" in str(annotation)


def _config_from_json(item: Any, where: str) -> Any:
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object {{\"type\": ..., \"args\": {{...}}}}, got {item!r}")
    unknown = sorted(set(item) - {"type", "args"})
    if unknown:
        raise ValueError(f"{where}: field(s) {unknown} are not allowed; a config has 'type' and 'args'")
    name = item.get("type")
    if not isinstance(name, str):
        raise ValueError(f"{where}.type={name!r} is not allowed: it must be a config class name such as 'CacheConfig'")
    config_type = config_type_named(name)
    if config_type is None:
        known = sorted(set(_CONFIG_TYPES))
        raise ValueError(f"{where}.type={name!r} is not a known technique config; known: {', '.join(known) or 'none'}")
    args = item.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where}.args={args!r} is not allowed: it must be an object of {name} fields")
    fields = _fields(config_type)
    bad = sorted(set(args) - set(fields))
    if bad:
        raise ValueError(f"{where}.args: {', '.join(repr(b) for b in bad)} is not a field of {name}; fields: "
                         f"{', '.join(fields)}")
    values = {}
    for key, value in args.items():
        if isinstance(value, str) and value in ("inf", "-inf", "nan") and _float_field(fields[key]):
            value = float(value)
        values[key] = value
    try:
        return config_type(**values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} ({name}): {e}") from None


def configs_from_json(obj: Any, where: str = "configs") -> list | RoleConfigs:
    """Inverse of :func:`configs_to_json`; every error names ``where`` and the field."""
    if isinstance(obj, list):
        return [_config_from_json(item, f"{where}[{i}]") for i, item in enumerate(obj)]
    if isinstance(obj, dict):
        if not obj:
            raise ValueError(f"{where}={{}} is not allowed: give a list of configs or configs per role "
                             f"({', '.join(EXPERT_ATTRS)})")
        out = {}
        for role, items in obj.items():
            if role not in EXPERT_ATTRS:
                raise ValueError(f"{where}.{role} is not allowed: per-role configs are keyed by "
                                 f"{', '.join(EXPERT_ATTRS)}")
            if not isinstance(items, list):
                raise ValueError(f"{where}.{role}={items!r} is not allowed: it must be a list of configs")
            out[role] = [_config_from_json(item, f"{where}.{role}[{i}]") for i, item in enumerate(items)]
        return RoleConfigs(out)
    raise ValueError(f"{where}={obj!r} is not allowed: it must be a list of configs or an object keyed by role")


# -- files -----------------------------------------------------------------------------------------------
def read_preset(path: str | os.PathLike) -> dict:
    """The validated document of a preset file, with ``"configs"`` parsed into configs / :class:`RoleConfigs`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"preset file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"preset file {path!r} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"preset file {path!r} is not a UTF-8 text file: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"preset file {path!r}: the top level must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != PRESET_FORMAT:
        raise ValueError(f"preset file {path!r}: field 'format' is {doc.get('format')!r}; a vidaccel preset has "
                         f"'format': {PRESET_FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= PRESET_VERSION:
        raise ValueError(f"preset file {path!r}: field 'version'={version!r} is not supported; this vidaccel reads "
                         f"versions 1..{PRESET_VERSION}")
    if "configs" not in doc:
        raise ValueError(f"preset file {path!r}: field 'configs' is missing")
    try:
        doc["configs"] = configs_from_json(doc["configs"], "configs")
    except ValueError as e:
        raise ValueError(f"preset file {path!r}: {e}") from None
    return doc


def write_preset(path: str | os.PathLike, configs: Any, **info: Any) -> str:
    """Write ``configs`` (a list or :class:`RoleConfigs`) and the JSON-able ``info`` fields as a preset file."""
    doc = {"format": PRESET_FORMAT, "version": PRESET_VERSION, "configs": configs_to_json(configs)}
    for key, value in info.items():
        if key in doc:
            raise ValueError(f"write_preset: field {key!r} is reserved")
        doc[key] = _to_json_value(value, key)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_preset_configs(path: str | os.PathLike) -> list:
    """The configs of a preset file as ``resolve_accel`` returns them: a flat list, or ``[RoleConfigs]``."""
    configs = read_preset(path)["configs"]
    return [configs] if isinstance(configs, RoleConfigs) else list(configs)
