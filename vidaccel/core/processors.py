"""Swapping attention processors in and out, exactly.

Techniques that change attention (sliding windows, linear attention, causal masks) wrap the processor of
each chosen attention module with a :class:`ProcessorWrapper` and later put the very same original object
back, so removal is exact.

diffusers' ``Attention.forward`` (CogVideoX) drops every keyword argument that is not a parameter of the
processor's ``__call__`` (``image_rotary_emb`` among them), so a wrapper must expose the signature of the
processor it wraps; :func:`wrap_processor` builds the wrapper class with that signature.

Under context parallelism (``transformer.enable_parallelism``) diffusers sets ``_parallel_config`` (and reads
``_attention_backend``) on each attention processor; a wrapper forwards both to the processor it wraps, so the
original processor, which still computes whatever the wrapper hands back to it, runs its parallel attention.
:class:`DispatchProcessor` computes a self-attention through diffusers' dispatcher for models whose own processor
does not (CogVideoX).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable

from torch import nn

from ..families import ModelFamily

__all__ = ["ProcessorWrapper", "wrap_processor", "ProcessorSwap", "DispatchProcessor"]


class ProcessorWrapper:
    """Calls ``self.inner`` (the original processor); subclasses override :meth:`__call__`.

    Args:
        inner: the processor being wrapped.
        layer: index of the block whose attention this is.
    """

    #: Attention-backend settings pass through this processor to ``inner`` (see :func:`innermost`).
    forwards_attention = True
    #: Correct under context parallelism (a subclass that computes attention itself without diffusers'
    #: dispatcher over this rank's tokens only sets it False; ``enable_parallelism`` then refuses).
    context_parallel = True

    def __init__(self, inner, layer: int):
        self.inner = inner
        self.layer = layer

    def __call__(self, attn, *args, **kwargs):
        return self.inner(attn, *args, **kwargs)

    def bind(self, attn, *args, **kwargs) -> dict:
        """This call's arguments by name, as the wrapped processor's ``__call__`` would receive them."""
        return _signature(type(self.inner)).bind(self.inner, attn, *args, **kwargs).arguments

    # diffusers' context parallelism reads / sets these two on every attention processor: forward them to the
    # wrapped processor (a wrapper of a processor without them keeps its own).
    @property
    def _parallel_config(self):
        if hasattr(self.inner, "_parallel_config"):
            return self.inner._parallel_config
        return self.__dict__.get("_own_parallel_config")

    @_parallel_config.setter
    def _parallel_config(self, value):
        if hasattr(self.inner, "_parallel_config"):
            self.inner._parallel_config = value
        else:
            self.__dict__["_own_parallel_config"] = value

    @property
    def _attention_backend(self):
        return getattr(self.inner, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        if hasattr(self.inner, "_attention_backend"):
            self.inner._attention_backend = value


@functools.lru_cache(maxsize=None)
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.__call__)


@functools.lru_cache(maxsize=None)
def _with_signature(wrapper_cls: type, inner_cls: type) -> type:
    signature = _signature(inner_cls)

    def __call__(self, *args, **kwargs):
        return wrapper_cls.__call__(self, *args, **kwargs)

    __call__.__signature__ = signature
    return type(wrapper_cls.__name__, (wrapper_cls,), {"__call__": __call__, "__module__": wrapper_cls.__module__})


def wrap_processor(wrapper_cls: type[ProcessorWrapper], inner, layer: int, **kwargs) -> ProcessorWrapper:
    """An instance of ``wrapper_cls`` around ``inner`` whose ``__call__`` has ``inner``'s signature."""
    return _with_signature(wrapper_cls, type(inner))(inner, layer, **kwargs)


class ProcessorSwap:
    """Replaces the self-attention processors of chosen layers and restores the originals exactly.

    Args:
        family: the model family.
        model: the transformer.
        make: ``make(original_processor, layer_index) -> new processor``.
        layers: indices of the blocks to change (all when ``None``).
        innermost: wrap the model's own processor underneath any :class:`ProcessorWrapper` already installed,
            instead of the outermost one. For a wrapper that only changes *how* the remaining softmax
            attention is computed (quantized attention): wrappers that decide *what* is computed (windows,
            linear attention) then stay outside it and see every call first, whatever the order of
            application. :func:`vidaccel.remove` detaches in reverse order of application, so the chain it
            was inserted into is intact when it is taken out.
    """

    def __init__(self, family: ModelFamily, model: nn.Module, make: Callable, layers: Iterable[int] | None = None,
                 innermost: bool = False):
        self.family = family
        self.model = model
        self.make = make
        self.layers = None if layers is None else sorted(set(layers))
        self.innermost = innermost
        self.originals: dict[int, object] = {}
        self.installed: dict[int, object] = {}
        self.parents: dict[int, ProcessorWrapper | None] = {}

    def attach(self) -> None:
        for i, attn in self.family.self_attentions(self.model):
            if self.layers is not None and i not in self.layers:
                continue
            parent, processor = None, attn.processor
            # down to the processor that computes attention (a DispatchProcessor under context parallelism)
            while self.innermost and getattr(processor, "forwards_attention", False):
                parent, processor = processor, processor.inner
            self.originals[i] = processor
            self.parents[i] = parent
            self.installed[i] = self.make(processor, i)
            if parent is None:
                attn.set_processor(self.installed[i])
            else:
                parent.inner = self.installed[i]

    def detach(self) -> None:
        blocks = self.family.blocks(self.model)
        for i, original in self.originals.items():
            # the wrapper's inner is the original unless context parallelism put a dispatching processor there
            restored = getattr(self.installed.get(i), "inner", original)
            parent = self.parents.get(i)
            if parent is None:
                getattr(blocks[i], self.family.self_attn_attr).set_processor(restored)
            else:
                parent.inner = restored
        self.originals.clear()
        self.installed.clear()
        self.parents.clear()


class DispatchProcessor(ProcessorWrapper):
    """A self-attention computed from the family's q/k/v through diffusers' dispatcher, so that context
    parallelism and per-processor backends apply; other calls (cross-attention, masks) go to the wrapped processor.

    Numerically the model's own processor: the family computes q/k/v, norms and RoPE exactly as it does, and
    diffusers' ``native`` backend is the same ``scaled_dot_product_attention`` call.

    Args:
        inner: the model's processor.
        layer: block index.
        family: the model family.
    """

    forwards_attention = False

    def __init__(self, inner, layer: int, family: ModelFamily):
        super().__init__(inner, layer)
        self.family = family
        self.__dict__["_own_backend"] = None
        self.__dict__["_own_parallel_config"] = None

    @property
    def _parallel_config(self):
        return self.__dict__["_own_parallel_config"]

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.__dict__["_own_parallel_config"] = value

    @property
    def _attention_backend(self):
        return self.__dict__["_own_backend"]

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.__dict__["_own_backend"] = value

    def __call__(self, attn, *args, **kwargs):
        call = self.bind(attn, *args, **kwargs)
        inputs = self.family.self_attention_inputs(attn, call) if call.get("attention_mask") is None else None
        if inputs is None:
            if self._parallel_config is not None:
                raise ValueError(f"layer {self.layer}: {type(self.inner).__name__} cannot run this call (a mask or "
                                 "cross-attention) under context parallelism")
            return self.inner(attn, *args, **kwargs)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        q, k = inputs.rotated()
        out = dispatch_attention_fn(q, k, inputs.v, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return self.family.attention_output(attn, out, inputs)
