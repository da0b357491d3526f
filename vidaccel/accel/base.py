"""The technique registry: one config type, one :class:`Technique` subclass.

A technique module defines a validated ``@dataclass`` config and a ``Technique`` subclass decorated with
``@register_technique(ConfigType)``. :func:`vidaccel.apply` looks the config's type up here, so adding a
technique touches only its own module.

A ``Technique`` instance is bound to one transformer (one per Wan 2.2 expert). Its life:
``attach()`` once when applied, ``reset()`` at the start of every pipeline call, ``finish_run()`` at the
end of one, ``stats()`` whenever asked, ``detach()`` when removed. ``detach()`` must leave the model
exactly as ``attach()`` found it (same modules, processors, parameters and buffers), so that outputs
after :func:`vidaccel.remove` are bit-identical to a model that never had the technique.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from torch import nn

from ..specs import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["Technique", "register_technique", "technique_for", "technique_for_type", "registered_config_types"]

_REGISTRY: dict[type, type["Technique"]] = {}


class Technique:
    """Base class of one technique attached to one transformer.

    Args:
        model: the transformer (``WanTransformer3DModel`` or ``CogVideoXTransformer3DModel``).
        config: the technique's config dataclass.
        spec: the model family's :class:`~vidaccel.specs.ModelSpec`.
        role: ``"transformer"`` or ``"transformer_2"`` (Wan 2.2 low-noise expert).
        pipeline: the pipeline the model belongs to, or ``None`` for a bare model.
    """

    #: Unique name; the key of this technique in :func:`vidaccel.stats`.
    name: ClassVar[str] = ""
    config_type: ClassVar[type]

    def __init__(self, model: nn.Module, config: Any, spec: ModelSpec, role: str = "transformer", pipeline=None):
        self.model = model
        self.config = config
        self.spec = spec
        self.role = role
        self.pipeline = pipeline

    def attach(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget all per-call state; called at the start of every pipeline call."""

    def finish_run(self) -> None:
        """Called after a pipeline call; the place to warn about a technique that did nothing."""

    def stats(self) -> dict:
        """Counters of the last call (plain Python numbers and lists)."""
        return {}


def register_technique(config_type: type):
    """Class decorator registering a :class:`Technique` subclass as the handler of ``config_type``."""

    def decorator(cls: type[Technique]) -> type[Technique]:
        if not cls.name:
            raise TypeError(f"{cls.__name__} must set a non-empty `name`")
        if config_type in _REGISTRY and _REGISTRY[config_type] is not cls:
            raise ValueError(
                f"config type {config_type.__name__} is already registered to {_REGISTRY[config_type].__name__}"
            )
        taken = {c.name: t for t, c in _REGISTRY.items() if t is not config_type}
        if cls.name in taken:
            raise ValueError(f"technique name {cls.name!r} is already used by {taken[cls.name].__name__}")
        cls.config_type = config_type
        _REGISTRY[config_type] = cls
        return cls

    return decorator


def unregister_technique(config_type: type) -> None:
    """Remove a registration (for tests that register a throw-away technique)."""
    _REGISTRY.pop(config_type, None)


def registered_config_types() -> list[type]:
    return list(_REGISTRY)


def technique_for_type(config_type: type) -> type[Technique]:
    """The technique class registered for ``config_type``; ``ValueError`` naming the known types if none."""
    cls = _REGISTRY.get(config_type)
    if cls is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY)) or "none"
        name = getattr(config_type, "__name__", repr(config_type))
        raise ValueError(f"{name!r} is not a vidaccel technique config type; registered config types: {known}")
    return cls


def technique_for(config: Any) -> type[Technique]:
    """The technique class registered for ``type(config)``; ``ValueError`` if there is none."""
    return technique_for_type(type(config))
