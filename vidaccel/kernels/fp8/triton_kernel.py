"""Triton kernels for FP8 (e4m3): per-token activation quantization and a row/column-scaled FP8 GEMM.

Loaded by :mod:`vidaccel.kernels.fp8.wrapper` as a fresh module per ``TRITON_INTERPRET`` mode (``triton.jit``
decides at decoration time whether to interpret), never imported directly. The spec is
:mod:`vidaccel.kernels.fp8.naive`.
"""

import triton
import triton.language as tl


# Triton's standard-library helpers (tl.max, tl.sum, tl.zeros, tl.cdiv) are compiled when triton is
# imported, so they cannot run in the interpreter if TRITON_INTERPRET=1 was set after that import (as a
# test fixture does). Kernels therefore use builtins only, and row reductions call tl.reduce with the
# standard combine functions, which the interpreter recognises and runs in numpy.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


@triton.jit
def quant_per_token_kernel(
    x_ptr, q_ptr, s_ptr,
    M, K,
    stride_xm, stride_xk, stride_qm, stride_qk,
    FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_PASS: tl.constexpr,
):
    """One program quantizes BLOCK_M token rows: pass 1 finds amax (and non-finite entries), pass 2 writes e4m3.

    ``SINGLE_PASS`` (``K <= BLOCK_K``): the row tile read in pass 1 is kept in registers for pass 2, so ``x`` is
    read from memory once.
    """
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    amax = tl.full([BLOCK_M], 0, tl.float32)
    bad = tl.full([BLOCK_M], 0, tl.int32)
    kept = tl.full([BLOCK_M, BLOCK_K], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = row_ok[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk, mask=mask, other=0.0)
        x = x.to(tl.float32)
        kept = x
        ax = tl.abs(x)
        nonfinite = (x != x) | (ax == float("inf"))
        bad += tl.reduce(nonfinite.to(tl.int32), 1, _SUM)
        amax = tl.maximum(amax, tl.reduce(tl.where(nonfinite, 0.0, ax), 1, _MAX))
    amax = tl.where((bad > 0) | (amax == 0.0), 1.0, amax)
    inv = FP8_MAX * tl.math.div_rn(1.0, amax)  # the spec's rounding: a correctly rounded reciprocal, then x448
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = row_ok[:, None] & (cols < K)[None, :]
        if SINGLE_PASS:
            x = kept
        else:
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk, mask=mask, other=0.0)
        y = x.to(tl.float32) * inv[:, None]
        y = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX)
        # Round to the nearest-even e4m3 value in fp32 arithmetic, so the cast below is exact. (The
        # interpreter's fp32→fp8 cast drops the carry when rounding up to the next power of two, 126.8 → 64;
        # GPUs round right, and this costs a few ALU ops there.) Inlined: nested @jit helpers break the
        # interpreter when triton was imported before TRITON_INTERPRET was set.
        bits = y.to(tl.int32, bitcast=True)
        exp = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2^-6: subnormal, fixed 2^-9 spacing
        quantum = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)
        inv_quantum = ((127 - (exp - 3)) << 23).to(tl.float32, bitcast=True)
        y = ((y * inv_quantum + 12582912.0) - 12582912.0) * quantum  # exact scalings; RNE via 1.5·2^23
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :] * stride_qk, y.to(tl.float8e4nv), mask=mask)
    scale = tl.where(bad > 0, float("nan"), amax / FP8_MAX)
    tl.store(s_ptr + rows, scale, mask=row_ok)


@triton.jit
def fp8_gemm_kernel(
    a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, PROMOTE_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``c[M, N] = (a[M, K] @ b[N, K]^T) * sa[M, None] * sb[None, N] (+ bias)``; a, b e4m3, fp32 accumulate.

    ``PROMOTE_K``: K elements the tensor core may sum in its own (reduced-precision) FP8 accumulator before the
    partial sum is added to the fp32 accumulator in registers (``max_num_imprecise_acc``; Hopper sums FP8
    products with ~14 significant bits, DeepSeek-V3 promotes every 128). It must divide ``BLOCK_K``; Blackwell's
    tcgen05 accumulates in fp32 and ignores it. ``EVEN_K``: ``K % BLOCK_K == 0``, no K masks.
    """
    tl.static_assert(BLOCK_K % PROMOTE_K == 0, "PROMOTE_K must divide BLOCK_K")
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    # grouped ordering: neighbouring programs share B tiles in L2
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size)
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        if EVEN_K:
            a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak, mask=(rm < M)[:, None], other=0.0)
            b = tl.load(b_ptr + rn[:, None] * stride_bn + rk[None, :] * stride_bk, mask=(rn < N)[:, None], other=0.0)
        else:
            a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak,
                        mask=(rm < M)[:, None] & (rk < K)[None, :], other=0.0)
            b = tl.load(b_ptr + rn[:, None] * stride_bn + rk[None, :] * stride_bk,
                        mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=PROMOTE_K)
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=1.0)
    sb = tl.load(sb_ptr + rn, mask=rn < N, other=1.0)
    acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < N)[None, :])


#: Real GEMMs (label, tokens M, in-features K, out-features N): Wan2.1-1.3B at 480p x 81 frames and CogVideoX-5B
#: with CFG (see vidaccel/kernels/nvfp4/triton_kernel.py). Small M: single-prompt, short or tiled calls.
STATIC_GEMMS = (
    ("wan1.3b/qkvo", 32760, 1536, 1536), ("wan1.3b/ffn_up", 32760, 1536, 8960),
    ("wan1.3b/ffn_down", 32760, 8960, 1536), ("cogvideox5b/qkvo", 35552, 3072, 3072),
    ("cogvideox5b/ffn_up", 35552, 3072, 12288), ("cogvideox5b/ffn_down", 35552, 12288, 3072),
)
STATIC_SMALL_M = (1, 64, 256)


def static_cases() -> list:
    """Every launch the wrappers can pick at real shapes: per-token quantization for each K (one row per program,
    the whole row in registers) and the GEMM with :func:`~vidaccel.kernels.fp8.wrapper.gemm_config` at M = 32,760,
    1, 64, 256 (Wan2.1-1.3B) and 35,552 (CogVideoX-5B); see :mod:`vidaccel.kernels.static`."""
    import torch

    from ..static import StaticCase, T
    from .wrapper import PROMOTE_K, gemm_config, quant_config

    e4m3 = torch.float8_e4m3fn
    cases = []
    for k, m in sorted({(k, m) for _, m, k, _ in STATIC_GEMMS}):
        c = quant_config(k)
        args = (T(torch.bfloat16), T(e4m3), T(torch.float32), m, k, k, 1, k, 1)
        cases.append(StaticCase(
            name=f"fp8/quant_per_token/K{k}/M{m}/bk{c['BLOCK_K']}w{c['num_warps']}", kernel=quant_per_token_kernel,
            args=args, kwargs=dict(FP8_MAX=448.0, **c), shape=f"M={m} K={k}, x bf16"))
    for label, m_real, k, n in STATIC_GEMMS:
        for m in (m_real,) + (STATIC_SMALL_M if label.startswith("wan") else ()):
            c = gemm_config(m)
            warps, stages = c.pop("num_warps"), c.pop("num_stages")
            args = (T(e4m3), T(e4m3), T(torch.float32), T(torch.float32), T(torch.bfloat16), T(torch.bfloat16),
                    m, n, k, k, 1, k, 1, n, 1)
            kwargs = dict(HAS_BIAS=True, EVEN_K=k % c["BLOCK_K"] == 0, PROMOTE_K=min(PROMOTE_K, c["BLOCK_K"]), **c,
                          num_warps=warps, num_stages=stages)
            main = label == "wan1.3b/ffn_down" and m == m_real
            cases.append(StaticCase(
                name=f"fp8/gemm/{label}/M{m}/bm{c['BLOCK_M']}n{c['BLOCK_N']}k{c['BLOCK_K']}w{warps}s{stages}",
                kernel=fp8_gemm_kernel, args=args, kwargs=kwargs, main=main,
                expect=dict(no_spills=True, mma=True, max_issue_tensor=1.0) if main else {},
                shape=f"M={m} K={k} N={n}, e4m3 x e4m3, promoted every {min(PROMOTE_K, c['BLOCK_K'])} K"))
    return cases
