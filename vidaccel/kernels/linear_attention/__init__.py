"""Linear attention: bidirectional and block-causal (chunked, constant-size state), fp32 accumulation.

* :func:`linear_attention` (``q, k, v: [B, L, H, D]``, a feature map, optional RoPE on the numerator);
* :func:`linear_attention_features` on already-mapped features ``[B, L, H, F]``;
* :class:`LinearAttentionState`: the running state for chunk-by-chunk (long-video) generation;
* feature maps: ``"elu"``, ``"relu"`` and the learnable :class:`HedgehogFeatureMap`;
* ``naive.py`` is the spec, ``triton_kernel.py`` the Triton kernels, ``wrapper.py`` validation and backends.

Example::

    import vidaccel.kernels
    out = vidaccel.kernels.linear_attention(q, k, v, feature_map="elu")              # the package is callable
    out = vidaccel.kernels.linear_attention(q, k, v, feature_map="elu", causal=True, chunk=1560)
"""

import sys
import types

from .feature_maps import FEATURE_MAP_NAMES, HedgehogFeatureMap, feature_dim
from .naive import FIXED_FEATURE_MAPS, linear_attention_naive, softmax_attention_naive
from .wrapper import BACKENDS, LinearAttentionState, linear_attention, linear_attention_features, resolve_backend

__all__ = [
    "BACKENDS",
    "FEATURE_MAP_NAMES",
    "FIXED_FEATURE_MAPS",
    "HedgehogFeatureMap",
    "LinearAttentionState",
    "feature_dim",
    "linear_attention",
    "linear_attention_features",
    "linear_attention_naive",
    "resolve_backend",
    "softmax_attention_naive",
]


class _CallableModule(types.ModuleType):
    """Lets ``vidaccel.kernels.linear_attention(q, k, v, feature_map=...)`` call :func:`linear_attention` while
    ``vidaccel.kernels.linear_attention`` stays this package (``.naive``, ``.HedgehogFeatureMap``...)."""

    def __call__(self, *args, **kwargs):
        return linear_attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
