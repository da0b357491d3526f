"""Quantized attention (SageAttention2-style): INT8 Q·Kᵀ, FP8 P·V, fp32 softmax; dense and sliding-tile.

* :func:`quant_attention` (``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``), optionally block-sparse over a
  ``(T, H, W)`` token grid with the tile layout of :mod:`vidaccel.kernels.attention`, a global text prefix, and
  its log-sum-exp;
* ``naive.py`` is the spec (the exact quantization rules), ``triton_kernel.py`` the Triton kernels,
  ``wrapper.py`` validation, backends and the vectorised torch backend.

Example::

    import vidaccel.kernels
    out = vidaccel.kernels.quant_attention(q, k, v)                          # the package is callable
    out = vidaccel.kernels.quant_attention(q, k, v, grid=(21, 30, 52), window=(12, 16, 24), return_lse=True)
"""

import sys
import types

from .naive import KEY_BLOCK, Q_BLOCK, quant_attention_naive
from .wrapper import BACKENDS, PV_MODES, quant_attention, resolve_backend, resolve_pv

__all__ = ["BACKENDS", "KEY_BLOCK", "PV_MODES", "Q_BLOCK", "quant_attention", "quant_attention_naive",
           "resolve_backend", "resolve_pv"]


class _CallableModule(types.ModuleType):
    """Lets ``vidaccel.kernels.quant_attention(q, k, v)`` call :func:`quant_attention` while
    ``vidaccel.kernels.quant_attention`` stays this package (``.naive``, ``.wrapper``...)."""

    def __call__(self, *args, **kwargs):
        return quant_attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
