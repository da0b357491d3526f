"""``QuantConfig`` and the quantization presets (see :mod:`vidaccel.accel.quantization`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...core.presets import register_preset
from ...core.validation import bad_value, check_choice, check_int, check_number, check_str_list, shown
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
        o = "QuantConfig"
        self.format = check_choice(o, "format", self.format, FORMATS, quoted=True)
        if self.activations is None:
            self.activations = "none" if self.format == "nvfp4" else "dynamic"
        self.activations = check_choice(o, "activations", self.activations, ACTIVATIONS, quoted=True)
        if self.format == "nvfp4" and self.activations != "none":
            raise ValueError("QuantConfig.activations='dynamic' is not allowed with format='nvfp4': NVFP4 layers are "
                             "weight-only (W4A16); allowed: 'none' (or use format='fp8' / 'mixed')")
        self.skip_format = check_choice(o, "skip_format", self.skip_format, SKIP_FORMATS, quoted=True)
        self.keep_original = check_choice(o, "keep_original", self.keep_original, KEEP_ORIGINAL, quoted=True)
        self.measure_sqnr = check_choice(o, "measure_sqnr", self.measure_sqnr, SQNR_MODES, quoted=True)
        self.backend = check_choice(o, "backend", self.backend, BACKENDS, quoted=True)
        if self.skip is not None:
            self.skip = check_str_list(o, "skip", self.skip, what="a list of regex strings")
            for p in self.skip:
                try:
                    re.compile(p)
                except (re.error, RecursionError, OverflowError) as e:
                    raise bad_value(o, "skip", self.skip, f"pattern {shown(p)} is not a valid regex ({e})") from None
        kinds = self.quantize_fragile
        if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) and k in FRAGILE_KINDS for k in kinds):
            raise bad_value(o, "quantize_fragile", kinds, "it must be a list of fragile-layer kinds among "
                            f"{', '.join(repr(k) for k in FRAGILE_KINDS)}")
        self.quantize_fragile = tuple(kinds)
        if self.quantize_fragile and self.skip is not None:
            raise ValueError("QuantConfig.quantize_fragile is only allowed with skip=None (it selects among the "
                             "model family's fragile layers, which a skip list replaces)")
        self.mixed_fp8_fraction = check_number(o, "mixed_fp8_fraction", self.mixed_fp8_fraction, lo=0, hi=1)
        self.sqnr_tokens = check_int(o, "sqnr_tokens", self.sqnr_tokens, lo=1, hi=2**31 - 1)
        if self.plan is not None:
            if not isinstance(self.plan, dict):
                raise bad_value(o, "plan", self.plan, "it must be a dict {layer name: 'fp8' | 'nvfp4'} (or "
                                "{role: {...}}) or None")
            if self.format != "mixed":
                raise bad_value(o, "plan", self.plan, f"a plan is only allowed with format='mixed', not format="
                                f"{self.format!r}")
            for key, value in self.plan.items():
                inner = value.items() if isinstance(value, dict) else [(key, value)]
                for name, fmt in inner:
                    if not isinstance(name, str) or not isinstance(fmt, str) or fmt not in ("fp8", "nvfp4"):
                        raise bad_value(o, f"plan[{shown(name)}]", fmt, "allowed: 'fp8', 'nvfp4' for a layer name")

    def skip_patterns(self, family: ModelFamily | None) -> list[tuple[str, str]]:
        """``(regex, reason)`` of the layers kept in high precision on a model of ``family`` (``None``: a module
        that is not a supported transformer, which has no fragile layers)."""
        if self.skip is None:
            fragile = family.fragile_layers if family is not None else ()
            return [(f.pattern, f.reason) for f in fragile if f.kind not in self.quantize_fragile]
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
