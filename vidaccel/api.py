"""``apply`` / ``remove`` / ``stats`` / ``reset``: the public entry points over the technique registry."""

from __future__ import annotations

import logging
from typing import Any

from .core import technique as registry
from .core.concurrency import exclusive
from .core.context_parallel import cp_config
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

    All or nothing: when any technique fails to attach (on any expert), every technique this call attached is
    detached again and the exception propagates; the target is exactly as it was, pipeline class included.

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
    accepts = getattr(pipeline, "vidaccel_accepts", None)  # a pipeline that runs only some techniques refuses here
    if accepts is not None:
        for (cfg, _), cls in zip(plan, classes):
            accepts(cfg, cls)
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
        cp = cp_config(model)
        if cp is not None:
            entries = [(type(t), t.config) for t in registry.attached(model).values()]
            entries += [(cls, cfg) for cls, (cfg, roles) in zip(classes, plan) if role in roles]
            registry.check_parallel(role, model, entries, ring=cp.ring_degree, ulysses=cp.ulysses_degree)
    attached: list[tuple[Any, registry.Technique]] = []
    with exclusive(m for _, m in models):  # not while a call on another thread uses these transformers
        try:
            for (cfg, roles), cls in zip(plan, classes):
                for role, model in models:
                    if role not in roles:
                        continue
                    # a technique's attach validates before it changes anything, so a failing one has nothing
                    # to undo; the ones attached before it are detached below
                    technique = cls(model, cfg, family_for(model), role=role, pipeline=pipeline)
                    technique.attach()
                    registry.record(model, technique)
                    attached.append((model, technique))
        except BaseException:
            for model, technique in reversed(attached):
                technique.detach()
                registry.forget(model, technique)
            raise
    if pipeline is not None and plan:
        accelerate_pipeline_class(pipeline)
    return target


def remove(target, *config_types: type):
    """Remove techniques (all of them when no types are given) and return ``target``.

    Afterwards the transformer computes bit-identical outputs to one that never had them, in the dtype and on the
    device it has now (a model moved with ``.to()`` after ``apply`` gets its original layers back in its current
    dtype and device). Techniques applied after a removed one are detached and re-attached in order, so each
    always sees the model it was first applied to.

    All or nothing: when a technique that would have to be detached cannot be (quantization loaded from a
    checkpoint has no original weights), ``ValueError`` names it and nothing is removed; remove only the
    techniques applied after it instead (e.g. ``vidaccel.remove(pipe, vidaccel.CacheConfig)``).
    """
    for cls in config_types:
        if not isinstance(cls, type):
            raise ValueError(f"remove() takes config types such as vidaccel.CacheConfig, got {cls!r}")
    names = {technique_for_type(cls).name for cls in config_types}
    models = pipeline_transformers(target)
    plans = []
    for role, model in models:
        order = list(registry.attached(model).values())
        doomed = [t for t in order if not names or t.name in names]
        if not doomed:
            continue
        touched = order[order.index(doomed[0]):]
        for t in touched:
            reason = t.removable()
            if reason is not None:
                later = [u.config_type.__name__ for u in order[order.index(t) + 1:]]
                hint = (f"; remove only what was applied after it: vidaccel.remove(target, {', '.join(later)})"
                        if later else "")
                raise ValueError(f"cannot remove {sorted(u.name for u in doomed)} from the {role}: technique "
                                 f"{t.name!r} {'is one of them' if t in doomed else 'must be detached first'} and "
                                 f"{reason}; nothing was removed{hint}")
        plans.append((model, touched, doomed))
    with exclusive(m for _, m in models):
        for model, touched, doomed in plans:
            for t in reversed(touched):
                t.detach()
                registry.forget(model, t)  # the table follows each step, so it tells the truth if one fails
            for t in touched:
                if t not in doomed:
                    t.attach()
                    registry.record(model, t)
    if _is_pipeline(target) and not any(registry.attached(m) for _, m in models):
        restore_pipeline_class(target)
    return target
