"""The technique registry and the table of techniques attached to each transformer.

A technique is a validated ``@dataclass`` config plus a :class:`Technique` subclass decorated with
``@register_technique(ConfigType)``. :func:`vidaccel.apply` looks the config's type up here, so adding a
technique touches only its own module. A built-in config names the module of its technique in the class
attribute ``_technique_module``; that module is imported on first use, so importing a config costs nothing.

A ``Technique`` instance is bound to one transformer (one per Wan 2.2 expert). Its life: ``attach()`` once
when applied, ``reset()`` at the start of every pipeline call, ``finish_run()`` at the end of one,
``stats()`` whenever asked, ``detach()`` when removed. ``detach()`` must leave the model exactly as
``attach()`` found it (same modules, processors, parameters and buffers), so that outputs after
:func:`vidaccel.remove` are bit-identical to a model that never had the technique.

The techniques attached to a transformer live in an ordered table on the transformer itself
(:func:`attached`); :mod:`vidaccel.api` and checkpoint loaders both write it through :func:`record`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, ClassVar

from ..families import ModelFamily, pipeline_transformers

logger = logging.getLogger(__name__)

__all__ = ["Technique", "register_technique", "unregister_technique", "technique_for", "technique_for_type",
           "registered_config_types", "attached", "record", "forget", "applied", "reset", "finish_run", "stats"]

_REGISTRY: dict[type, type["Technique"]] = {}
_TABLE_ATTR = "_vidaccel_techniques"  # on each transformer: {technique name: Technique}, in application order


class Technique:
    """Base class of one technique attached to one transformer.

    Args:
        model: the transformer (``WanTransformer3DModel`` or ``CogVideoXTransformer3DModel``).
        config: the technique's config dataclass.
        family: the model's :class:`~vidaccel.families.ModelFamily`.
        role: ``"transformer"`` or ``"transformer_2"`` (Wan 2.2 low-noise expert).
        pipeline: the pipeline the model belongs to, or ``None`` for a bare model.
    """

    #: Unique name; the key of this technique in :func:`vidaccel.stats`.
    name: ClassVar[str] = ""
    config_type: ClassVar[type]

    def __init__(self, model, config: Any, family: ModelFamily, role: str = "transformer", pipeline=None):
        self.model = model
        self.config = config
        self.family = family
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

    # -- what every technique declares about itself (the contract tests run every registered technique) ---
    @classmethod
    def noop_config(cls) -> Any:
        """A config of this technique that changes nothing: outputs equal the baseline bit for bit."""
        raise NotImplementedError(f"{cls.__name__} must define noop_config()")

    @classmethod
    def example_config(cls) -> Any:
        """A config that acts on any supported model, tiny test models included (outputs change, stats count)."""
        raise NotImplementedError(f"{cls.__name__} must define example_config()")


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
    """Config types registered so far (built-in ones once :func:`vidaccel.accel.load_techniques` ran)."""
    return list(_REGISTRY)


def technique_for_type(config_type: type) -> type[Technique]:
    """The technique class registered for ``config_type``; ``ValueError`` naming the known types if none."""
    cls = _REGISTRY.get(config_type)
    module = getattr(config_type, "_technique_module", None) if isinstance(config_type, type) else None
    if cls is None and isinstance(module, str):
        importlib.import_module(module)
        cls = _REGISTRY.get(config_type)
    if cls is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY)) or "none"
        name = getattr(config_type, "__name__", repr(config_type))
        raise ValueError(f"{name!r} is not a vidaccel technique config type; registered config types: {known}")
    return cls


def technique_for(config: Any) -> type[Technique]:
    """The technique class registered for ``type(config)``; ``ValueError`` if there is none."""
    return technique_for_type(type(config))


# -- the table on each transformer -------------------------------------------------------------------------
def attached(model) -> dict[str, Technique]:
    """The techniques attached to ``model``, ``{name: technique}`` in application order (a live dict)."""
    table = model.__dict__.get(_TABLE_ATTR)
    if table is None:
        table = {}
        # object.__setattr__ keeps the dict out of nn.Module's registries (no state_dict / parameter impact).
        object.__setattr__(model, _TABLE_ATTR, table)
    return table


def record(model, technique: Technique) -> None:
    """Enter an attached technique in ``model``'s table."""
    attached(model)[technique.name] = technique


def forget(model, technique: Technique) -> None:
    """Remove ``technique`` from ``model``'s table."""
    attached(model).pop(technique.name, None)


def _techniques(target):
    for role, model in pipeline_transformers(target):
        for technique in attached(model).values():
            yield role, technique


def applied(target) -> list[str]:
    """Names of the techniques applied to ``target`` (to any of its transformers), in order."""
    names: list[str] = []
    for _, model in pipeline_transformers(target):
        names.extend(n for n in attached(model) if n not in names)
    return names


def reset(target) -> None:
    """Reset the per-call state of every technique (pipelines do this at the start of each call)."""
    for _, technique in _techniques(target):
        technique.reset()


def finish_run(target) -> None:
    """Tell every technique a pipeline call ended (pipelines do this; call it after a manual loop)."""
    for _, technique in _techniques(target):
        technique.finish_run()


def stats(target) -> dict:
    """Counters of the last call: ``{technique name: {role: {...}}}``.

    ``role`` is ``"transformer"`` (and ``"transformer_2"`` for Wan 2.2's low-noise expert).
    """
    out: dict[str, dict] = {}
    for role, technique in _techniques(target):
        out.setdefault(technique.name, {})[role] = technique.stats()
    return out
