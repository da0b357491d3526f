"""``ParallelConfig``: how many GPUs share one video (cheap to import: no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ParallelConfig", "as_parallel_config"]


def _degree(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ParallelConfig.{name}={value!r} is not allowed: it must be an int >= 1 (GPUs)")
    return value


@dataclass(frozen=True)
class ParallelConfig:
    """Context parallelism for one video over ``ulysses * ring`` processes (one per GPU), on diffusers'
    ``enable_parallelism``.

    Args:
        ulysses: Ulysses degree: an all-to-all before and after every self-attention gives each rank the whole
            sequence for ``heads / ulysses`` heads (the head count must divide by it). Fastest on NVLink.
        ring: ring degree: each rank keeps its slice of the queries and meets every rank's keys in turn,
            merging partial results by their log-sum-exp (needs a backend that returns it: ``auto`` picks
            vidaccel's flash kernel).
        attention: backend of the self-attention layers no technique replaces: ``"auto"`` (keep the model's for
            Ulysses; ``vidaccel_flash`` for ring where the model's backend cannot return the log-sum-exp) or a
            diffusers backend name that supports context parallelism (``"vidaccel_flash"``, ``"flash"``...).

    The video's tokens (and CogVideoX's text tokens) must divide evenly by ``ulysses * ring``.

    Example::

        pipe = vidaccel.load_pipeline("Wan-AI/Wan2.1-T2V-14B-Diffusers", parallel=ParallelConfig(ulysses=4))
    """

    ulysses: int = 1
    ring: int = 1
    attention: str = "auto"

    def __post_init__(self):
        _degree("ulysses", self.ulysses)
        _degree("ring", self.ring)
        if self.ulysses * self.ring < 2:
            raise ValueError(f"ParallelConfig(ulysses={self.ulysses}, ring={self.ring}) is not allowed: at least one "
                             "degree must be > 1 (use parallel=None for one process)")
        if not isinstance(self.attention, str) or not self.attention:
            raise ValueError(f"ParallelConfig.attention={self.attention!r} is not allowed: use 'auto' or a diffusers "
                             "attention backend name that supports context parallelism")

    @property
    def degree(self) -> int:
        """Processes sharing one video: ``ulysses * ring``."""
        return self.ulysses * self.ring


def as_parallel_config(value: Any) -> ParallelConfig | None:
    """``None``, a :class:`ParallelConfig`, a dict of its fields, or an int (Ulysses degree) → config or None."""
    if value is None or isinstance(value, ParallelConfig):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"ulysses", "ring", "attention"}
        if unknown:
            raise ValueError(f"parallel={value!r} has unknown keys {sorted(unknown)}; allowed: ulysses, ring, "
                             "attention")
        return ParallelConfig(**value)
    if isinstance(value, int) and not isinstance(value, bool):
        return ParallelConfig(ulysses=value)
    raise ValueError(f"parallel={value!r} is not allowed: use None, vidaccel.parallel.ParallelConfig(ulysses=.., "
                     "ring=..), a dict of those fields, or an int (the Ulysses degree)")
