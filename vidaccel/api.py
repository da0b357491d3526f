"""``apply`` / ``remove`` / ``stats`` / ``reset``: the public entry points over the technique registry."""

from __future__ import annotations

import logging
from typing import Any

from .core import technique as registry
from .core.pipeline_class import accelerate_pipeline_class, restore_pipeline_class
from .accel import resolve_accel
from .core.presets import expand_roles
from .core.technique import applied, finish_run, reset, stats, technique_for, technique_for_type
from .families import family_for, pipeline_transformers

logger = logging.getLogger(__name__)

__all__ = ["apply", "remove", "stats", "reset", "applied", "finish_run"]


def _is_pipeline(target) -> bool:
    from torch import nn

    return not isinstance(target, nn.Module)


def apply(target, *configs: Any):
    """Apply technique configs to a pipeline or a bare transformer, in place, and return ``target``.

    Args:
        target: a diffusers Wan / CogVideoX pipeline (every variant; both Wan 2.2 experts get each technique)
            or a bare ``WanTransformer3DModel`` / ``CogVideoXTransformer3DModel``.
        *configs: technique configs (``vidaccel.CacheConfig(...)``, ...), preset names (``"fast"``), preset
            files (``"tuned.json"``, as ``vidaccel tune`` writes) or configs per transformer role,
            ``{"transformer": [...], "transformer_2": [...]}`` (Wan 2.2: the high-noise expert is
            ``transformer``, the low-noise one ``transformer_2``; each role gets only its own configs).

    A plain diffusers pipeline is switched to vidaccel's subclass of its own class (``isinstance`` still
    holds), so every call resets technique state and records ``pipe.last_run``; :func:`remove` switches it
    back once nothing is applied.

    Raises:
        ValueError: unknown config type, unsupported model class, a technique that is already applied, a
            malformed preset file, or per-role configs for a role the target does not have.

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
    plan = expand_roles(configs_list, [role for role, _ in models])
    classes = [technique_for(c) for c, _ in plan]
    for role, model in models:
        names = [cls.name for cls, (_, roles) in zip(classes, plan) if role in roles]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"the same technique was given more than once in one apply call: {sorted(dup)}")
        for name, cls in {cls.name: cls for cls, (_, roles) in zip(classes, plan) if role in roles}.items():
            if name in registry.attached(model):
                raise ValueError(
                    f"technique {name!r} is already applied to {role} ({type(model).__name__}); "
                    f"call vidaccel.remove(target, {cls.config_type.__name__}) first"
                )
    for (cfg, roles), cls in zip(plan, classes):
        attached: list[tuple[Any, registry.Technique]] = []
        try:
            for role, model in models:
                if role not in roles:
                    continue
                technique = cls(model, cfg, family_for(model), role=role, pipeline=pipeline)
                technique.attach()
                registry.record(model, technique)
                attached.append((model, technique))
        except Exception:
            for model, technique in reversed(attached):
                technique.detach()
                registry.forget(model, technique)
            raise
    if pipeline is not None and plan:
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
        table = registry.attached(model)
        order = list(table.values())
        doomed = [t for t in order if not names or t.name in names]
        if not doomed:
            continue
        first = order.index(doomed[0])
        for t in reversed(order[first:]):
            t.detach()
        for t in order[first:]:
            del table[t.name]
        for t in order[first:]:
            if t not in doomed:
                t.attach()
                table[t.name] = t
    if _is_pipeline(target) and not any(registry.attached(m) for _, m in pipeline_transformers(target)):
        restore_pipeline_class(target)
    return target
