"""Linear-attention layer swapping with learned layer selection and data-free distillation (LinVideo).

LinVideo (https://arxiv.org/abs/2510.08318) replaces a chosen number of a video model's self-attention
layers by linear attention, picks *which* by measuring, and recovers quality from the model's own samples,
no data set needed. Here:

* :class:`LinearAttentionConfig` replaces the self-attention of chosen blocks (``layers=[...]``, or
  ``layers="auto"`` with ``num_layers=k``) by linear attention
  (:func:`vidaccel.kernels.linear_attention.linear_attention`). q/k/v, the q/k norms and the output
  projection are the layer's own; only the attention computation changes. Cross-attention is untouched.
  CogVideoX's text tokens, which lead its self-attention sequence, are part of the linear attention
  (queries and keys) like any token.
* Selection (``layers="auto"``): sample trajectories from the original model (its own denoising inputs on a
  few prompts), then for each layer alone swap it and measure the relative error of the transformer's final
  output over those inputs; the ``k`` least sensitive layers are swapped. The ranking and the errors are in
  :func:`vidaccel.stats` and in the adapter file.
* Distillation: :func:`linearize` trains only the new parameters (the Hedgehog feature maps) to match each
  swapped layer's original attention output on the original model's trajectories (teacher forcing: every
  layer sees the teacher's inputs), optionally plus the final output of the fully swapped model. It uses
  ``accelerate`` (one GPU or many: trajectories are sharded and gradients averaged), shows a progress bar,
  is resumable (``checkpoint_dir`` + ``resume=True``) and saves a small safetensors adapter that
  ``LinearAttentionConfig(adapter=path)`` loads (so ``vidaccel.apply`` and ``from_pretrained(accel=...)``
  take it).

Feature maps: ``"elu"`` (elu+1), ``"relu"`` (fixed, nothing to train) and ``"hedgehog"`` (learnable per-head
map, softmax over ``[xW+b, -(xW+b)]``, initialised to approximate softmax attention's kernel).

RoPE (``rope="numerator"``, the default): the feature map sees the *unrotated* (normed) q and k; the
numerator then rotates the features with the layer's own RoPE table (``φ(q)`` and ``φ(k)`` pairs rotated as
diffusers rotates q and k; Hedgehog's ``2D`` features are two ``D`` halves, each rotated), while the
denominator keeps the plain, non-negative features. Why: Wan has no other positional signal, so a
position-blind layer cannot reproduce the local, position-dependent mixing of video attention; rotating
inside the feature map instead would break φ's non-negativity (and with it the normaliser), and rotating
the denominator too would let it reach zero. This is the "RoPE in the numerator only" form of RoFormer's
linear attention. ``rope="none"`` ignores positions. CogVideoX rotates only video tokens, as diffusers does.
On a CUDA GPU without gradients the fused Triton kernels compute the features and the rotation in registers
(the RoPE tables go in as ``(cos, sin)``, identity rows for CogVideoX's text); when distilling, torch does.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    result = vidaccel.linearize(pipe, vidaccel.LinearAttentionConfig(layers="auto", num_layers=3),
                                prompts=["a red circle moving right on a black background"], steps=200,
                                output="linear.safetensors")
    vidaccel.apply(pipe, vidaccel.LinearAttentionConfig(adapter="linear.safetensors"))
    frames = pipe("a blue square moving left on a gray background").frames[0]
"""

from __future__ import annotations

import importlib

from .adapter import ADAPTER_FORMAT, read_adapter_metadata
from .config import LinearAttentionConfig

__all__ = ["LinearAttentionConfig", "linearize", "LinearizeResult", "rank_layers", "record_trajectories",
           "layer_output_error", "save_adapter", "read_adapter_metadata", "ADAPTER_FORMAT"]

_LAZY = {"linearize": ".distill", "LinearizeResult": ".distill", "layer_output_error": ".distill",
         "rank_layers": ".selection", "record_trajectories": ".selection", "save_adapter": ".adapter"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
