"""Quantized attention as the diffusers attention backend ``vidaccel_quant`` (context parallelism).

Under diffusers' context parallelism each rank holds an equal shard of the sequence; for CogVideoX every shard is
``[text slice; video slice]`` (see :mod:`vidaccel.accel.sliding_window.backend`). The op sorts the query tokens
and the key tokens it is given into ``[text; video]`` order (:func:`canonical_positions`), so the quantization
blocks restart after the text prefix as they do in one process, runs
:func:`~vidaccel.kernels.quant_attention.quant_attention`, and puts the rows back in the order it got them.

* Ulysses: the op gets the whole sequence and ``H / ulysses`` heads. Every quantization scale and mean is per
  head, so the result is that of one process (dense or sliding-tile).
* ring (and ring × Ulysses): the op gets this rank's queries and one rank's keys at a time and returns the
  log-sum-exp of the true scores (the kernel adds back the ``q·k̄`` it removed by smoothing K); diffusers merges
  the chunks. K's mean, V's FP8 scale and the INT8 block scales are then taken over the chunk, so the result
  differs from one process by quantization error, not by more. Dense only: sliding-tile windows need the
  positions of every key chunk, which the quantized kernel does not take (``QuantAttentionConfig`` with
  ``SlidingWindowConfig`` is refused under ring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.attention_backend import SequenceLayout, register_backend
from ...kernels.quant_attention import quant_attention
from ..sliding_window.backend import canonical_positions

__all__ = ["QUANT_BACKEND", "QuantParams"]

QUANT_BACKEND = "vidaccel_quant"


@dataclass(frozen=True)
class QuantParams:
    """What ``vidaccel_quant`` needs besides q/k/v.

    Attributes:
        num_text_tokens: text tokens in the *whole* sequence (all ranks together; 0 for Wan).
        smooth_q, pv, backend: as :func:`~vidaccel.kernels.quant_attention.quant_attention`.
        grid, window, tile: the whole sequence's sliding-tile geometry, or ``None`` for dense attention.
    """

    num_text_tokens: int
    smooth_q: bool
    pv: str
    backend: str
    grid: tuple[int, int, int] | None = None
    window: tuple[int, int, int] | None = None
    tile: tuple[int, int, int] | None = None


def _order(shards: range, n: int, text: int, length: int, device) -> torch.Tensor | None:
    """The permutation sorting tokens of ``shards`` into ``[text; video]`` order, or ``None`` when they already are."""
    if not text or len(shards) == 1:
        return None
    video = length * n // len(shards) - text
    return torch.argsort(canonical_positions(shards, n, text, video, device))


def _quant_op(query, key, value, *, params: QuantParams, scale, return_lse: bool, layout: SequenceLayout):
    p = params
    n = layout.shards
    if p.grid is not None and not (layout.whole and not return_lse):
        raise ValueError("the vidaccel_quant backend computes sliding-tile windows over the whole sequence only "
                         "(Ulysses); under ring attention QuantAttentionConfig with SlidingWindowConfig is refused")
    if p.num_text_tokens % n:
        raise ValueError(f"num_text_tokens={p.num_text_tokens} does not split evenly over {n} shards")
    text = p.num_text_tokens // n * len(layout.q_shards)
    if text != p.num_text_tokens // n * len(layout.kv_shards):
        raise ValueError(f"the query and key tokens hold different text counts ({len(layout.q_shards)} and "
                         f"{len(layout.kv_shards)} shards)")
    q_order = _order(layout.q_shards, n, p.num_text_tokens, query.shape[1], query.device)
    k_order = _order(layout.kv_shards, n, p.num_text_tokens, key.shape[1], key.device)
    if q_order is not None:
        query = query.index_select(1, q_order)
    if k_order is not None:
        key, value = key.index_select(1, k_order), value.index_select(1, k_order)
    result = quant_attention(query, key, value, num_text_tokens=text, grid=p.grid, window=p.window, tile=p.tile,
                             smooth_q=p.smooth_q, pv=p.pv, backend=p.backend, scale=scale, return_lse=return_lse)
    out, lse = result if return_lse else (result, None)
    if q_order is not None:
        back = torch.argsort(q_order)
        out = out.index_select(1, back)
        lse = None if lse is None else lse.index_select(2, back)
    if lse is None:
        return out
    return out, lse.transpose(1, 2)


register_backend(QUANT_BACKEND, _quant_op)
