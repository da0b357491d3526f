"""Public FP8 ops: :class:`Fp8Weight`, :func:`quantize_per_token` and :func:`fp8_linear`.

Backends (``backend=``):

* ``"scaled_mm"`` — ``torch._scaled_mm`` with row-wise scales (CPU; CUDA sm89+ with ``K`` and ``N``
  multiples of 16). Activations are quantized by the Triton kernel on CUDA, by torch on CPU.
* ``"triton"`` — vidaccel's Triton kernels: fused per-token quantization + FP8 GEMM (GPU, or CPU under
  ``TRITON_INTERPRET=1`` for tests).
* ``"torch"`` — the fp32 reference of :mod:`.naive` (dequantize, then matmul). Always available.
* ``"auto"`` — ``scaled_mm`` where the device supports it, else ``triton`` on an sm89+ GPU, else ``torch``
  (pre-Ada GPUs have no e4m3 support: FP8 then runs the reference path, correct but not faster; prefer
  NVFP4 W4A16 or ``activations="none"`` there).

Sharing one quantization of the activations: :func:`quantize_activation` returns an :class:`Fp8Activation` that
:func:`fp8_linear` accepts in place of ``x`` (q, k and v projections of the same hidden states quantize them
once); :class:`Fp8ActivationCache` does that for layers called one after another on the same tensor.
:meth:`Fp8Weight.concat` builds one weight for fused projections (per-channel scales: same numbers as apart).

The Triton GEMM promotes its FP8 accumulator every ``PROMOTE_K = 128`` K elements on Hopper. Its launch
configuration is pinned by ``VIDACCEL_FP8_CONFIG="BLOCK_M,BLOCK_N,BLOCK_K,num_warps,num_stages"`` (for measuring).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .. import backend_names
from .._backend import check_linear_input, kernel_module, triton_available, triton_interpreting
from .._pinned import pinned_config
from . import naive

logger = logging.getLogger(__name__)

__all__ = ["Fp8Weight", "Fp8Activation", "Fp8ActivationCache", "quantize_per_token", "quantize_activation", "fp8_gemm",
           "fp8_linear", "BACKENDS", "scaled_mm_supported"]

BACKENDS = backend_names.FP8
_ACTIVATIONS = ("dynamic", "none")
#: K elements the FP8 tensor core sums before the partial sum is promoted to the fp32 accumulator (Hopper)
PROMOTE_K = 128
#: environment variable pinning the Triton FP8 GEMM's launch configuration
CONFIG_ENV = "VIDACCEL_FP8_CONFIG"


def kernels():
    return kernel_module(os.path.join(os.path.dirname(__file__), "triton_kernel.py"), "vidaccel.kernels.fp8.triton_kernel")


@dataclass
class Fp8Weight:
    """An FP8 weight: ``data [N, K]`` ``float8_e4m3fn`` and per-output-channel ``scale [N]`` fp32.

    ``weight ≈ data.float() * scale[:, None]``; see :mod:`vidaccel.kernels.fp8.naive` for the exact rule.
    """

    data: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self):
        if self.data.dtype != torch.float8_e4m3fn or self.data.dim() != 2:
            raise ValueError(f"Fp8Weight.data must be a 2-D float8_e4m3fn tensor, got {self.data.dtype} "
                             f"{tuple(self.data.shape)}")
        if self.scale.shape != (self.data.shape[0],) or self.scale.dtype != torch.float32:
            raise ValueError(f"Fp8Weight.scale must be float32 of shape ({self.data.shape[0]},), got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "Fp8Weight":
        data, scale = naive.quantize_weight(weight.detach())
        return cls(data.contiguous(), scale.contiguous())

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.data.shape[1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dequantize(self) -> torch.Tensor:
        return naive.dequantize(self.data, self.scale)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4

    @classmethod
    def concat(cls, weights: list["Fp8Weight"]) -> "Fp8Weight":
        """One weight ``[N1 + N2 + ..., K]`` from several with the same ``K`` (e.g. q, k, v for a fused projection).

        Scales are per output channel, so the concatenation computes exactly what the parts compute apart.
        """
        if not weights:
            raise ValueError("Fp8Weight.concat needs at least one weight, got an empty list")
        ks = {w.in_features for w in weights}
        if len(ks) != 1:
            raise ValueError(f"Fp8Weight.concat needs weights with the same in_features, got {sorted(ks)}")
        return cls(torch.cat([w.data for w in weights]), torch.cat([w.scale for w in weights]))


@dataclass
class Fp8Activation:
    """Activations quantized per token, reusable by every FP8 linear that reads the same input.

    Attributes:
        data: ``[M, K]`` float8_e4m3fn, ``M`` = tokens (all leading dims of the input flattened).
        scale: ``[M]`` fp32 (NaN for a token holding NaN/Inf).
        shape: the input's shape ``[..., K]`` (the output keeps its leading dims).
        dtype: the input's dtype (the output's dtype).
    """

    data: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype

    def __post_init__(self):
        self.shape = torch.Size(self.shape)
        if self.data.dtype != torch.float8_e4m3fn or self.data.dim() != 2:
            raise ValueError(f"Fp8Activation.data must be a 2-D float8_e4m3fn tensor, got {self.data.dtype} "
                             f"{tuple(self.data.shape)}")
        if self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (self.data.shape[0],):
            raise ValueError(f"Fp8Activation.scale must be float32 of shape ({self.data.shape[0]},), got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")
        if len(self.shape) < 1 or self.shape[-1] != self.data.shape[1] or \
                self.shape[:-1].numel() != self.data.shape[0]:
            raise ValueError(f"Fp8Activation.shape={tuple(self.shape)} does not match data of shape "
                             f"{tuple(self.data.shape)} (leading dims must flatten to M, the last dim is K)")
        if not self.dtype.is_floating_point:
            raise ValueError(f"Fp8Activation.dtype must be a floating-point dtype, got {self.dtype}")

    @property
    def in_features(self) -> int:
        return self.data.shape[1]


def quantize_activation(x: torch.Tensor, backend: str = "auto") -> Fp8Activation:
    """Quantize ``x [..., K]`` per token once, for several :func:`fp8_linear` calls (``backend`` as there)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"x must be a floating-point tensor [..., K], got {getattr(x, 'dtype', type(x))} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    _check_backend(backend)
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if backend == "torch":
        xq, xs = naive.quantize_per_token(x2)
    else:
        xq, xs = quantize_per_token(x2, backend="triton" if backend == "triton" else "auto")
    return Fp8Activation(xq, xs, x.shape, x.dtype)


class Fp8ActivationCache:
    """Quantizes a tensor once for FP8 linears called one after another on it (q, k, v of one attention).

    ``cache(x)`` returns the :class:`Fp8Activation` of ``x``, recomputed only when ``x`` is a different tensor
    object or was modified in place since (its ``_version``). It holds a reference to the last ``x`` until the
    next call or :meth:`reset`. Tensors made under ``torch.inference_mode`` carry no version counter, so an
    in-place change cannot be seen: they are quantized on every call.

    Example::

        cache = Fp8ActivationCache()
        q, k, v = (fp8_linear(cache(h), w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))  # one quantization
    """

    def __init__(self, backend: str = "auto"):
        _check_backend(backend)
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self.reset_entry()
        self.quantizations = 0

    def __call__(self, x: torch.Tensor) -> Fp8Activation:
        if not isinstance(x, torch.Tensor) or x.is_inference():
            act = quantize_activation(x, self.backend)  # raises ValueError for a non-tensor
            self.reset_entry()
            self.quantizations += 1
            return act
        if x is not self._x or x._version != self._version:
            self._act = quantize_activation(x, self.backend)
            self._x, self._version = x, x._version
            self.quantizations += 1
        return self._act

    def reset_entry(self) -> None:
        """Drop the held tensor and its quantization (the count stays)."""
        self._x, self._version, self._act = None, -1, None


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")


def _need_triton(device: torch.device) -> None:
    if not triton_available(device):
        raise ValueError(f"backend='triton' cannot launch on {device}: it needs a CUDA GPU, or TRITON_INTERPRET=1 "
                         "on CPU")


def triton_fp8_supported(device: torch.device) -> bool:
    """vidaccel's FP8 Triton kernels can run: the interpreter, or a CUDA GPU with e4m3 support (sm89+)."""
    if not triton_available(device):
        return False
    if triton_interpreting():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def scaled_mm_supported(device: torch.device, k: int, n: int) -> bool:
    """``torch._scaled_mm`` with row-wise FP8 scales runs here: CPU always; CUDA sm89+ with K, N % 16 == 0."""
    if not hasattr(torch, "_scaled_mm"):
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9) and k % 16 == 0 and n % 16 == 0
    return False


def quantize_per_token(x: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token FP8 quantization.

    Args:
        x: ``[M, K]`` activations (fp32 / bf16 / fp16), ``M`` tokens.
        backend: ``"triton"`` (fused kernel), ``"torch"`` (the spec) or ``"auto"`` (Triton on CUDA).

    Returns:
        ``xq [M, K]`` float8_e4m3fn and ``x_scale [M]`` fp32 (NaN for a row holding NaN/Inf).
    """
    _check_backend(backend)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if backend == "auto":
        backend = "triton" if x.device.type == "cuda" and triton_fp8_supported(x.device) else "torch"
    if backend in ("torch", "scaled_mm"):
        return naive.quantize_per_token(x)
    _need_triton(x.device)
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    if triton_interpreting():  # many rows per program: the interpreter's cost is per program
        block_k = min(max(16, 1 << (k - 1).bit_length()), 64)
        c = dict(BLOCK_M=64, BLOCK_K=block_k, SINGLE_PASS=k <= block_k)
    else:
        c = quant_config(k)
    kernels().quant_per_token_kernel[(triton_cdiv(m, c["BLOCK_M"]),)](
        x, q, s, m, k, x.stride(0), x.stride(1), q.stride(0), q.stride(1), FP8_MAX=naive.FP8_MAX, **c,
    )
    return q, s


def quant_config(k: int) -> dict:
    """GPU launch of the per-token quantization for rows of ``k`` values: one row per program, the whole row in
    one tile up to K = 16384 (read from memory once: ``SINGLE_PASS``)."""
    block_k = min(max(16, 1 << (k - 1).bit_length()), 16384)
    warps = 4 if block_k <= 2048 else 8 if block_k <= 8192 else 16
    return dict(BLOCK_M=1, BLOCK_K=block_k, SINGLE_PASS=k <= block_k, num_warps=warps)


_SCALED_MM_FAILED: set[tuple[str, int | None]] = set()


def _device_key(device: torch.device) -> tuple[str, int | None]:
    return (device.type, device.index if device.index is not None else (
        torch.cuda.current_device() if device.type == "cuda" else None))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gemm_config(m: int) -> dict:
    """Launch configuration of the Triton FP8 GEMM for ``m`` tokens (both archs; static figures in
    benchmarks/results/gpu_static_quant_linear.md)."""
    if m <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3)


def _gemm_blocks(m: int, n: int, k: int) -> dict:
    pinned = pinned_config(CONFIG_ENV)
    if pinned is not None:
        return pinned
    if triton_interpreting():  # big tiles: the interpreter's cost is per program, not per element
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8)
    return gemm_config(m)


def fp8_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None,
             out_dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """``(xq [M, K] e4m3 · x_scale [M]) @ (weight.data [N, K] · weight.scale [N])^T (+ bias [N])`` → ``[M, N]``."""
    _check_backend(backend)
    m, k = xq.shape
    n = weight.out_features
    if weight.in_features != k:
        raise ValueError(f"x has K={k} features but the weight expects {weight.in_features}")
    dev = xq.device
    auto = backend == "auto"
    if auto:
        backend = ("scaled_mm" if scaled_mm_supported(dev, k, n) and _device_key(dev) not in _SCALED_MM_FAILED
                   else "triton" if dev.type == "cuda" and triton_fp8_supported(dev) else "torch")
    if backend == "torch":
        y = naive.dequantize(xq, x_scale) @ weight.dequantize().t()
        if bias is not None:
            y = y + bias.float()
        return y.to(out_dtype)
    if backend == "scaled_mm":
        if not scaled_mm_supported(dev, k, n):
            raise ValueError(f"backend='scaled_mm' is not supported on {dev} for K={k}, N={n}")
        mm_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
        try:
            y = torch._scaled_mm(xq, weight.data.t(), scale_a=x_scale[:, None], scale_b=weight.scale[None, :],
                                 out_dtype=mm_dtype)
        except RuntimeError as e:
            if not auto:
                raise
            # some torch builds / GPUs lack row-wise scaling (e.g. sm89 in older torch): never ask again here
            logger.warning("torch._scaled_mm with row-wise scales failed on %s (%s); using %s FP8 GEMM instead",
                           dev, e, "Triton" if triton_fp8_supported(dev) else "the reference")
            _SCALED_MM_FAILED.add(_device_key(dev))
            return fp8_gemm(xq, x_scale, weight, bias, out_dtype, backend="auto")
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.to(out_dtype)
    _need_triton(dev)
    c = torch.empty((m, n), dtype=out_dtype, device=dev)
    if m == 0:
        return c
    blocks = _gemm_blocks(m, n, k)
    grid = (triton_cdiv(m, blocks["BLOCK_M"]) * triton_cdiv(n, blocks["BLOCK_N"]),)
    kernels().fp8_gemm_kernel[grid](
        xq, weight.data, x_scale, weight.scale, bias if bias is not None else x_scale, c,
        m, n, k, xq.stride(0), xq.stride(1), weight.data.stride(0), weight.data.stride(1), c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None, EVEN_K=k % blocks["BLOCK_K"] == 0,
        PROMOTE_K=min(PROMOTE_K, blocks["BLOCK_K"]), **blocks,
    )
    return c


def fp8_linear(x: torch.Tensor | Fp8Activation, qweight: Fp8Weight, bias: torch.Tensor | None = None, *,
               activations: str = "dynamic", backend: str = "auto") -> torch.Tensor:
    """``F.linear`` with an FP8 weight.

    Args:
        x: ``[..., K]`` activations (fp32 / bf16 / fp16), or an :class:`Fp8Activation` from
            :func:`quantize_activation` (already quantized: reused as is, e.g. by q, k and v).
        qweight: :class:`Fp8Weight` of an ``nn.Linear`` weight ``[N, K]``.
        bias: ``[N]`` or ``None``.
        activations: ``"dynamic"`` (W8A8: ``x`` quantized per token to e4m3 each call) or ``"none"`` (W8A16:
            the weight is dequantized to ``x.dtype`` and a plain matmul runs; not with an ``Fp8Activation``).
        backend: see the module docstring.

    Returns:
        ``[..., N]`` in ``x``'s dtype. A token row with NaN/Inf gives a NaN output row.

    Example::

        w = Fp8Weight.from_float(linear.weight)
        y = fp8_linear(x, w, linear.bias)          # ≈ linear(x), SQNR ≈ 30 dB on Gaussian data
        xq = quantize_activation(x)                # quantize once ...
        q, k = fp8_linear(xq, wq), fp8_linear(xq, wk)   # ... use twice (the same numbers as quantizing twice)
    """
    _check_backend(backend)
    if activations not in _ACTIVATIONS:
        raise ValueError(f"activations={activations!r} is not allowed; allowed: {', '.join(_ACTIVATIONS)}")
    if isinstance(x, Fp8Activation):
        if activations != "dynamic":
            raise ValueError(f"activations={activations!r} is not allowed with an Fp8Activation input (already "
                             "quantized); allowed: 'dynamic'")
        if x.in_features != qweight.in_features:
            raise ValueError(f"x has {x.in_features} features in its last dim but the weight expects "
                             f"{qweight.in_features}")
        y = fp8_gemm(x.data, x.scale, qweight, bias, out_dtype=x.dtype, backend=backend)
        return y.reshape(*x.shape[:-1], qweight.out_features)
    check_linear_input(x, qweight.in_features)
    lead = x.shape[:-1]
    if activations == "none":
        x2 = x.reshape(-1, x.shape[-1])
        w = qweight.dequantize().to(x.dtype)
        y = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(x.dtype))
        return y.reshape(*lead, qweight.out_features)
    xq = quantize_activation(x, backend="torch" if backend == "torch" else "triton" if backend == "triton" else "auto")
    y = fp8_gemm(xq.data, xq.scale, qweight, bias, out_dtype=x.dtype, backend=backend)
    return y.reshape(*lead, qweight.out_features)
