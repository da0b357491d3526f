"""vidaccel's kernels: one folder per op (``naive.py`` torch spec, Triton kernel, public wrapper)."""

from ._backend import available_backends, triton_available, triton_interpreting

__all__ = ["available_backends", "triton_available", "triton_interpreting"]
