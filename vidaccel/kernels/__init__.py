"""vidaccel's kernels: one folder per op, each with the same roles.

* ``naive.py``: the torch spec (fp32, loops and einsum allowed), what every backend is tested against;
* ``triton_kernel.py``: the Triton kernel(s);
* ``wrapper.py``: the public op: validates shapes, dtypes and layouts and picks a backend
  (:mod:`vidaccel.kernels.backend_names`: ``"auto"``, ``"triton"``, ``"torch"`` and op-specific ones).

The ops load on first use, so ``import vidaccel.kernels`` imports neither torch nor triton.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "available_backends": "._backend",
    "triton_available": "._backend",
    "triton_interpreting": "._backend",
    "flash_attention": ".attention",
    "sliding_tile_attention": ".attention",
    "Fp8Weight": ".fp8",
    "fp8_linear": ".fp8",
    "NVFP4Weight": ".nvfp4",
    "nvfp4_linear": ".nvfp4",
}

#: Packages that are callable as their op: ``vidaccel.kernels.linear_attention(q, k, v)``.
_CALLABLE_PACKAGES = ("linear_attention", "quant_attention")

__all__ = sorted(_LAZY) + list(_CALLABLE_PACKAGES)


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module("." + name, __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
