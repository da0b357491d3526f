"""Named sets of technique configs (``--preset`` on the CLI, ``accel="name"`` in ``from_pretrained``).

Technique modules register their presets with :func:`register_preset`; ``"none"`` is always there and
applies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["register_preset", "available_presets", "preset_configs", "resolve_accel", "preset_description"]


@dataclass(frozen=True)
class _Preset:
    factory: Callable[[], list]
    description: str


_PRESETS: dict[str, _Preset] = {"none": _Preset(lambda: [], "no acceleration (the plain diffusers pipeline)")}


def register_preset(name: str, factory: Callable[[], list], description: str) -> None:
    """Register ``name`` → a fresh list of configs each time it is asked for."""
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = _Preset(factory, description)


def available_presets() -> list[str]:
    return list(_PRESETS)


def preset_description(name: str) -> str:
    return _PRESETS[name].description


def preset_configs(name: str) -> list:
    if name not in _PRESETS:
        raise ValueError(f"preset={name!r} is not known; available presets: {', '.join(_PRESETS)}")
    return list(_PRESETS[name].factory())


def resolve_accel(accel: Any) -> list:
    """Turn ``None`` / a preset name / a config / a list of those into a flat list of configs."""
    if accel is None:
        return []
    if isinstance(accel, str):
        return preset_configs(accel)
    if isinstance(accel, Iterable) and not isinstance(accel, (bytes, dict)):
        out: list = []
        for item in accel:
            out.extend(resolve_accel(item))
        return out
    return [accel]
