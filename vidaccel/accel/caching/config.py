"""``CacheConfig`` and the caching presets (see :mod:`vidaccel.accel.caching` for the policies)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...core.presets import register_preset
from ...core.validation import bad_value, check_choice, check_int, check_number

__all__ = ["CacheConfig", "POLICIES", "RunSettings", "run_settings"]

POLICIES = ("block", "step", "profiled", "call")


@dataclass
class CacheConfig:
    """Feature caching (see the module docstring for the policies).

    Args:
        threshold: skip budget, a relative L1 change; larger is faster. ``0.0`` never skips (bit-identical
            to no cache). For ``"call"`` the tolerated output error per skipped stretch (see the module
            docstring).
        policy: ``"block"``, ``"step"``, ``"profiled"`` or ``"call"``.
        forecast_order: 0 reuses a skipped residual as is; 1 or 2 forecasts it (Taylor in the step index).
        compute_front: blocks always computed before the skippable ones (default: 1 for ``"block"`` and
            ``"profiled"``, 0 for ``"step"``; ``"call"`` skips whole calls and takes no blocks).
        compute_back: blocks always computed after the skippable ones (default 0).
        warmup_steps: first calls of every CFG branch / expert that always compute (≥ 2 for ``"step"``
            and ``"profiled"``, which learn from them).
        max_consecutive_skips: cap on skipped calls in a row (≥ 1; ``"call"`` uses ``interval``).
        final_steps: last denoising steps that always compute.
        cache_ratio: ``"profiled"`` only: fraction of the skippable blocks that are cached.
        cfg_interval: 0 (off) or ≥ 2: sequential-CFG models only (Wan); the unconditional branch computes
            its skippable blocks every ``cfg_interval``-th call and otherwise reuses the conditional
            branch's residual plus the last measured difference. ``"block"`` and ``"step"`` only.
        interval: ``"call"`` only: the longest gap between computed calls, i.e. at most ``interval − 1``
            skipped calls in a row (≥ 1; 1 never skips).
        interval_growth: ``"call"`` only: the longest gap grows by this many calls after each computed call
            past the warm-up (the ``k``-th gap after it is at most ``interval + k · interval_growth``, rounded
            half up): short gaps while the video takes shape, long ones once it only sharpens. ``0`` (default)
            keeps every gap at ``interval``. On the embedded model, 6 computed steps of 25 with growing gaps
            (``interval=2, warmup_steps=2, interval_growth=2``: steps 0, 1, 3, 7, 13, 21) were faster and kept
            more PSNR than the ``fast`` preset's 7 evenly spaced ones (``benchmarks/caching.py``; figures in
            ``benchmarks/RESULTS.md``).
        num_inference_steps: only for bare transformers driven without a pipeline or cache context, so the
            final-step guard knows where the end is.
        tuned_steps: the run length the schedule was chosen for (the presets: 25 steps). A shorter run scales
            ``warmup_steps`` and ``interval`` down in proportion (see :func:`run_settings`).

    Few-step runs (distilled 4-step models, causal chunks): when a run is too short for the guards (or shorter
    than ``tuned_steps``), the run uses scaled settings, or no caching at all, and logs one warning saying so;
    see :func:`run_settings`.
    """

    threshold: float = 0.1
    policy: str = "block"
    forecast_order: int = 0
    compute_front: int | None = None
    compute_back: int = 0
    warmup_steps: int = 2
    max_consecutive_skips: int = 3
    final_steps: int = 1
    cache_ratio: float = 0.5
    cfg_interval: int = 0
    interval: int = 4
    interval_growth: float = 0.0
    num_inference_steps: int | None = None
    tuned_steps: int | None = None

    _technique_module: ClassVar[str] = "vidaccel.accel.caching.technique"

    def __post_init__(self):
        o = "CacheConfig"
        self.threshold = check_number(o, "threshold", self.threshold, lo=0, allow_inf=True)
        self.policy = check_choice(o, "policy", self.policy, POLICIES)
        self.forecast_order = check_int(o, "forecast_order", self.forecast_order, lo=0, hi=2)
        self.compute_front = check_int(o, "compute_front", self.compute_front, lo=0, optional=True)
        if self.compute_front is None:
            self.compute_front = 0 if self.policy in ("step", "call") else 1
        for name in ("compute_back", "warmup_steps", "final_steps"):
            setattr(self, name, check_int(o, name, getattr(self, name), lo=0))
        self.interval = check_int(o, "interval", self.interval, lo=1)
        growth = self.interval_growth
        self.interval_growth = check_number(o, "interval_growth", growth, lo=0)
        if self.interval_growth and self.policy != "call":
            raise bad_value(o, "interval_growth", growth, f"with policy={self.policy!r}: it grows the gaps of "
                                                          "policy='call'; leave it at 0")
        self.max_consecutive_skips = check_int(o, "max_consecutive_skips", self.max_consecutive_skips, lo=1)
        self.cache_ratio = check_number(o, "cache_ratio", self.cache_ratio, lo=0, hi=1, lo_open=True)
        self.cfg_interval = check_int(o, "cfg_interval", self.cfg_interval, lo=0)
        if self.cfg_interval == 1:
            raise bad_value(o, "cfg_interval", 1, "use 0 (off) or an integer >= 2")
        self.num_inference_steps = check_int(o, "num_inference_steps", self.num_inference_steps, lo=1, optional=True)
        self.tuned_steps = check_int(o, "tuned_steps", self.tuned_steps, lo=1, optional=True)
        if self.policy == "call" and (self.compute_front or self.compute_back):
            field_ = "compute_front" if self.compute_front else "compute_back"
            raise ValueError(f"CacheConfig.{field_}={getattr(self, field_)} is not allowed with policy='call': "
                             "it skips whole transformer calls, so no block is computed apart; leave it at 0")
        if self.policy == "call" and self.warmup_steps < self.forecast_order + 2:
            raise ValueError(f"CacheConfig.warmup_steps={self.warmup_steps} is not allowed with policy='call' and "
                             f"forecast_order={self.forecast_order}: the error rate is first measured on call "
                             f"{self.forecast_order + 2}, so it needs >= {self.forecast_order + 2}")
        if self.policy in ("block", "profiled") and self.compute_front < 1:
            raise ValueError(f"CacheConfig.compute_front={self.compute_front} is not allowed with "
                             f"policy={self.policy!r}: its indicator needs at least 1 front block")
        if self.policy in ("step", "profiled") and self.warmup_steps < 2:
            raise ValueError(f"CacheConfig.warmup_steps={self.warmup_steps} is not allowed with policy="
                             f"{self.policy!r}: it learns from the warm-up calls, so it needs >= 2")
        if self.cfg_interval and self.policy in ("profiled", "call"):
            raise ValueError(f"CacheConfig.cfg_interval={self.cfg_interval} is not allowed with policy="
                             f"{self.policy!r} (it reuses the skippable span's residual); use policy='block' or "
                             "'step'")

    @property
    def min_warmup(self) -> int:
        """Fewest warm-up calls the policy can work with."""
        if self.policy == "call":
            return self.forecast_order + 2
        return 2 if self.policy in ("step", "profiled") else 1


@dataclass(frozen=True)
class RunSettings:
    """The guards one run of ``total_steps`` steps uses (``off``: it computes every call)."""

    warmup_steps: int
    interval: int
    off: bool
    interval_growth: float
    note: str | None  # why they differ from the config's, or None


def run_settings(config: CacheConfig, total_steps: int | None) -> RunSettings:
    """Warm-up and interval for a run of ``total_steps`` denoising steps.

    * ``total_steps < tuned_steps``: both scale by ``total_steps / tuned_steps`` (warm-up at least the policy's
      minimum, an interval above 1 at least 2), and so does ``interval_growth``;
    * warm-up leaving no call to skip (``warmup_steps >= total_steps - final_steps``): the policy's minimum;
    * still nothing to skip: caching is off for the run (bit-identical to no cache).
    """
    warmup, interval, growth = config.warmup_steps, config.interval, config.interval_growth
    if total_steps is None or config.threshold <= 0:
        return RunSettings(warmup, interval, False, growth, None)
    notes = []
    if config.tuned_steps is not None and total_steps < config.tuned_steps:
        ratio = total_steps / config.tuned_steps
        warmup = max(config.min_warmup, min(warmup, round(warmup * ratio)))
        interval = interval if interval <= 1 else max(2, min(interval, round(interval * ratio)))
        growth = growth * ratio
        notes.append(f"tuned for {config.tuned_steps} steps")
    available = total_steps - config.final_steps
    if warmup >= available:
        warmup = config.min_warmup
        notes.append(f"warmup_steps={config.warmup_steps} leaves no step to skip")
    if warmup >= available:
        return RunSettings(warmup, interval, True, growth,
                           f"caching is off for this {total_steps}-step run ({'; '.join(notes)}; the policy needs "
                           f"{config.min_warmup} warm-up calls + final_steps={config.final_steps})")
    if (warmup, interval, growth) == (config.warmup_steps, config.interval, config.interval_growth):
        return RunSettings(warmup, interval, False, growth, None)
    changed = [f"{name} {old:g} -> {new:g}" for name, old, new in (
        ("warmup_steps", config.warmup_steps, warmup), ("interval", config.interval, interval),
        ("interval_growth", config.interval_growth, growth)) if old != new]
    return RunSettings(warmup, interval, False, growth,
                       f"for this {total_steps}-step run {', '.join(changed)} ({'; '.join(notes)})")


# -- presets -------------------------------------------------------------------------------------------
# Whole-call caching on a fixed schedule: on the embedded model it was the fastest policy at every PSNR level of
# the caching sweep (benchmarks/caching.py; the presets' speed-up and PSNR are in benchmarks/RESULTS.md).
def _call_schedule(interval: int) -> CacheConfig:
    return CacheConfig(threshold=math.inf, policy="call", interval=interval, warmup_steps=3, final_steps=0,
                       tuned_steps=25)


register_preset("quality", lambda: [_call_schedule(2)],
                "feature caching, conservative (whole-call reuse on every 2nd call after 3 warm-up calls)")
register_preset("balanced", lambda: [_call_schedule(3)],
                "feature caching, balanced (whole-call reuse, 1 call in 3 computed after 3 warm-up calls)")
register_preset("fast", lambda: [_call_schedule(5)],
                "feature caching, aggressive (whole-call reuse, 1 call in 5 computed after 3 warm-up calls)")
