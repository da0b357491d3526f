"""``QuantConfig`` and the quantization presets (see :mod:`vidaccel.accel.quantization`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...core.presets import register_preset
from ...families.base import FRAGILE_KINDS
from ...kernels import backend_names

if TYPE_CHECKING:
    from ...families import ModelFamily

__all__ = ["QuantConfig", "FORMATS"]

FORMATS = ("fp8", "nvfp4", "mixed")
ACTIVATIONS = ("dynamic", "none")
KEEP_ORIGINAL = ("cpu", "device", "disk", "none")
SQNR_MODES = ("first_call", "off")
SKIP_FORMATS = ("none", "fp8")
BACKENDS = backend_names.FP8


@dataclass
class QuantConfig:
    """Quantize the transformer's ``nn.Linear`` layers.

    Args:
        format: ``"fp8"`` (e4m3, per-channel weight scales), ``"nvfp4"`` (W4A16) or ``"mixed"`` (per layer,
            calibrated: see the module docstring).
        activations: ``"dynamic"`` (FP8 layers quantize activations per token: W8A8) or ``"none"``
            (weight-only). ``None`` picks ``"dynamic"`` for fp8 / mixed and ``"none"`` for nvfp4, whose layers
            are always weight-only (W4A4 needs Blackwell).
        skip: regexes (``re.search`` on names such as ``"blocks.3.attn1.to_q"``) of layers kept in high
            precision; ``None`` keeps the model family's fragile layers (patch, timestep, text and image
            embeddings, output projection: ``vidaccel.families``). A list replaces them.
        quantize_fragile: kinds of fragile layer (``"patch"``, ``"time"``, ``"text"``, ``"image"``,
            ``"output"``) quantized like the rest anyway (only with ``skip=None``).
        skip_format: ``"none"`` keeps skipped layers in the model's dtype; ``"fp8"`` stores them as FP8
            weight-only (W8A16, ≈ 31 dB) — halves their bytes, which matters at 4 bits.
        mixed_fp8_fraction: share of the quantized layers (by count) that ``"mixed"`` gives FP8.
        plan: ``{layer name: "fp8" | "nvfp4"}`` (or ``{role: {...}}`` for Wan 2.2's two experts) for
            ``"mixed"``: use it instead of calibrating.
        keep_original: where the original ``nn.Linear`` modules wait for :func:`vidaccel.remove`:
            ``"cpu"`` (host memory: their weight bytes), ``"device"``, ``"disk"`` (nothing in memory: re-read from
            the safetensors the transformer was loaded from, checked at apply to hold exactly its weights) or
            ``"none"`` (nothing kept: remove raises). Per-layer SQNR needs ``"cpu"`` or ``"device"``.
        measure_sqnr: ``"first_call"`` (per-layer SQNR on the first transformer call of each pipeline call)
            or ``"off"``.
        sqnr_tokens: tokens sampled per layer for the SQNR.
        backend: kernel backend, ``"auto"``, ``"scaled_mm"`` (FP8 only), ``"triton"`` or ``"torch"``.
    """

    format: str = "fp8"
    activations: str | None = None
    skip: list[str] | None = None
    skip_format: str = "none"
    mixed_fp8_fraction: float = 0.25
    plan: dict | None = None
    keep_original: str = "cpu"
    measure_sqnr: str = "first_call"
    sqnr_tokens: int = 64
    backend: str = "auto"
    quantize_fragile: tuple[str, ...] = ()

    _technique_module: ClassVar[str] = "vidaccel.accel.quantization.technique"

    def __post_init__(self):
        def check(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"QuantConfig.{name}={value!r} is not allowed; allowed: "
                                 f"{', '.join(repr(a) for a in allowed)}")

        check("format", self.format, FORMATS)
        if self.activations is None:
            self.activations = "none" if self.format == "nvfp4" else "dynamic"
        check("activations", self.activations, ACTIVATIONS)
        if self.format == "nvfp4" and self.activations != "none":
            raise ValueError("QuantConfig.activations='dynamic' is not allowed with format='nvfp4': NVFP4 layers are "
                             "weight-only (W4A16); allowed: 'none' (or use format='fp8' / 'mixed')")
        check("skip_format", self.skip_format, SKIP_FORMATS)
        check("keep_original", self.keep_original, KEEP_ORIGINAL)
        check("measure_sqnr", self.measure_sqnr, SQNR_MODES)
        check("backend", self.backend, BACKENDS)
        if self.skip is not None:
            if isinstance(self.skip, str) or not all(isinstance(p, str) for p in self.skip):
                raise ValueError(f"QuantConfig.skip={self.skip!r} is not allowed: it must be a list of regex strings")
            for p in self.skip:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"QuantConfig.skip pattern {p!r} is not a valid regex: {e}") from None
            self.skip = list(self.skip)
        if isinstance(self.quantize_fragile, str) or not all(k in FRAGILE_KINDS for k in self.quantize_fragile):
            raise ValueError(f"QuantConfig.quantize_fragile={self.quantize_fragile!r} is not allowed: it must be a "
                             f"list of fragile-layer kinds among {', '.join(repr(k) for k in FRAGILE_KINDS)}")
        self.quantize_fragile = tuple(self.quantize_fragile)
        if self.quantize_fragile and self.skip is not None:
            raise ValueError("QuantConfig.quantize_fragile is only allowed with skip=None (it selects among the "
                             "model family's fragile layers, which a skip list replaces)")
        if not (0.0 <= self.mixed_fp8_fraction <= 1.0):
            raise ValueError(f"QuantConfig.mixed_fp8_fraction={self.mixed_fp8_fraction!r} is not allowed; "
                             "it must be in [0, 1]")
        if self.sqnr_tokens < 1:
            raise ValueError(f"QuantConfig.sqnr_tokens={self.sqnr_tokens!r} is not allowed; it must be >= 1")
        if self.plan is not None:
            if self.format != "mixed":
                raise ValueError(f"QuantConfig.plan is only allowed with format='mixed', got format={self.format!r}")
            for key, value in self.plan.items():
                inner = value.items() if isinstance(value, dict) else [(key, value)]
                for name, fmt in inner:
                    if fmt not in ("fp8", "nvfp4"):
                        raise ValueError(f"QuantConfig.plan[{name!r}]={fmt!r} is not allowed; allowed: 'fp8', 'nvfp4'")

    def skip_patterns(self, family: ModelFamily) -> list[tuple[str, str]]:
        """``(regex, reason)`` of the layers kept in high precision on a model of ``family``."""
        if self.skip is None:
            return [(f.pattern, f.reason) for f in family.fragile_layers if f.kind not in self.quantize_fragile]
        return [(p, "skipped by QuantConfig.skip") for p in self.skip]

    def plan_for(self, role: str) -> dict[str, str] | None:
        if self.plan is None:
            return None
        if any(isinstance(v, dict) for v in self.plan.values()):
            return dict(self.plan.get(role, {}))
        return dict(self.plan)


register_preset("fp8", lambda: [QuantConfig(format="fp8")],
                "FP8 e4m3 weights + dynamic per-token FP8 activations (W8A8): ~2x fewer weight bytes")
# The fragile layers are stored as FP8 weight-only, except the text embedding (the largest of them: 8.7 M of
# Wan2.1-1.3B's parameters), which goes NVFP4 like the blocks; bytes and quality in benchmarks/RESULTS.md.
register_preset("nvfp4", lambda: [QuantConfig(format="nvfp4", skip_format="fp8", quantize_fragile=("text",))],
                "NVFP4 weights (W4A16), fragile layers FP8 weight-only, text embedding NVFP4: ~3.5x fewer "
                "weight bytes")
