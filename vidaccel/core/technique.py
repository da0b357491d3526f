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

import copy
import functools
import importlib
import logging
from typing import Any, ClassVar

from ..families import ModelFamily, pipeline_transformers

logger = logging.getLogger(__name__)

__all__ = ["Technique", "register_technique", "unregister_technique", "technique_for", "technique_for_type",
           "registered_config_types", "attached", "record", "forget", "applied", "reset", "finish_run", "check_run",
           "stats", "check_parallel"]

_REGISTRY: dict[type, type["Technique"]] = {}
#: memo key under which a pipeline's ``__deepcopy__`` collects the techniques of its transformers' copies, to
#: attach them once the pipeline copy is complete (a technique may read the pipeline, e.g. its scheduler)
DEFERRED_ATTACH_KEY = "vidaccel_deferred_attach"
_TABLE_ATTR = "_vidaccel_techniques"  # on each transformer: {technique name: Technique}, in application order
_GUARD_ATTR = "_vidaccel_thread_guard"  # the handle of the forward pre-hook of core.concurrency


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
    #: the technique reads the pipeline (e.g. its scheduler): ``apply`` on a bare transformer is refused
    needs_pipeline: ClassVar[bool] = False

    def __init__(self, model, config: Any, family: ModelFamily, role: str = "transformer", pipeline=None):
        self.model = model
        self.config = config
        self.family = family
        self.role = role
        self.pipeline = pipeline

    def attach(self) -> None:
        """Change the model. Validate first: an ``attach`` that raises must leave the model as it found it."""
        raise NotImplementedError

    def detach(self) -> None:
        """Undo :meth:`attach` exactly, into the model's current dtype and device."""
        raise NotImplementedError

    def removable(self) -> str | None:
        """``None`` when :meth:`detach` can undo this technique, else why not (``remove`` then refuses up front)."""
        return None

    def reset(self) -> None:
        """Forget all per-call state; called at the start of every pipeline call."""

    def finish_run(self) -> None:
        """Called after a pipeline call; the place to warn about a technique that did nothing."""

    def check_run(self, num_inference_steps: int | None = None) -> None:
        """Raise ``ValueError`` before a run this technique cannot serve (called before any work)."""

    def stats(self) -> dict:
        """Counters of the last call (plain Python numbers and lists)."""
        return {}

    @classmethod
    def parallel_refusal(cls, config: Any, *, ring: int, ulysses: int, techniques: frozenset[str]) -> str | None:
        """Why ``config`` cannot run under context parallelism over ``ring × ulysses`` ranks alongside
        ``techniques`` (the names of every technique on the transformer, this one included), or ``None``.

        Asked before anything changes, by ``apply`` on a transformer that already runs context parallelism and by
        :func:`vidaccel.parallel.enable_parallelism` on one that holds techniques."""
        return None

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
    """Enter an attached technique in ``model``'s table (the first one also installs the copy and thread guards)."""
    attached(model)[technique.name] = technique
    if "__deepcopy__" not in model.__dict__:
        _install_guards(model)


def forget(model, technique: Technique) -> None:
    """Remove ``technique`` from ``model``'s table (the last one also removes the guards)."""
    table = attached(model)
    table.pop(technique.name, None)
    if not table:
        _remove_guards(model)


def _install_guards(model) -> None:
    from .concurrency import foreign_call_guard, guarded_cache_context

    # copy.deepcopy looks __deepcopy__ up on the instance first: see _deepcopy_with_techniques
    object.__setattr__(model, "__deepcopy__", functools.partial(_deepcopy_with_techniques, model))
    object.__setattr__(model, _GUARD_ATTR, model.register_forward_pre_hook(foreign_call_guard))
    if callable(getattr(type(model), "cache_context", None)):
        object.__setattr__(model, "cache_context", functools.partial(guarded_cache_context, model))


def _remove_guards(model) -> None:
    model.__dict__.pop("__deepcopy__", None)
    model.__dict__.pop("cache_context", None)
    handle = model.__dict__.pop(_GUARD_ATTR, None)
    if handle is not None:
        handle.remove()


def _deepcopy_with_techniques(model, memo):
    """``copy.deepcopy`` of a transformer with techniques attached: an independent copy with its own techniques.

    Techniques hook the model with closures over themselves, which a plain deep copy would share with the
    original (the copy's calls would run the original's hooks and state). So the techniques are detached, the
    bare model is copied, and they are attached again to the original and, as new instances with the same
    configs, to the copy (whose techniques point at the copied pipeline when the copy started there).
    A technique that cannot be detached (see :meth:`Technique.removable`) makes the copy refuse.
    """
    from .concurrency import exclusive

    techniques = list(attached(model).values())
    blocked = [(t.name, reason) for t in techniques if (reason := t.removable()) is not None]
    if blocked:
        name, reason = blocked[0]
        raise TypeError(f"copy.deepcopy of this {type(model).__name__} is not supported: technique {name!r} {reason}, "
                        "so it cannot be detached to make an independent copy; build the copy from its files instead")
    with exclusive([model]):
        for t in reversed(techniques):
            t.detach()
        table = model.__dict__.pop(_TABLE_ATTR)
        _remove_guards(model)
        try:
            clone = copy.deepcopy(model, memo)
        finally:
            object.__setattr__(model, _TABLE_ATTR, table)
            _install_guards(model)
            for t in techniques:
                t.attach()
    deferred = memo.get(DEFERRED_ATTACH_KEY)
    for t in techniques:
        twin = copy.copy(t)  # keeps what a re-attach reuses (e.g. a calibrated plan); attach rebuilds the rest
        twin.model = clone
        # the copied pipeline when the copy started there; a bare copy keeps reading the original's (step count)
        twin.pipeline = memo.get(id(t.pipeline), t.pipeline) if t.pipeline is not None else None
        if deferred is not None and t.pipeline is not None and id(t.pipeline) in memo:
            deferred.append(twin)  # the pipeline copy is still being built: it attaches them once complete
        else:
            attach_copy(twin)
    return clone


def attach_copy(twin: "Technique") -> None:
    """Attach a technique copied by ``copy.deepcopy`` to its model copy and record it there."""
    twin.attach()
    record(twin.model, twin)


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


def check_run(target, num_inference_steps: int | None = None) -> None:
    """Ask every technique whether it can serve a run of ``num_inference_steps`` (``ValueError`` if not)."""
    for _, technique in _techniques(target):
        technique.check_run(num_inference_steps)


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


def check_parallel(role: str, model, entries, *, ring: int, ulysses: int) -> None:
    """``ValueError`` when one of ``entries`` (``(technique class, config)`` pairs: every technique the
    transformer ``model`` will hold) refuses context parallelism over ``ring × ulysses`` ranks."""
    names = frozenset(cls.name for cls, _ in entries)
    for cls, config in entries:
        why = cls.parallel_refusal(config, ring=ring, ulysses=ulysses, techniques=names)
        if why:
            raise ValueError(f"{cls.config_type.__name__} cannot run on {role} ({type(model).__name__}) under "
                             f"context parallelism (ulysses={ulysses}, ring={ring}): {why}")
