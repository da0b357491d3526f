"""The thread policy: calls that share an accelerated transformer run one at a time.

Techniques keep per-call state on the transformer they are attached to (the feature cache's branch states and
cache context, step counters, SQNR probes). Two pipeline calls that share such a transformer (one pipeline
called from two threads, or two pipelines built on one transformer) would reset and overwrite each other's
state. So every vidaccel pipeline call (:class:`~vidaccel.core.pipeline_class.AcceleratedPipelineMixin`, the
long-video pipeline) holds a per-transformer re-entrant lock for the whole call, for every transformer that has
a technique attached: a second thread's call on the same transformer waits until the first has finished, and
both get the video a single-threaded run would give. Calls on different transformers (e.g. deep copies) run in
parallel. Locks are taken in a fixed order (by object id), so two calls over two shared experts cannot deadlock.

A call of the transformer from another thread while a vidaccel pipeline call holds it (a plain diffusers
pipeline built on the same transformer, or a hand-written loop) raises ``RuntimeError``
(:func:`foreign_call_guard`) instead of silently mixing the two calls' state. Hand-written loops that share one
accelerated transformer between threads without any vidaccel pipeline call are not detected: drive one loop per
transformer (``copy.deepcopy`` gives an independent one with its own techniques).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["ModelLock", "model_lock", "exclusive", "foreign_call_guard", "guarded_cache_context"]

_GUARD = threading.Lock()


class ModelLock:
    """A re-entrant lock that knows which thread holds it (``owner``)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._depth = 0
        self.owner: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._lock.acquire(blocking):
            return False
        self._depth += 1
        self.owner = threading.get_ident()
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.owner = None
        self._lock.release()


_LOCKS: "weakref.WeakKeyDictionary[object, ModelLock]" = weakref.WeakKeyDictionary()


def model_lock(model) -> ModelLock:
    """The lock of ``model`` (kept outside the model, so copying or saving it is unaffected)."""
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock


@contextlib.contextmanager
def exclusive(models: Iterable) -> Iterator[None]:
    """Hold the locks of ``models`` (each once, in a fixed order) for the block."""
    unique = {id(m): m for m in models}
    locks = [model_lock(unique[k]) for k in sorted(unique)]
    held: list[ModelLock] = []
    try:
        for lock in locks:
            if not lock.acquire(blocking=False):
                logger.info("another thread is running a call on a shared accelerated transformer; waiting for it")
                lock.acquire()
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()


def _check_owner(module) -> None:
    lock = _LOCKS.get(module)
    owner = lock.owner if lock is not None else None
    if owner is not None and owner != threading.get_ident():
        raise RuntimeError(f"this {type(module).__name__} has vidaccel techniques attached and is in the middle of a "
                           "vidaccel pipeline call on another thread; its techniques keep per-call state on it, so "
                           "its calls must not overlap: call it through vidaccel pipelines (they wait for each other) "
                           "or give each thread its own copy (copy.deepcopy(pipe))")


def foreign_call_guard(module, args) -> None:
    """Forward pre-hook on every transformer with techniques: a call from a thread other than the one running a
    vidaccel pipeline call on it (e.g. a plain diffusers pipeline sharing the transformer) would read and reset
    that call's technique state mid-run, so it is refused."""
    _check_owner(module)


def guarded_cache_context(module, name: str, **kwargs):
    """``module.cache_context`` while techniques are attached: diffusers keeps the current cache context on the
    transformer, so another thread's pipeline entering one mid-call would switch the running call's context; it
    is refused before it changes anything."""
    _check_owner(module)
    return type(module).cache_context(module, name, **kwargs)
