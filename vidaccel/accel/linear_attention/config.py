"""``LinearAttentionConfig`` (see :mod:`vidaccel.accel.linear_attention`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...kernels import backend_names
from .adapter import read_adapter_metadata

__all__ = ["LinearAttentionConfig", "ROPE_MODES", "FEATURE_MAP_NAMES", "DEFAULT_CALIBRATION_PROMPTS"]

ROPE_MODES = ("numerator", "none")
FEATURE_MAP_NAMES = backend_names.LINEAR_ATTENTION_FEATURE_MAPS
BACKENDS = backend_names.LINEAR_ATTENTION
#: Prompts used for layer selection when none are given (the embedded model's grammar).
DEFAULT_CALIBRATION_PROMPTS = ("a red circle moving right on a black background",
                               "a blue square moving left on a gray background")


def _bad(name: str, value, allowed: str) -> ValueError:
    sep = "; " if allowed.startswith("allowed") else ": "
    return ValueError(f"LinearAttentionConfig.{name}={value!r} is not allowed{sep}{allowed}")


@dataclass
class LinearAttentionConfig:
    """Swap chosen self-attention layers for linear attention.

    Args:
        layers: block indices to swap, or ``"auto"``: the ``num_layers`` least sensitive layers, measured on
            the pipeline's own trajectories when applied (needs a pipeline, not a bare transformer).
            ``[]`` swaps nothing (bit-identical to the baseline).
        num_layers: how many layers ``"auto"`` swaps (default: half, rounded down, at least 1); with an
            ``adapter``, how many of its layers to swap, least sensitive first by its ranking (default: all).
        feature_map: ``"hedgehog"`` (learnable; train it with :func:`linearize`), ``"elu"`` or ``"relu"``.
        rope: ``"numerator"`` (rotate the numerator's features with the layer's RoPE) or ``"none"``.
        backend: linear-attention backend: ``"auto"``, ``"triton"``, ``"torch"``.
        adapter: path of a safetensors adapter written by :func:`linearize`; it sets the layers (per
            transformer role), the feature map, RoPE mode and the trained parameters.
        calibration_prompts: prompts sampled for ``layers="auto"``.
        calibration_kwargs: pipeline call arguments for those samples (size, ``num_inference_steps``...);
            defaults to the embedded model's defaults when the pipeline has them.
        eps: added to the linear-attention denominator.
    """

    layers: Any = "auto"
    num_layers: int | None = None
    feature_map: str = "hedgehog"
    rope: str = "numerator"
    backend: str = "auto"
    adapter: str | None = None
    calibration_prompts: tuple[str, ...] = DEFAULT_CALIBRATION_PROMPTS
    calibration_kwargs: dict = field(default_factory=dict)
    eps: float = 1e-6
    #: filled from the adapter: ``{role: {"layers": [...], "num_model_layers": n, ...}}`` and its metadata.
    adapter_metadata: dict | None = field(default=None, repr=False, compare=False)

    _technique_module: ClassVar[str] = "vidaccel.accel.linear_attention.technique"

    def __post_init__(self):
        if self.adapter is not None:
            if not isinstance(self.adapter, (str, os.PathLike)):
                raise _bad("adapter", self.adapter, "it must be a path to a .safetensors adapter or None")
            self.adapter = os.fspath(self.adapter)
            meta = read_adapter_metadata(self.adapter)
            self.adapter_metadata = meta
            self.feature_map = meta["feature_map"]
            self.rope = meta["rope"]
            self.layers = "adapter"
        elif isinstance(self.layers, str):
            if self.layers != "auto":
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
        else:
            try:
                layers = list(self.layers)
            except TypeError:
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)") from None
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
            self.layers = tuple(sorted(set(layers)))
        if self.num_layers is not None and (not isinstance(self.num_layers, int) or isinstance(self.num_layers, bool)
                                            or self.num_layers < 0):
            raise _bad("num_layers", self.num_layers, "it must be an int >= 0 or None (half the layers)")
        if self.num_layers is not None and self.layers not in ("auto", "adapter"):
            raise _bad("num_layers", self.num_layers, "it is only used with layers='auto' or an adapter")
        if self.feature_map not in FEATURE_MAP_NAMES:
            raise _bad("feature_map", self.feature_map, f"allowed: {', '.join(FEATURE_MAP_NAMES)}")
        if self.rope not in ROPE_MODES:
            raise _bad("rope", self.rope, f"allowed: {', '.join(ROPE_MODES)}")
        if self.backend not in BACKENDS:
            raise _bad("backend", self.backend, f"allowed: {', '.join(BACKENDS)}")
        if isinstance(self.calibration_prompts, str):
            self.calibration_prompts = (self.calibration_prompts,)
        self.calibration_prompts = tuple(self.calibration_prompts)
        if not self.calibration_prompts or not all(isinstance(p, str) for p in self.calibration_prompts):
            raise _bad("calibration_prompts", self.calibration_prompts, "it must be a non-empty list of strings")
        if not isinstance(self.calibration_kwargs, dict):
            raise _bad("calibration_kwargs", self.calibration_kwargs, "it must be a dict of pipeline call arguments")
        if not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise _bad("eps", self.eps, "it must be a float > 0")

