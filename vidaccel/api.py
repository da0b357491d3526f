"""``apply`` / ``remove`` / ``stats`` / ``reset``: the public entry points over the technique registry."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .accel.base import Technique, technique_for, technique_for_type
from .presets import resolve_accel
from .specs import pipeline_transformers, spec_for

logger = logging.getLogger(__name__)

__all__ = ["apply", "remove", "stats", "reset", "applied", "finish_run"]

_ATTR = "_vidaccel_techniques"  # on each transformer: {technique name: Technique}, in application order


def _stack(model: nn.Module) -> dict[str, Technique]:
    stack = getattr(model, _ATTR, None)
    if stack is None:
        stack = {}
        # object.__setattr__ keeps the dict out of nn.Module's registries (no state_dict / parameter impact).
        object.__setattr__(model, _ATTR, stack)
    return stack


def _is_pipeline(target) -> bool:
    return not isinstance(target, nn.Module)


def apply(target, *configs: Any):
    """Apply technique configs to a pipeline or a bare transformer, in place, and return ``target``.

    Args:
        target: a diffusers Wan / CogVideoX pipeline (every variant; both Wan 2.2 experts get each technique)
            or a bare ``WanTransformer3DModel`` / ``CogVideoXTransformer3DModel``.
        *configs: technique configs (``vidaccel.CacheConfig(...)``, ...) or preset names (``"fast"``).

    A plain diffusers pipeline is switched to vidaccel's subclass of its own class (``isinstance`` still
    holds), so every call resets technique state and records ``pipe.last_run``; :func:`remove` switches it
    back once nothing is applied.

    Raises:
        ValueError: unknown config type, unsupported model class, or a technique that is already applied.

    Example::

        pipe = vidaccel.apply(pipe, vidaccel.CacheConfig(threshold=0.1))
        video = pipe("a red circle moving right on a black background").frames[0]
        print(vidaccel.stats(pipe))
        vidaccel.remove(pipe)
    """
    configs_list = resolve_accel(list(configs))
    models = pipeline_transformers(target)
    pipeline = target if _is_pipeline(target) else None
    # Validate everything before touching anything, so a failing call leaves the target unchanged.
    classes = [technique_for(c) for c in configs_list]
    names = [cls.name for cls in classes]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"the same technique was given more than once in one apply call: {sorted(dup)}")
    for role, model in models:
        for cls in classes:
            if cls.name in _stack(model):
                raise ValueError(
                    f"technique {cls.name!r} is already applied to {role} ({type(model).__name__}); "
                    f"call vidaccel.remove(target, {cls.config_type.__name__}) first"
                )
    for cfg, cls in zip(configs_list, classes):
        attached: list[tuple[nn.Module, Technique]] = []
        try:
            for role, model in models:
                technique = cls(model, cfg, spec_for(model), role=role, pipeline=pipeline)
                technique.attach()
                _stack(model)[cls.name] = technique
                attached.append((model, technique))
        except Exception:
            for model, technique in reversed(attached):
                technique.detach()
                _stack(model).pop(technique.name, None)
            raise
    if pipeline is not None and configs_list:
        from .pipelines.base import accelerate_pipeline_class

        accelerate_pipeline_class(pipeline)
    return target


def remove(target, *config_types: type):
    """Remove techniques (all of them when no types are given) and return ``target``.

    Afterwards the transformer computes bit-identical outputs to one that never had them.
    Techniques applied after a removed one are detached and re-attached in order, so each always sees the
    model it was first applied to.
    """
    for cls in config_types:
        if not isinstance(cls, type):
            raise ValueError(f"remove() takes config types such as vidaccel.CacheConfig, got {cls!r}")
    names = {technique_for_type(cls).name for cls in config_types}
    for _, model in pipeline_transformers(target):
        stack = _stack(model)
        order = list(stack.values())
        doomed = [t for t in order if not names or t.name in names]
        if not doomed:
            continue
        first = order.index(doomed[0])
        for t in reversed(order[first:]):
            t.detach()
        for t in order[first:]:
            del stack[t.name]
        for t in order[first:]:
            if t not in doomed:
                t.attach()
                stack[t.name] = t
    if _is_pipeline(target) and not any(_stack(m) for _, m in pipeline_transformers(target)):
        from .pipelines.base import restore_pipeline_class

        restore_pipeline_class(target)
    return target


def applied(target) -> list[str]:
    """Names of the techniques applied to ``target`` (to any of its transformers), in order."""
    names: list[str] = []
    for _, model in pipeline_transformers(target):
        names.extend(n for n in _stack(model) if n not in names)
    return names


def _techniques(target):
    for role, model in pipeline_transformers(target):
        for technique in _stack(model).values():
            yield role, technique


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
