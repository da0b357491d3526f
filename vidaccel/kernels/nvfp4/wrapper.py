"""Public NVFP4 ops: :class:`NVFP4Weight` and :func:`nvfp4_linear` (W4A16: activations stay bf16/fp16).

Backends (``backend=``):

* ``"triton"`` — the fused W4A16 Triton GEMM that decodes the weight in registers (GPU, or CPU under
  ``TRITON_INTERPRET=1``). fp32 activations are rounded to bf16 first (fp32 accumulation, fp32 output): the
  kernel's MMA runs on 16-bit operands only;
* ``"dequant"`` — a Triton kernel dequantizes the weight into a transient ``x.dtype`` buffer (``N × K``, one
  layer at a time), then cuBLAS ``F.linear``;
* ``"torch"`` — the reference: dequantize with torch ops, then ``F.linear``;
* ``"auto"`` — on CUDA ``dequant`` for ``M >= DEQUANT_MIN_M`` tokens, else ``triton``; ``torch`` elsewhere.

Blackwell's native FP4 MMA (``tcgen05.mma.kind::mxf4nvf4``, reached through ``tl.dot_scaled`` with e4m3 scales
per 16) needs the activations in NVFP4 too (W4A4); with bf16 activations Triton's ``dot_scaled`` decodes the
weight to bf16 exactly as this kernel does. W4A16 runs on every GPU.

``VIDACCEL_NVFP4_CONFIG="BLOCK_M,BLOCK_N,BLOCK_K,num_warps,num_stages"`` pins the fused kernel's launch
configuration (for measuring on a GPU); unset, :func:`launch_config` picks one by token count and architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import backend_names
from .._backend import check_linear_input, kernel_module, triton_available, triton_interpreting
from .._pinned import pinned_config
from . import naive

__all__ = ["NVFP4Weight", "nvfp4_linear", "nvfp4_dequantize", "BACKENDS", "DEQUANT_MIN_M"]

BACKENDS = backend_names.NVFP4
#: token count from which ``backend="auto"`` dequantizes once and calls cuBLAS. An estimate from the static
#: bound, not a timing (benchmarks/results/gpu_static_quant_linear.md): the dequantization pass costs about
#: ``2.56·N·K / bandwidth`` plus a launch, the fused kernel at most its decode overhead ``issue/tensor × tensor
#: time`` (0.84 of the tensor time on sm_90 if decode and MMA never overlap, nothing if they always do); the two
#: meet between ~300 and ~1,500 tokens at Wan / CogVideoX shapes in the no-overlap case, beyond any M otherwise.
DEQUANT_MIN_M = 1024
#: environment variable pinning the fused kernel's launch configuration
CONFIG_ENV = "VIDACCEL_NVFP4_CONFIG"


def kernels():
    return kernel_module(os.path.join(os.path.dirname(__file__), "triton_kernel.py"), "vidaccel.kernels.nvfp4.triton_kernel")


@dataclass
class NVFP4Weight:
    """An NVFP4 weight of an ``nn.Linear`` with ``in_features`` inputs (format: :mod:`.naive`).

    Attributes:
        data: ``[N, Kp/2]`` uint8, two e2m1 codes per byte (even k in the low nibble); ``Kp`` = K rounded up to 16.
        block_scale: ``[N, Kp/16]`` float8_e4m3fn, one per 16 consecutive values along K.
        global_scale: 0-d (or 1-element) fp32 tensor, one per weight.
        in_features: ``K``.
    """

    data: torch.Tensor
    block_scale: torch.Tensor
    global_scale: torch.Tensor
    in_features: int

    def __post_init__(self):
        n = self.data.shape[0]
        kp = naive.padded_k(self.in_features)
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != (n, kp // 2):
            raise ValueError(f"NVFP4Weight.data must be uint8 of shape (N, {kp // 2}) for in_features="
                             f"{self.in_features}, got {self.data.dtype} {tuple(self.data.shape)}")
        if self.block_scale.dtype != torch.float8_e4m3fn or tuple(self.block_scale.shape) != (n, kp // 16):
            raise ValueError(f"NVFP4Weight.block_scale must be float8_e4m3fn of shape ({n}, {kp // 16}), got "
                             f"{self.block_scale.dtype} {tuple(self.block_scale.shape)}")
        if self.global_scale.dtype != torch.float32 or self.global_scale.numel() != 1:
            raise ValueError(f"NVFP4Weight.global_scale must be a 1-element float32 tensor, got "
                             f"{self.global_scale.dtype} {tuple(self.global_scale.shape)}")

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "NVFP4Weight":
        data, block_scale, g = naive.quantize_weight(weight)
        return cls(data.contiguous(), block_scale.contiguous(), g.reshape(()), weight.shape[1])

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dequantize(self) -> torch.Tensor:
        """fp32 ``[N, K]``."""
        return naive.dequantize(self.data, self.block_scale, self.global_scale, self.in_features)

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.block_scale.numel() + 4


def nvfp4_dequantize(qweight: NVFP4Weight, dtype: torch.dtype = torch.bfloat16, backend: str = "auto"
                     ) -> torch.Tensor:
    """``[N, K]`` weight in ``dtype``: the Triton kernel (``"triton"``, or ``"auto"`` on CUDA) or torch (``"torch"``)."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend={backend!r} is not allowed; allowed: auto, triton, torch")
    dev = qweight.data.device
    if backend == "auto":
        backend = "triton" if dev.type == "cuda" and triton_available(dev) else "torch"
    if backend == "torch":
        return qweight.dequantize().to(dtype)
    if not triton_available(dev):
        raise ValueError(f"backend='triton' cannot launch on {dev}: it needs a CUDA GPU, or TRITON_INTERPRET=1")
    n, k = qweight.out_features, qweight.in_features
    kp = naive.padded_k(k)
    out = torch.empty((n, k), dtype=dtype, device=dev)
    block_n, block_k = (64, 64) if triton_interpreting() else (32, 256)
    words = _words(qweight.data)
    scales = qweight.block_scale if qweight.block_scale.stride(1) == 1 else qweight.block_scale.contiguous()
    g = qweight.global_scale.reshape(1)
    kernels().nvfp4_dequant_kernel[(-(-n // block_n), -(-k // block_k))](
        words, scales, g, out, n, k, kp // 8, kp // 16, words.stride(0), scales.stride(0),
        out.stride(0), out.stride(1), BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return out


def launch_config(m: int, arch: int = 90) -> dict:
    """Launch configuration of the fused kernel for ``m`` tokens on compute capability ``arch`` (90 = sm_90).

    ``M <= 64``: memory-bound, one token tile (16 / 32 / 64 rows) and 64 weight rows per program. Larger ``M``:
    128×128×64 with one warpgroup (237 registers: two programs per SM, so one's decode overlaps the other's
    MMA); on sm_100+ and ``M >= 1024``, 256×128×64 with two warpgroups (the accumulator lives in tensor memory),
    which halves the decode per MMA for Blackwell's 2× faster tensor cores. ``BLOCK_K`` is a multiple of 64, so at
    model shapes the block scales load as int32 words. Static figures: benchmarks/results/gpu_static_quant_linear.md.
    """
    if m <= 64:
        bm = 16 if m <= 16 else 32 if m <= 32 else 64
        return dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)
    if arch >= 100 and m >= 1024:
        return dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)


def _blocks(m: int, device: torch.device) -> dict:
    pinned = pinned_config(CONFIG_ENV)
    if pinned is not None:
        return pinned
    if triton_interpreting():  # big tiles: the interpreter's cost is per program, not per element
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8)
    major, minor = torch.cuda.get_device_capability(device)
    return launch_config(m, 10 * major + minor)


def _words(data: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C]`` (``C % 4 == 0``) as int32 words ``[N, C / 4]``, a view when possible: the packed codes
    (8 per word) or the block scales (4 per word)."""
    if data.stride(1) != 1 or data.stride(0) % 4 or data.storage_offset() % 4:
        data = data.contiguous()
    return data.view(torch.int32)


def nvfp4_linear(x: torch.Tensor, qweight: NVFP4Weight, bias: torch.Tensor | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
    """``F.linear`` with an NVFP4 weight, activations in high precision (W4A16).

    Args:
        x: ``[..., K]`` (bf16 / fp16; fp32 is rounded to bf16 by the ``triton`` backend); the output has
            ``x``'s dtype.
        qweight: :class:`NVFP4Weight` of an ``nn.Linear`` weight ``[N, K]``.
        bias: ``[N]`` or ``None``.
        backend: ``"auto"``, ``"triton"``, ``"dequant"`` or ``"torch"`` (module docstring).

    Returns:
        ``[..., N]`` in ``x.dtype``; NaN/Inf in ``x`` propagate as in a plain matmul.

    Example::

        w = NVFP4Weight.from_float(linear.weight)     # 4.5 bits per weight
        y = nvfp4_linear(x, w, linear.bias)          # ≈ linear(x), SQNR ≈ 20 dB on Gaussian weights
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    check_linear_input(x, qweight.in_features)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    n = qweight.out_features
    if backend == "auto":
        if x.device.type == "cuda" and triton_available(x.device):
            backend = "dequant" if x2.shape[0] >= DEQUANT_MIN_M else "triton"
        else:
            backend = "torch"
    if backend in ("torch", "dequant"):
        w = nvfp4_dequantize(qweight, x.dtype, backend="triton" if backend == "dequant" else "torch")
        y = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(x.dtype))
        return y.reshape(*lead, n)
    if not triton_available(x.device):
        raise ValueError(f"backend='triton' cannot launch on {x.device}: it needs a CUDA GPU, or TRITON_INTERPRET=1")
    m, k = x2.shape
    c = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return c.reshape(*lead, n)
    blocks = _blocks(m, x.device)
    if x2.dtype == torch.float32:  # 16-bit MMA operands: fp32 activations are rounded to bf16 once, here
        x2 = x2.to(torch.bfloat16)
    kp = naive.padded_k(k)
    words = _words(qweight.data)
    scale_words = (kp // 16) % 4 == 0 and blocks["BLOCK_K"] % 64 == 0
    scales = _words(qweight.block_scale.view(torch.uint8)) if scale_words else (
        qweight.block_scale if qweight.block_scale.stride(1) == 1 else qweight.block_scale.contiguous())
    grid = (-(-m // blocks["BLOCK_M"]) * -(-n // blocks["BLOCK_N"]),)
    g = qweight.global_scale.reshape(1)
    kernels().nvfp4_w4a16_kernel[grid](
        x2, words, scales, g, bias if bias is not None else g, c,
        m, n, k, kp // 8, kp // 16, x2.stride(0), x2.stride(1), words.stride(0), scales.stride(0),
        c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None, EVEN_K=k % blocks["BLOCK_K"] == 0, SCALE_WORDS=scale_words,
        DOT_F32=triton_interpreting(),  # the interpreter's bf16 tl.dot is wrong
        **blocks,
    )
    return c.reshape(*lead, n)
