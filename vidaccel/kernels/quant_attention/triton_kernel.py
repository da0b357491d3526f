"""Triton kernels of quantized attention: INT8 Q·Kᵀ, FP8 (or bf16) P·V, fp32 online softmax; dense or block-sparse.

The numerics are those of :mod:`vidaccel.kernels.quant_attention.naive` (the spec). Three kernels:

* :func:`quant_qk_kernel`: one program per quantization block (``Q_BLOCK`` / ``KEY_BLOCK`` layout positions) of
  one (batch, head): gathers the block's tokens (the dense layout, or the tile layout of sliding-tile attention:
  the reordering is fused here), subtracts the mean, quantizes to INT8, and writes the per-position extra: the
  ``q̄·Ks`` bias of a key (-1e30 at padding, which masks it), or the ``scale · q·k̄`` log-sum-exp correction of
  a query;
* :func:`quant_v_kernel`: V per channel to e4m3 (or bf16), stored transposed (``[B·H, D, L]``, keys contiguous)
  so that the B operand of the P·V MMA is K-major, as FP8 wgmma requires;
* :func:`quant_attn_fwd`: the flash-attention loop: ``tl.dot`` int8 × int8 → int32 for the scores, ``tl.dot``
  e4m3 × e4m3 → fp32 into a fresh accumulator per key block (added into the fp32 output accumulator: the
  two-level accumulation of SageAttention2, which keeps Hopper's reduced-precision FP8 accumulation to one block),
  or bf16 × bf16 (``PV_FP8=False``: GPUs without FP8 MMA).

Quantized buffers are in layout order and padded: positions to whole kernel blocks, head dim to ``BLOCK_D`` (a
power of two >= 32, zeros), so no load in the hot loop is masked. K has one scale per key block, so dequantizing a
score costs one FMA (``s · (sq·sk) + bias``). Outputs are scattered back to sequence order by the store. Offsets
are int64.

Under ``TRITON_INTERPRET=1`` (CPU) the fp32 → e4m3 and fp32 → bf16 casts of the interpreter do not round to
nearest even (126.8 → 64 for e4m3; bf16 truncates), so with ``INTERPRET`` the values are first rounded in fp32
arithmetic, after which the casts are exact. The interpreter's int8 and e4m3 ``tl.dot`` are exact; its bf16
``tl.dot`` is not, so the bf16 P·V runs in fp32 on exactly-rounded values there.

This file is loaded by the wrapper once per ``TRITON_INTERPRET`` mode (:func:`vidaccel.kernels._backend.kernel_module`).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from vidaccel.kernels.quant_attention.naive import (
    FP8_MAX,
    INT8_MAX,
    KEY_BLOCK,
    LOG2_FP8_MAX,
    LOG2E,
    M_FLOOR,
    Q_BLOCK,
    text_padded,
)

__all__ = ["AUTOTUNE_CONFIGS", "prune_configs", "block_d", "quant_qk_kernel", "quant_v_kernel", "quant_attn_fwd",
           "static_cases"]

#: Launch configs (data). ``BLOCK_N`` is fixed at ``KEY_BLOCK`` (the numerics depend on it); sparse mode keeps
#: the configs whose ``BLOCK_M`` divides the unit.
AUTOTUNE_CONFIGS: list[dict] = [
    dict(BLOCK_M=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, num_warps=4, num_stages=2),
    dict(BLOCK_M=64, num_warps=4, num_stages=3),
]
#: Rows per program of :func:`quant_v_kernel`.
V_BLOCK = 64

# Reductions use tl.reduce with the standard combine functions (what tl.max / tl.sum expand to): triton's own
# @jit helpers are bound to compiler or interpreter when triton is first imported.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine
_INT8_MAX = tl.constexpr(INT8_MAX)
_FP8_MAX = tl.constexpr(FP8_MAX)
_LOG2_FP8_MAX = tl.constexpr(LOG2_FP8_MAX)
_M_FLOOR = tl.constexpr(M_FLOOR)
_LN2 = tl.constexpr(math.log(2.0))
_MASKED = tl.constexpr(-1.0e30)


def block_d(head_dim: int) -> int:
    """Padded head dim of the quantized buffers: a power of two, at least 32 (the K step of an int8 MMA)."""
    return max(32, triton.next_power_of_2(head_dim))


def prune_configs(configs: list[dict], unit: int, block_d: int) -> list[dict]:
    """Configs usable for a tile-layout unit (0 = dense) and padded head dim: ``BLOCK_M`` must divide the unit;
    ``BLOCK_M = 128`` is dropped above head dim 128 (its fp32 accumulator alone would fill the registers)."""
    out = [c for c in configs if (not unit or unit % c["BLOCK_M"] == 0) and (block_d <= 128 or c["BLOCK_M"] <= 64)]
    if not out:
        raise ValueError(f"no quant-attention config fits unit={unit} (a multiple of {KEY_BLOCK} is needed)")
    return out


@triton.jit
def _round_fp8(x):
    """Round fp32 ``x`` (``|x| <= 448``) to the nearest-even e4m3 value, in fp32 (the interpreter's cast does not)."""
    bits = x.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals below 2^-6 share the 2^-9 spacing
    quantum = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_quantum = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    return ((x * inv_quantum + 12582912.0) - 12582912.0) * quantum  # exact scalings; RNE by adding 1.5·2^23


@triton.jit
def _round_bf16(x):
    """Round fp32 ``x`` to the nearest-even bf16 value, in fp32 (the interpreter's cast truncates)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tokens(Src, pos, L, num_text, text_pad, HAS_SRC: tl.constexpr):
    """Token at each layout position and whether there is one: ``Src[pos]`` (-1: padding) with ``HAS_SRC``, else
    the dense layout (text at ``0 ..``, video from ``text_pad`` on)."""
    if HAS_SRC:
        token = tl.load(Src + pos)
        valid = token >= 0
    else:
        text = pos < text_pad
        token = tl.where(text, pos, pos - text_pad + num_text)
        valid = tl.where(text, pos < num_text, token < L)
    return token, valid


@triton.jit
def quant_qk_kernel(X, Mean, Vec, Src, Out, Scale, Aux,
                    stride_xb, stride_xl, stride_xh, stride_xd, H, L, D, num_text, text_pad, Lpad, mult, aux_mult,
                    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SRC: tl.constexpr, ROW_SCALE: tl.constexpr,
                    AUX: tl.constexpr):
    """Quantize ``BLOCK`` layout positions of ``X [B, L, H, D]`` (one block) of one (batch, head) to INT8.

    ``xs = X - Mean`` (zero at padding positions); ``y = xs · mult`` is quantized with one scale
    ``amax(|y|) / 127``, stored per position (``ROW_SCALE``, ``Scale [B·H, Lpad]``) or once (``[B·H, Lpad /
    BLOCK]``). ``Out: [B·H, Lpad, BLOCK_D]``. ``AUX == 1``: ``Aux = xs · Vec`` (a key's bias; -1e30 at padding,
    which masks it); ``AUX == 2``: ``Aux = (X · Vec) · aux_mult`` (a query's log-sum-exp correction).
    """
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    pos = pid_p * BLOCK + tl.arange(0, BLOCK)
    token, valid = _tokens(Src, pos, L, num_text, text_pad, HAS_SRC)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < D
    inside = valid[:, None] & in_d[None, :]
    x = tl.load(X + b * stride_xb + h * stride_xh + token.to(tl.int64)[:, None] * stride_xl
                + offs_d[None, :] * stride_xd, mask=inside, other=0.0).to(tl.float32)
    mean = tl.load(Mean + pid_bh * D + offs_d, mask=in_d, other=0.0)
    xs = tl.where(inside, x - mean[None, :], 0.0)
    y = xs * mult
    amax = tl.reduce(tl.reduce(tl.abs(y), 1, _MAX), 0, _MAX)
    s = tl.where(amax > 0, amax / _INT8_MAX, 1.0)
    y = tl.minimum(tl.maximum(y / s, -_INT8_MAX), _INT8_MAX)
    y = y + tl.where(y >= 0, 0.5, -0.5)  # the cast truncates: round half away from zero
    rows = pid_bh * Lpad + pos.to(tl.int64)
    tl.store(Out + rows[:, None] * BLOCK_D + offs_d[None, :], y.to(tl.int8))
    if ROW_SCALE:
        tl.store(Scale + rows, tl.full([BLOCK], 0.0, tl.float32) + s)
    else:
        tl.store(Scale + pid_bh * (Lpad // BLOCK) + pid_p, s)
    if AUX == 1:
        vec = tl.load(Vec + pid_bh * D + offs_d, mask=in_d, other=0.0)
        tl.store(Aux + rows, tl.where(valid, tl.reduce(xs * vec[None, :], 1, _SUM), _MASKED))
    if AUX == 2:
        vec = tl.load(Vec + pid_bh * D + offs_d, mask=in_d, other=0.0)
        tl.store(Aux + rows, tl.reduce(x * vec[None, :], 1, _SUM) * aux_mult)


@triton.jit
def quant_v_kernel(V, Src, VScale, Out, stride_vb, stride_vl, stride_vh, stride_vd, H, L, D, num_text, text_pad,
                   Lpad, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SRC: tl.constexpr, PV_FP8: tl.constexpr,
                   INTERPRET: tl.constexpr):
    """Quantize ``BLOCK_T`` layout positions of ``V [B, L, H, D]`` of one (batch, head), stored transposed
    (``Out: [B·H, BLOCK_D, Lpad]``, zeros at padding). ``PV_FP8``: ``e4m3(clamp(V / VScale, ±448))``; else
    ``bf16(V)``."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    pos = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    token, valid = _tokens(Src, pos, L, num_text, text_pad, HAS_SRC)
    offs_d = tl.arange(0, BLOCK_D)
    x = tl.load(V + b * stride_vb + h * stride_vh + token.to(tl.int64)[:, None] * stride_vl
                + offs_d[None, :] * stride_vd, mask=valid[:, None] & (offs_d < D)[None, :], other=0.0)
    x = x.to(tl.float32)
    out_ptrs = Out + pid_bh * BLOCK_D * Lpad + offs_d.to(tl.int64)[None, :] * Lpad + pos[:, None]
    if PV_FP8:
        vs = tl.load(VScale + pid_bh * BLOCK_D + offs_d)
        y = tl.minimum(tl.maximum(x / vs[None, :], -_FP8_MAX), _FP8_MAX)
        if INTERPRET:
            y = _round_fp8(y)
        tl.store(out_ptrs, y.to(tl.float8e4nv))
    else:
        if INTERPRET:
            x = _round_bf16(x)
        tl.store(out_ptrs, x.to(tl.bfloat16))


@triton.jit
def _attend_block(acc, l_i, m_i, q8, qs, K8, KS, Bias, V8T, k_base, ks_base, s_base, v_base, start_n, Lpad_k,
                  PV_FP8: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    k8 = tl.load(K8 + k_base + cols[:, None] * BLOCK_D + offs_d[None, :])
    ks = tl.load(KS + ks_base + start_n // BLOCK_N)  # one scale per key block
    bias = tl.load(Bias + s_base + cols)
    s = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32).to(tl.float32)
    t = s * (qs * ks)[:, None] + bias[None, :]  # log2-domain scores; padding keys ≈ -1e30
    m_new = tl.maximum(m_i, tl.reduce(t, 1, _MAX))
    alpha = tl.exp2(m_i - m_new)
    vt = tl.load(V8T + v_base + offs_d[:, None] * Lpad_k + cols[None, :])  # [BLOCK_D, BLOCK_N], keys contiguous
    if PV_FP8:
        p = tl.exp2(t - (m_new - _LOG2_FP8_MAX)[:, None])  # row max of the block ≤ 448
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        if INTERPRET:
            p = _round_fp8(p)
        pv = tl.dot(p.to(tl.float8e4nv), tl.trans(vt))
        acc = acc * alpha[:, None] + pv
    else:
        p = tl.exp2(t - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        if INTERPRET:
            pv = tl.dot(_round_bf16(p), tl.trans(vt).to(tl.float32), input_precision="ieee")
            acc = acc * alpha[:, None] + pv
        else:
            acc = tl.dot(p.to(tl.bfloat16), tl.trans(vt), acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def quant_attn_fwd(Q8, QS, K8, KS, Bias, V8T, VS, O, LSE, Corr, Src, Table, Counts,
                   stride_ob, stride_ol, stride_oh, H, Lq, Lpad_q, Lpad_k, D, num_text, text_pad, table_stride,
                   UNIT: tl.constexpr, SPARSE: tl.constexpr, PV_FP8: tl.constexpr, RETURN_LSE: tl.constexpr,
                   INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Quantized flash attention of ``BLOCK_M`` query positions of one (batch, head).

    Dense: every key block ``0 .. Lpad_k``. Sparse (tile layout): query unit ``u`` visits the key units
    ``Table[u, :Counts[u]]``. A position's output row is its token (``Src``, or the dense layout); padding
    positions store nothing. ``O: [B, Lq, H, D]`` (last dim contiguous), ``LSE: [B, H, Lq]``.
    """
    tl.static_assert(BLOCK_D >= 32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q8 = tl.load(Q8 + pid_bh * Lpad_q * BLOCK_D + offs_m.to(tl.int64)[:, None] * BLOCK_D + offs_d[None, :])
    qs = tl.load(QS + pid_bh * Lpad_q + offs_m)
    k_base = pid_bh * Lpad_k * BLOCK_D
    ks_base = pid_bh * (Lpad_k // BLOCK_N)
    s_base = pid_bh * Lpad_k
    v_base = pid_bh * BLOCK_D * Lpad_k
    m_i = tl.full([BLOCK_M], _M_FLOOR, tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    if SPARSE:
        tl.static_assert(UNIT % BLOCK_M == 0)
        tl.static_assert(UNIT % BLOCK_N == 0)
        unit = (pid_m * BLOCK_M) // UNIT
        BLOCKS_PER_UNIT: tl.constexpr = UNIT // BLOCK_N
        row = Table + unit.to(tl.int64) * table_stride
        # one flat loop over the visited key blocks
        for it in range(0, tl.load(Counts + unit) * BLOCKS_PER_UNIT):
            key_unit = tl.load(row + it // BLOCKS_PER_UNIT).to(tl.int64)
            start_n = key_unit * UNIT + (it % BLOCKS_PER_UNIT) * BLOCK_N
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q8, qs, K8, KS, Bias, V8T, k_base, ks_base, s_base,
                                          v_base, start_n, Lpad_k, PV_FP8, INTERPRET, BLOCK_N, BLOCK_D)
    else:
        for start_n in range(0, Lpad_k, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q8, qs, K8, KS, Bias, V8T, k_base, ks_base, s_base,
                                          v_base, start_n, Lpad_k, PV_FP8, INTERPRET, BLOCK_N, BLOCK_D)
    out_row, valid = _tokens(Src, offs_m, Lq, num_text, text_pad, SPARSE)
    if PV_FP8:
        vs = tl.load(VS + pid_bh * BLOCK_D + offs_d)
        out = acc * (vs[None, :] / l_i[:, None])
    else:
        out = acc / l_i[:, None]
    if INTERPRET and O.dtype.element_ty == tl.bfloat16:
        out = _round_bf16(out)
    o_ptrs = O + b * stride_ob + h * stride_oh + out_row.to(tl.int64)[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None] & (offs_d < D)[None, :])
    if RETURN_LSE:  # natural log, of the true scaled scores: add back the q·k̄ removed by smoothing K
        corr = tl.load(Corr + pid_bh * Lpad_q + offs_m)
        if PV_FP8:
            lse = (m_i + tl.log2(l_i) - _LOG2_FP8_MAX) * _LN2 + corr
        else:
            lse = (m_i + tl.log2(l_i)) * _LN2 + corr
        tl.store(LSE + pid_bh * Lq + out_row, lse, mask=valid)


def _early_prune(configs, named_args, **kwargs):
    unit = named_args.get("UNIT", kwargs.get("UNIT", 0))
    bd = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    keep = prune_configs([dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs], unit, bd)
    return [c for c in configs if dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) in keep]


#: On a GPU: every config of :data:`AUTOTUNE_CONFIGS` that fits is timed once per key (the kernel only reads its
#: inputs and overwrites its outputs, so repeated launches are harmless).
quant_attn_fwd_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": c["BLOCK_M"]}, num_warps=c["num_warps"], num_stages=c["num_stages"])
             for c in AUTOTUNE_CONFIGS],
    key=["Lpad_q", "Lpad_k", "D", "UNIT", "SPARSE", "PV_FP8", "RETURN_LSE", "BLOCK_D"],
    prune_configs_by={"early_config_prune": _early_prune},
)(quant_attn_fwd)


# -- launch --------------------------------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quant_warps(block: int, block_d: int) -> int:
    """Warps of :func:`quant_qk_kernel`: at most 64 tile elements per thread (it keeps ``x`` and ``x - mean``)."""
    return 8 if block * block_d > 8192 else 4


def dense_length(length: int, num_text_tokens: int) -> int:
    """Positions of the dense layout of ``length`` tokens (text padded to a key block), a whole number of blocks
    (of ``KEY_BLOCK`` and of every ``BLOCK_M``)."""
    return _cdiv(text_padded(num_text_tokens) + length - num_text_tokens, KEY_BLOCK) * KEY_BLOCK


def quant_attention_triton(q, k, v, *, scale: float, smooth_q: bool, pv_fp8: bool, num_text_tokens: int = 0,
                           plan=None, return_lse: bool = False, interpret: bool = False, config: dict | None = None):
    """Quantize and attend with the Triton kernels. ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]`` (any strides).

    ``plan`` (a :class:`~vidaccel.kernels.attention.TilePlan` whose unit is a multiple of ``KEY_BLOCK``) selects the
    block-sparse sliding-tile variant (``Lq == Lk``). ``config``: one entry of :data:`AUTOTUNE_CONFIGS` (default:
    the first that fits). Returns ``out [B, Lq, H, D]`` in ``q``'s dtype, and ``lse [B, H, Lq]`` fp32 with
    ``return_lse``.
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    dev = q.device
    bd = block_d(D)
    sparse = plan is not None
    unit = plan.unit if sparse else 0
    ntext, text_pad = num_text_tokens, text_padded(num_text_tokens)
    if sparse:
        lpad_q = lpad_k = plan.length
        src = _plan_src(plan, dev)
    else:
        lpad_q, lpad_k = dense_length(Lq, ntext), dense_length(Lk, ntext)
        src = torch.zeros(1, dtype=torch.int32, device=dev)
    c = scale * LOG2E
    f32 = dict(dtype=torch.float32, device=dev)
    k_mean = torch.mean(k, dim=1, dtype=torch.float32).contiguous()  # [B, H, D]
    if smooth_q:
        q_mean = torch.mean(q, dim=1, dtype=torch.float32).contiguous()
        q_mean_scaled = (q_mean * c).contiguous()
    else:
        q_mean = q_mean_scaled = torch.zeros(B, H, D, **f32)
    BH = B * H
    q8 = torch.empty(BH, lpad_q, bd, dtype=torch.int8, device=dev)
    qs = torch.empty(BH, lpad_q, **f32)
    corr = torch.empty(BH, lpad_q, **f32) if return_lse else qs
    quant_qk_kernel[(lpad_q // Q_BLOCK, BH)](
        q, q_mean, k_mean, src, q8, qs, corr, *q.stride(), H, Lq, D, ntext, text_pad, lpad_q, c, scale,
        BLOCK=Q_BLOCK, BLOCK_D=bd, HAS_SRC=sparse, ROW_SCALE=True, AUX=2 if return_lse else 0,
        **({} if interpret else {"num_warps": quant_warps(Q_BLOCK, bd)}))
    k8 = torch.empty(BH, lpad_k, bd, dtype=torch.int8, device=dev)
    ks = torch.empty(BH, lpad_k // KEY_BLOCK, **f32)
    bias = torch.empty(BH, lpad_k, **f32)
    quant_qk_kernel[(lpad_k // KEY_BLOCK, BH)](
        k, k_mean, q_mean_scaled, src, k8, ks, bias, *k.stride(), H, Lk, D, ntext, text_pad, lpad_k, 1.0, 1.0,
        BLOCK=KEY_BLOCK, BLOCK_D=bd, HAS_SRC=sparse, ROW_SCALE=False, AUX=1,
        **({} if interpret else {"num_warps": quant_warps(KEY_BLOCK, bd)}))
    if pv_fp8:
        amax = v.abs().amax(dim=1).float()  # [B, H, D]; exact in v's dtype
        vscale = torch.ones(B, H, bd, **f32)
        vscale[..., :D] = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        vt = torch.empty(BH, bd, lpad_k, dtype=torch.float8_e4m3fn, device=dev)
    else:
        vscale = qs
        vt = torch.empty(BH, bd, lpad_k, dtype=torch.bfloat16, device=dev)
    quant_v_kernel[(lpad_k // V_BLOCK, BH)](
        v, src, vscale, vt, *v.stride(), H, Lk, D, ntext, text_pad, lpad_k, BLOCK_T=V_BLOCK, BLOCK_D=bd,
        HAS_SRC=sparse, PV_FP8=pv_fp8, INTERPRET=interpret, **({} if interpret else {"num_warps": 4}))

    o = torch.empty(B, Lq, H, D, dtype=q.dtype, device=dev)
    lse = torch.empty(B, H, Lq, **f32) if return_lse else qs
    table = plan.table.to(dev) if sparse else src
    counts = plan.counts.to(dev) if sparse else src
    args = (q8, qs, k8, ks, bias, vt, vscale, o, lse, corr, src, table, counts, o.stride(0), o.stride(1), o.stride(2),
            H, Lq, lpad_q, lpad_k, D, ntext, text_pad, table.stride(0) if sparse else 0)
    meta = dict(UNIT=unit, SPARSE=sparse, PV_FP8=pv_fp8, RETURN_LSE=return_lse, INTERPRET=interpret,
                BLOCK_N=KEY_BLOCK, BLOCK_D=bd)
    if config is None and interpret:
        config = prune_configs(AUTOTUNE_CONFIGS, unit, bd)[0]
    if config is not None:
        cfg = dict(config)
        bm = cfg.pop("BLOCK_M")
        quant_attn_fwd[(lpad_q // bm, BH)](*args, **meta, BLOCK_M=bm, **({} if interpret else cfg))
    else:
        quant_attn_fwd_autotuned[lambda META: (lpad_q // META["BLOCK_M"], BH)](*args, **meta)
    return (o, lse) if return_lse else o


@functools.lru_cache(maxsize=16)
def _plan_src(plan, device) -> torch.Tensor:
    """Token at each layout position of a plan (int32), -1 for padding."""
    return torch.where(plan.key_valid, plan.src, -1).to(device=device, dtype=torch.int32)


# -- static report -------------------------------------------------------------------------------------------
#: Real shapes: Wan2.1-T2V-1.3B 480p × 81 frames (latent 21×60×104, patch 1×2×2 → 21×30×52 = 32,760 tokens, 12
#: heads × 128) and CogVideoX-5B 720×480 × 49 frames (13×30×45 = 17,550 video + 226 text tokens, 48 heads × 64,
#: cond/uncond batched: B = 2). Windows as in the sliding-window presets.
STATIC_MODELS = {
    "wan480p": dict(B=1, H=12, D=128, grid=(21, 30, 52), text=0, window=(12, 16, 24),
                    label="Wan2.1-1.3B 480p x 81, 32,760 tokens, 12 heads x 128"),
    "cogvideox5b": dict(B=2, H=48, D=64, grid=(13, 30, 45), text=226, window=(8, 16, 24),
                        label="CogVideoX-5B 49 frames, 17,776 tokens (226 text), 48 heads x 64, B=2"),
}


def static_cases() -> list:
    """Every config the wrapper can launch, at Wan2.1-1.3B 480p and CogVideoX-5B shapes (see
    :mod:`vidaccel.kernels.static`): the attention kernel dense and sliding-tile, FP8 and bf16 P·V, and the
    quantization kernels. The main case: dense FP8 on Wan 480p, ``BLOCK_M=128``, 2 stages."""
    from vidaccel.kernels import static
    from vidaccel.kernels.attention.layout import tile_plan

    T = static.T
    I8, F32, I32, BF16, E4M3 = torch.int8, torch.float32, torch.int32, torch.bfloat16, torch.float8_e4m3fn
    cases = []
    for mname, m in STATIC_MODELS.items():
        H, D = m["H"], m["D"]
        L, ntext = m["text"] + math.prod(m["grid"]), m["text"]
        bd = block_d(D)
        qkv_strides = (L * H * D, H * D, D, 1)  # [B, L, H, D] contiguous
        for sparse in (False, True):
            if sparse:  # the wrapper aligns units to KEY_BLOCK positions
                plan = tile_plan(m["grid"], m["window"], (4, 8, 8), ntext, align=KEY_BLOCK)
                lpad, unit, table_stride = plan.length, plan.unit, plan.table.stride(0)
            else:
                lpad, unit, table_stride = dense_length(L, ntext), 0, 0
            mode = "sparse" if sparse else "dense"
            where = m["label"] + (f", window {m['window']}, tile 4x8x8" if sparse else "")
            for pv_fp8 in (True, False):
                pv = "fp8" if pv_fp8 else "bf16"
                args = (T(I8), T(F32), T(I8), T(F32), T(F32), T(E4M3 if pv_fp8 else BF16), T(F32), T(BF16),
                        T(F32), T(F32), T(I32), T(I32), T(I32), L * H * D, H * D, D, H, L, lpad, lpad, D, ntext,
                        text_padded(ntext), table_stride)
                for i, c in enumerate(prune_configs(AUTOTUNE_CONFIGS, unit, bd)):
                    c = dict(c)
                    bm = c.pop("BLOCK_M")
                    main = mname == "wan480p" and not sparse and pv_fp8 and i == 0
                    cases.append(static.StaticCase(
                        name=f"quant_attention/{mode}/{pv}/{mname}/bm{bm}w{c['num_warps']}s{c['num_stages']}",
                        kernel=quant_attn_fwd, args=args,
                        kwargs=dict(UNIT=unit, SPARSE=sparse, PV_FP8=pv_fp8, RETURN_LSE=False, INTERPRET=False,
                                    BLOCK_M=bm, BLOCK_N=KEY_BLOCK, BLOCK_D=bd, **c),
                        main=main, expect=dict(no_spills=True, mma=True) if main else {}, shape=where))
            for what, block, row_scale, aux in (("q", Q_BLOCK, True, 2), ("k", KEY_BLOCK, False, 1)):
                cases.append(static.StaticCase(
                    name=f"quant_attention/quant_{what}/{mode}/{mname}", kernel=quant_qk_kernel,
                    args=(T(BF16), T(F32), T(F32), T(I32), T(I8), T(F32), T(F32), *qkv_strides, H, L, D, ntext,
                          text_padded(ntext), lpad, 1.0, 1.0),
                    kwargs=dict(BLOCK=block, BLOCK_D=bd, HAS_SRC=sparse, ROW_SCALE=row_scale, AUX=aux,
                                num_warps=quant_warps(block, bd)),
                    expect=dict(no_spills=True), shape=where))
            cases.append(static.StaticCase(
                name=f"quant_attention/quant_v/{mode}/{mname}", kernel=quant_v_kernel,
                args=(T(BF16), T(I32), T(F32), T(E4M3), *qkv_strides, H, L, D, ntext, text_padded(ntext), lpad),
                kwargs=dict(BLOCK_T=V_BLOCK, BLOCK_D=bd, HAS_SRC=sparse, PV_FP8=True, INTERPRET=False, num_warps=4),
                expect=dict(no_spills=True), shape=where))
    return cases
