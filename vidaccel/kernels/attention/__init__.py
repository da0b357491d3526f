"""Attention kernels: dense flash attention and sliding-tile (local window) attention.

* :func:`flash_attention` (``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``; optionally with its log-sum-exp,
  which :func:`merge_attention` uses to combine attentions over disjoint key sets);
* :func:`sliding_tile_attention` over a ``(T, H, W)`` token grid with an optional global text prefix;
* :func:`sliding_tile_attention_at`: the same for queries and keys at given positions of the sequence, with
  the log-sum-exp (one ring-attention step under context parallelism);
* ``naive.py`` is the spec, ``triton_kernel.py`` the block-sparse Triton kernel, ``layout.py`` the tile
  reordering and per-tile key lists, ``wrapper.py`` validation and backends.
"""

from .layout import TilePlan, tile_plan
from .naive import sliding_tile_density, sliding_tile_mask, window_in_tiles
from .wrapper import (
    BACKENDS,
    DEFAULT_TILE,
    default_tile,
    flash_attention,
    merge_attention,
    resolve_backend,
    sliding_tile_attention,
    sliding_tile_attention_at,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_TILE",
    "TilePlan",
    "default_tile",
    "flash_attention",
    "merge_attention",
    "resolve_backend",
    "sliding_tile_attention",
    "sliding_tile_attention_at",
    "sliding_tile_density",
    "sliding_tile_mask",
    "tile_plan",
    "window_in_tiles",
]
