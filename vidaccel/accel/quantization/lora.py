"""LoRA (peft / diffusers ``load_lora_weights``) on vidaccel's quantized layers, in both orders.

A LoRA layer over a quantized base runs QLoRA-style: ``y = quant_gemm(x) + lora_B(lora_A(x)) * scale``, the
base through vidaccel's FP8 / NVFP4 kernel and the low-rank branch in the LoRA parameters' dtype (the
model's: bf16 / fp32). Everything peft and diffusers do with adapters keeps working:

* **LoRA loaded, then** ``QuantConfig`` applied: only each LoRA wrapper's ``base_layer`` is quantized (never
  ``lora_A`` / ``lora_B``), under the wrapper's own name, so skip rules and stats read as without a LoRA; the
  wrapper becomes a :class:`QuantLoraLinear`.
* ``QuantConfig`` applied, **then** a LoRA loaded: peft's dispatch builds a :class:`QuantLoraLinear` around the
  quantized layer (vidaccel adds this one rule to peft's ``LoraModel._create_new_module`` when quantization is
  first applied; every other layer type goes through peft's own dispatch unchanged).
* ``set_adapters(..., adapter_weights=...)`` / scale changes act at once (the branch is computed each call).
* ``fuse_lora``: the quantized weight becomes ``quant(W + ΣΔW)``, from the kept original weight when there is
  one (``keep_original="cpu"/"device"``), else from the dequantized weight (a second rounding);
  ``unfuse_lora`` restores the pre-fuse quantized tensors exactly.
* ``unload_lora_weights`` leaves the quantized layer in the wrapper's place; :func:`vidaccel.remove` finds
  quantized layers wherever they sit and puts the original ``nn.Linear`` back there (outputs bit-identical to
  the model that was never quantized, with or without its LoRA).

Refused with a message: removing quantization while a LoRA is fused into quantized weights (``unfuse_lora()``
first), unfusing a LoRA that was fused *before* quantization (remove quantization first), and fusing DoRA.

Example::

    pipe.load_lora_weights("my-wan-lora", adapter_name="style")
    vidaccel.apply(pipe, vidaccel.QuantConfig(format="fp8"))     # or apply first, then load the LoRA
    pipe.set_adapters(["style"], adapter_weights=[0.8])
    video = pipe("a cat surfing a wave").frames[0]
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .modules import Fp8Linear, QuantLinear
from ...kernels.fp8.wrapper import Fp8Weight
from ...kernels.nvfp4.wrapper import NVFP4Weight

logger = logging.getLogger(__name__)

__all__ = ["QuantLoraLinear", "install_peft_dispatch", "adopt_wrapper", "release_wrapper", "has_lora_layers"]

try:
    from peft.tuners.lora.layer import Linear as _PeftLinear
    from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
except ImportError:  # peft is optional: without it no LoRA wrapper can exist
    _PeftLinear = None


def has_lora_layers(model: nn.Module) -> bool:
    """``model`` holds a peft adapter layer (a LoRA wrapper)."""
    return _PeftLinear is not None and any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _compute_dtype(q: QuantLinear) -> torch.dtype:
    if q.bias is not None:
        return q.bias.dtype
    return getattr(q, "compute_dtype", None) or torch.float32


def _quant_device(q: QuantLinear) -> torch.device:
    return next(iter(q._buffers.values())).device


def _requantize(q: QuantLinear, w: torch.Tensor) -> None:
    """Overwrite ``q``'s quantized tensors with ``quant(w)`` in ``q``'s own format (the rule of ``from_linear``)."""
    if isinstance(q, Fp8Linear):
        qw = Fp8Weight.from_float(w)
        q.weight_fp8, q.weight_scale = qw.data, qw.scale
    else:
        qw = NVFP4Weight.from_float(w)
        q.weight_packed, q.weight_block_scale = qw.data, qw.block_scale
        q.weight_global_scale = qw.global_scale.reshape(())


if _PeftLinear is not None:

    class QuantLoraLinear(_PeftLinear):
        """peft's LoRA ``Linear`` over a vidaccel :class:`QuantLinear` (which has no ``.weight``)."""

        def __init__(self, base_layer, adapter_name, config, **kwargs):
            with warnings.catch_warnings():  # peft finds in/out features by duck typing and warns that it did
                warnings.filterwarnings("ignore", message="Unsupported layer type")
                super().__init__(base_layer, adapter_name, config=config, **kwargs)

        def _get_base_layer_device_and_dtype(self, base_layer):
            # peft reads base.weight / base.qweight; ours is a dataclass, and e4m3 must not become the LoRA dtype
            if isinstance(base_layer, QuantLinear):
                return _quant_device(base_layer), _compute_dtype(base_layer)
            return super()._get_base_layer_device_and_dtype(base_layer)

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            base = self.get_base_layer()
            if not isinstance(base, QuantLinear):
                return super().merge(safe_merge, adapter_names)
            adapter_names = check_adapters_to_merge(self, adapter_names)
            new = [a for a in adapter_names if a in self.lora_A]
            if not new:
                return
            if any(a in self.lora_variant for a in new):
                raise ValueError(f"fusing a DoRA / variant adapter ({new}) into a vidaccel quantized layer is not "
                                 "supported; keep it unfused (the LoRA branch runs beside the quantized GEMM)")
            fused = list(base.lora_fused)
            if not fused:  # the pre-fuse quantized tensors: unfuse restores them exactly
                base.prefuse = {n: base._buffers[n] for n in base._quant_buffers}
            original = base.original
            if original is not None:  # exact: quant(W + every adapter fused since quantization)
                w = original.weight.detach().to(_quant_device(base), torch.float32)
                adding = fused + new
            else:
                w = base.qweight.dequantize().float()
                adding = new
            for a in adding:
                w = w + self.get_delta_weight(a).float().to(w.device)
            if safe_merge and not torch.isfinite(w).all():
                raise ValueError(f"NaNs detected in the merged weights of {base.name}; adapters {new} seem broken")
            _requantize(base, w)
            base.lora_fused = fused + new
            self.merged_adapters.extend(new)

        def unmerge(self) -> None:
            base = self.get_base_layer()
            if not isinstance(base, QuantLinear):
                return super().unmerge()
            if not self.merged:
                return
            before = [a for a in self.merged_adapters if a in base.lora_fused_before]
            if before:
                raise RuntimeError(f"{base.name}: adapters {before} were fused before quantization, so the quantized "
                                   "weights cannot be unfused; vidaccel.remove(pipe, QuantConfig) first, then "
                                   "unfuse_lora()")
            for n, t in base.prefuse.items():
                base._buffers[n] = t
            base.prefuse = None
            base.lora_fused = []
            self.merged_adapters.clear()

else:  # pragma: no cover - peft missing
    QuantLoraLinear = None


def adopt_wrapper(wrapper: nn.Module, qmodule: QuantLinear) -> None:
    """``qmodule`` just became ``wrapper.base_layer``: make the wrapper a :class:`QuantLoraLinear` and remember
    which adapters were already fused into the weights being quantized."""
    qmodule.lora_fused_before = tuple(getattr(wrapper, "merged_adapters", ()))
    if _PeftLinear is not None and type(wrapper) is _PeftLinear:
        wrapper.__class__ = QuantLoraLinear


def release_wrapper(wrapper: nn.Module) -> None:
    """The original layer is back in ``wrapper.base_layer``: peft's own class again."""
    if QuantLoraLinear is not None and type(wrapper) is QuantLoraLinear:
        wrapper.__class__ = _PeftLinear


_INSTALLED = False


def install_peft_dispatch() -> None:
    """Teach peft's LoRA dispatch (``LoraModel._create_new_module``) to wrap vidaccel quantized layers in a
    :class:`QuantLoraLinear`; targets of every other type go to peft's dispatch unchanged. Idempotent; a no-op
    without peft."""
    global _INSTALLED
    if _INSTALLED or _PeftLinear is None:
        return
    from peft.tuners.lora import LoraModel

    original = LoraModel.__dict__["_create_new_module"].__func__

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, QuantLinear) and kwargs.get("parameter_name") is None:
            kwargs.pop("parameter_name", None)
            return QuantLoraLinear(target, adapter_name, config=lora_config, **kwargs)
        return original(lora_config, adapter_name, target, **kwargs)

    _create_new_module.__wrapped__ = original
    LoraModel._create_new_module = staticmethod(_create_new_module)
    _INSTALLED = True
