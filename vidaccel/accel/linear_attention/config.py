"""``LinearAttentionConfig`` (see :mod:`vidaccel.accel.linear_attention`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...core.validation import INT64_MAX, check_choice, check_int, check_number, check_path, check_str_list, shown
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
    return ValueError(f"LinearAttentionConfig.{name}={shown(value)} is not allowed{sep}{allowed}")


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
        o = "LinearAttentionConfig"
        if self.adapter is None and self.adapter_metadata is not None:
            raise _bad("adapter_metadata", self.adapter_metadata, "it is read from adapter=; leave it None")
        if self.adapter is not None:
            self.adapter = check_path(o, "adapter", self.adapter)
            meta = read_adapter_metadata(self.adapter)
            self.adapter_metadata = meta
            self.feature_map = meta["feature_map"]
            self.rope = meta["rope"]
            self.layers = "adapter"
        elif isinstance(self.layers, str):
            if self.layers != "auto":
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
        else:
            layers = self.layers
            if not isinstance(layers, (list, tuple, set, frozenset, range)) or any(
                    not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= INT64_MAX for i in layers):
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
            self.layers = tuple(sorted(set(layers)))
        self.num_layers = check_int(o, "num_layers", self.num_layers, lo=0, optional=True)
        if self.num_layers is not None and self.layers not in ("auto", "adapter"):
            raise _bad("num_layers", self.num_layers, "it is only used with layers='auto' or an adapter")
        self.feature_map = check_choice(o, "feature_map", self.feature_map, FEATURE_MAP_NAMES)
        self.rope = check_choice(o, "rope", self.rope, ROPE_MODES)
        self.backend = check_choice(o, "backend", self.backend, BACKENDS)
        if isinstance(self.calibration_prompts, str):
            self.calibration_prompts = (self.calibration_prompts,)
        self.calibration_prompts = tuple(check_str_list(o, "calibration_prompts", self.calibration_prompts,
                                                        empty_items=False, empty=False))
        if not isinstance(self.calibration_kwargs, dict) or not all(isinstance(k, str) for k in self.calibration_kwargs):
            raise _bad("calibration_kwargs", self.calibration_kwargs, "it must be a dict of pipeline call arguments")
        self.eps = check_number(o, "eps", self.eps, lo=0, lo_open=True)
