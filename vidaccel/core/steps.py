"""Which denoising step a transformer call belongs to, for techniques with per-step schedules."""

from __future__ import annotations

import torch

__all__ = ["StepTracker"]


class StepTracker:
    """The denoising step index of each transformer call, from its ``timestep``.

    With a pipeline, the index of the scheduler timestep nearest to the call's (every CFG branch and both Wan 2.2
    experts of one step get the same index) and the run's number of steps. For a bare transformer, distinct
    timesteps are counted; a rising timestep starts a new run, and the number of steps is unknown.

    Args:
        pipeline: the pipeline whose ``scheduler`` drives the calls, or ``None``.
    """

    def __init__(self, pipeline=None):
        self.pipeline = pipeline
        self.reset()

    def reset(self) -> None:
        self._last_t: float | None = None
        self._bare_step = 0

    def _timesteps(self) -> torch.Tensor | None:
        timesteps = getattr(getattr(self.pipeline, "scheduler", None), "timesteps", None)
        return timesteps if isinstance(timesteps, torch.Tensor) and timesteps.numel() else None

    def step(self, timestep) -> int:
        """The step index of a call with ``timestep`` (a number or a tensor; its largest entry counts)."""
        t = float(timestep.detach().float().max()) if isinstance(timestep, torch.Tensor) else float(timestep or 0.0)
        timesteps = self._timesteps()
        if timesteps is not None:
            return int((timesteps.detach().float().cpu() - t).abs().argmin())
        if self._last_t is None or t > self._last_t:
            self._bare_step = 0
        elif t != self._last_t:
            self._bare_step += 1
        self._last_t = t
        return self._bare_step

    def total(self) -> int | None:
        """Steps of the current run (``None`` without a pipeline whose scheduler is set)."""
        timesteps = self._timesteps()
        return None if timesteps is None else int(timesteps.numel())
