"""Named sets of technique configs (``--preset`` on the CLI, ``accel="name"`` in ``from_pretrained``).

Technique modules register their presets with :func:`register_preset`; ``"none"`` is always there and
applies nothing. A path to a preset file (``"tuned.json"``, see :mod:`.preset_file`) resolves to the configs
it holds, and a dict ``{role: configs}`` to :class:`~.preset_file.RoleConfigs` (configs per Wan 2.2 expert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .preset_file import RoleConfigs, is_preset_path, load_preset_configs

__all__ = ["register_preset", "available_presets", "preset_configs", "resolve_accel", "preset_description",
           "expand_roles", "RoleConfigs"]


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
        raise ValueError(f"preset={name!r} is not known; available presets: {', '.join(_PRESETS)} (or the path of a "
                         "preset .json file, as `vidaccel tune` writes)")
    return list(_PRESETS[name].factory())


def resolve_accel(accel: Any) -> list:
    """Turn ``None`` / a preset name / a preset file path / a config / ``{role: configs}`` / a list of those into
    a flat list of configs (per-role configs stay one :class:`RoleConfigs` item)."""
    if accel is None:
        return []
    if is_preset_path(accel):
        return load_preset_configs(accel)
    if isinstance(accel, str):
        return preset_configs(accel)
    if isinstance(accel, RoleConfigs):
        return [accel]
    if isinstance(accel, dict):
        return [RoleConfigs({role: resolve_accel(items) for role, items in accel.items()})]
    if isinstance(accel, Iterable) and not isinstance(accel, bytes):
        out: list = []
        for i, item in enumerate(accel):
            if item is None:
                raise ValueError(f"accel[{i}]=None is not allowed: a list holds configs, preset names or preset "
                                 "files (give accel=None for no acceleration)")
            out.extend(resolve_accel(item))
        return out
    return [accel]


def expand_roles(configs: Sequence[Any], roles: Sequence[str]) -> list[tuple[Any, tuple[str, ...]]]:
    """``(config, roles it applies to)`` for a resolved config list on a target with transformer ``roles``.

    A plain config applies to every role; a :class:`RoleConfigs` item contributes each of its configs for its
    own role. Raises ``ValueError`` when per-role configs name a role the target does not have.
    """
    out: list[tuple[Any, tuple[str, ...]]] = []
    for item in configs:
        if not isinstance(item, RoleConfigs):
            out.append((item, tuple(roles)))
            continue
        missing = [r for r in item.roles() if r not in roles]
        if missing:
            raise ValueError(f"per-role configs are given for {', '.join(missing)}, but the target's transformers "
                             f"are {', '.join(roles)} (a preset tuned for Wan 2.2's two experts fits only a "
                             "two-expert pipeline)")
        for role, items in item.configs.items():
            out.extend((cfg, (role,)) for cfg in items)
    return out
