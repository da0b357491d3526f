"""FP8 and NVFP4 weight quantization of the transformer(s), on vidaccel's own kernels and safetensors files.

``vidaccel.apply(pipe, QuantConfig(format=...))`` swaps every ``nn.Linear`` of the transformer (both Wan 2.2
experts) for a quantized module whose ``forward`` is one call into :mod:`vidaccel.kernels`:

* ``"fp8"`` — e4m3 weights with per-output-channel scales; activations quantized per token on every call
  (``activations="dynamic"``, W8A8 through ``torch._scaled_mm`` or vidaccel's Triton FP8 GEMM) or kept as
  they are (``activations="none"``, W8A16). ~2× fewer weight bytes than bf16.
* ``"nvfp4"`` — NVIDIA's NVFP4 (e2m1 values, an e4m3 scale per 16, an fp32 scale per tensor), weight-only
  (W4A16) through vidaccel's Triton GEMM that dequantizes in registers. 4.5 bits per weight: Wan2.1-1.3B
  shrinks 3.39× (fragile layers in bf16), 3.498× (``skip_format="fp8"``) or 3.51× (the ``nvfp4`` preset:
  fragile layers FP8 but the text embedding NVFP4, :data:`NVFP4_PRESET_SKIP`).
* ``"mixed"`` — per layer NVFP4 or FP8, after 6Bit-Diffusion (arXiv 2025, "inference-time mixed-precision
  quantization for video diffusion"): the **first pipeline call after apply runs in full precision and
  calibrates** — for every layer it measures how much the per-channel amax of the layer's input moves from
  one denoising step to the next (same CFG branch) on the model's own trajectory. The most volatile
  ``mixed_fp8_fraction`` of the layers get FP8, the stable rest NVFP4; from the second call on the model is
  quantized. ``vidaccel.stats`` reports the mix; pass ``plan=`` to skip calibration (needed wherever a
  config is applied afresh for each run, as :func:`vidaccel.bench.run_benchmark` does). The volatility
  measure is vidaccel's reading of the paper's stable/volatile split, not a reimplementation of its code.

Kept in high precision by default (:data:`DEFAULT_SKIP`, each with its reason): the patch embedding, the
timestep / text / image embeddings and the output projection (with CogVideoX's output norm modulation).

**Remove is exact**: the original ``nn.Linear`` objects are kept (``keep_original="cpu"`` moves them to host
memory, costing the bf16 weight bytes there — on a CPU model that is simply the original weights staying
alive; ``"device"`` keeps them where they are, costing device memory) and :func:`vidaccel.remove` puts the
very same objects back. A model built by :func:`load_quantized` has no originals: removing raises.

**Per-layer SQNR** (``measure_sqnr="first_call"``, the default): during the first transformer call of each
pipeline call, every quantized layer also runs its original layer on ``sqnr_tokens`` evenly spaced tokens
(one extra small GEMM and one host sync per layer per pipeline call; with ``keep_original="cpu"`` on a GPU
that GEMM runs on the host, on the sampled rows copied there) and reports
``10·log10(Σ ref² / Σ (ref − out)²)`` in ``vidaccel.stats(pipe)["quant"][role]["layers"]``.

Checkpoints: :func:`save_quantized` writes one safetensors file per transformer with a ``__metadata__``
header ``{"format": "vidaccel-quant", "version": "1", ...}``; :func:`load_quantized` /
:func:`load_quantized_transformer` rebuild the quantized modules straight from the stored tensors (no
pickle, no bf16 copy of the quantized layers).

Example::

    import vidaccel
    from vidaccel.accel.quantization import QuantConfig, save_quantized, load_quantized_transformer

    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["quant"]["transformer"]["sqnr_db_mean"])
    save_quantized(pipe, "wan-fp8")                       # wan-fp8/transformer.safetensors
    transformer = load_quantized_transformer("wan-fp8")   # no bf16 weights materialized
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..kernels.fp8.wrapper import Fp8Weight, fp8_linear
from ..kernels.nvfp4 import naive as nvfp4_naive
from ..kernels.nvfp4.wrapper import NVFP4Weight, nvfp4_linear
from ..presets import register_preset
from ..specs import pipeline_transformers, spec_for
from .base import Technique, register_technique

logger = logging.getLogger(__name__)

__all__ = [
    "QuantConfig", "QuantizationTechnique", "Fp8Linear", "NVFP4Linear", "DEFAULT_SKIP", "NVFP4_PRESET_SKIP",
    "save_quantized",
    "load_quantized", "load_quantized_transformer", "weight_bytes", "estimate_weight_bytes", "quantize_linears",
    "quant_report",
    "FILE_FORMAT", "FILE_VERSION",
]

FILE_FORMAT = "vidaccel-quant"
FILE_VERSION = "1"

FORMATS = ("fp8", "nvfp4", "mixed")
ACTIVATIONS = ("dynamic", "none")
KEEP_ORIGINAL = ("cpu", "device")
SQNR_MODES = ("first_call", "off")
SKIP_FORMATS = ("none", "fp8")
BACKENDS = ("auto", "scaled_mm", "triton", "torch")

#: Layers kept in high precision by default: ``(regex searched in the qualified module name, reason)``.
DEFAULT_SKIP: tuple[tuple[str, str], ...] = (
    (r"(^|\.)patch_embed(ding)?\.",
     "patch embedding: sees raw latents, tiny K, negligible FLOPs; its error reaches every block"),
    (r"(^|\.)(condition_embedder\.time_\w+|time_embedding|ofs_embedding)\.|(^|\.)condition_embedder\.time_proj$",
     "timestep embedding / modulation: runs on one token per sample, and its error shifts every block's "
     "scale/shift"),
    (r"(^|\.)condition_embedder\.(text|image)_embedder\.|(^|\.)text_proj$",
     "text / image embedding: small share of the weights; conditioning errors change what is drawn"),
    (r"^(proj_out|norm_out\.\w+)$",
     "output projection: its error goes straight into the predicted velocity / noise"),
)


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
            precision; ``None`` uses :data:`DEFAULT_SKIP`. A list replaces the defaults (extend
            ``[p for p, _ in DEFAULT_SKIP]`` to keep them).
        skip_format: ``"none"`` keeps skipped layers in the model's dtype; ``"fp8"`` stores them as FP8
            weight-only (W8A16, ≈ 31 dB) — halves their bytes, which matters at 4 bits.
        mixed_fp8_fraction: share of the quantized layers (by count) that ``"mixed"`` gives FP8.
        plan: ``{layer name: "fp8" | "nvfp4"}`` (or ``{role: {...}}`` for Wan 2.2's two experts) for
            ``"mixed"``: use it instead of calibrating.
        keep_original: where the original ``nn.Linear`` modules wait for :func:`vidaccel.remove`:
            ``"cpu"`` (host memory) or ``"device"``.
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

    def skip_patterns(self) -> list[tuple[str, str]]:
        if self.skip is None:
            return list(DEFAULT_SKIP)
        return [(p, "skipped by QuantConfig.skip") for p in self.skip]

    def plan_for(self, role: str) -> dict[str, str] | None:
        if self.plan is None:
            return None
        if any(isinstance(v, dict) for v in self.plan.values()):
            return dict(self.plan.get(role, {}))
        return dict(self.plan)


# -- quantized modules -------------------------------------------------------------------------------
def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    noise = (ref - out).pow(2).sum()
    signal = ref.pow(2).sum()
    if not torch.isfinite(noise) or not torch.isfinite(signal):
        return float("nan")
    if noise == 0:
        return float("inf")
    return float(10.0 * torch.log10(signal / noise))


class _Probe:
    """Shared by the quantized modules of one transformer: SQNR measurement switched on per call."""

    def __init__(self, tokens: int):
        self.tokens = tokens
        self.active = False
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def reset(self):
        self.signal.clear()
        self.noise.clear()

    @torch.no_grad()
    def record(self, module: "QuantLinear", x: torch.Tensor, y: torch.Tensor) -> None:
        original = module.original
        if original is None:
            return
        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.reshape(-1, y.shape[-1])
        rows = torch.linspace(0, x2.shape[0] - 1, min(self.tokens, x2.shape[0]), device=x2.device).round().long()
        dev = original.weight.device
        ref = nn.functional.linear(x2[rows].to(dev, original.weight.dtype), original.weight, original.bias).double()
        out = y2[rows].to(dev).double()
        self.signal[module.name] = self.signal.get(module.name, 0.0) + float(ref.pow(2).sum())
        self.noise[module.name] = self.noise.get(module.name, 0.0) + float((ref - out).pow(2).sum())

    def sqnr(self) -> dict[str, float]:
        out = {}
        for name, s in self.signal.items():
            n = self.noise[name]
            out[name] = float("nan") if not (math.isfinite(n) and math.isfinite(s)) else (
                float("inf") if n == 0 else 10.0 * math.log10(s / n))
        return out


class QuantLinear(nn.Module):
    """Base of the quantized ``nn.Linear`` replacements.

    Quantized tensors are buffers (they follow ``.to(device)`` and appear in ``state_dict``); ``.to(dtype)``
    leaves them alone (only the bias, a frozen ``nn.Parameter``, follows the model's dtype).
    """

    fmt: str = ""
    _quant_buffers: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, name: str = ""):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # a (frozen) Parameter, not a buffer: diffusers reads dtypes from `next(module.parameters())`
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.name = name
        self.probe: _Probe | None = None
        object.__setattr__(self, "_original", None)

    @property
    def original(self) -> nn.Linear | None:
        """The replaced ``nn.Linear`` (for SQNR and exact removal); deliberately *not* a child module, so it is
        neither in ``state_dict`` nor moved by ``.to()``."""
        return self._original

    def set_original(self, module: nn.Linear | None) -> None:
        object.__setattr__(self, "_original", module)  # nn.Module.__setattr__ would register it as a child

    def _apply(self, fn, recurse=True):
        # Protect quantized storage from dtype casts: move it as raw integer views, then view back.
        saved = {}
        for name in self._quant_buffers:
            t = self._buffers.pop(name)
            saved[name] = t
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in saved.items():
                raw = {1: torch.uint8, 4: torch.int32}[t.element_size()]
                self._buffers[name] = fn(t.view(raw)).view(t.dtype)
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._forward(x)
        if self.probe is not None and self.probe.active:
            self.probe.record(self, x, y)
        return y

    def quantized_nbytes(self) -> int:
        return sum(self._buffers[n].numel() * self._buffers[n].element_size() for n in self._quant_buffers)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Fp8Linear(QuantLinear):
    """``nn.Linear`` with an FP8 weight (:class:`~vidaccel.kernels.fp8.Fp8Weight`); see :func:`fp8_linear`."""

    fmt = "fp8"
    _quant_buffers = ("weight_fp8", "weight_scale")

    def __init__(self, qweight: Fp8Weight, bias=None, *, activations="dynamic", backend="auto", name=""):
        super().__init__(qweight.in_features, qweight.out_features, bias, name)
        self.register_buffer("weight_fp8", qweight.data)
        self.register_buffer("weight_scale", qweight.scale)
        self.activations = activations
        self.backend = backend

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "Fp8Linear":
        return cls(Fp8Weight.from_float(linear.weight), linear.bias, **kwargs)

    @property
    def qweight(self) -> Fp8Weight:
        return Fp8Weight(self.weight_fp8, self.weight_scale)

    def _forward(self, x):
        return fp8_linear(x, self.qweight, self.bias, activations=self.activations, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", activations={self.activations!r}"


class NVFP4Linear(QuantLinear):
    """``nn.Linear`` with an NVFP4 weight (:class:`~vidaccel.kernels.nvfp4.NVFP4Weight`), activations kept (W4A16)."""

    fmt = "nvfp4"
    _quant_buffers = ("weight_packed", "weight_block_scale", "weight_global_scale")

    def __init__(self, qweight: NVFP4Weight, bias=None, *, backend="auto", name=""):
        super().__init__(qweight.in_features, qweight.out_features, bias, name)
        self.register_buffer("weight_packed", qweight.data)
        self.register_buffer("weight_block_scale", qweight.block_scale)
        self.register_buffer("weight_global_scale", qweight.global_scale.reshape(()))
        self.backend = "auto" if backend == "scaled_mm" else backend

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "NVFP4Linear":
        return cls(NVFP4Weight.from_float(linear.weight), linear.bias, **kwargs)

    @property
    def qweight(self) -> NVFP4Weight:
        return NVFP4Weight(self.weight_packed, self.weight_block_scale, self.weight_global_scale, self.in_features)

    def _forward(self, x):
        return nvfp4_linear(x, self.qweight, self.bias, backend=self.backend)


# -- which layer gets what ----------------------------------------------------------------------------
def _skip_reason(name: str, patterns: list[tuple[str, str]]) -> str | None:
    for pattern, reason in patterns:
        if re.search(pattern, name):
            return reason
    return None


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]


def _layer_formats(model: nn.Module, config: QuantConfig, plan: dict[str, str] | None) -> tuple[dict, dict]:
    """``({name: fmt}, {skipped name: reason})``; fmt is ``"fp8"``, ``"nvfp4"`` or ``"fp8-weight"``."""
    formats, skipped = {}, {}
    patterns = config.skip_patterns()
    for name, _ in _linears(model):
        reason = _skip_reason(name, patterns)
        if reason is not None:
            skipped[name] = reason
            if config.skip_format == "fp8":
                formats[name] = "fp8-weight"
            continue
        if config.format == "mixed":
            formats[name] = (plan or {}).get(name, "nvfp4")
        else:
            formats[name] = config.format
    return formats, skipped


def _build(linear: nn.Linear, fmt: str, config: QuantConfig, name: str) -> QuantLinear:
    if fmt == "nvfp4":
        return NVFP4Linear.from_linear(linear, backend=config.backend, name=name)
    activations = "none" if fmt == "fp8-weight" else config.activations
    return Fp8Linear.from_linear(linear, activations=activations, backend=config.backend, name=name)


@torch.no_grad()
def quantize_linears(module: nn.Module, config: QuantConfig, formats: dict[str, str] | None = None
                     ) -> dict[str, QuantLinear]:
    """Swap the ``nn.Linear`` children of any module in place (the torchao-style ``quantize_``) and return
    ``{name: quantized module}``; each keeps its original in ``.original``. ``formats`` (``{name: "fp8" |
    "fp8-weight" | "nvfp4"}``) defaults to what ``config`` selects (``"mixed"`` without a plan: all NVFP4).
    No technique is attached: nothing to remove, no stats; use :func:`vidaccel.apply` on transformers."""
    if formats is None:
        formats, _ = _layer_formats(module, config, config.plan_for("transformer"))
    out = {}
    for name, fmt in formats.items():
        linear = module.get_submodule(name)
        qmodule = _build(linear, fmt, config, name)
        qmodule.set_original(linear)
        _set_child(module, name, qmodule)
        out[name] = qmodule
    return out


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def weight_bytes(model: nn.Module) -> dict:
    """Bytes of the transformer's state (parameters + persistent buffers), works on the meta device.

    Returns ``{"bytes": actual, "bf16_bytes": every floating tensor of the unquantized model at 2 bytes}``;
    quantized layers count their stored tensors and are charged as ``in × out`` bf16 weights in the baseline.
    """
    actual = 0
    bf16 = 0
    for _, t in model.state_dict(keep_vars=True).items():
        actual += t.numel() * t.element_size()
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            bf16 += m.in_features * m.out_features * 2 + (m.bias.numel() * 2 if m.bias is not None else 0)
            continue
        for t in list(m._parameters.values()) + [b for n, b in m._buffers.items()
                                                  if n not in m._non_persistent_buffers_set]:
            if t is not None:
                bf16 += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return {"bytes": actual, "bf16_bytes": bf16, "ratio_vs_bf16": bf16 / actual if actual else float("nan")}


def estimate_weight_bytes(model: nn.Module, config: QuantConfig, plan: dict | None = None) -> dict:
    """What :func:`weight_bytes` will report once ``config`` is applied, from shapes only (works on meta).

    Floating tensors outside the quantized layers (and their biases) are counted at bf16.
    """
    formats, _ = _layer_formats(model, config, plan)
    total = weight_bytes(model)["bf16_bytes"]
    quant = total
    for name, fmt in formats.items():
        lin = model.get_submodule(name)
        n, k = lin.out_features, lin.in_features
        quant -= n * k * 2
        if fmt == "nvfp4":
            kp = nvfp4_naive.padded_k(k)
            quant += n * kp // 2 + n * kp // 16 + 4
        else:
            quant += n * k + n * 4
    return {"bytes": quant, "bf16_bytes": total, "ratio_vs_bf16": total / quant}


# -- mixed-precision calibration ----------------------------------------------------------------------
class _Calibrator:
    """Records, per layer and CFG slot, the per-channel input amax of each denoising step, and accumulates
    its relative change between consecutive steps (the layer's *volatility*)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.names = names
        self.prev: dict[tuple[str, int], torch.Tensor] = {}
        self.change: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.step_key = None
        self.slot = -1
        self.steps = 0
        self.handles = []

    def attach(self):
        self.handles.append(self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
        for name in self.names:
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_pre_hook(self._layer_hook(name)))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _on_model_call(self, module, args, kwargs):
        t = kwargs.get("timestep")
        key = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) and t.numel() else None
        if key is None or key != self.step_key:
            self.step_key = key
            self.slot = 0
            self.steps += 1
        else:
            self.slot += 1

    def _layer_hook(self, name):
        def hook(module, args):
            x = args[0].detach()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            prev = self.prev.get((name, self.slot))
            if prev is not None and prev.shape == amax.shape:
                self.change[name].append((amax - prev).norm() / prev.norm().clamp_min(1e-12))
            self.prev[(name, self.slot)] = amax

        return hook

    def volatility(self) -> dict[str, float]:
        return {n: (float(torch.stack(c).mean()) if c else 0.0) for n, c in self.change.items()}


def _plan_from_volatility(volatility: dict[str, float], fraction: float) -> dict[str, str]:
    ranked = sorted(volatility, key=lambda n: volatility[n], reverse=True)
    n_fp8 = int(round(fraction * len(ranked)))
    fp8 = set(ranked[:n_fp8])
    return {n: ("fp8" if n in fp8 else "nvfp4") for n in volatility}


# -- the technique -------------------------------------------------------------------------------------
@register_technique(QuantConfig)
class QuantizationTechnique(Technique):
    """Swaps ``nn.Linear`` children for :class:`Fp8Linear` / :class:`NVFP4Linear` (see module docstring)."""

    name = "quant"

    def attach(self) -> None:
        self.loaded = getattr(self, "loaded", False)
        self.originals: dict[str, nn.Linear] = {}
        self.quantized: dict[str, QuantLinear] = {}
        self.formats: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.volatility: dict[str, float] | None = None
        self.calibrator: _Calibrator | None = None
        self.probe = _Probe(self.config.sqnr_tokens)
        self.calls = 0
        self.handles = []
        # a plan given in the config, else the one calibrated earlier (re-attach after vidaccel.remove of a
        # technique applied before this one must not calibrate again)
        plan = self.config.plan_for(self.role) or getattr(self, "calibrated_plan", None)
        if self.config.format == "mixed" and plan is None:
            _, self.skipped = _layer_formats(self.model, self.config, None)
            names = [n for n, _ in _linears(self.model) if n not in self.skipped]
            self.calibrator = _Calibrator(self.model, names)
            self.calibrator.attach()
            logger.info("quant(mixed): the next pipeline call on %s calibrates in full precision", self.role)
        else:
            self._quantize(plan)
        self._hook_model()

    def attach_loaded(self, quantized: dict[str, QuantLinear], layers: dict[str, str]) -> None:
        """Adopt modules built by :func:`load_quantized` (no originals: not removable, SQNR unavailable)."""
        self.originals, self.quantized, self.formats = {}, dict(quantized), dict(layers)
        patterns = self.config.skip_patterns()
        names = [n for n, m in self.model.named_modules() if type(m) is nn.Linear or isinstance(m, QuantLinear)]
        self.skipped = {n: r for n in names if (r := _skip_reason(n, patterns)) is not None}
        self.volatility, self.calibrator = None, None
        self.probe = _Probe(self.config.sqnr_tokens)
        self.calls = 0
        for m in quantized.values():
            m.probe = self.probe  # no originals: SQNR cannot be measured, layers report None
        self._hook_model()

    def _hook_model(self):
        def pre(module, args):
            self.probe.active = (self.config.measure_sqnr == "first_call" and self.calls == 0 and bool(self.quantized))

        def post(module, args, output):
            self.probe.active = False
            self.calls += 1

        self.handles = [self.model.register_forward_pre_hook(pre), self.model.register_forward_hook(post)]

    def _quantize(self, plan: dict[str, str] | None) -> None:
        self.formats, self.skipped = _layer_formats(self.model, self.config, plan)
        self.quantized = quantize_linears(self.model, self.config, self.formats)
        for name, qmodule in self.quantized.items():
            self.originals[name] = qmodule.original
            qmodule.probe = self.probe
        if self.config.keep_original == "cpu":
            for linear in self.originals.values():
                linear.to("cpu")

    def detach(self) -> None:
        if self.loaded:
            raise RuntimeError(f"the {self.role} was built by load_quantized: its original weights are not in memory, "
                               "so quantization cannot be removed; load the unquantized model with from_pretrained")
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.calibrator is not None:
            self.calibrator.detach()
            self.calibrator = None
        for name, linear in self.originals.items():
            qmodule = self.quantized[name]
            ref = qmodule.weight_fp8 if isinstance(qmodule, Fp8Linear) else qmodule.weight_packed
            if linear.weight.device != ref.device:
                linear.to(ref.device)
            qmodule.set_original(None)
            _set_child(self.model, name, linear)
        self.originals.clear()
        self.quantized.clear()

    def reset(self) -> None:
        self.calls = 0
        self.probe.reset()

    def finish_run(self) -> None:
        if self.calibrator is None:
            return
        self.volatility = self.calibrator.volatility()
        steps = self.calibrator.steps
        self.calibrator.detach()
        self.calibrator = None
        if steps < 2:
            logger.warning("quant(mixed): calibration on %s saw %d step(s); volatility needs >= 2, so every layer "
                           "gets NVFP4 except the first mixed_fp8_fraction in name order", self.role, steps)
        plan = _plan_from_volatility(self.volatility, self.config.mixed_fp8_fraction)
        self.calibrated_plan = plan
        self._quantize(plan)
        counts = {f: sum(v == f for v in plan.values()) for f in ("fp8", "nvfp4")}
        logger.info("quant(mixed) %s: calibrated on %d steps: %s", self.role, steps, counts)

    def stats(self) -> dict:
        state = "calibrating" if self.calibrator is not None else "quantized"
        counts = {"fp8": 0, "nvfp4": 0, "fp8-weight": 0, "skipped": 0}
        for fmt in self.formats.values():
            counts[fmt] += 1
        counts["skipped"] = sum(1 for n in self.skipped if n not in self.formats)
        sqnr = self.probe.sqnr()
        layers = {n: {"format": f, "sqnr_db": sqnr.get(n)} for n, f in self.formats.items()}
        finite = [v for v in sqnr.values() if v is not None and math.isfinite(v)]
        out = {
            "format": self.config.format, "state": state, "loaded": self.loaded, "counts": counts,
            "layers": layers, "skipped": dict(self.skipped),
            "sqnr_db_mean": (sum(finite) / len(finite)) if finite else None,
            "sqnr_db_min": min(finite) if finite else None,
        }
        if self.quantized:
            out.update({k: v for k, v in weight_bytes(self.model).items()})
        by_fmt: dict[str, list[float]] = {}
        for n, f in self.formats.items():
            if sqnr.get(n) is not None and math.isfinite(sqnr[n]):
                by_fmt.setdefault(f, []).append(sqnr[n])
        out["sqnr_db_mean_by_format"] = {f: sum(v) / len(v) for f, v in by_fmt.items()}
        if self.config.format == "mixed":
            out["plan"] = {n: f for n, f in self.formats.items() if f in ("fp8", "nvfp4")}
            out["volatility"] = self.volatility
            total = sum(self.model.get_submodule(n).in_features * self.model.get_submodule(n).out_features
                        for n in out["plan"]) or 1
            fp8 = sum(self.model.get_submodule(n).in_features * self.model.get_submodule(n).out_features
                      for n, f in out["plan"].items() if f == "fp8")
            out["fp8_weight_share"] = fp8 / total
        return out


def quant_report(target) -> str:
    """Markdown report of the last call: per transformer the mix, bytes vs bf16, and per-layer SQNR (dB)."""
    from ..api import stats

    out = []
    for role, s in stats(target).get(QuantizationTechnique.name, {}).items():
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        out.append(f"### {role}: {s['format']} ({s['state']}{', loaded' if s['loaded'] else ''})")
        out.append(f"layers: {s['counts']}; weight bytes {s.get('bytes', '—')} vs bf16 {s.get('bf16_bytes', '—')} "
                   f"(÷{fmt(s.get('ratio_vs_bf16'))}); SQNR mean {fmt(s['sqnr_db_mean'])} dB, min "
                   f"{fmt(s['sqnr_db_min'])} dB, by format {s['sqnr_db_mean_by_format']}")
        vol = s.get("volatility") or {}
        out.append("\n| layer | format | SQNR dB | volatility |\n|---|---|---|---|")
        for name, layer in s["layers"].items():
            out.append(f"| {name} | {layer['format']} | {fmt(layer['sqnr_db'])} | {fmt(vol.get(name))} |")
        for name, reason in s["skipped"].items():
            if name not in s["layers"]:
                out.append(f"| {name} | kept ({reason}) | — | — |")
        out.append("")
    return "\n".join(out)


# -- checkpoints --------------------------------------------------------------------------------------
def _technique_of(model: nn.Module) -> QuantizationTechnique | None:
    from ..api import _stack

    t = _stack(model).get(QuantizationTechnique.name)
    return t if isinstance(t, QuantizationTechnique) else None


def save_quantized(target, folder: str | os.PathLike) -> list[str]:
    """Write each quantized transformer of ``target`` to ``folder/<role>.safetensors``; returns the paths.

    The file holds the transformer's whole state (quantized layers as their e4m3 / packed-e2m1 / scale tensors,
    everything else as it is) and a ``__metadata__`` header: ``format`` = ``"vidaccel-quant"``,
    ``version`` = ``"1"``, ``role``, ``model_class``, ``model_config`` (JSON), ``layers`` (JSON
    ``{name: "fp8" | "fp8-weight" | "nvfp4"}``), ``activations``, ``quant_config`` (JSON).

    Raises:
        ValueError: a transformer has no :class:`QuantConfig` applied, or is still calibrating (``"mixed"``).
    """
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for role, model in pipeline_transformers(target):
        technique = _technique_of(model)
        if technique is None or not technique.quantized:
            raise ValueError(f"{role} ({type(model).__name__}) is not quantized: apply QuantConfig first"
                             + (" and run one calibration call (format='mixed')" if technique is not None else ""))
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        seen: dict[int, str] = {}
        for k, v in tensors.items():  # safetensors refuses shared storage
            key = v.untyped_storage().data_ptr() if v.numel() else id(v)
            if key in seen:
                tensors[k] = v.clone()
            seen[key] = k
        cfg = {k: v for k, v in asdict(technique.config).items() if k not in ("plan",)}
        metadata = {
            "format": FILE_FORMAT, "version": FILE_VERSION, "role": role, "model_class": type(model).__name__,
            "model_config": json.dumps(dict(model.config), default=_json_default),
            "layers": json.dumps({n: technique.formats[n] for n in technique.quantized}),
            "activations": technique.config.activations, "quant_config": json.dumps(cfg),
        }
        path = os.path.join(folder, f"{role}.safetensors")
        save_file(tensors, path, metadata=metadata)
        paths.append(path)
    return paths


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    return str(obj)


def _read_header(path: str) -> dict:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file; expected a safetensors file written by vidaccel save_quantized")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file at all
        raise ValueError(f"{path}: not a readable safetensors file ({e}); "
                         "expected a vidaccel-quant checkpoint") from None
    fmt, version = meta.get("format"), meta.get("version")
    if fmt != FILE_FORMAT or version != FILE_VERSION:
        raise ValueError(f"{path}: header has format={fmt!r}, version={version!r}; expected format={FILE_FORMAT!r}, "
                         f"version={FILE_VERSION!r} (a checkpoint written by vidaccel save_quantized)")
    for key in ("layers", "role", "model_class"):
        if key not in meta:
            raise ValueError(f"{path}: header lacks {key!r}; expected a complete vidaccel-quant header")
    return meta


def load_quantized(target, folder: str | os.PathLike, *, device: torch.device | str | None = None,
                   role: str | None = None):
    """Load ``folder/<role>.safetensors`` into each transformer of ``target`` (a pipeline or a transformer).

    ``role`` names the file for a bare transformer (default ``"transformer"``; ``"transformer_2"`` for Wan 2.2's
    low-noise expert). ``device``: where the tensors go (default: the model's device, CPU for a meta model).

    Quantized layers are built straight from the stored tensors; every other tensor is assigned in place. When
    the transformer was built with empty (meta) weights (``accelerate.init_empty_weights``, or
    :func:`load_quantized_transformer`), no bf16 copy of the quantized layers is ever made. The result has
    :class:`QuantConfig` applied (``vidaccel.stats`` works) but cannot be removed: there are no originals.

    Raises:
        ValueError: a missing file, a wrong or missing ``format`` / ``version`` header, another model class,
            or tensors that do not fit the model.
    """
    from safetensors import safe_open

    from ..api import _stack

    folder = os.fspath(folder)
    pairs = pipeline_transformers(target)
    if role is not None:
        if not isinstance(target, nn.Module):
            raise ValueError("load_quantized(role=...) is for a bare transformer; a pipeline's roles are its own")
        pairs = [(role, pairs[0][1])]
    for role, model in pairs:
        path = os.path.join(folder, f"{role}.safetensors")
        meta = _read_header(path)
        if meta["model_class"] != type(model).__name__:
            raise ValueError(f"{path}: holds a {meta['model_class']}, but the {role} is a {type(model).__name__}")
        if _technique_of(model) is not None:
            raise ValueError(f"{role} already has QuantConfig applied; load into an unquantized or empty model")
        layers: dict[str, str] = json.loads(meta["layers"])
        cfg_fields = json.loads(meta.get("quant_config", "{}"))
        cfg_fields = {k: v for k, v in cfg_fields.items() if k in QuantConfig.__dataclass_fields__}
        config = QuantConfig(**cfg_fields)
        if device is not None:
            dev = torch.device(device)
        else:
            first = next(iter(model.parameters()), None)
            dev = first.device if first is not None and not first.is_meta else torch.device("cpu")
        with safe_open(path, framework="pt", device=str(dev)) as f:
            keys = set(f.keys())

            def get(key):
                if key not in keys:
                    raise ValueError(f"{path}: tensor {key!r} is missing")
                # clone: safetensors hands out tensors at arbitrary file offsets, and CPU GEMMs round
                # differently on unaligned memory; a fresh allocation makes loaded outputs bit-identical
                return f.get_tensor(key).clone()

            quantized: dict[str, QuantLinear] = {}
            for name, fmt in layers.items():
                try:
                    old = model.get_submodule(name)
                except AttributeError:
                    raise ValueError(f"{path}: layer {name!r} does not exist in the {role}") from None
                if not isinstance(old, nn.Linear):
                    raise ValueError(f"{path}: layer {name!r} is a {type(old).__name__}, expected nn.Linear")
                bias = get(f"{name}.bias") if f"{name}.bias" in keys else None
                if fmt == "nvfp4":
                    qw = NVFP4Weight(get(f"{name}.weight_packed"), get(f"{name}.weight_block_scale"),
                                     get(f"{name}.weight_global_scale").reshape(()), old.in_features)
                    qmodule = NVFP4Linear(qw, bias, backend=config.backend, name=name)
                elif fmt in ("fp8", "fp8-weight"):
                    qw = Fp8Weight(get(f"{name}.weight_fp8"), get(f"{name}.weight_scale"))
                    act = "none" if fmt == "fp8-weight" else config.activations
                    qmodule = Fp8Linear(qw, bias, activations=act, backend=config.backend, name=name)
                else:
                    raise ValueError(f"{path}: layer {name!r} has format {fmt!r}; expected fp8, fp8-weight or nvfp4")
                if (qmodule.out_features, qmodule.in_features) != (old.out_features, old.in_features):
                    raise ValueError(f"{path}: layer {name!r} is {qmodule.out_features}x{qmodule.in_features}, the "
                                     f"model's is {old.out_features}x{old.in_features}")
                _set_child(model, name, qmodule)
                quantized[name] = qmodule
            expected = set(model.state_dict().keys())
            missing = expected - keys
            if missing:
                more = "..." if len(missing) > 5 else ""
                raise ValueError(f"{path}: tensors missing for {sorted(missing)[:5]}{more}")
            quant_keys = {f"{n}.{b}" for n, m in quantized.items() for b in list(m._buffers) + list(m._parameters)}
            rest = {k: get(k) for k in expected - quant_keys}
        model.load_state_dict(rest, strict=False, assign=True)
        technique = QuantizationTechnique(model, config, spec_for(model), role=role,
                                          pipeline=None if isinstance(target, nn.Module) else target)
        technique.loaded = True
        technique.attach_loaded(quantized, layers)
        _stack(model)[technique.name] = technique
    if not isinstance(target, nn.Module):
        from ..pipelines.base import accelerate_pipeline_class

        accelerate_pipeline_class(target)
    return target


def load_quantized_transformer(folder: str | os.PathLike, role: str = "transformer", *,
                               device: torch.device | str | None = None) -> nn.Module:
    """Build the transformer stored in ``folder/<role>.safetensors`` without materializing any bf16 weights.

    The model class and config come from the file's header; parameters are created empty (meta) and then
    assigned the stored tensors. Pass the result to ``WanPipeline.from_pretrained(..., transformer=...)``.
    """
    import diffusers
    from accelerate import init_empty_weights

    path = os.path.join(os.fspath(folder), f"{role}.safetensors")
    meta = _read_header(path)
    cls = getattr(diffusers, meta["model_class"], None)
    if cls is None or "model_config" not in meta:
        raise ValueError(f"{path}: model class {meta['model_class']!r} / config cannot be rebuilt by diffusers")
    config = {k: v for k, v in json.loads(meta["model_config"]).items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)
    model.eval()
    load_quantized(model, folder, device=device, role=role)
    return model


register_preset("fp8", lambda: [QuantConfig(format="fp8")],
                "FP8 e4m3 weights + dynamic per-token FP8 activations (W8A8): ~2x fewer weight bytes")
# NVFP4 preset: the fragile layers of DEFAULT_SKIP stored as FP8 weight-only, except the text embedding, which
# (the largest of them: 8.7 M parameters on Wan2.1-1.3B) goes NVFP4 too. Wan2.1-1.3B weights shrink 3.51x (the
# plain QuantConfig(format="nvfp4") keeps the fragile layers in bf16: 3.39x). Embedded model, 6 prompts
# (benchmarks/RESULTS.md): 32.5 dB, adherence -0.009 vs bf16; the plain config 36.2 dB, -0.009.
NVFP4_PRESET_SKIP = [r"(^|\.)condition_embedder\.image_embedder\.|(^|\.)text_proj$" if "text" in pattern else pattern
                   for pattern, _ in DEFAULT_SKIP]


register_preset("nvfp4", lambda: [QuantConfig(format="nvfp4", skip=list(NVFP4_PRESET_SKIP), skip_format="fp8")],
                "NVFP4 weights (W4A16), fragile layers FP8 weight-only, text embedding NVFP4: ~3.5x fewer "
                "weight bytes")
