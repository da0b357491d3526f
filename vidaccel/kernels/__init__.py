"""vidaccel's kernels: one folder per op (``naive.py`` torch spec, Triton kernel, public wrapper)."""

from ._backend import available_backends, triton_available, triton_interpreting
from .attention import flash_attention, sliding_tile_attention

__all__ = ["available_backends", "triton_available", "triton_interpreting", "flash_attention", "sliding_tile_attention"]
