"""A benchmark configuration: how to switch it on for a run and off again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


__all__ = ["BenchConfig"]


@dataclass
class BenchConfig:
    """One configuration: how to switch it on for a run and off again afterwards.

    Args:
        name: label in the report.
        enable: ``enable(pipe)`` called before each of its runs.
        disable: ``disable(pipe)`` called after each of its runs; must restore the baseline exactly.
        kind: ``"vidaccel"`` or ``"peer"``.
        prepare: optional ``prepare(pipe, call, call_kwargs)`` run once before timing (e.g. MagCache
            calibration); ``call()`` runs the pipeline on the first prompt and seed with ``call_kwargs``.
    """

    name: str
    enable: Callable[[Any], None]
    disable: Callable[[Any], None]
    kind: str = "vidaccel"
    prepare: Callable[[Any, Callable[[], Any], dict], None] | None = None

    @classmethod
    def from_configs(cls, name: str, *configs) -> "BenchConfig":
        """A vidaccel configuration made of technique configs (or preset names)."""
        from ..api import apply, remove

        return cls(name=name, enable=lambda pipe: apply(pipe, *configs), disable=lambda pipe: remove(pipe))
