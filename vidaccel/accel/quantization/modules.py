"""The quantized ``nn.Linear`` replacements (:class:`Fp8Linear`, :class:`NVFP4Linear`) and the per-layer SQNR probe."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...kernels._backend import check_linear_input
from ...kernels.fp8.wrapper import Fp8ActivationCache, Fp8Weight, fp8_linear
from ...kernels.nvfp4.wrapper import NVFP4Weight, nvfp4_linear

__all__ = ["QuantLinear", "Fp8Linear", "NVFP4Linear", "SqnrProbe"]


class SqnrProbe:
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
        self.probe: SqnrProbe | None = None
        #: dtype of the layer this one replaced (a LoRA branch beside it runs in it); ``None`` if unknown
        self.compute_dtype: torch.dtype | None = None
        #: LoRA adapters fused into the quantized tensors since quantization, and the tensors before that
        #: (see :mod:`.lora`); adapters that were fused into the weights before they were quantized
        self.lora_fused: list[str] = []
        self.prefuse: dict[str, torch.Tensor] | None = None
        self.lora_fused_before: tuple[str, ...] = ()
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
    """``nn.Linear`` with an FP8 weight (:class:`~vidaccel.kernels.fp8.Fp8Weight`); see :func:`fp8_linear`.

    ``act_cache``: an :class:`~vidaccel.kernels.fp8.Fp8ActivationCache` shared with the layers that read the same
    input right after this one (q, k, v of one attention), so dynamic activations are quantized once for all of
    them (the same numbers as each quantizing its own). Not used inside ``torch.compile``, whose graphs hold no
    Python-side tensor state. ``None``: this layer quantizes its input itself.
    """

    fmt = "fp8"
    _quant_buffers = ("weight_fp8", "weight_scale")

    def __init__(self, qweight: Fp8Weight, bias=None, *, activations="dynamic", backend="auto", name=""):
        super().__init__(qweight.in_features, qweight.out_features, bias, name)
        self.register_buffer("weight_fp8", qweight.data)
        self.register_buffer("weight_scale", qweight.scale)
        self.activations = activations
        self.backend = backend
        self.act_cache: Fp8ActivationCache | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "Fp8Linear":
        return cls(Fp8Weight.from_float(linear.weight), linear.bias, **kwargs)

    @property
    def qweight(self) -> Fp8Weight:
        return Fp8Weight(self.weight_fp8, self.weight_scale)

    def _forward(self, x):
        cache = self.act_cache
        if cache is not None and self.activations == "dynamic" and not torch.compiler.is_compiling():
            check_linear_input(x, self.in_features)  # before quantizing: a wrong input fails as without the cache
            x = cache(x)
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

