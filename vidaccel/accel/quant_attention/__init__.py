"""Quantized self-attention (SageAttention2-style) for Wan and CogVideoX, training-free.

Every self-attention call outside ``dense_steps`` / ``dense_layers`` is computed by
:func:`vidaccel.kernels.quant_attention.quant_attention`: Q·Kᵀ in INT8 after smoothing K (its mean over tokens
is subtracted, which leaves softmax unchanged) and Q (its mean returns as an fp32 per-key bias), per-block
scales; P·V in FP8 (e4m3) with an fp32 accumulator, or bf16 (SageAttention2, https://arxiv.org/abs/2411.10958).
q/k/v, the q/k norms and RoPE come from the model family's own computation, exactly as diffusers' processor
does them; only the attention call changes. CogVideoX's text tokens, which lead the sequence, take part (the
quantization blocks restart after them). Cross-attention is untouched; steps and layers that stay exact run the
original processor, so they are bit-identical to the baseline.

Composition:

* with :class:`~vidaccel.SlidingWindowConfig` (in either order of application), windowed calls run the
  block-sparse quantized kernel over the same tile plan (PAROAttention's "block-sparse + low-bit"): the
  sliding-window technique takes its kernel from the model's attention-kernel slot
  (:mod:`vidaccel.core.attention_kernel`), where this technique puts it; its dense steps and layers reach this
  technique's processor, installed underneath every other processor wrapper, and are quantized unless this
  technique's own opt-outs say otherwise;
* with linear-attention layer swapping: swapped layers never reach softmax attention, so they are not quantized;
* with caching and weight quantization: independent (they change other parts of the model).

``vidaccel.stats(pipe)["quant_attention"]`` counts quantized (dense or windowed) and exact calls, per layer.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.QuantAttentionConfig(dense_steps=2))     # or accel="quant-attention"
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["quant_attention"]["transformer"])
"""

from .config import PV_MODES, QuantAttentionConfig

__all__ = ["QuantAttentionConfig", "PV_MODES"]
