"""Kernel backend names (and other option names) per op, importable without torch, so configs validate
against them without loading any kernel.

Every op has ``"auto"`` (the best backend for the tensors' device), ``"triton"`` (vidaccel's kernel) and
``"torch"`` (plain torch: the reference every other backend is tested against, and the fallback).
"""

#: Attention: ``"flex"`` is torch's flex_attention with a block mask; ``"gather"`` runs SDPA on each query
#: tile's gathered window keys (the CPU default for sliding-tile attention).
ATTENTION = ("auto", "triton", "flex", "gather", "torch")
LINEAR_ATTENTION = ("auto", "triton", "torch")
#: Linear-attention feature maps: the fixed ``elu`` (elu + 1) and ``relu``, and the learnable ``hedgehog``.
LINEAR_ATTENTION_FEATURE_MAPS = ("elu", "relu", "hedgehog")
#: FP8 GEMM: ``"scaled_mm"`` is ``torch._scaled_mm`` (CPU, sm89+).
FP8 = ("auto", "scaled_mm", "triton", "torch")
#: NVFP4 W4A16: ``"dequant"`` dequantizes the weight with a Triton kernel and runs a dense GEMM.
NVFP4 = ("auto", "triton", "dequant", "torch")
#: Quantized attention (INT8 Q·Kᵀ, FP8 P·V): ``"torch"`` runs the same quantized numerics in plain torch.
QUANT_ATTENTION = ("auto", "triton", "torch")
REFERENCE = "torch"
