"""vidaccel: make Wan and CogVideoX video diffusion fast, measured beside its quality.

Three ways in:

* drop-in pipelines: ``from vidaccel.pipelines import WanPipeline`` (``from_pretrained(..., accel=...)``);
* ``vidaccel.apply(pipe_or_transformer, *configs)`` / ``vidaccel.remove(...)`` / ``vidaccel.stats(...)``
  on any diffusers Wan / CogVideoX pipeline or bare transformer;
* the ``vidaccel`` command line (``vidaccel generate``, ``vidaccel bench``, ``vidaccel tune``, ``vidaccel info``...);
* ``vidaccel.tune(pipe, prompts, budget="psnr=30")``: the fastest combination within a quality budget.

Everything loads on first use: ``import vidaccel`` imports neither diffusers nor transformers nor triton.

Layers, each importing only the ones before it: :mod:`vidaccel.families` (model facts) →
:mod:`vidaccel.core` (technique registry, processors, presets) → :mod:`vidaccel.accel` (techniques) and
:mod:`vidaccel.kernels` → :mod:`vidaccel.api` → :mod:`vidaccel.parallel` (several GPUs) →
:mod:`vidaccel.pipelines` → :mod:`vidaccel.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # technique configs and helpers
    "CacheConfig": "vidaccel.accel.caching",
    "SlidingWindowConfig": "vidaccel.accel.sliding_window",
    "QuantConfig": "vidaccel.accel.quantization",
    "LinearAttentionConfig": "vidaccel.accel.linear_attention",
    "QuantAttentionConfig": "vidaccel.accel.quant_attention",
    "FrameMergeConfig": "vidaccel.accel.frame_merge",
    "linearize": "vidaccel.accel.linear_attention",
    "save_quantized": "vidaccel.accel.quantization",
    "load_quantized": "vidaccel.accel.quantization",
    "load_quantized_transformer": "vidaccel.accel.quantization",
    "save_torchao": "vidaccel.accel.quantization",
    "load_quantized_checkpoint": "vidaccel.accel.quantization",
    "quant_report": "vidaccel.accel.quantization",
    "RollingKVCache": "vidaccel.pipelines.long_video",
    "Technique": "vidaccel.core.technique",
    "register_technique": "vidaccel.core.technique",
    # the API
    "apply": "vidaccel.api",
    "remove": "vidaccel.api",
    "stats": "vidaccel.api",
    "reset": "vidaccel.api",
    "applied": "vidaccel.api",
    "finish_run": "vidaccel.api",
    "load_pipeline": "vidaccel.loading",
    "ParallelConfig": "vidaccel.parallel",
    "available_presets": "vidaccel.accel",
    "register_preset": "vidaccel.accel",
    "FAMILIES": "vidaccel.families",
    "ModelFamily": "vidaccel.families",
    "family_for": "vidaccel.families",
}
_SUBMODULES = ("accel", "api", "bench", "core", "eval", "families", "kernels", "metrics", "models", "parallel",
               "pipelines", "testing", "tune", "video")

__all__ = ["__version__", "tune", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'vidaccel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
