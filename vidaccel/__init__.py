"""vidaccel: make Wan and CogVideoX video diffusion fast, measured beside its quality.

Three ways in:

* drop-in pipelines: ``from vidaccel.pipelines import WanPipeline`` (``from_pretrained(..., accel=...)``);
* ``vidaccel.apply(pipe_or_transformer, *configs)`` / ``vidaccel.remove(...)`` / ``vidaccel.stats(...)``
  on any diffusers Wan / CogVideoX pipeline or bare transformer;
* the ``vidaccel`` command line (``vidaccel generate``, ``vidaccel bench``, ``vidaccel info``).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accel  # noqa: F401  (registers every technique and preset)
from .api import applied, apply, finish_run, remove, reset, stats
from .presets import available_presets, register_preset
from .specs import MODEL_SPECS, ModelSpec, spec_for

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "apply",
    "remove",
    "stats",
    "reset",
    "applied",
    "finish_run",
    "load_pipeline",
    "available_presets",
    "register_preset",
    "MODEL_SPECS",
    "ModelSpec",
    "spec_for",
]
__all__ += accel.__all__

# Heavy imports (diffusers, transformers) happen on first use.
_LAZY = {
    "load_pipeline": ("vidaccel.loading", "load_pipeline"),
    "pipelines": ("vidaccel.pipelines", None),
    "testing": ("vidaccel.testing", None),
    "bench": ("vidaccel.bench", None),
    "metrics": ("vidaccel.metrics", None),
    "eval": ("vidaccel.eval", None),
    "models": ("vidaccel.models", None),
    "kernels": ("vidaccel.kernels", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    if name in accel.__all__:
        return getattr(accel, name)
    raise AttributeError(f"module 'vidaccel' has no attribute {name!r}")
