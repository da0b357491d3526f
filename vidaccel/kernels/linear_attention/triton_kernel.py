# size: two kernel pairs (given features, fused feature maps) share the split/finish helpers, launch table and
# static cases; kept together so the static report compiles exactly what the launcher runs.
"""Linear attention in Triton: a chunk-state kernel and an output kernel, 16-bit MMAs, fp32 accumulation and state.

Two kernel pairs:

* **given features** (``_state_kernel`` / ``_output_kernel``): ``q, k`` (and optional ``q_den, k_den``) are
  feature tensors ``[B, L, H, F]`` of any float dtype, read once each and rounded to the MMA dtype in registers;
* **fused feature map** (``_fused_state_kernel`` / ``_fused_output_kernel``): the kernels read the raw ``q, k``
  ``[B, L, H, D]`` and compute the features in registers: ``elu(x) + 1``, ``relu(x)`` or Hedgehog
  (``[softmax(x W + b), softmax(-(x W + b))]``, ``F = 2D``), then the RoPE rotation of the numerator from cos/sin
  tables. No feature tensor is ever written to memory. Features are kept as their even and odd halves (the two
  members of each rotated pair; for Hedgehog, the even and odd columns of ``W``), so the rotation is elementwise;
  the state is stored in that order, which only these kernels read.

1. The state kernels, per (batch·head, chunk, split of the chunk, feature block or group), sum ``kᵀ v``
   (``[features, D]``) and ``Σ k_den`` over their tokens. Splits give a GPU enough programs for one long
   bidirectional "chunk" (75,600 tokens at Wan 720p); the wrapper sums the splits and, when causal, takes the
   inclusive prefix sum over chunks (tiny: ``C × F × D`` per head), then rounds ``S`` to the MMA dtype.
2. The output kernels, per (batch·head, chunk × query block), read the query once and write
   ``(q S) / (q_den · z + eps)`` for all of ``D``. Query blocks never straddle chunks.

Precision: the state ``S``, the normaliser ``z`` and every dot accumulate in fp32; ``z`` and the denominator use
fp32 features. The MMA operands are 16-bit: features (and fp32 values) are rounded to bf16 (fp16 when ``q, k, v``
are all fp16), and ``S`` is rounded to that dtype for the output MMA. Hedgehog's projection runs as two 16-bit
MMAs on ``W = W_hi + W_lo`` (16 significant bits), so the softmax sees ``x W`` to about fp32 precision.
Ragged lengths are masked; offsets are int64. Under ``TRITON_INTERPRET=1`` ``tl.dot`` on bf16 is wrong, so
operands are rounded to the MMA dtype and then widened to fp32 there (``DOT_F32``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting

__all__ = ["linear_attention_triton", "linear_attention_fused_triton", "LAUNCH", "FEATURE_CODES"]

# tl.sum / tl.max are bound to the compiler or the interpreter when triton is first imported; tl.reduce with the
# standard combine functions works either way (see kernels/attention/triton_kernel.py).
_sum_combine = tl.standard._sum_combine
_max_combine = tl.standard._elementwise_max

#: Launch parameters (data). Given-feature kernels: tokens per block in the state / output kernel, max feature block.
#: Fused kernels: tokens per block in the state kernel and, per feature map, in the output kernel (the sizes at which
#: the feature map's fp32 tiles stay in registers without spilling, fewest instructions per token in the static
#: report), query blocks per output program (which loads the chunk's state and Hedgehog's weights once for them).
#: Both: tokens per state split, warps.
LAUNCH = dict(BLOCK_L=64, BLOCK_LQ=64, MAX_BLOCK_F=128, FUSED_BLOCK_L=32,
              FUSED_BLOCK_LQ={"hedgehog": 32, "elu": 16, "relu": 16}, QBLOCKS=8, SPLIT=4096, num_warps=8)
#: Feature maps the fused kernels compute in registers
FEATURE_CODES = {"elu": 1, "relu": 2, "hedgehog": 3}
_NEG = tl.constexpr(-1.0e30)  # masked logits (finite: a fully-masked row must not give NaN)


@triton.jit
def _to_mma(x, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr):
    """``x`` rounded to the MMA dtype (to nearest even); under the interpreter (``DOT_F32``) returned widened to
    fp32, and rounded by integer ops when the target is bf16 (the interpreter's fp32 -> bf16 cast truncates)."""
    if DOT_F32:
        if DOT_DTYPE == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            return bits.to(tl.float32, bitcast=True)
        return x.to(DOT_DTYPE).to(tl.float32)
    return x.to(DOT_DTYPE)


@triton.jit
def _hedgehog_projection(x, we_hi, we_lo, wo_hi, wo_lo, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr):
    """Hedgehog's projection ``x @ W`` as even / odd output columns, ``W`` as 16-bit hi + lo parts (two MMAs
    each, fp32 accumulation; fp32 IEEE dots under the interpreter)."""
    xm = _to_mma(x, DOT_DTYPE, DOT_F32)
    if DOT_F32:
        y_e = tl.dot(xm, we_hi.to(tl.float32), input_precision="ieee")
        y_e += tl.dot(xm, we_lo.to(tl.float32), input_precision="ieee")
        y_o = tl.dot(xm, wo_hi.to(tl.float32), input_precision="ieee")
        y_o += tl.dot(xm, wo_lo.to(tl.float32), input_precision="ieee")
    else:
        y_e = tl.dot(xm, we_hi)
        y_e += tl.dot(xm, we_lo)
        y_o = tl.dot(xm, wo_hi)
        y_o += tl.dot(xm, wo_lo)
    return y_e, y_o


@triton.jit
def _state_kernel(K, V, KD, S, Z,
                  stride_kb, stride_kl, stride_kh, stride_vb, stride_vl, stride_vh,
                  stride_db, stride_dl, stride_dh,
                  H, L, F, D, CHUNK, SPLIT, N_SPLITS, N_CHUNKS,
                  SAME_DEN: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr,
                  BLOCK_L: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    """Given features. Program (batch·head, chunk·split, feature block): ``S[f, :D] = Σ k[l, f] v[l, :]``, and
    ``Z[f] = Σ k_den[l, f]``. ``SAME_DEN``: ``k_den`` is ``k`` (read once)."""
    pid_bh = tl.program_id(0)
    pid_cs = tl.program_id(1)
    fb = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c = pid_cs // N_SPLITS
    s = pid_cs % N_SPLITS
    start = c * CHUNK + s * SPLIT
    end = tl.minimum(tl.minimum(start + SPLIT, c * CHUNK + CHUNK), L)
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_d = tl.arange(0, BLOCK_D)
    mf = offs_f < F
    md = offs_d < D
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    d_base = KD + b * stride_db + h * stride_dh
    acc = tl.full([BLOCK_F, BLOCK_D], 0.0, dtype=tl.float32)
    zacc = tl.full([BLOCK_F], 0.0, dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        ml = offs_l < end
        rows = offs_l.to(tl.int64)[:, None]
        k = tl.load(k_base + rows * stride_kl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        v = tl.load(v_base + rows * stride_vl + offs_d[None, :], mask=ml[:, None] & md[None, :], other=0.0)
        if SAME_DEN:
            kd = k
        else:
            kd = tl.load(d_base + rows * stride_dl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        zacc += tl.reduce(kd.to(tl.float32), 0, _sum_combine)
        k = _to_mma(k, DOT_DTYPE, DOT_F32)
        v = _to_mma(v, DOT_DTYPE, DOT_F32)
        if DOT_F32:
            acc += tl.dot(tl.trans(k), v, input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(k), v)
    # S: [B*H, N_CHUNKS, N_SPLITS, F, D] and Z: [B*H, N_CHUNKS, N_SPLITS, F], contiguous fp32
    slot = (pid_bh.to(tl.int64) * N_CHUNKS + c) * N_SPLITS + s
    tl.store(S + slot * F * D + offs_f[:, None] * D + offs_d[None, :], acc, mask=mf[:, None] & md[None, :])
    tl.store(Z + slot * F + offs_f, zacc, mask=mf)


@triton.jit
def _output_kernel(Q, QD, S, Z, O,
                   stride_qb, stride_ql, stride_qh, stride_db, stride_dl, stride_dh,
                   stride_ob, stride_ol, stride_oh,
                   H, L, F, D, CHUNK, N_CHUNKS, eps,
                   SAME_DEN: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr,
                   BLOCK_L: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    """Given features. Program (batch·head, chunk·query block): ``out = (q S) / (q_den · z + eps)`` for all of
    ``D``, looping over feature blocks; ``S`` is ``[B*H, N_CHUNKS, F, D]`` in the MMA dtype, ``Z`` fp32."""
    pid_bh = tl.program_id(0)
    pid_cj = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    n_sub = (CHUNK + BLOCK_L - 1) // BLOCK_L
    c = pid_cj // n_sub
    j = pid_cj % n_sub
    offs_l = c * CHUNK + j * BLOCK_L + tl.arange(0, BLOCK_L)
    ml = (offs_l < L) & (offs_l < c * CHUNK + CHUNK)
    rows = offs_l.to(tl.int64)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    q_base = Q + b * stride_qb + h * stride_qh
    d_base = QD + b * stride_db + h * stride_dh
    slot = pid_bh.to(tl.int64) * N_CHUNKS + c
    num = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
    den = tl.full([BLOCK_L], 0.0, dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        mf = offs_f < F
        q = tl.load(q_base + rows * stride_ql + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        if SAME_DEN:
            qd = q
        else:
            qd = tl.load(d_base + rows * stride_dl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        st = tl.load(S + slot * F * D + offs_f[:, None] * D + offs_d[None, :], mask=mf[:, None] & md[None, :],
                     other=0.0)
        z = tl.load(Z + slot * F + offs_f, mask=mf, other=0.0)
        den += tl.reduce(qd.to(tl.float32) * z[None, :], 1, _sum_combine)
        q = _to_mma(q, DOT_DTYPE, DOT_F32)
        if DOT_F32:
            num += tl.dot(q, st.to(tl.float32), input_precision="ieee")
        else:
            num += tl.dot(q, st)
    out = num / (den[:, None] + eps)
    tl.store(O + b * stride_ob + h * stride_oh + rows * stride_ol + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=ml[:, None] & md[None, :])


@triton.jit
def _fused_state_kernel(K, V, WE, WO, BE, BO, COS, SIN, S, Z,
                        stride_kb, stride_kl, stride_kh, stride_vb, stride_vl, stride_vh, stride_rl,
                        H, L, D, P, CHUNK, SPLIT, N_SPLITS, N_CHUNKS,
                        FEATURE: tl.constexpr, ROPE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr,
                        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Fused feature map. Program (batch·head, chunk·split, group ``g``): the keys' features of group ``g``
    (Hedgehog: ``g = 0`` softmax(y), ``g = 1`` softmax(-y); elu / relu: one group), as even / odd halves of
    ``P = D / 2`` features, rotated with the cos/sin tables when ``ROPE``; ``S[g·D + half·P + i, :D] +=
    Σ_l rot(φ)[l, i] v[l, :]``, ``Z[g·D + half·P + i] += Σ_l φ[l, i]`` (unrotated).

    Hedgehog's weights: ``WE = W[:, :, 0::2]`` and ``WO = W[:, :, 1::2]`` as ``[2, H, D, P]`` (hi and lo 16-bit
    parts), ``BE, BO`` the bias halves ``[H, P]`` fp32. ``COS, SIN``: ``[L, P]`` fp32.
    """
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    pid_bh = tl.program_id(0)
    pid_cs = tl.program_id(1)
    g = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c = pid_cs // N_SPLITS
    s = pid_cs % N_SPLITS
    start = c * CHUNK + s * SPLIT
    end = tl.minimum(tl.minimum(start + SPLIT, c * CHUNK + CHUNK), L)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    md = offs_d < D
    mp = offs_p < P
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if FEATURE == 3:
        w_off = h * D * P + offs_d[:, None] * P + offs_p[None, :]
        w_mask = md[:, None] & mp[None, :]
        we_hi = tl.load(WE + w_off, mask=w_mask, other=0.0)
        we_lo = tl.load(WE + H * D * P + w_off, mask=w_mask, other=0.0)
        wo_hi = tl.load(WO + w_off, mask=w_mask, other=0.0)
        wo_lo = tl.load(WO + H * D * P + w_off, mask=w_mask, other=0.0)
        be = tl.load(BE + h * P + offs_p, mask=mp, other=0.0)
        bo = tl.load(BO + h * P + offs_p, mask=mp, other=0.0)
        sign = 1.0 - 2.0 * g.to(tl.float32)
    acc_e = tl.full([BLOCK_P, BLOCK_D], 0.0, dtype=tl.float32)
    acc_o = tl.full([BLOCK_P, BLOCK_D], 0.0, dtype=tl.float32)
    z_e = tl.full([BLOCK_P], 0.0, dtype=tl.float32)
    z_o = tl.full([BLOCK_P], 0.0, dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        ml = offs_l < end
        rows = offs_l.to(tl.int64)[:, None]
        x = tl.load(k_base + rows * stride_kl + offs_d[None, :], mask=ml[:, None] & md[None, :], other=0.0)
        v = tl.load(v_base + rows * stride_vl + offs_d[None, :], mask=ml[:, None] & md[None, :], other=0.0)
        keep = ml[:, None] & mp[None, :]
        # ---- features φ (fp32, even / odd halves) of group g; zero on masked tokens and features
        if FEATURE == 3:
            y_e, y_o = _hedgehog_projection(x, we_hi, we_lo, wo_hi, wo_lo, DOT_DTYPE, DOT_F32)
            t_e = tl.where(mp[None, :], sign * (y_e + be[None, :]), _NEG)
            t_o = tl.where(mp[None, :], sign * (y_o + bo[None, :]), _NEG)
            m = tl.maximum(tl.reduce(t_e, 1, _max_combine), tl.reduce(t_o, 1, _max_combine))
            e_e = tl.exp(t_e - m[:, None])
            e_o = tl.exp(t_o - m[:, None])
            inv = 1.0 / (tl.reduce(e_e, 1, _sum_combine) + tl.reduce(e_o, 1, _sum_combine))
            f_e = tl.where(keep, e_e * inv[:, None], 0.0)
            f_o = tl.where(keep, e_o * inv[:, None], 0.0)
        else:
            x_e, x_o = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_L, BLOCK_P, 2)))
            if FEATURE == 1:
                f_e = tl.where(x_e > 0, x_e + 1.0, tl.exp(x_e))
                f_o = tl.where(x_o > 0, x_o + 1.0, tl.exp(x_o))
            else:
                f_e = tl.maximum(x_e, 0.0)
                f_o = tl.maximum(x_o, 0.0)
            f_e = tl.where(keep, f_e, 0.0)
            f_o = tl.where(keep, f_o, 0.0)
        z_e += tl.reduce(f_e, 0, _sum_combine)
        z_o += tl.reduce(f_o, 0, _sum_combine)
        if ROPE:
            r_off = offs_l.to(tl.int64)[:, None] * stride_rl + offs_p[None, :]
            cs = tl.load(COS + r_off, mask=keep, other=0.0)
            sn = tl.load(SIN + r_off, mask=keep, other=0.0)
            r_e = f_e * cs - f_o * sn
            r_o = f_e * sn + f_o * cs
        else:
            r_e = f_e
            r_o = f_o
        r_e = _to_mma(r_e, DOT_DTYPE, DOT_F32)
        r_o = _to_mma(r_o, DOT_DTYPE, DOT_F32)
        v = _to_mma(v, DOT_DTYPE, DOT_F32)
        if DOT_F32:
            acc_e += tl.dot(tl.trans(r_e), v, input_precision="ieee")
            acc_o += tl.dot(tl.trans(r_o), v, input_precision="ieee")
        else:
            acc_e += tl.dot(tl.trans(r_e), v)
            acc_o += tl.dot(tl.trans(r_o), v)
    # S: [B*H, N_CHUNKS, N_SPLITS, F, D], Z: [B*H, N_CHUNKS, N_SPLITS, F] fp32, F = groups · D
    F = tl.num_programs(2) * D
    slot = (pid_bh.to(tl.int64) * N_CHUNKS + c) * N_SPLITS + s
    f_e_idx = g * D + offs_p
    f_o_idx = g * D + P + offs_p
    smask = mp[:, None] & md[None, :]
    tl.store(S + slot * F * D + f_e_idx[:, None] * D + offs_d[None, :], acc_e, mask=smask)
    tl.store(S + slot * F * D + f_o_idx[:, None] * D + offs_d[None, :], acc_o, mask=smask)
    tl.store(Z + slot * F + f_e_idx, z_e, mask=mp)
    tl.store(Z + slot * F + f_o_idx, z_o, mask=mp)


@triton.jit
def _fused_output_kernel(Q, WE, WO, BE, BO, COS, SIN, S, Z, O,
                         stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh, stride_rl,
                         H, L, D, P, CHUNK, N_CHUNKS, N_PROG, eps,
                         FEATURE: tl.constexpr, ROPE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_F32: tl.constexpr,
                         BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Fused feature map. Program (batch·head, chunk·program): loops over the query blocks ``j ≡ program (mod
    N_PROG)`` of its chunk with the chunk's state (``S``: ``[B*H, N_CHUNKS, F, D]`` in the MMA dtype, the state
    kernel's order; ``Z`` fp32) and Hedgehog's weights loaded once. Per block: the queries' features of every group
    (the projection once for both), ``num = Σ rot(φ) S`` and ``den = Σ φ · z`` in fp32, ``num / (den + eps)``
    written for all of ``D``."""
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    GROUPS: tl.constexpr = 2 if FEATURE == 3 else 1
    pid_bh = tl.program_id(0)
    pid_cj = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c = pid_cj // N_PROG
    j0 = pid_cj % N_PROG
    n_sub = (CHUNK + BLOCK_L - 1) // BLOCK_L
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    md = offs_d < D
    mp = offs_p < P
    F = GROUPS * D
    slot = pid_bh.to(tl.int64) * N_CHUNKS + c
    smask = mp[:, None] & md[None, :]
    s_off = slot * F * D + offs_p[:, None] * D + offs_d[None, :]
    s_e0 = tl.load(S + s_off, mask=smask, other=0.0)
    s_o0 = tl.load(S + s_off + P * D, mask=smask, other=0.0)
    z_e0 = tl.load(Z + slot * F + offs_p, mask=mp, other=0.0)
    z_o0 = tl.load(Z + slot * F + P + offs_p, mask=mp, other=0.0)
    if FEATURE == 3:
        s_e1 = tl.load(S + s_off + D * D, mask=smask, other=0.0)
        s_o1 = tl.load(S + s_off + D * D + P * D, mask=smask, other=0.0)
        z_e1 = tl.load(Z + slot * F + D + offs_p, mask=mp, other=0.0)
        z_o1 = tl.load(Z + slot * F + D + P + offs_p, mask=mp, other=0.0)
        w_off = h * D * P + offs_d[:, None] * P + offs_p[None, :]
        w_mask = md[:, None] & mp[None, :]
        we_hi = tl.load(WE + w_off, mask=w_mask, other=0.0)
        we_lo = tl.load(WE + H * D * P + w_off, mask=w_mask, other=0.0)
        wo_hi = tl.load(WO + w_off, mask=w_mask, other=0.0)
        wo_lo = tl.load(WO + H * D * P + w_off, mask=w_mask, other=0.0)
        be = tl.load(BE + h * P + offs_p, mask=mp, other=0.0)
        bo = tl.load(BO + h * P + offs_p, mask=mp, other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh
    o_base = O + b * stride_ob + h * stride_oh
    for j in range(j0, n_sub, N_PROG):
        offs_l = c * CHUNK + j * BLOCK_L + tl.arange(0, BLOCK_L)
        ml = (offs_l < L) & (offs_l < c * CHUNK + CHUNK)
        rows = offs_l.to(tl.int64)[:, None]
        keep = ml[:, None] & mp[None, :]
        x = tl.load(q_base + rows * stride_ql + offs_d[None, :], mask=ml[:, None] & md[None, :], other=0.0)
        if ROPE:
            r_off = rows * stride_rl + offs_p[None, :]
            cs = tl.load(COS + r_off, mask=keep, other=0.0)
            sn = tl.load(SIN + r_off, mask=keep, other=0.0)
        if FEATURE == 3:
            y_e, y_o = _hedgehog_projection(x, we_hi, we_lo, wo_hi, wo_lo, DOT_DTYPE, DOT_F32)
            y_e += be[None, :]
            y_o += bo[None, :]
        else:
            x_e, x_o = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_L, BLOCK_P, 2)))
        num = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
        den = tl.full([BLOCK_L], 0.0, dtype=tl.float32)
        for g in tl.static_range(GROUPS):
            if FEATURE == 3:
                t_e = tl.where(mp[None, :], (1.0 - 2.0 * g) * y_e, _NEG)
                t_o = tl.where(mp[None, :], (1.0 - 2.0 * g) * y_o, _NEG)
                m = tl.maximum(tl.reduce(t_e, 1, _max_combine), tl.reduce(t_o, 1, _max_combine))
                e_e = tl.exp(t_e - m[:, None])
                e_o = tl.exp(t_o - m[:, None])
                inv = 1.0 / (tl.reduce(e_e, 1, _sum_combine) + tl.reduce(e_o, 1, _sum_combine))
                f_e = tl.where(keep, e_e * inv[:, None], 0.0)
                f_o = tl.where(keep, e_o * inv[:, None], 0.0)
            elif FEATURE == 1:
                f_e = tl.where(keep, tl.where(x_e > 0, x_e + 1.0, tl.exp(x_e)), 0.0)
                f_o = tl.where(keep, tl.where(x_o > 0, x_o + 1.0, tl.exp(x_o)), 0.0)
            else:
                f_e = tl.where(keep, tl.maximum(x_e, 0.0), 0.0)
                f_o = tl.where(keep, tl.maximum(x_o, 0.0), 0.0)
            if g == 0:
                z_e, z_o, s_e, s_o = z_e0, z_o0, s_e0, s_o0
            else:
                z_e, z_o, s_e, s_o = z_e1, z_o1, s_e1, s_o1
            den += tl.reduce(f_e * z_e[None, :], 1, _sum_combine) + tl.reduce(f_o * z_o[None, :], 1, _sum_combine)
            if ROPE:
                r_e = f_e * cs - f_o * sn
                r_o = f_e * sn + f_o * cs
            else:
                r_e = f_e
                r_o = f_o
            r_e = _to_mma(r_e, DOT_DTYPE, DOT_F32)
            r_o = _to_mma(r_o, DOT_DTYPE, DOT_F32)
            if DOT_F32:
                num += tl.dot(r_e, s_e.to(tl.float32), input_precision="ieee")
                num += tl.dot(r_o, s_o.to(tl.float32), input_precision="ieee")
            else:
                num += tl.dot(r_e, s_e)
                num += tl.dot(r_o, s_o)
        out = num / (den[:, None] + eps)
        tl.store(o_base + rows * stride_ol + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=ml[:, None] & md[None, :])


# -- launch ----------------------------------------------------------------------------------------------------
_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _lastdim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def mma_dtype(*tensors) -> torch.dtype:
    """16-bit MMA operand dtype: fp16 when every input is fp16, else bf16 (fp32 inputs are computed in bf16)."""
    return torch.float16 if all(t.dtype == torch.float16 for t in tensors if t is not None) else torch.bfloat16


def _splits(L: int, chunk: int, p: dict, bl: int) -> tuple[int, int, int]:
    n_chunks = triton.cdiv(L, chunk)
    split = max(bl, min(p["SPLIT"], triton.cdiv(chunk, bl) * bl))
    return n_chunks, split, triton.cdiv(chunk, split)


def _finish_state(S: torch.Tensor, Z: torch.Tensor, causal: bool, n_chunks: int, dot: torch.dtype):
    S, Z = S.sum(2), Z.sum(2)
    if causal and n_chunks > 1:
        S, Z = S.cumsum(1), Z.cumsum(1)
    return S.to(dot).contiguous(), Z.contiguous()


def linear_attention_triton(q, k, v, *, causal: bool = False, chunk: int | None = None, q_den=None, k_den=None,
                            eps: float = 1e-6, launch: dict | None = None) -> torch.Tensor:
    """Given features. ``q, k (, q_den, k_den): [B, L, H, F]``, ``v: [B, L, H, D]`` → ``[B, L, H, D]``.

    Same semantics as :func:`~vidaccel.kernels.linear_attention.naive.linear_attention_naive` (with the 16-bit
    MMA operands of the module docs); no autograd.
    """
    p = dict(LAUNCH, **(launch or {}))
    B, L, H, Fdim = q.shape
    D = v.shape[-1]
    q, k, v = (_lastdim_contiguous(x) for x in (q, k, v))
    qd = q if q_den is None else _lastdim_contiguous(q_den)
    kd = k if k_den is None else _lastdim_contiguous(k_den)
    chunk = L if not causal else int(chunk)
    n_chunks, split, n_splits = _splits(L, chunk, p, p["BLOCK_L"])
    bf = min(_pow2(Fdim), p["MAX_BLOCK_F"])
    bd = _pow2(D)
    dot = mma_dtype(q, k, v, q_den, k_den)
    interp = triton_interpreting()
    dev = q.device
    S = torch.empty(B * H, n_chunks, n_splits, Fdim, D, dtype=torch.float32, device=dev)
    Z = torch.empty(B * H, n_chunks, n_splits, Fdim, dtype=torch.float32, device=dev)
    _state_kernel[(B * H, n_chunks * n_splits, triton.cdiv(Fdim, bf))](
        k, v, kd, S, Z, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        kd.stride(0), kd.stride(1), kd.stride(2), H, L, Fdim, D, chunk, split, n_splits, n_chunks,
        SAME_DEN=k_den is None, DOT_DTYPE=_TL[dot], DOT_F32=interp, BLOCK_L=p["BLOCK_L"], BLOCK_F=bf, BLOCK_D=bd,
        num_warps=p["num_warps"])
    S, Z = _finish_state(S, Z, causal, n_chunks, dot)
    o = torch.empty(B, L, H, D, dtype=v.dtype, device=dev)
    blq = p["BLOCK_LQ"]
    _output_kernel[(B * H, n_chunks * triton.cdiv(chunk, blq))](
        q, qd, S, Z, o, q.stride(0), q.stride(1), q.stride(2), qd.stride(0), qd.stride(1), qd.stride(2),
        o.stride(0), o.stride(1), o.stride(2), H, L, Fdim, D, chunk, n_chunks, eps,
        SAME_DEN=q_den is None, DOT_DTYPE=_TL[dot], DOT_F32=interp, BLOCK_L=blq, BLOCK_F=bf, BLOCK_D=bd,
        num_warps=p["num_warps"])
    return o


def hedgehog_weights(weight: torch.Tensor, bias: torch.Tensor, dot: torch.dtype):
    """Hedgehog's ``W [H, D, D]`` and ``b [H, D]`` as the fused kernels read them: even / odd output columns,
    ``W`` split into 16-bit hi and lo parts (``[2, H, D, D/2]`` each), biases fp32 ``[H, D/2]``."""
    w = weight.detach().float()
    parts = []
    for half in (w[..., 0::2], w[..., 1::2]):
        hi = half.to(dot)
        parts.append(torch.stack([hi, (half - hi.float()).to(dot)]).contiguous())
    bf = bias.detach().float()
    return parts[0], parts[1], bf[:, 0::2].contiguous(), bf[:, 1::2].contiguous()


def linear_attention_fused_triton(q, k, v, *, feature: str, weight=None, bias=None, cos=None, sin=None,
                                  causal: bool = False, chunk: int | None = None, eps: float = 1e-6,
                                  launch: dict | None = None) -> torch.Tensor:
    """Fused feature map. ``q, k, v: [B, L, H, D]`` (``D`` even), ``feature`` in :data:`FEATURE_CODES`
    (``"hedgehog"`` with ``weight [H, D, D]``, ``bias [H, D]``), ``cos, sin: [L, D/2]`` (used in fp16) or ``None``
    (no RoPE). Equals the spec on ``rot(φ(q)), rot(φ(k)), v`` with ``q_den = φ(q), k_den = φ(k)``."""
    p = dict(LAUNCH, **(launch or {}))
    B, L, H, D = q.shape
    P = D // 2
    q, k, v = (_lastdim_contiguous(x) for x in (q, k, v))
    code = FEATURE_CODES[feature]
    groups = 2 if code == 3 else 1
    chunk = L if not causal else int(chunk)
    n_chunks, split, n_splits = _splits(L, chunk, p, p["FUSED_BLOCK_L"])
    bd = _pow2(D, 32)  # halves of >= 16 features: the MMA's minimum K / N
    dot = mma_dtype(q, k, v)
    interp = triton_interpreting()
    dev = q.device
    if code == 3:
        we, wo, be, bo = hedgehog_weights(weight, bias, dot)
    else:
        we = wo = be = bo = torch.zeros(1, dtype=torch.float32, device=dev)
    rope = cos is not None
    if rope:  # fp16 (rounding 2^-12, below the bf16 MMA operands' 2^-9): half the bytes and registers of fp32
        cos, sin = cos.to(torch.float16).contiguous(), sin.to(torch.float16).contiguous()
    else:
        cos = sin = torch.zeros(1, 1, dtype=torch.float16, device=dev)
    Fdim = groups * D
    S = torch.empty(B * H, n_chunks, n_splits, Fdim, D, dtype=torch.float32, device=dev)
    Z = torch.empty(B * H, n_chunks, n_splits, Fdim, dtype=torch.float32, device=dev)
    _fused_state_kernel[(B * H, n_chunks * n_splits, groups)](
        k, v, we, wo, be, bo, cos, sin, S, Z, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), cos.stride(0), H, L, D, P, chunk, split, n_splits, n_chunks,
        FEATURE=code, ROPE=rope, DOT_DTYPE=_TL[dot], DOT_F32=interp, BLOCK_L=p["FUSED_BLOCK_L"], BLOCK_D=bd,
        num_warps=p["num_warps"])
    S, Z = _finish_state(S, Z, causal, n_chunks, dot)
    o = torch.empty(B, L, H, D, dtype=v.dtype, device=dev)
    blq = p["FUSED_BLOCK_LQ"][feature]
    n_prog = triton.cdiv(triton.cdiv(chunk, blq), p["QBLOCKS"])
    _fused_output_kernel[(B * H, n_chunks * n_prog)](
        q, we, wo, be, bo, cos, sin, S, Z, o, q.stride(0), q.stride(1), q.stride(2), o.stride(0), o.stride(1),
        o.stride(2), cos.stride(0), H, L, D, P, chunk, n_chunks, n_prog, eps,
        FEATURE=code, ROPE=rope, DOT_DTYPE=_TL[dot], DOT_F32=interp, BLOCK_L=blq, BLOCK_D=bd,
        num_warps=p["num_warps"])
    return o


# -- static report -----------------------------------------------------------------------------------------------
#: (label, B, H, D, tokens, tokens per latent frame): Wan2.1-1.3B 480p x 81 frames (21 x 30 x 52) and CogVideoX-5B
#: (2 x 17,776 tokens with CFG, 48 heads x 64).
STATIC_MODELS = (("wan480p", 1, 12, 128, 32760, 1560), ("cogvideox5b", 2, 48, 64, 17776, 1350))


def _strides(*shape):
    out, s = [], 1
    for n in reversed(shape):
        out.append(s)
        s *= n
    return tuple(reversed(out))


def static_cases() -> list:
    """Both kernel pairs at real shapes: the fused feature map (Hedgehog with RoPE, the technique's default, and
    elu; bidirectional and block-causal over 3-frame chunks) and the given-feature kernels (bf16 and fp32 feature
    tensors of 2D Hedgehog features); see :mod:`vidaccel.kernels.static`."""
    from ..static import StaticCase, T

    p = LAUNCH
    bf16, f32 = torch.bfloat16, torch.float32
    cases = []
    for label, B, H, D, L, per_frame in STATIC_MODELS:
        bd, P = _pow2(D, 32), D // 2
        xs = _strides(B, L, H, D)[:3]
        variants = [("hedgehog_rope", 3, True), ("elu_rope", 1, True), ("relu_rope", 2, True), ("hedgehog", 3, False)]
        if label != "wan480p":
            variants = variants[:1]
        names = {v: k for k, v in FEATURE_CODES.items()}
        for vname, code, rope in variants:
            for causal in ((False, True) if vname in ("hedgehog_rope", "elu_rope") else (False,)):
                chunk = 3 * per_frame if causal else L
                n_chunks, split, n_splits = _splits(L, chunk, p, p["FUSED_BLOCK_L"])
                mode = f"causal{chunk}" if causal else "bidirectional"
                shape = f"B={B} L={L} H={H} D={D} F={2 * D if code == 3 else D} {mode}, bf16"
                main = label == "wan480p" and code == 3 and not causal
                f16 = torch.float16
                args = (T(bf16), T(bf16), T(bf16), T(bf16), T(f32), T(f32), T(f16), T(f16), T(f32), T(f32),
                        *xs, *xs, P, H, L, D, P, chunk, split, n_splits, n_chunks)
                cases.append(StaticCase(
                    name=f"linear_attention/fused_state/{label}/{vname}/{mode}", kernel=_fused_state_kernel,
                    args=args, kwargs=dict(FEATURE=code, ROPE=rope, DOT_DTYPE=tl.bfloat16, DOT_F32=False,
                                           BLOCK_L=p["FUSED_BLOCK_L"], BLOCK_D=bd, num_warps=p["num_warps"]),
                    main=main, expect=dict(no_spills=True, mma=True, stages_ahead=1) if main else {}, shape=shape))
                blq = p["FUSED_BLOCK_LQ"][names[code]]
                n_prog = triton.cdiv(triton.cdiv(chunk, blq), p["QBLOCKS"])
                args = (T(bf16), T(bf16), T(bf16), T(f32), T(f32), T(f16), T(f16), T(bf16), T(f32), T(bf16),
                        *xs, *xs, P, H, L, D, P, chunk, n_chunks, n_prog, 1e-6)
                cases.append(StaticCase(
                    name=f"linear_attention/fused_output/{label}/{vname}/{mode}", kernel=_fused_output_kernel,
                    args=args, kwargs=dict(FEATURE=code, ROPE=rope, DOT_DTYPE=tl.bfloat16, DOT_F32=False,
                                           BLOCK_L=blq, BLOCK_D=bd, num_warps=p["num_warps"]),
                    main=main, expect=dict(no_spills=True, mma="any", stages_ahead=1) if main else {}, shape=shape))
        if label != "wan480p":
            continue
        # given features: 2D Hedgehog features computed (and rotated) in torch, in bf16 or fp32
        Fdim = 2 * D
        fs = _strides(B, L, H, Fdim)[:3]
        n_chunks, split, n_splits = _splits(L, L, p, p["BLOCK_L"])
        bf = min(_pow2(Fdim), p["MAX_BLOCK_F"])
        for fdt, same in ((bf16, False), (f32, False), (bf16, True)):
            tag = str(fdt)[6:] + ("_same_den" if same else "")
            shape = (f"B={B} L={L} H={H} D={D} F={Fdim} bidirectional, {str(fdt)[6:]} features, "
                     + ("denominator = numerator" if same else "numerator != denominator"))
            args = (T(fdt), T(bf16), T(fdt), T(f32), T(f32), *fs, *xs, *fs, H, L, Fdim, D, L, split, n_splits,
                    n_chunks)
            meta = dict(SAME_DEN=same, DOT_DTYPE=tl.bfloat16, DOT_F32=False, BLOCK_F=bf, BLOCK_D=_pow2(D),
                        num_warps=p["num_warps"])
            cases.append(StaticCase(name=f"linear_attention/state/{label}/features_{tag}",
                                    kernel=_state_kernel, args=args, kwargs=dict(meta, BLOCK_L=p["BLOCK_L"]),
                                    shape=shape))
            args = (T(fdt), T(fdt), T(bf16), T(f32), T(bf16), *fs, *fs, *xs, H, L, Fdim, D, L, n_chunks, 1e-6)
            cases.append(StaticCase(name=f"linear_attention/output/{label}/features_{tag}",
                                    kernel=_output_kernel, args=args, kwargs=dict(meta, BLOCK_L=p["BLOCK_LQ"]),
                                    shape=shape))
    return cases


def bytes_moved(B: int, L: int, H: int, D: int, *, feature: str = "hedgehog", rope: bool = True,
                causal_chunk: int | None = None, launch: dict | None = None) -> dict:
    """Global-memory bytes one :func:`linear_attention_fused_triton` call loads and stores, from its kernels' tile
    loads at ``LAUNCH`` (bf16 q/k/v and output, fp16 RoPE tables).

    Returns ``{"stream": bytes, "resident": bytes}`` per kernel and in total: ``stream`` = q, k, v, the output and
    the partial states (read from / written to DRAM), ``resident`` = re-reads of small data shared by many
    programs (the RoPE tables, shared by the heads; each head's state and Hedgehog weights), which stay in L2.
    """
    p = dict(LAUNCH, **(launch or {}))
    groups = 2 if feature == "hedgehog" else 1
    F, P, bh = groups * D, D // 2, B * H
    chunk = causal_chunk or L
    n_chunks, _, n_splits = _splits(L, chunk, p, p["FUSED_BLOCK_L"])
    tokens = B * L * H  # token-heads
    table = L * P * 2 * 2 if rope else 0  # cos + sin rows, fp16, per head that reads them
    w = 4 * D * P * 2 + 2 * P * 4 if feature == "hedgehog" else 0  # W hi/lo even/odd bf16, biases fp32
    state_progs = bh * n_chunks * n_splits * groups
    state = {"stream": groups * tokens * D * 2 * 2 + bh * n_chunks * n_splits * F * (D + 1) * 4,
             "resident": groups * bh * table + state_progs * w}
    n_prog = triton.cdiv(triton.cdiv(chunk, p["FUSED_BLOCK_LQ"][feature]), p["QBLOCKS"])
    out_progs = bh * n_chunks * n_prog
    output = {"stream": tokens * D * 2 * 2,
              "resident": bh * table + out_progs * (F * D * 2 + F * 4 + w)}
    # between the kernels (torch): sum of the splits (and prefix over chunks), state rounded to 16 bits
    finish = {"stream": bh * n_chunks * n_splits * F * (D + 1) * 4 + bh * n_chunks * F * (D * 2 + 4), "resident": 0}
    total = {k: state[k] + output[k] + finish[k] for k in ("stream", "resident")}
    return {"state": state, "finish": finish, "output": output, "total": total}


def bytes_moved_given(B: int, L: int, H: int, D: int, F: int, *, feature_bytes: int = 2, same_den: bool = False,
                      launch: dict | None = None) -> dict:
    """The same figure for :func:`linear_attention_triton` (given feature tensors ``[B, L, H, F]`` of
    ``feature_bytes`` per value; ``same_den``: no separate denominator features), bidirectional."""
    p = dict(LAUNCH, **(launch or {}))
    tokens, bh = B * L * H, B * H
    bf = min(_pow2(F), p["MAX_BLOCK_F"])
    n_f = triton.cdiv(F, bf)
    _, _, n_splits = _splits(L, L, p, p["BLOCK_L"])
    feats = (1 if same_den else 2) * tokens * F * feature_bytes  # numerator (+ denominator) features, once each
    state = {"stream": feats + n_f * tokens * D * 2 + bh * n_splits * F * (D + 1) * 4, "resident": 0}
    output = {"stream": feats + tokens * D * 2,
              "resident": bh * triton.cdiv(L, p["BLOCK_LQ"]) * F * (D * 2 + 4)}
    finish = {"stream": bh * n_splits * F * (D + 1) * 4 + bh * F * (D * 2 + 4), "resident": 0}
    total = {k: state[k] + output[k] + finish[k] for k in ("stream", "resident")}
    return {"state": state, "finish": finish, "output": output, "total": total}


def bytes_moved_before_fusion(B: int, L: int, H: int, D: int, F: int) -> dict:
    """The same figure for the kernels this op had before (kept as the reference of the static report): fp32
    feature tensors ``[B, L, H, F]`` (rotated numerator and plain denominator for q and k), bf16 v and output,
    TF32 dots, feature block 64 and value block 64 per program, so the state kernel read k once per value block
    and v once per feature block, the output kernel q and q_den once per value block and the state once per
    64-query block and value block."""
    tokens = B * L * H
    n_f, n_d = triton.cdiv(F, 64), triton.cdiv(D, 64)
    splits = triton.cdiv(L, 4096)
    state = {"stream": n_d * tokens * F * 4 + n_f * tokens * D * 2 + tokens * F * 4
             + B * H * splits * F * (D + 1) * 4, "resident": 0}
    output = {"stream": 2 * n_d * tokens * F * 4 + tokens * D * 2,
              "resident": B * H * triton.cdiv(L, 64) * n_d * F * (64 + 1) * 4}
    total = {k: state[k] + output[k] for k in ("stream", "resident")}
    return {"state": state, "output": output, "total": total}


def static_notes() -> str:
    """Markdown: bytes moved per layer call at Wan 480p, before and after (computed from the kernels' loads)."""
    B, L, H, D = 1, 32760, 12, 128
    before = bytes_moved_before_fusion(B, L, H, D, 2 * D)
    rows = [("before: given fp32 Hedgehog features (rotated + plain), TF32", before),
            ("after: given fp32 features (rotated + plain), bf16 MMA", bytes_moved_given(B, L, H, D, 2 * D,
                                                                                        feature_bytes=4)),
            ("after: given bf16 features (rotated + plain), bf16 MMA", bytes_moved_given(B, L, H, D, 2 * D))]
    for feature, rope in (("hedgehog", True), ("elu", True)):
        rows.append((f"after: fused {feature}{' + RoPE' if rope else ''}, bf16 q/k/v",
                     bytes_moved(B, L, H, D, feature=feature, rope=rope)))
    lines = ["### Bytes moved per layer call (Wan2.1-1.3B 480p x 81: 32,760 tokens, 12 heads x 128, bidirectional)\n",
             ("From each kernel's tile loads and stores at its launch parameters; `stream` = q/k/v/features/output/"
              "partial states (DRAM), `resident` = re-reads of per-head state, weights and per-position RoPE tables "
              "(L2-resident). The torch passes that produced the four fp32 feature tensors before (at least "
              f"{4 * B * L * H * 2 * D * 4 / 1e9:.2f} GB written and read again) are not in the before figure.\n"),
             "| path | state kernel stream | output kernel stream | total stream | total L2-resident re-reads |",
             "|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['state']['stream'] / 1e6:,.0f} MB | {r['output']['stream'] / 1e6:,.0f} MB | "
                     f"{r['total']['stream'] / 1e6:,.0f} MB | {r['total']['resident'] / 1e6:,.0f} MB |")
    return "\n".join(lines) + "\n"
