"""NVFP4 reference, exactly as NVIDIA specifies it (and as torchao's ``nvfp4_quantize`` computes it).

Format of a weight ``w [N, K]`` (``nn.Linear`` layout):

* ``K`` is zero-padded to ``Kp`` = the next multiple of 16 (the padding quantizes to code 0);
* one fp32 **global scale** per tensor: ``g = amax(|w|) / (6 · 448)`` (1.0 for an all-zero tensor);
* one **block scale** per 16 consecutive values along ``K``, stored as ``float8_e4m3fn``:
  ``s = e4m3(clamp(amax_block / 6 / g, 2^-6, 448))`` (round to nearest even; the lower clamp is
  torchao's ``E4M3_EPS``, the smallest normal e4m3);
* **values** ``e2m1(clamp(w · ((1 / g) / s), ±6))``, round to nearest even, as 4-bit codes
  ``sign<<3 | exponent<<1 | mantissa`` encoding ±{0, 0.5, 1, 1.5, 2, 3, 4, 6};
* **packing**: two codes per ``uint8``, the even index in the low nibble, the odd index in the high nibble
  (torchao's ``pack_uint4``), so ``data`` is ``[N, Kp / 2]`` uint8 and ``block_scale`` ``[N, Kp / 16]``.

Dequantization: ``w[n, k] ≈ value(code[n, k]) · (g · s[n, k // 16])``.
"""

from __future__ import annotations

import torch

__all__ = [
    "BLOCK", "E2M1_MAX", "E4M3_MAX", "E4M3_EPS", "E2M1_VALUES", "e2m1_encode", "e2m1_decode", "pack", "unpack",
    "global_scale", "quantize_weight", "dequantize", "nvfp4_linear_ref", "padded_k",
]

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_EPS = 2.0 ** -6  # torch.finfo(torch.float8_e4m3fn).tiny
#: value of each 4-bit code 0..15 (codes 8..15 are the negatives; code 8 is -0.0)
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                            -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32)

# Rounding to nearest, ties to the even mantissa: boundary → (threshold, ties go up?)
_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def padded_k(k: int) -> int:
    return -(-k // BLOCK) * BLOCK


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` (already clamped to ±6) → uint8 codes 0..15, round to nearest even; the sign bit is kept
    for negative values that round to zero (-0.0), as torchao does."""
    mag = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for threshold, up in _BOUNDS:
        code += (mag >= threshold if up else mag > threshold).to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 → fp32 values."""
    return E2M1_VALUES.to(codes.device)[codes.long()]


def pack(codes: torch.Tensor) -> torch.Tensor:
    """``[..., 2j]`` in the low nibble, ``[..., 2j+1]`` in the high nibble: ``[..., K]`` → ``[..., K / 2]`` uint8."""
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dim must be even to pack two codes per byte, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[..., K / 2]`` uint8 → ``[..., K]`` codes."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def global_scale(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor fp32 scale ``amax / (6 · 448)``; 1.0 when ``amax`` is 0."""
    amax = amax.float()
    return torch.where(amax > 0, amax / (E4M3_MAX * E2M1_MAX), torch.ones_like(amax))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` → (``data [N, Kp/2]`` uint8, ``block_scale [N, Kp/16]`` e4m3, ``global_scale`` 0-d fp32)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or Inf; NVFP4 quantization of non-finite weights is refused")
    n, k = weight.shape
    kp = padded_k(k)
    w = weight.detach().float()
    if kp != k:
        w = torch.nn.functional.pad(w, (0, kp - k))
    g = global_scale(w.abs().amax())
    blocks = w.reshape(n, kp // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=-1)
    s = torch.clamp((block_amax / E2M1_MAX) / g, min=E4M3_EPS, max=E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / g) / s.float()
    scaled = torch.clamp(blocks * reciprocal[..., None], -E2M1_MAX, E2M1_MAX).reshape(n, kp)
    return pack(e2m1_encode(scaled)), s, g


def dequantize(data: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor,
               in_features: int | None = None) -> torch.Tensor:
    """→ fp32 ``[N, in_features]`` (padding dropped)."""
    n = data.shape[0]
    values = e2m1_decode(unpack(data)).reshape(n, -1, BLOCK)
    scales = global_scale.float() * block_scale.float()
    w = (values * scales[..., None]).reshape(n, -1)
    return w if in_features is None else w[:, :in_features]


def nvfp4_linear_ref(x: torch.Tensor, data: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor,
                     in_features: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference W4A16 linear in fp32: ``x [M, K]`` (kept in high precision) → ``[M, N]`` fp32."""
    y = x.float() @ dequantize(data, block_scale, global_scale, in_features).t()
    if bias is not None:
        y = y + bias.float()
    return y
