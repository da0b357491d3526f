"""The specification of quantized attention (SageAttention2-style): an fp32 simulation of the exact numerics.

SageAttention2 (https://arxiv.org/abs/2411.10958) computes ``Q·Kᵀ`` in INT8 and ``P·V`` in FP8 inside a flash-
attention loop. Every backend (Triton kernel, vectorised torch) reproduces the rules below; this module states
them in plain torch, written for clarity (it loops over key blocks), not speed.

Per batch and head, with ``c = scale · log2(e)`` (scores are kept in the exp2 domain):

0. **Layout.** Every token has a *position* (:func:`layout_positions`): dense attention keeps sequence order with
   the text prefix padded to a whole :data:`KEY_BLOCK`; sliding-tile attention uses the tile layout of
   :func:`~vidaccel.kernels.attention.tile_plan` (text units first, then one unit per tile, units padded to a
   multiple of :data:`KEY_BLOCK`). Blocks below are runs of positions, so none mixes text and video tokens or
   two tiles; padding positions hold no token.
1. **Smoothing.** ``k̄`` = mean of K over tokens; ``Ks = K - k̄`` (subtracts ``q·k̄`` from every score of a
   query row: softmax is unchanged). With ``smooth_q``: ``q̄`` = mean of Q over tokens, ``Qs = Q - q̄``, and the
   term ``q̄·Ksᵀ`` returns as a per-key bias ``bias_j = (c·q̄)·Ks_j`` in fp32 (SageAttention2 subtracts a
   per-block mean of Q; a per-head mean keeps the bias one vector per head, computed once).
2. **INT8 Q and K.** ``c·Qs`` is quantized per block of :data:`Q_BLOCK` positions (SageAttention2's per-warp
   granularity on sm89), ``Ks`` per block of :data:`KEY_BLOCK` positions (the kernel's key block, so one scale per
   tile): ``s = amax / 127`` (1 for an all-zero block), ``x̂ = trunc(clamp(x / s, ±127) ± 0.5)`` (round half away
   from zero). Scores: ``t_ij = (Q̂_i·K̂_j) · sq_i · sk_j + bias_j`` (the dot is exact).
3. **FP8 V.** Per channel: ``sv_d = amax_j |V_jd| / 448``, ``V̂ = e4m3(clamp(V / sv, ±448))`` (round to
   nearest even). With ``pv="bf16"`` V is rounded to bf16 instead and ``sv = 1``.
4. **Online softmax over key blocks** (:data:`KEY_BLOCK` positions) in position order, with the running row max
   ``m`` (starting at :data:`M_FLOOR`) and ``g = log2(448)`` (FP8) or 0 (bf16)::

       m_new = max(m, max_j t_ij);  α = exp2(m - m_new)
       p_ij  = exp2(t_ij - (m_new - g))             # ≤ 448: P̃ scaled to the e4m3 range, its scale known
       l     = l·α + Σ_j p_ij                       # fp32, unquantized
       acc   = acc·α + e4m3(p) · V̂                  # fp32 accumulator, a fresh one per block (two-level)

   ``o = acc · sv / l``; the log-sum-exp (natural log, of the true scaled scores) is
   ``ln2 · (m + log2 l - g) + scale · q·k̄``.

Keys a query may not attend (sliding-tile windows) are left out of its sums; a block with none of its keys
contributes nothing (α = 1, p = 0).
"""

from __future__ import annotations

import math

import torch

from ..attention.layout import tile_plan
from ..attention.naive import sliding_tile_mask, window_in_tiles
from ..attention.wrapper import default_tile

__all__ = [
    "Q_BLOCK",
    "KEY_BLOCK",
    "INT8_MAX",
    "FP8_MAX",
    "LOG2E",
    "LOG2_FP8_MAX",
    "M_FLOOR",
    "is_dense_window",
    "layout_positions",
    "text_padded",
    "quantize_int8_blocks",
    "quantize_qk",
    "quantize_v",
    "round_fp8",
    "quant_attention_naive",
]

#: Positions per INT8 scale of Q (SageAttention2's per-warp granularity on sm89: 32 query rows per warp).
Q_BLOCK = 32
#: Positions per INT8 scale of K and per online-softmax step (the kernel's ``BLOCK_N``; 128 as in SageAttention2's
#: sm90 kernel): P̃ is quantized relative to the running max over these blocks, so the result depends on it; every
#: backend uses this one value.
KEY_BLOCK = 128
INT8_MAX = 127.0
FP8_MAX = 448.0
LOG2E = 1.4426950408889634
#: ``log2(448)`` as the fp32 constant the kernel adds: ``exp2(t - m + LOG2_FP8_MAX)`` maps the row max to 448.
LOG2_FP8_MAX = float(torch.tensor(math.log2(FP8_MAX), dtype=torch.float32))
#: Start of the running max: above the -1e30 of masked / padding keys, so they give ``p = 0`` even in a block
#: before the first real key, and below any real score.
M_FLOOR = -1.0e29


def is_dense_window(grid, window, tile) -> bool:
    """The window covers the whole grid: sliding-tile attention is dense attention (and runs as such)."""
    return list(window_in_tiles(grid, window, tile)) == [math.ceil(g / t) for g, t in zip(grid, tile)]


def text_padded(num_text_tokens: int) -> int:
    """Positions the text prefix takes in the dense layout: a whole number of :data:`KEY_BLOCK`."""
    return -(-num_text_tokens // KEY_BLOCK) * KEY_BLOCK


def layout_positions(length: int, *, num_text_tokens: int = 0, grid=None, window=None, tile=None,
                     device=None) -> torch.Tensor:
    """Position of each of ``length`` tokens (rule 0 of the module docs), ``[length]`` int64.

    Dense (``grid=None``): text tokens at ``0 ..``, video tokens from :func:`text_padded` on. Sliding-tile:
    ``tile_plan(grid, window, tile, num_text_tokens, align=KEY_BLOCK).dst``.
    """
    if grid is None:
        t = torch.arange(length, device=device)
        return torch.where(t < num_text_tokens, t, t + text_padded(num_text_tokens) - num_text_tokens)
    return tile_plan(grid, window, tile, num_text_tokens, align=KEY_BLOCK).dst.to(device)


def quantize_int8_blocks(x: torch.Tensor, block_of: torch.Tensor):
    """INT8 quantization of ``x [B, L, H, D]`` (fp32) per (batch, block, head); ``block_of [L]``: each token's block.

    Returns ``(x̂, s)``: ``x̂ [B, L, H, D]`` int8 and ``s [B, H, L]`` fp32, one scale per token (its block's),
    with ``x ≈ x̂ · s``.
    """
    B, L, H, D = x.shape
    ids = torch.unique(block_of, return_inverse=True)[1]
    n_blocks = int(ids.max()) + 1 if L else 0
    row_amax = x.abs().amax(dim=-1)  # [B, L, H]
    amax = torch.zeros(B, n_blocks, H, dtype=torch.float32, device=x.device)
    amax = amax.scatter_reduce(1, ids[None, :, None].expand(B, L, H), row_amax, "amax")
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))[:, ids]  # [B, L, H]
    y = (x / scale[..., None]).clamp(-INT8_MAX, INT8_MAX)
    xq = torch.trunc(y + torch.where(y >= 0, 0.5, -0.5)).to(torch.int8)
    return xq, scale.permute(0, 2, 1).contiguous()


def quantize_qk(q: torch.Tensor, k: torch.Tensor, *, scale: float, smooth_q: bool = True, q_pos: torch.Tensor,
                k_pos: torch.Tensor):
    """Smooth and quantize Q and K (rules 1-2 of the module docs); ``q_pos``/``k_pos``: their tokens' positions.

    Returns a dict: ``q8 [B, Lq, H, D]`` int8, ``q_scale [B, H, Lq]``, ``k8``, ``k_scale``, ``bias [B, H, Lk]``
    (the ``q̄·Ks`` term, in the exp2 domain), ``lse_correction [B, H, Lq]`` (``scale · q·k̄``, natural log),
    ``k_mean [B, H, D]`` and ``q_mean_scaled [B, H, D]`` (``c·q̄``; zeros without ``smooth_q``).
    """
    c = scale * LOG2E
    qf, kf = q.float(), k.float()
    k_mean = torch.mean(k, dim=1, dtype=torch.float32)  # [B, H, D]
    ks = kf - k_mean[:, None]
    if smooth_q:
        q_mean = torch.mean(q, dim=1, dtype=torch.float32)
        qs = qf - q_mean[:, None]
        q_mean_scaled = q_mean * c
        bias = torch.einsum("blhd,bhd->bhl", ks, q_mean_scaled)
    else:
        qs = qf
        q_mean_scaled = torch.zeros_like(k_mean)
        bias = torch.zeros(k.shape[0], k.shape[2], k.shape[1], dtype=torch.float32, device=k.device)
    q8, q_scale = quantize_int8_blocks(qs * c, q_pos // Q_BLOCK)
    k8, k_scale = quantize_int8_blocks(ks, k_pos // KEY_BLOCK)
    lse_correction = torch.einsum("blhd,bhd->bhl", qf, k_mean) * scale
    return dict(q8=q8, q_scale=q_scale, k8=k8, k_scale=k_scale, bias=bias, lse_correction=lse_correction,
                k_mean=k_mean, q_mean_scaled=q_mean_scaled)


def round_fp8(x: torch.Tensor) -> torch.Tensor:
    """``x`` (fp32) clamped to ``±448`` and rounded to the nearest-even e4m3 value, as fp32."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def quantize_v(v: torch.Tensor, pv: str = "fp8"):
    """Rule 3: ``(v̂ [B, L, H, D] fp32 holding e4m3 / bf16 values, sv [B, H, D] fp32)``."""
    vf = v.float()
    if pv == "bf16":
        return vf.to(torch.bfloat16).float(), torch.ones(v.shape[0], v.shape[2], v.shape[3], device=v.device)
    amax = v.abs().amax(dim=1).float()  # [B, H, D]
    sv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return round_fp8(vf / sv[:, None]), sv


def quant_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_text_tokens: int = 0,
                          grid=None, window=None, tile=None, smooth_q: bool = True, pv: str = "fp8",
                          scale: float | None = None):
    """Quantized attention by the rules of the module docs. ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``.

    ``grid``/``window`` (and ``tile``, default and clipping as in :func:`~vidaccel.kernels.attention.
    sliding_tile_attention`; ``Lq == Lk == num_text_tokens + T*H*W``) select sliding-tile attention
    (:func:`~vidaccel.kernels.attention.naive.sliding_tile_mask`); a window covering the grid is dense.
    Returns ``(out [B, Lq, H, D]`` in ``q``'s dtype, ``lse [B, H, Lq]`` fp32, natural log).
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    g = LOG2_FP8_MAX if pv == "fp8" else 0.0
    if grid is not None:
        tile = default_tile(grid) if tile is None else tuple(min(t, g) for t, g in zip(tile, grid))
    sparse = grid is not None and not is_dense_window(grid, window, tile)
    where = dict(grid=grid, window=window, tile=tile) if sparse else {}
    q_pos = layout_positions(Lq, num_text_tokens=num_text_tokens, device=q.device, **where)
    k_pos = layout_positions(Lk, num_text_tokens=num_text_tokens, device=q.device, **where)
    qk = quantize_qk(q, k, scale=scale, smooth_q=smooth_q, q_pos=q_pos, k_pos=k_pos)
    vq, sv = quantize_v(v, pv)
    # scores in the exp2 domain: [B, H, Lq, Lk]
    t = torch.einsum("bqhd,bkhd->bhqk", qk["q8"].float(), qk["k8"].float())
    t = t * (qk["q_scale"][..., :, None] * qk["k_scale"][..., None, :]) + qk["bias"][..., None, :]
    if sparse:
        allowed = sliding_tile_mask(grid, window, tile, num_text_tokens, device=q.device)
        t = t.masked_fill(~allowed, float("-inf"))
    order = torch.argsort(k_pos)
    block = k_pos[order] // KEY_BLOCK
    vh = vq.permute(0, 2, 1, 3)  # [B, H, Lk, D]
    m = torch.full((B, H, Lq), M_FLOOR, device=q.device)
    l = torch.zeros(B, H, Lq, device=q.device)
    acc = torch.zeros(B, H, Lq, D, device=q.device)
    for b in torch.unique(block).tolist():
        cols = order[block == b]
        tb = t[..., cols]
        m_new = torch.maximum(m, tb.amax(dim=-1))
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(tb - (m_new - g)[..., None])
        l = l * alpha + p.sum(dim=-1)
        p_q = round_fp8(p) if pv == "fp8" else p.to(torch.bfloat16).float()
        acc = acc * alpha[..., None] + p_q @ vh[:, :, cols]
        m = m_new
    out = acc * sv[:, :, None, :] / l[..., None]
    lse = (m + torch.log2(l) - g) * math.log(2.0) + qk["lse_correction"]
    return out.permute(0, 2, 1, 3).to(q.dtype), lse
