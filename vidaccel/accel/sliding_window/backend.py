"""Sliding-tile attention as the diffusers attention backend ``vidaccel_sta`` (context parallelism).

Under diffusers' context parallelism each rank holds an equal slice ("shard") of the sequence. For families with
text in the sequence (CogVideoX) every shard is ``[text slice; video slice]``, so the sequence the ranks see
together is ``[t_0 v_0 t_1 v_1 ...]``, a permutation of ``[text; video]``; the op maps every token to its place in
``[text; video]`` (:func:`canonical_positions`) before applying the window.

* Ulysses: the op gets the whole sequence and ``H / ulysses`` heads; it reorders the tokens to ``[text; video]``
  and runs :func:`~vidaccel.kernels.attention.sliding_tile_attention` with the technique's kernel backend.
* ring (and ring × Ulysses): the op gets this rank's queries and one rank's keys at a time, and runs
  :func:`~vidaccel.kernels.attention.sliding_tile_attention_at` with the global positions of both, returning
  the log-sum-exp the ring merge needs; a query row that sees no key of a chunk reports
  :data:`~vidaccel.core.attention_backend.EMPTY_LSE`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ...core.attention_backend import EMPTY_LSE, SequenceLayout, register_backend
from ...kernels.attention import sliding_tile_attention, sliding_tile_attention_at

__all__ = ["STA_BACKEND", "StaParams", "canonical_positions"]

STA_BACKEND = "vidaccel_sta"


@dataclass(frozen=True)
class StaParams:
    """What ``vidaccel_sta`` needs besides q/k/v: the geometry of the *whole* sequence (all ranks together).

    Attributes:
        grid, window, tile: as :func:`~vidaccel.kernels.attention.sliding_tile_attention`.
        num_text_tokens: text tokens in the whole sequence (0 for Wan).
        backend: kernel backend for whole-sequence calls (Ulysses); ring steps use ``flex`` / ``torch``.
    """

    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    tile: tuple[int, int, int]
    num_text_tokens: int
    backend: str


@functools.lru_cache(maxsize=64)
def _positions_cpu(shards: tuple[int, ...], n: int, text: int, video: int) -> torch.Tensor:
    tps, vps = text // n, video // n
    parts = []
    for s in shards:
        parts.append(torch.arange(s * tps, (s + 1) * tps))
        parts.append(text + torch.arange(s * vps, (s + 1) * vps))
    return torch.cat(parts)


def canonical_positions(shards: range, n: int, text: int, video: int, device="cpu") -> torch.Tensor:
    """Positions in ``[text; video]`` of the tokens of shards ``shards`` (each ``[text/n; video/n]``) concatenated."""
    return _positions_cpu(tuple(shards), n, text, video).to(device)


def _sta_op(query, key, value, *, params: StaParams, scale, return_lse: bool, layout: SequenceLayout):
    p = params
    video = math.prod(p.grid)
    n = layout.shards
    if layout.whole and not return_lse:
        reorder = p.num_text_tokens and n > 1
        if reorder:
            pos = canonical_positions(layout.q_shards, n, p.num_text_tokens, video, query.device)
            order = torch.argsort(pos)
            query, key, value = (x.index_select(1, order) for x in (query, key, value))
        out = sliding_tile_attention(query, key, value, grid=p.grid, window=p.window, tile=p.tile,
                                     num_text_tokens=p.num_text_tokens, backend=p.backend)
        return out.index_select(1, pos) if reorder else out
    qp = canonical_positions(layout.q_shards, n, p.num_text_tokens, video, query.device)
    kp = canonical_positions(layout.kv_shards, n, p.num_text_tokens, video, query.device)
    out, lse = sliding_tile_attention_at(query, key, value, q_positions=qp, k_positions=kp, grid=p.grid,
                                         window=p.window, tile=p.tile, num_text_tokens=p.num_text_tokens,
                                         backend=p.backend)
    if not return_lse:
        return out
    return out, lse.masked_fill(torch.isinf(lse), EMPTY_LSE).transpose(1, 2)


register_backend(STA_BACKEND, _sta_op)
