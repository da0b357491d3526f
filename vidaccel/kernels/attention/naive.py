"""The specification of vidaccel's attention ops: plain fp32 torch, written for clarity, not speed.

Every backend (Triton, flex, SDPA, gather) is tested against these functions.

Sliding-tile attention (STA, https://arxiv.org/abs/2502.04507) on a video-token grid ``(T, H, W)``:

* tokens are grouped into tiles of ``tile = (tt, th, tw)`` tokens (partial tiles at the far borders);
* the window ``(wt, wh, ww)`` in tokens covers ``ceil(w / t)`` tiles per dimension (at most all of them);
* a query attends to every key whose tile lies in the window of tiles centred on the query's tile,
  shifted inward at the borders so every query sees a full window (FreeSwim, https://arxiv.org/abs/2511.14712:
  each query keeps its training-size receptive field);
* ``num_text_tokens`` prefix tokens (CogVideoX: text first, then video) attend to everything and are
  attended by everything.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "window_in_tiles",
    "window_starts",
    "sliding_tile_mask",
    "sliding_tile_density",
    "attention_naive",
    "attention_lse_naive",
    "sliding_tile_attention_naive",
    "sliding_tile_mask_at",
    "attention_lse_masked_naive",
]


def window_in_tiles(grid, window, tile) -> tuple[int, int, int]:
    """Window size in tiles per dimension: ``min(ceil(w / t), ceil(g / t))``."""
    return tuple(min(math.ceil(w / t), math.ceil(g / t)) for g, w, t in zip(grid, window, tile))


def window_starts(tile_index: torch.Tensor, n_tiles: int, w_tiles: int) -> torch.Tensor:
    """First tile of the window of the query tile ``tile_index``: centred, shifted inward at the borders."""
    return (tile_index - w_tiles // 2).clamp(min=0, max=n_tiles - w_tiles)


def sliding_tile_mask(grid, window, tile, num_text_tokens: int = 0, device=None) -> torch.Tensor:
    """Boolean ``[L, L]`` mask (``True`` = attend), ``L = num_text_tokens + T*H*W``, in sequence order.

    Video tokens are in diffusers' order (frame-major, then rows, then columns) after the text prefix.
    """
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(g, device=device) for g in grid], indexing="ij"), dim=-1
    ).reshape(-1, 3)
    keep = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool, device=device)
    for d, (g, t, w) in enumerate(zip(grid, tile, window_in_tiles(grid, window, tile))):
        tiles = coords[:, d] // t
        start = window_starts(tiles, math.ceil(g / t), w)
        keep &= (tiles[None, :] >= start[:, None]) & (tiles[None, :] < start[:, None] + w)
    if num_text_tokens:
        n = num_text_tokens + keep.shape[0]
        full = torch.ones(n, n, dtype=torch.bool, device=device)
        full[num_text_tokens:, num_text_tokens:] = keep
        keep = full
    return keep


def sliding_tile_density(grid, window, tile, num_text_tokens: int = 0) -> float:
    """Fraction of (query, key) pairs that sliding-tile attention computes (1.0 = dense).

    Computed per dimension without building the mask (the mask factorises over t, h, w).
    """
    per_dim = []
    for g, t, w in zip(grid, tile, window_in_tiles(grid, window, tile)):
        tiles = torch.arange(g) // t
        start = window_starts(tiles, math.ceil(g / t), w)
        # keys of dimension d inside the window of each query coordinate
        keys = ((tiles[None, :] >= start[:, None]) & (tiles[None, :] < start[:, None] + w)).sum(1)
        per_dim.append(keys.double().sum().item())  # sum over query coords of kept key coords
    video = math.prod(grid)
    kept_video = math.prod(per_dim)
    n = num_text_tokens + video
    kept = kept_video + num_text_tokens * n * 2 - num_text_tokens**2
    return kept / (n * n)


def attention_naive(q, k, v, mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Softmax attention in fp32. ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``, ``mask: [Lq, Lk]`` bool.

    Returns ``[B, Lq, H, D]`` in ``q``'s dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype)


def attention_lse_naive(q, k, v, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp: ``([B, Lq, H, D]`` in ``q``'s dtype, ``[B, H, Lq]`` fp32).

    The log-sum-exp (natural log, of the scaled scores) lets two attentions over disjoint key sets be
    merged exactly: ``o = (o1 e^l1 + o2 e^l2) / (e^l1 + e^l2)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v.float()).to(q.dtype)
    return out, torch.logsumexp(s, dim=-1)


def sliding_tile_attention_naive(q, k, v, *, grid, window, tile, num_text_tokens: int = 0) -> torch.Tensor:
    """Sliding-tile attention by a dense mask (see module docs). ``q, k, v: [B, L, H, D]``."""
    mask = sliding_tile_mask(grid, window, tile, num_text_tokens, device=q.device)
    return attention_naive(q, k, v, mask)


def window_factors(positions: torch.Tensor, grid, window, tile, num_text_tokens: int = 0):
    """Per sequence position: is it text, its tile index per dimension, and (as a query) the first tile of its
    window per dimension. ``positions`` index the sequence ``[text | video frame-major]``."""
    T, H, W = grid
    video = positions - num_text_tokens
    is_text = video < 0
    video = video.clamp(min=0)
    coords = (video // (H * W), (video // W) % H, video % W)
    w_tiles = window_in_tiles(grid, window, tile)
    tiles = [c // t for c, t in zip(coords, tile)]
    starts = [window_starts(ti, math.ceil(g / t), w) for ti, g, t, w in zip(tiles, grid, tile, w_tiles)]
    return is_text, tiles, starts, w_tiles


def sliding_tile_mask_at(q_positions: torch.Tensor, k_positions: torch.Tensor, grid, window, tile,
                         num_text_tokens: int = 0) -> torch.Tensor:
    """The rows ``q_positions`` and columns ``k_positions`` of :func:`sliding_tile_mask`, ``[Lq, Lk]`` bool,
    without building the full mask."""
    q_text, _, q_starts, w_tiles = window_factors(q_positions, grid, window, tile, num_text_tokens)
    k_text, k_tiles, _, _ = window_factors(k_positions, grid, window, tile, num_text_tokens)
    keep = q_text[:, None] | k_text[None, :]
    video = torch.ones_like(keep)
    for start, kt, w in zip(q_starts, k_tiles, w_tiles):
        video &= (kt[None, :] >= start[:, None]) & (kt[None, :] < start[:, None] + w)
    return keep | video


def attention_lse_masked_naive(q, k, v, mask: torch.Tensor, scale: float | None = None):
    """Masked softmax attention and its log-sum-exp (``[B, Lq, H, D]`` in ``q``'s dtype, ``[B, H, Lq]`` fp32);
    ``mask: [Lq, Lk]`` bool. A row whose mask is all false gets output 0 and log-sum-exp ``-inf``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype), lse
