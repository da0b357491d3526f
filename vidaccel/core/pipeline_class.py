"""The per-call bookkeeping that makes a diffusers video pipeline a vidaccel pipeline.

A vidaccel pipeline is its diffusers class with two additions:

* every ``__call__`` first resets the state of every applied technique (no state leaks between calls),
  and tells the techniques when the call ended;
* ``pipe.last_run`` records seconds per stage (text encoding, preparation, denoising, decoding), the
  number of steps and :func:`vidaccel.stats` of the call.

Stages are timed at the pipeline's own boundaries: ``encode_prompt`` and the denoising loop's
progress bar, so no diffusers code is copied and every variant (T2V, I2V, V2V) is covered.
:func:`vidaccel.apply` switches a plain diffusers pipeline instance to such a subclass of its own class
(``isinstance`` still holds) and :func:`vidaccel.remove` switches it back.
"""

from __future__ import annotations

import inspect
import time

import torch

from ..families import pipeline_transformers
from . import technique as registry
from .concurrency import exclusive

__all__ = ["AcceleratedPipelineMixin", "accelerate_pipeline_class", "restore_pipeline_class",
           "accelerated_class_for", "register_accelerated_class", "call_defaults"]


def call_defaults(pipe_or_class) -> dict:
    """``{parameter: default}`` of the pipeline's own ``__call__`` (the diffusers one under vidaccel's wrapper)."""
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    for klass in cls.__mro__:
        if "__call__" in klass.__dict__ and not issubclass(klass, AcceleratedPipelineMixin):
            params = inspect.signature(klass.__dict__["__call__"]).parameters
            return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {}


def _sync(pipe) -> float:
    device = getattr(pipe, "_execution_device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _TimedBar:
    """Wraps the denoising loop's progress bar to record when the loop starts and ends."""

    def __init__(self, bar, pipe):
        self._bar = bar
        self._pipe = pipe

    def __enter__(self):
        self._pipe._vidaccel_marks["denoise_start"] = _sync(self._pipe)
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._pipe._vidaccel_marks["denoise_end"] = _sync(self._pipe)
        return self._bar.__exit__(*exc)

    def update(self, n: int = 1):
        self._pipe._vidaccel_marks["steps"] = self._pipe._vidaccel_marks.get("steps", 0) + n
        return self._bar.update(n)

    def __iter__(self):
        return iter(self._bar)

    def __getattr__(self, name):
        return getattr(self._bar, name)


class AcceleratedPipelineMixin:
    """Mixed in front of a diffusers pipeline class (see the module docstring)."""

    last_run: dict | None = None

    def encode_prompt(self, *args, **kwargs):
        marks = getattr(self, "_vidaccel_marks", None)
        if marks is None:
            return super().encode_prompt(*args, **kwargs)
        start = _sync(self)
        try:
            return super().encode_prompt(*args, **kwargs)
        finally:
            marks["text_encoding"] = marks.get("text_encoding", 0.0) + _sync(self) - start

    def progress_bar(self, iterable=None, total=None):
        bar = super().progress_bar(iterable=iterable, total=total)
        if getattr(self, "_vidaccel_marks", None) is None or iterable is not None:
            return bar
        return _TimedBar(bar, self)

    def __deepcopy__(self, memo):
        """As ``copy.deepcopy`` copies any object, except that the techniques of the copied transformers attach
        after the whole pipeline is copied (a technique may read the pipeline while attaching)."""
        import copy

        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        outer = registry.DEFERRED_ATTACH_KEY not in memo
        deferred = memo.setdefault(registry.DEFERRED_ATTACH_KEY, [])
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        if outer:
            del memo[registry.DEFERRED_ATTACH_KEY]
            for twin in deferred:
                registry.attach_copy(twin)
        return clone

    def __call__(self, *args, **kwargs):
        models = [m for _, m in pipeline_transformers(self) if registry.attached(m)]
        with exclusive(models):  # calls sharing an accelerated transformer run one at a time (core.concurrency)
            return self._accelerated_call(args, kwargs)

    def _accelerated_call(self, args, kwargs):
        steps = kwargs.get("num_inference_steps", call_defaults(self).get("num_inference_steps"))
        if kwargs.get("timesteps") is None and kwargs.get("sigmas") is None:
            registry.check_run(self, steps if isinstance(steps, int) else None)  # before any work
        registry.reset(self)
        self._vidaccel_marks = marks = {}
        start = _sync(self)
        try:
            output = super().__call__(*args, **kwargs)
        finally:
            end = _sync(self)
            self._vidaccel_marks = None
        d0 = marks.get("denoise_start", end)
        d1 = marks.get("denoise_end", end)
        text = marks.get("text_encoding", 0.0)
        registry.finish_run(self)
        self.last_run = {
            "text_encoding_s": text,
            "preparation_s": max(d0 - start - text, 0.0),
            "denoising_s": d1 - d0,
            "decoding_s": end - d1,
            "total_s": end - start,
            "steps": marks.get("steps", 0),
            "techniques": registry.applied(self),
            "stats": registry.stats(self),
        }
        return output


# diffusers class -> its vidaccel subclass. The explicit drop-in classes register themselves here;
# other variants get a subclass made on first use.
_ACCELERATED: dict[type, type] = {}


def register_accelerated_class(base: type, accelerated: type) -> None:
    _ACCELERATED[base] = accelerated


def accelerated_class_for(base: type) -> type:
    if issubclass(base, AcceleratedPipelineMixin):
        return base
    cls = _ACCELERATED.get(base)
    if cls is None:
        cls = type(base.__name__, (AcceleratedPipelineMixin, base), {"__module__": __name__, "__doc__": base.__doc__})
        _ACCELERATED[base] = cls
    return cls


def accelerate_pipeline_class(pipe, owner: str = "apply") -> None:
    """Switch a plain diffusers pipeline instance to its vidaccel subclass (``isinstance`` still holds).

    Each ``owner`` (``"apply"``, ``"bench"``...) holds the switch until it calls
    :func:`restore_pipeline_class`; the original class comes back when no owner holds it any more.
    Pipelines created as vidaccel classes are never switched.
    """
    base = type(pipe)
    holds = pipe.__dict__.get("_vidaccel_class_holds")
    if holds is None:
        if issubclass(base, AcceleratedPipelineMixin):
            return
        holds = set()
        object.__setattr__(pipe, "_vidaccel_class_holds", holds)
        object.__setattr__(pipe, "_vidaccel_original_class", base)
        pipe.__class__ = accelerated_class_for(base)
    holds.add(owner)


def restore_pipeline_class(pipe, owner: str = "apply") -> None:
    """Release ``owner``'s hold; the last release restores the original diffusers class."""
    holds = pipe.__dict__.get("_vidaccel_class_holds")
    if holds is None:
        return
    holds.discard(owner)
    if not holds:
        pipe.__class__ = pipe.__dict__.pop("_vidaccel_original_class")
        del pipe.__dict__["_vidaccel_class_holds"]
        pipe.__dict__.pop("last_run", None)
