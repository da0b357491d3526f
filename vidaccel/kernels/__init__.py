"""vidaccel's kernels: one folder per op (``naive.py`` torch spec, Triton kernel, public wrapper)."""

from ._backend import available_backends, triton_available, triton_interpreting
from . import linear_attention  # noqa: F401  (the package is callable: vidaccel.kernels.linear_attention(q, k, v))
from .attention import flash_attention, sliding_tile_attention
from .fp8 import Fp8Weight, fp8_linear
from .nvfp4 import NVFP4Weight, nvfp4_linear

__all__ = [
    "available_backends",
    "triton_available",
    "triton_interpreting",
    "flash_attention",
    "sliding_tile_attention",
    "Fp8Weight",
    "fp8_linear",
    "NVFP4Weight",
    "nvfp4_linear",
    "linear_attention",
]
