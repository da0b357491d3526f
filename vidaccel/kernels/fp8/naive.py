"""FP8 (e4m3) reference: the spec the Triton kernels and the ``torch._scaled_mm`` path are tested against.

Format (what :func:`quantize_weight` produces and ``save_quantized`` stores):

* weight ``[N, K]`` (``nn.Linear`` layout, ``N`` = out features) → ``data [N, K]`` ``float8_e4m3fn`` and
  ``scale [N]`` fp32, one per output channel: ``scale = amax(|w[n, :]|) / 448`` (1.0 for an all-zero row);
  ``data = e4m3(clamp(w * (448 / amax), ±448))``, rounded to nearest even. ``w ≈ data * scale[:, None]``.
* activations ``[M, K]`` (``M`` = tokens) quantized dynamically per token the same way
  (:func:`quantize_per_token`), giving ``xq [M, K]`` e4m3 and ``x_scale [M]`` fp32.
* ``y[m, n] = sum_k xq[m, k] * data[n, k] * x_scale[m] * scale[n] (+ bias[n])``, accumulated in fp32.

Non-finite inputs: a token row holding NaN or ±Inf gets ``x_scale = NaN``, so its whole output row is NaN
(propagated, never zeroed). Non-finite *weights* are rejected with ``ValueError`` at quantization time.
"""

from __future__ import annotations

import torch

__all__ = ["FP8_MAX", "quantize_weight", "quantize_per_token", "dequantize", "fp8_linear_ref"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 ``x [R, K]`` → (codes e4m3 ``[R, K]``, scale fp32 ``[R]``, non-finite-row mask ``[R]``)."""
    x = x.float()
    bad = ~torch.isfinite(x).all(dim=-1)
    amax = x.abs().amax(dim=-1)
    amax = torch.where(bad | (amax == 0), torch.ones_like(amax), amax)
    inv = FP8_MAX * torch.reciprocal(amax)  # what `FP8_MAX / amax` computes in torch: two roundings
    q = torch.clamp(x * inv[:, None], -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    scale = amax / FP8_MAX
    return q, scale, bad


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` → (``data [N, K]`` e4m3, ``scale [N]`` fp32); per-output-channel scales."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or Inf; FP8 quantization of non-finite weights is refused")
    q, scale, _ = _rowwise(weight)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` → (``xq [M, K]`` e4m3, ``x_scale [M]`` fp32; NaN for rows holding NaN/Inf)."""
    q, scale, bad = _rowwise(x)
    scale = torch.where(bad, torch.full_like(scale, float("nan")), scale)
    return q, scale


def dequantize(data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``data [R, K]`` e4m3 and ``scale [R]`` → fp32 ``[R, K]``."""
    return data.float() * scale.float()[:, None]


def fp8_linear_ref(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                   activations: str = "dynamic") -> torch.Tensor:
    """Reference FP8 linear in fp32: ``x [M, K]`` → ``[M, N]`` fp32.

    ``activations="dynamic"`` quantizes ``x`` per token (W8A8); ``"none"`` keeps ``x`` as is (W8A16).
    """
    w = dequantize(data, scale)
    if activations == "dynamic":
        xq, xs = quantize_per_token(x)
        xf = dequantize(xq, xs)
    else:
        xf = x.float()
    y = xf @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y
