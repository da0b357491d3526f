"""Sliding-tile attention for the queries of the newest frames only: a chunk of autoregressive generation
attending over its cached context and itself.

The keys form a video-token grid ``(T, H, W)`` (the context frames in temporal order, then the chunk's
``query_frames`` frames, frame-major) after ``num_global`` global tokens (the sink frames of a rolling cache);
the queries are the grid's last ``query_frames`` frames. A query attends to every global token and to the keys
of the sliding-tile window around its tile (:mod:`.naive`: centred, shifted inward at the borders) — at the
newest frames the temporal window reaches back into the cache, so each chunk sees the most recent
``window[0]`` frames (Light Forcing, FlashBlock: sparse attention for chunked generation). Temporal tiles are
single frames (``tile[0] == 1``), so no tile straddles the context and the chunk.

The specification is the matching rows of :func:`~.naive.sliding_tile_mask`; backends: ``"torch"`` (SDPA with
that boolean mask) and ``"gather"`` (per query tile, gather the keys of its window: work ∝ queries × window).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .layout import gathered_unit_attention, tile_plan
from .naive import attention_naive, sliding_tile_mask, window_in_tiles, window_starts

__all__ = ["chunk_window_attention", "chunk_window_attention_naive", "chunk_window_density", "BACKENDS"]

BACKENDS = ("auto", "gather", "torch")


def _check(q, k, v, grid, tile, num_global):
    if tile[0] != 1:
        raise ValueError(f"tile={tuple(tile)} is not allowed here: temporal tiles must be single frames (tile[0] == 1)")
    per_frame = grid[1] * grid[2]
    if q.shape[1] % per_frame or not 0 < q.shape[1] // per_frame <= grid[0]:
        raise ValueError(f"q has {q.shape[1]} tokens: expected whole frames of {per_frame} tokens, at most grid[0]="
                         f"{grid[0]} frames")
    if k.shape[1] != num_global + math.prod(grid) or v.shape != k.shape:
        raise ValueError(f"k/v must have num_global + T*H*W = {num_global + math.prod(grid)} tokens, got "
                         f"{tuple(k.shape)} / {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]) or q.dtype != k.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype} and k {tuple(k.shape)} {k.dtype} must agree in batch, heads, "
                         "head dim and dtype")


@functools.lru_cache(maxsize=16)
def _row_mask(grid, window, tile, num_global, query_tokens, device) -> torch.Tensor:
    return sliding_tile_mask(grid, window, tile, num_global, device=device)[-query_tokens:]


def chunk_window_attention_naive(q, k, v, *, grid, window, tile, num_global: int = 0) -> torch.Tensor:
    """The specification: the last ``q.shape[1]`` rows of sliding-tile attention over ``(num_global, grid)``."""
    mask = sliding_tile_mask(grid, window, tile, num_global, device=q.device)[-q.shape[1]:]
    return attention_naive(q, k, v, mask)


def chunk_window_density(grid, window, tile, num_global: int, query_frames: int) -> float:
    """Fraction of (query, key) pairs computed: ``1.0`` is dense attention of the queries over every key."""
    kept = []
    for d, (g, t, w) in enumerate(zip(grid, tile, window_in_tiles(grid, window, tile))):
        tiles = torch.arange(g) // t
        start = window_starts(tiles, math.ceil(g / t), w)
        keys = ((tiles[None, :] >= start[:, None]) & (tiles[None, :] < start[:, None] + w)).sum(1).double()
        kept.append(float(keys[g - query_frames:].sum() if d == 0 else keys.sum()))
    queries = query_frames * grid[1] * grid[2]
    total = queries * (num_global + math.prod(grid))
    return (math.prod(kept) + queries * num_global) / total


def chunk_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, grid, window, tile,
                           num_global: int = 0, backend: str = "auto") -> torch.Tensor:
    """Sliding-tile attention of the last frames' queries over global tokens + a grid of keys (module docs).

    Args:
        q: ``[B, Lq, H, D]``, ``Lq = query_frames * grid[1] * grid[2]`` (the grid's last frames).
        k, v: ``[B, num_global + T*H*W, H, D]``.
        grid: ``(T, H, W)`` key-token grid (context frames, then the query frames).
        window: ``(wt, wh, ww)`` in tokens; tile: ``(1, th, tw)``.
        num_global: leading tokens every query attends to.
        backend: ``"auto"`` (``"gather"``), ``"gather"`` or ``"torch"``.

    Returns:
        ``[B, Lq, H, D]`` in ``q``'s dtype.
    """
    grid, window, tile = tuple(grid), tuple(window), tuple(min(t, g) for t, g in zip(tile, grid))
    _check(q, k, v, grid, tile, num_global)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    if backend == "torch":
        mask = _row_mask(grid, window, tile, num_global, q.shape[1], q.device)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask).transpose(1, 2)
    return _gather(q, k, v, grid, window, tile, num_global)


def _gather(q, k, v, grid, window, tile, num_global):
    plan = tile_plan(grid, window, tile, num_global, device=q.device)
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    P, nt = plan.unit, plan.n_text_units
    tiles_per_frame = math.ceil(grid[1] / tile[1]) * math.ceil(grid[2] / tile[2])
    first = nt + (grid[0] - Lq // (grid[1] * grid[2])) * tiles_per_frame  # first query unit
    n_q = plan.n_units - first
    kl, vl = (x.transpose(1, 2).index_select(2, plan.src).view(B, H, plan.n_units, P, D) for x in (k, v))
    q_src = (plan.src[first * P:] - (Lk - Lq)).clamp(min=0)  # padding positions: any row, dropped below
    ql = q.transpose(1, 2).index_select(2, q_src).view(B, H, n_q, P, D)
    rows = plan.table[first:, : plan.video_count].long()
    valid = plan.key_valid.view(plan.n_units, P) if plan.has_padding else None
    out = gathered_unit_attention(ql, kl, vl, rows, valid)
    back = plan.dst[Lk - Lq:] - first * P
    return out.view(B, H, n_q * P, D).index_select(2, back).transpose(1, 2)
