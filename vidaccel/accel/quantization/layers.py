"""Which layer gets which format, the module swap itself, and weight-byte accounting."""

from __future__ import annotations

import re

import torch
from torch import nn

from ...core.context_parallel import move_hooks
from ...families import ModelFamily, family_for
from ...kernels.nvfp4 import naive as nvfp4_naive
from .config import QuantConfig
from .modules import Fp8Linear, NVFP4Linear, QuantLinear

__all__ = ["layer_formats", "quantize_linears", "weight_bytes", "estimate_weight_bytes", "set_child",
           "plain_linears", "skip_reason", "canonical_name", "locate"]

#: Children that adapter libraries (peft LoRA / DoRA) add inside a wrapped layer: never quantized themselves.
_ADAPTER_CHILD = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
_BASE_LAYER = re.compile(r"\.base_layer(?=\.|$)")


def canonical_name(name: str) -> str:
    """A layer's name as the model itself spells it: peft's ``.base_layer`` hop removed
    (``blocks.0.attn1.to_q.base_layer`` → ``blocks.0.attn1.to_q``)."""
    return _BASE_LAYER.sub("", name)


def locate(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` holding the layer with canonical ``name``: inside a peft LoRA wrapper that is the
    wrapper's ``base_layer`` (repeated for nested wrappers), else the attribute of the named parent."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    while hasattr(getattr(parent, child), "base_layer") and hasattr(getattr(parent, child), "lora_A"):
        parent, child = getattr(parent, child), "base_layer"
    return parent, child


def family_or_none(model: nn.Module) -> ModelFamily | None:
    """The model's family, or ``None`` for a module that is not a supported transformer (no fragile layers)."""
    try:
        return family_for(model)
    except ValueError:
        return None


def skip_reason(name: str, patterns: list[tuple[str, str]]) -> str | None:
    for pattern, reason in patterns:
        if re.search(pattern, name):
            return reason
    return None


def plain_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(canonical name, module)`` of every plain ``nn.Linear`` (a LoRA wrapper's base layer under the wrapper's
    name; LoRA's own ``lora_A`` / ``lora_B`` layers left out)."""
    return [(canonical_name(n), m) for n, m in model.named_modules()
            if type(m) is nn.Linear and not _ADAPTER_CHILD.search(n)]


def layer_formats(model: nn.Module, config: QuantConfig, plan: dict[str, str] | None) -> tuple[dict, dict]:
    """``({name: fmt}, {skipped name: reason})``; fmt is ``"fp8"``, ``"nvfp4"`` or ``"fp8-weight"``."""
    formats, skipped = {}, {}
    patterns = config.skip_patterns(family_or_none(model))
    for name, _ in plain_linears(model):
        reason = skip_reason(name, patterns)
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


def build_quantized(linear: nn.Linear, fmt: str, config: QuantConfig, name: str) -> QuantLinear:
    if fmt == "nvfp4":
        qmodule = NVFP4Linear.from_linear(linear, backend=config.backend, name=name)
    else:
        activations = "none" if fmt == "fp8-weight" else config.activations
        qmodule = Fp8Linear.from_linear(linear, activations=activations, backend=config.backend, name=name)
    qmodule.compute_dtype = linear.weight.dtype
    return qmodule


@torch.no_grad()
def quantize_linears(module: nn.Module, config: QuantConfig, formats: dict[str, str] | None = None
                     ) -> dict[str, QuantLinear]:
    """Swap the ``nn.Linear`` children of any module in place (the torchao-style ``quantize_``) and return
    ``{name: quantized module}``; each keeps its original in ``.original``. ``formats`` (``{name: "fp8" |
    "fp8-weight" | "nvfp4"}``) defaults to what ``config`` selects (``"mixed"`` without a plan: all NVFP4).
    No technique is attached: nothing to remove, no stats; use :func:`vidaccel.apply` on transformers."""
    if formats is None:
        formats, _ = layer_formats(module, config, config.plan_for("transformer"))
    out = {}
    for name, fmt in formats.items():  # every layer is built before any is swapped: a failure changes nothing
        linear = getattr(*locate(module, name))
        out[name] = build_quantized(linear, fmt, config, name)
        out[name].set_original(linear)
    for name, qmodule in out.items():
        set_child(module, name, qmodule)
        parent, child = locate(module, name)
        if child == "base_layer":  # a LoRA (peft) wrapper: its own layer class knows a quantized base
            from .lora import adopt_wrapper

            adopt_wrapper(parent, qmodule)
    return out


def set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name``; diffusers hooks of the module it replaces move to it (the output projection
    carries context parallelism's gather)."""
    parent, child = locate(model, name)
    move_hooks(getattr(parent, child), module)
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
    formats, _ = layer_formats(model, config, plan)
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

