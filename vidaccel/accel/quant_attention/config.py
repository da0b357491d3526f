"""``QuantAttentionConfig`` and its preset (see :mod:`vidaccel.accel.quant_attention`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.presets import register_preset
from ...core.validation import check_bool, check_choice, check_indices, check_int
from ...kernels import backend_names

__all__ = ["QuantAttentionConfig", "PV_MODES"]

#: P·V precision: ``"fp8"`` (e4m3, emulated exactly where the GPU has no FP8 tensor cores), ``"bf16"``, or
#: ``"auto"`` (``"bf16"`` on a CUDA GPU before sm_89, else ``"fp8"``).
PV_MODES = ("auto", "fp8", "bf16")


@dataclass
class QuantAttentionConfig:
    """Quantized self-attention: INT8 Q·Kᵀ (smoothed K, and Q with ``smooth_q``), FP8 or bf16 P·V.

    Args:
        dense_steps: the first denoising steps that keep the model's own attention (they fix the layout).
        dense_layers: block indices whose self-attention stays exact (sensitive layers).
        smooth_q: also subtract the mean of Q before quantizing it (SageAttention2); ``False`` smooths K only
            (SageAttention).
        pv: one of :data:`PV_MODES`.
        backend: kernel backend, one of ``"auto"`` (Triton on a CUDA GPU, torch elsewhere), ``"triton"``,
            ``"torch"``.
    """

    dense_steps: int = 0
    dense_layers: tuple[int, ...] = field(default_factory=tuple)
    smooth_q: bool = True
    pv: str = "auto"
    backend: str = "auto"

    _technique_module: ClassVar[str] = "vidaccel.accel.quant_attention.technique"

    def __post_init__(self):
        o = "QuantAttentionConfig"
        self.dense_steps = check_int(o, "dense_steps", self.dense_steps, lo=0)
        self.dense_layers = check_indices(o, "dense_layers", self.dense_layers)
        self.smooth_q = check_bool(o, "smooth_q", self.smooth_q)
        self.pv = check_choice(o, "pv", self.pv, PV_MODES)
        self.backend = check_choice(o, "backend", self.backend, backend_names.QUANT_ATTENTION)


register_preset("quant-attention", lambda: [QuantAttentionConfig()],
                "quantized self-attention: INT8 Q·Kᵀ, FP8 P·V (SageAttention2-style), every step and layer")
