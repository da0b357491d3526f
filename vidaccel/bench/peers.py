"""The peers vidaccel is measured against, as benchmark configurations: diffusers' cache hooks and cache-dit."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from typing import Any, Callable

from .config import BenchConfig

__all__ = ["PEERS", "peer_first_block_cache", "peer_taylorseer", "peer_magcache", "peer_cache_dit"]


def _transformers(pipe):
    from ..families import pipeline_transformers

    return [m for _, m in pipeline_transformers(pipe)]


def _diffusers_cache(name: str, make_config: Callable[[], Any]) -> BenchConfig:
    def enable(pipe):
        for model in _transformers(pipe):
            model.enable_cache(make_config())

    def disable(pipe):
        for model in _transformers(pipe):
            model.disable_cache()

    return BenchConfig(name=name, enable=enable, disable=disable, kind="peer")


def peer_first_block_cache(threshold: float = 0.05) -> BenchConfig:
    from diffusers import FirstBlockCacheConfig

    return _diffusers_cache(f"diffusers-fbc:{threshold:g}", lambda: FirstBlockCacheConfig(threshold=threshold))


def peer_taylorseer(cache_interval: int = 5) -> BenchConfig:
    from diffusers import TaylorSeerCacheConfig

    # diffusers' defaults match no Wan module name; point it at the blocks explicitly.
    return _diffusers_cache(
        f"diffusers-taylorseer:{cache_interval}",
        lambda: TaylorSeerCacheConfig(cache_interval=cache_interval, disable_cache_before_step=3, max_order=1,
                                      cache_identifiers=[r"blocks\.\d+", r"transformer_blocks\.\d+"],
                                      taylor_factors_dtype=None),
    )


class _RatioCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.ratios: list[list[float]] = []

    def emit(self, record):
        message = record.getMessage()
        if "Calibration Results:" in message:
            self.ratios.append(json.loads(message.split("Calibration Results:", 1)[1]))


def peer_magcache(threshold: float = 0.06) -> BenchConfig:
    """diffusers MagCache with magnitude ratios calibrated on this pipeline (first prompt and seed)."""
    from diffusers import MagCacheConfig

    state: dict[str, Any] = {}

    def prepare(pipe, call, call_kwargs):
        steps = call_kwargs.get("num_inference_steps", 50)
        capture = _RatioCapture()
        mag_logger = logging.getLogger("diffusers.hooks.mag_cache")
        level = mag_logger.level
        mag_logger.addHandler(capture)
        mag_logger.setLevel(logging.INFO)
        try:
            for model in _transformers(pipe):
                model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
            with contextlib.redirect_stdout(io.StringIO()):
                call()
        finally:
            for model in _transformers(pipe):
                model.disable_cache()
            mag_logger.removeHandler(capture)
            mag_logger.setLevel(level)
        if not capture.ratios:
            raise RuntimeError("MagCache calibration produced no ratios")
        state["ratios"] = capture.ratios[0]
        state["steps"] = steps

    def enable(pipe):
        for model in _transformers(pipe):
            model.enable_cache(MagCacheConfig(threshold=threshold, mag_ratios=state["ratios"],
                                              num_inference_steps=state["steps"]))

    def disable(pipe):
        for model in _transformers(pipe):
            model.disable_cache()

    return BenchConfig(name=f"diffusers-magcache:{threshold:g}", enable=enable, disable=disable, kind="peer",
                       prepare=prepare)


def peer_cache_dit(threshold: float = 0.08) -> BenchConfig:
    """cache-dit's DBCache, ``enable_cache(pipe)``, as F1B0 (first block computed, none at the back) with the
    same 2 warm-up steps vidaccel's presets use (its default 8 would cap any speed-up at short step counts)."""
    try:
        import cache_dit
    except ImportError as e:
        raise ValueError("config 'cache-dit' needs the cache-dit package (pip install cache-dit)") from e
    logging.getLogger("cache_dit").setLevel(logging.WARNING)

    def enable(pipe):
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=2))

    def disable(pipe):
        cache_dit.disable_cache(pipe)

    return BenchConfig(name=f"cache-dit:{threshold:g}", enable=enable, disable=disable, kind="peer")


def _threshold(text: str) -> float:
    """A peer's threshold: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"threshold {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"threshold={value:g} is not allowed: it must be a finite number >= 0")
    return value


def _interval(text: str) -> int:
    """A peer's cache interval: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"cache_interval {text!r} is not an integer") from None
    if not 1 <= value <= 10_000:
        raise ValueError(f"cache_interval={value} is not allowed: it must be an integer in [1, 10000]")
    return value


PEERS: dict[str, tuple[Callable[..., BenchConfig], Callable[[str], Any], str]] = {
    "fbc": (peer_first_block_cache, _threshold, "diffusers FirstBlockCache, fbc[:threshold]"),
    "magcache": (peer_magcache, _threshold, "diffusers MagCache calibrated here, magcache[:threshold]"),
    "taylorseer": (peer_taylorseer, _interval, "diffusers TaylorSeer, taylorseer[:cache_interval]"),
    "cache-dit": (peer_cache_dit, _threshold, "cache-dit DBCache F1B0, cache-dit[:threshold] (if installed)"),
}
