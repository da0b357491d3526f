"""Tile layout of a video-token sequence: the reordering and the per-tile key lists every sparse backend uses.

The sequence ``[text (num_text_tokens) | video (T*H*W, frame-major)]`` is laid out as *units* of
``unit`` positions each:

* the text prefix fills the first ``ceil(num_text / unit)`` units (padded at the end);
* each video tile (``tt×th×tw`` tokens, row-major inside the tile, partial tiles at the far borders)
  fills one unit, padded to ``unit >= tt*th*tw`` positions (a multiple of ``align``).

Padding keys are masked (``key_valid``; the Triton kernel adds ``key_bias``, 0 or -1e30); padding queries are
computed and dropped. In this layout every kernel block lies inside one unit, so each block is either fully
visited or fully skipped: unit ``u`` visits the key units ``table[u, :counts[u]]`` (text units visit every unit;
video units visit the text units and the ``wt*wh*ww`` tiles of their window). The Triton kernel computes the same
key units from the tile geometry (``n_tiles``, ``window_tiles``) instead of reading the table, so that its key
loads do not wait on an index load.

:func:`best_tile` picks the tile that pads a grid least (the default tile of :func:`~.wrapper.sliding_tile_attention`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .naive import window_in_tiles, window_starts

__all__ = ["TilePlan", "best_tile", "tile_plan"]

#: STA's tile: 4 frames × 8 × 8 tokens = 256 tokens; the fallback for grids too small to search.
DEFAULT_TILE = (4, 8, 8)
#: The Triton kernel's units are padded to a multiple of this on CUDA (its smallest key block).
CUDA_ALIGN = 64


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: plans are cached, one object per key
class TilePlan:
    """See module docs. Index tensors live on ``device``; ``table``/``counts`` are int32."""

    grid: tuple[int, int, int]
    tile: tuple[int, int, int]
    window_tiles: tuple[int, int, int]
    num_text_tokens: int
    unit: int
    n_text_units: int
    n_units: int
    src: torch.Tensor  # [n_units*unit] int64: source index in the sequence of each position (padding → 0)
    dst: torch.Tensor  # [L] int64: position of each sequence token in the layout
    key_valid: torch.Tensor  # [n_units*unit] bool
    key_bias: torch.Tensor  # [n_units*unit] float32: 0 for real keys, -1e30 for padding (added to the scores)
    table: torch.Tensor  # [n_units, max_count] int32, key units to visit (ascending), -1 after counts[u]
    counts: torch.Tensor  # [n_units] int32
    video_count: int  # key units visited by every video unit
    has_padding: bool

    @property
    def length(self) -> int:
        return self.n_units * self.unit

    @property
    def n_tiles(self) -> tuple[int, int, int]:
        """Tiles per dimension (partial tiles at the far borders count)."""
        return tuple(math.ceil(g / t) for g, t in zip(self.grid, self.tile))

    @property
    def padding(self) -> float:
        """Extra positions of the layout over the real tokens: ``length / tokens - 1``."""
        return self.length / (self.num_text_tokens + math.prod(self.grid)) - 1

    @property
    def covers_all(self) -> bool:
        """The window covers the whole grid: the result is dense attention."""
        n_tiles = [math.ceil(g / t) for g, t in zip(self.grid, self.tile)]
        return list(self.window_tiles) == n_tiles

    def block_density(self) -> float:
        """Fraction of (query unit, key unit) pairs visited: the work a block-sparse kernel does."""
        return float(self.counts.double().sum().item()) / (self.n_units * self.n_units)


@functools.lru_cache(maxsize=64)
def _plan_cpu(grid, window, tile, num_text_tokens, align) -> TilePlan:
    T, H, W = grid
    tt, th, tw = tile
    vol = tt * th * tw
    unit = -(-vol // align) * align
    n_tiles = tuple(math.ceil(g / t) for g, t in zip(grid, tile))
    n_video_units = math.prod(n_tiles)
    n_text_units = -(-num_text_tokens // unit)
    n_units = n_text_units + n_video_units
    L = num_text_tokens + T * H * W

    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    tile_id = ((t // tt) * n_tiles[1] + h // th) * n_tiles[2] + w // tw
    local = ((t % tt) * th + h % th) * tw + w % tw
    video_dst = (n_text_units * unit + tile_id * unit + local).reshape(-1)
    dst = torch.cat([torch.arange(num_text_tokens), video_dst])
    src = torch.zeros(n_units * unit, dtype=torch.long)
    src[dst] = torch.arange(L)
    key_valid = torch.zeros(n_units * unit, dtype=torch.bool)
    key_valid[dst] = True
    key_bias = torch.where(key_valid, 0.0, -1.0e30).to(torch.float32)

    w_tiles = window_in_tiles(grid, window, tile)
    # key tiles of every query tile: the product of the per-dimension windows, ascending
    ranges = []
    for d in range(3):
        start = window_starts(torch.arange(n_tiles[d]), n_tiles[d], w_tiles[d])
        ranges.append(start[:, None] + torch.arange(w_tiles[d])[None, :])  # [n_d, w_d]
    kt = ranges[0][:, None, None, :, None, None]
    kh = ranges[1][None, :, None, None, :, None]
    kw = ranges[2][None, None, :, None, None, :]
    key_tiles = ((kt * n_tiles[1] + kh) * n_tiles[2] + kw).reshape(n_video_units, -1)
    video_count = n_text_units + key_tiles.shape[1]
    max_count = n_units if n_text_units else video_count
    table = torch.full((n_units, max_count), -1, dtype=torch.int32)
    if n_text_units:
        table[:n_text_units] = torch.arange(n_units, dtype=torch.int32)
        table[n_text_units:, :n_text_units] = torch.arange(n_text_units, dtype=torch.int32)
    table[n_text_units:, n_text_units:video_count] = (key_tiles + n_text_units).to(torch.int32)
    counts = torch.full((n_units,), video_count, dtype=torch.int32)
    counts[:n_text_units] = n_units
    return TilePlan(
        grid=tuple(grid), tile=tuple(tile), window_tiles=w_tiles, num_text_tokens=num_text_tokens, unit=unit,
        n_text_units=n_text_units, n_units=n_units, src=src, dst=dst, key_valid=key_valid, key_bias=key_bias,
        table=table, counts=counts, video_count=video_count, has_padding=bool((~key_valid).any()),
    )


@functools.lru_cache(maxsize=64)
def _plan_on(grid, window, tile, num_text_tokens, align, device) -> TilePlan:
    p = _plan_cpu(grid, window, tile, num_text_tokens, align)
    if device.type == "cpu":
        return p
    move = {k: getattr(p, k).to(device) for k in ("src", "dst", "key_valid", "key_bias", "table", "counts")}
    return TilePlan(**{**p.__dict__, **move})


def tile_plan(grid, window, tile, num_text_tokens: int = 0, align: int = 1, device="cpu") -> TilePlan:
    """The (cached) :class:`TilePlan` of a grid, window and tile; units padded to a multiple of ``align``."""
    return _plan_on(tuple(grid), tuple(window), tuple(tile), int(num_text_tokens), int(align), torch.device(device))


@functools.lru_cache(maxsize=256)
def best_tile(grid, num_text_tokens: int = 0, align: int = CUDA_ALIGN) -> tuple[int, int, int]:
    """The tile whose layout has the fewest positions (least padding) for ``grid`` and a text prefix.

    Candidates: tiles of 128–512 tokens with at least two tiles per grid dimension (so a window can be local in
    each), and :data:`DEFAULT_TILE` clipped to the grid. Units are padded to a multiple of ``align`` (the CUDA
    kernel's). Among candidates within 0.2 % of the fewest positions: units divisible by 128 first (128-row
    kernel blocks fit), then units nearest 256 tokens (STA's size), then the most cube-like tile.
    Examples: Wan 480p (21, 30, 52) → (7, 6, 6), +5.5 % positions; Wan 720p (21, 45, 80) → (7, 9, 4), +1.6 %;
    CogVideoX-5B (13, 30, 45) + 226 text tokens → (7, 5, 9), +9.8 % (STA's 4×8×8: +31 %, +22 %, +40 %).
    """
    grid = tuple(int(g) for g in grid)

    def cost(tile):
        vol = math.prod(tile)
        unit = -(-vol // align) * align
        n = math.prod(-(-g // t) for g, t in zip(grid, tile))
        return (-(-num_text_tokens // unit) + n) * unit, unit

    candidates = {tuple(min(t, g) for t, g in zip(DEFAULT_TILE, grid))}
    T, H, W = grid
    for tt in range(1, -(-T // 2) + 1):
        for th in range(1, -(-H // 2) + 1):
            if tt * th > 512:
                break
            for tw in range(max(1, -(-128 // (tt * th))), min(-(-W // 2), 512 // (tt * th)) + 1):
                candidates.add((tt, th, tw))
    scored = [(cost(t), t) for t in candidates]
    fewest = min(c[0] for c, _ in scored)
    near = [(c, t) for c, t in scored if c[0] <= fewest * 1.002]
    def preference(ct):
        (positions, unit), tile = ct
        return unit % 128 != 0, abs(unit - 256), max(tile) / min(tile), positions, tile

    return min(near, key=preference)[1]


def default_tile(grid, num_text_tokens: int = 0) -> tuple[int, int, int]:
    """The tile of ``grid`` (and a text prefix) whose layout pads least: :func:`~.layout.best_tile`
    (e.g. Wan 480p ``(21, 30, 52)`` → ``(7, 6, 6)``, +5.5 % positions instead of +31 % at STA's 4×8×8); grids too
    small for 128-token tiles get :data:`DEFAULT_TILE` clipped to the grid."""
    return best_tile(tuple(int(g) for g in grid), int(num_text_tokens))


#: elements of gathered keys per SDPA call when attention runs unit by unit over gathered key units
GATHER_BUDGET = 1 << 25


def gathered_unit_attention(ql: torch.Tensor, kl: torch.Tensor, vl: torch.Tensor, rows: torch.Tensor,
                            valid: torch.Tensor | None) -> torch.Tensor:
    """Each query unit against its own key units, gathered: ``ql [B, H, n, P, D]`` query units, ``kl`` / ``vl
    [B, H, units, P, D]`` key / value units, ``rows [n, count]`` the key units of each query unit, ``valid
    [units, P]`` the real (non-padding) key positions or ``None``; SDPA over ``count × P`` keys per unit, in
    chunks of about :data:`GATHER_BUDGET` gathered elements. Returns ``[B, H, n, P, D]``."""
    import torch.nn.functional as F

    B, H, n, P, D = ql.shape
    S = rows.shape[1] * P
    step = max(1, GATHER_BUDGET // max(1, B * H * S * D))
    out = torch.empty(B, H, n, P, D, dtype=ql.dtype, device=ql.device)
    for c0 in range(0, n, step):
        r = rows[c0:c0 + step]
        c = r.shape[0]
        kk = kl[:, :, r].reshape(B, H * c, S, D)
        vv = vl[:, :, r].reshape(B, H * c, S, D)
        qq = ql[:, :, c0:c0 + c].reshape(B, H * c, P, D)
        mask = None if valid is None else valid[r].reshape(1, c, 1, S).expand(H, c, 1, S).reshape(1, H * c, 1, S)
        out[:, :, c0:c0 + c] = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask).view(B, H, c, P, D)
    return out
