"""Triton W4A16 GEMM for NVFP4 weights: dequantizes e2m1 codes and e4m3 block scales in registers.

For Hopper / Ada / Ampere, which have no FP4 matrix unit: the weight tile is unpacked, scaled and fed to a
bf16 (or fp32) ``tl.dot``; activations stay in high precision. Loaded by :mod:`vidaccel.kernels.nvfp4.wrapper`
as a fresh module per ``TRITON_INTERPRET`` mode. The spec is :mod:`vidaccel.kernels.nvfp4.naive`.
"""

import triton
import triton.language as tl


@triton.jit
def nvfp4_w4a16_kernel(
    x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sk, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``c[M, N] = x[M, K] @ dequant(w)[N, K]^T (+ bias)``.

    ``w`` is ``[N, Kp/2]`` uint8 (even k in the low nibble), ``s`` ``[N, Kp/16]`` e4m3, ``g`` a 1-element fp32
    tensor. ``K`` is the true in-features count; ``x`` is masked beyond it, so the zero padding of ``w`` is
    never read as data.
    """
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of the NVFP4 block (16)")
    HALF: tl.constexpr = BLOCK_K // 2
    NB: tl.constexpr = BLOCK_K // 16
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size)
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n_ok = rn < N
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
                    mask=(rm < M)[:, None] & (rk < K)[None, :], other=0.0)
        rh = k0 // 2 + tl.arange(0, HALF).to(tl.int64)
        packed = tl.load(w_ptr + rn[:, None] * stride_wn + rh[None, :] * stride_wk,
                         mask=n_ok[:, None] & (rh < (K + 1) // 2)[None, :], other=0).to(tl.int32)
        code = tl.reshape(tl.join(packed & 0xF, (packed >> 4) & 0xF), (BLOCK_N, BLOCK_K))  # 2j: low nibble
        # e2m1 decode (inlined: nested @jit helpers break the interpreter when triton was imported first)
        e = (code >> 1) & 3
        mant = (code & 1).to(tl.float32)
        pow2 = tl.where(e == 3, 2.0, tl.where(e == 2, 1.0, 0.5))  # 2^(e-2) for e >= 1
        mag = tl.where(e == 0, mant * 0.5, (2.0 + mant) * pow2)
        w = tl.where((code & 8) != 0, -mag, mag)
        rb = k0 // 16 + tl.arange(0, NB).to(tl.int64)
        sc = tl.load(s_ptr + rn[:, None] * stride_sn + rb[None, :] * stride_sk,
                     mask=n_ok[:, None] & (rb < (K + 15) // 16)[None, :], other=0.0).to(tl.float32)
        w = tl.reshape(tl.reshape(w, (BLOCK_N, NB, 16)) * sc[:, :, None], (BLOCK_N, BLOCK_K))
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:  # e2m1 × e4m3 products are exact in bf16/fp16
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    g = tl.load(g_ptr)
    acc = acc * g
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & n_ok[None, :])


@triton.jit
def nvfp4_dequant_kernel(
    w_ptr, s_ptr, g_ptr, out_ptr,
    N, K,
    stride_wn, stride_wk, stride_sn, stride_sk, stride_on, stride_ok,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out[N, K] = value(code) · (g · s[n, k // 16])`` in ``out``'s dtype (the spec's order of products).

    For large M a GEMM is compute-bound: dequantizing the weight once per call into a transient buffer and
    calling cuBLAS beats re-dequantizing it in every M-tile of the fused kernel.
    """
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of the NVFP4 block (16)")
    HALF: tl.constexpr = BLOCK_K // 2
    NB: tl.constexpr = BLOCK_K // 16
    rn = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k0 = tl.program_id(1).to(tl.int64) * BLOCK_K
    n_ok = rn < N
    rh = k0 // 2 + tl.arange(0, HALF).to(tl.int64)
    packed = tl.load(w_ptr + rn[:, None] * stride_wn + rh[None, :] * stride_wk,
                     mask=n_ok[:, None] & (rh < (K + 1) // 2)[None, :], other=0).to(tl.int32)
    code = tl.reshape(tl.join(packed & 0xF, (packed >> 4) & 0xF), (BLOCK_N, BLOCK_K))
    e = (code >> 1) & 3
    mant = (code & 1).to(tl.float32)
    pow2 = tl.where(e == 3, 2.0, tl.where(e == 2, 1.0, 0.5))
    mag = tl.where(e == 0, mant * 0.5, (2.0 + mant) * pow2)
    w = tl.where((code & 8) != 0, -mag, mag)
    rb = k0 // 16 + tl.arange(0, NB).to(tl.int64)
    sc = tl.load(s_ptr + rn[:, None] * stride_sn + rb[None, :] * stride_sk,
                 mask=n_ok[:, None] & (rb < (K + 15) // 16)[None, :], other=0.0).to(tl.float32)
    g = tl.load(g_ptr)
    w = tl.reshape(tl.reshape(w, (BLOCK_N, NB, 16)) * (g * sc)[:, :, None], (BLOCK_N, BLOCK_K))
    rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
    tl.store(out_ptr + rn[:, None] * stride_on + rk[None, :] * stride_ok, w.to(out_ptr.dtype.element_ty),
             mask=n_ok[:, None] & (rk < K)[None, :])
