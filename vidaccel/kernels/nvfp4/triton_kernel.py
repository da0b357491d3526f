"""Triton W4A16 GEMM for NVFP4 weights: e2m1 codes and e4m3 block scales decoded in registers.

For Hopper / Ada / Ampere (no FP4 matrix unit), and for Blackwell with bf16/fp16 activations (its FP4 MMA,
``tcgen05.mma.kind::mxf4nvf4``, needs *both* operands in FP4: W4A4). Loaded by
:mod:`vidaccel.kernels.nvfp4.wrapper` as a fresh module per ``TRITON_INTERPRET`` mode. The spec is
:mod:`vidaccel.kernels.nvfp4.naive`.

**Decode.** The packed weight is read as int32 words (8 codes each; code ``j`` of a word is nibble ``j``, i.e.
``k = 8·word + j``). Per code, ``sign<<3 | e<<1 | m`` is moved to the fp16 bit pattern ``sign<<15 | e<<10 |
m<<9``: an fp16 with exponent field ``e`` and mantissa ``m/2`` is ``value · 2^-14`` for every code, the ``e = 0``
codes (0 and 0.5) landing on fp16's subnormals, which follow the same rule. Two codes go into one 32-bit word at
once (nibbles ``j`` and ``j + 4`` into the low and high fp16), three integer ops per pair. The block scale is
applied as an fp16 multiply by ``s · 2^7`` (exact: the product has at most 6 significant bits and is at least
``2^-17``, within fp16's subnormal grid), so the weight fed to the MMA is ``value · s · 2^-7``, exact in fp16
and bf16; ``2^7 · g`` multiplies the fp32 accumulator once at the end.
"""

import triton
import triton.language as tl

# fp16 sign bits of the two halves of a 32-bit word, as an int32 constant (0x80008000)
_SIGN2 = tl.constexpr(-2147450880)


@triton.jit
def nvfp4_w4a16_kernel(
    x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, c_ptr,
    M, N, K, KW, KS,
    stride_xm, stride_xk, stride_wn, stride_sn, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SCALE_WORDS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``c[M, N] = x[M, K] @ dequant(w)[N, K]^T (+ bias)``.

    ``w`` is the packed weight viewed as int32 ``[N, KW]`` (``KW = Kp / 8`` words), ``s`` the e4m3 block scales
    ``[N, KS]`` (``KS = Kp / 16``), or with ``SCALE_WORDS`` the same bytes viewed as int32 ``[N, KS / 4]`` (four
    scales per word, so a tile's scales load as 4-byte ``cp.async`` copies whatever the tile; needs
    ``KS % 4 == 0`` and ``BLOCK_K % 64 == 0``). ``g`` is a 1-element fp32 tensor. ``K`` is the true in-features
    count; ``x`` is masked beyond it, so the zero padding of ``w`` is never read as data. ``EVEN_K``:
    ``K % BLOCK_K == 0``, no K masks. ``DOT_F32``: fp32 operands and an IEEE dot (the interpreter, whose bf16 dot
    is wrong).
    """
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of the NVFP4 block (16)")
    tl.static_assert(not SCALE_WORDS or BLOCK_K % 64 == 0, "SCALE_WORDS needs BLOCK_K % 64 == 0")
    WORDS: tl.constexpr = BLOCK_K // 8
    NB: tl.constexpr = BLOCK_K // 16
    SW: tl.constexpr = max(BLOCK_K // 64, 1)
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
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm[:, None] * stride_xm
    w_rows = w_ptr + rn[:, None] * stride_wn
    s_rows = s_ptr + rn[:, None] * stride_sn
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        rw = k0 // 8 + tl.arange(0, WORDS)
        rb = k0 // 16 + tl.arange(0, NB)
        rs = k0 // 64 + tl.arange(0, SW)
        if EVEN_K:
            x = tl.load(x_rows + rk[None, :] * stride_xk, mask=m_ok[:, None], other=0.0)
            words = tl.load(w_rows + rw[None, :], mask=n_ok[:, None], other=0)
            if SCALE_WORDS:
                sw = tl.load(s_rows + rs[None, :], mask=n_ok[:, None], other=0)
            else:
                sc = tl.load(s_rows + rb[None, :], mask=n_ok[:, None], other=0.0)
        else:
            x = tl.load(x_rows + rk[None, :] * stride_xk, mask=m_ok[:, None] & (rk < K)[None, :], other=0.0)
            words = tl.load(w_rows + rw[None, :], mask=n_ok[:, None] & (rw < KW)[None, :], other=0)
            if SCALE_WORDS:
                sw = tl.load(s_rows + rs[None, :], mask=n_ok[:, None] & (rs < KS // 4)[None, :], other=0)
            else:
                sc = tl.load(s_rows + rb[None, :], mask=n_ok[:, None] & (rb < KS)[None, :], other=0.0)
        if SCALE_WORDS:  # byte j of a word is the scale of block 4·word + j
            sb = tl.join(tl.join(sw & 0xFF, (sw >> 16) & 0xFF), tl.join((sw >> 8) & 0xFF, (sw >> 24) & 0xFF))
            sc = tl.reshape(sb, (BLOCK_N, NB)).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
        # e2m1 -> fp16 bits of value * 2^-14, codes j (low half) and j + 4 (high half) of each word
        h0 = ((words << 9) & 0x0E000E00) | ((words << 12) & _SIGN2)
        h1 = ((words << 5) & 0x0E000E00) | ((words << 8) & _SIGN2)
        h2 = ((words << 1) & 0x0E000E00) | ((words << 4) & _SIGN2)
        h3 = ((words >> 3) & 0x0E000E00) | (words & _SIGN2)
        p0 = tl.join(h0.to(tl.int16).to(tl.float16, bitcast=True), (h0 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
        p1 = tl.join(h1.to(tl.int16).to(tl.float16, bitcast=True), (h1 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
        p2 = tl.join(h2.to(tl.int16).to(tl.float16, bitcast=True), (h2 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
        p3 = tl.join(h3.to(tl.int16).to(tl.float16, bitcast=True), (h3 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
        # [.., j + 4 b2] -> [.., b2, b1, b0] with j = 2 b1 + b0: natural k order within each word
        w16 = tl.reshape(tl.join(tl.join(p0, p2), tl.join(p1, p3)), (BLOCK_N, BLOCK_K))
        s16 = (sc.to(tl.float16) * 128.0).to(tl.float16)
        w = tl.reshape(tl.reshape(w16, (BLOCK_N, NB, 16)) * s16[:, :, None], (BLOCK_N, BLOCK_K))  # value·s·2^-7
        if x.dtype == tl.bfloat16:
            w = w.to(tl.float32).to(tl.bfloat16)  # exact; via fp32 (full-rate) rather than a direct f16->bf16 cvt
        if DOT_F32:
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        if DOT_F32:
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    acc = acc * (tl.load(g_ptr) * 128.0)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def nvfp4_dequant_kernel(
    w_ptr, s_ptr, g_ptr, out_ptr,
    N, K, KW, KS,
    stride_wn, stride_sn, stride_on, stride_ok,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out[N, K] = value(code) · (g · s[n, k // 16])`` in ``out``'s dtype (the spec's order of products).

    Same word-wise decode as :func:`nvfp4_w4a16_kernel`; ``value · 2^-14`` is widened to fp32 and multiplied
    by ``g · s · 2^14`` (``s · 2^14`` is exact in fp32, so this is the spec's ``value · (g · s)`` rounding).
    """
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of the NVFP4 block (16)")
    WORDS: tl.constexpr = BLOCK_K // 8
    NB: tl.constexpr = BLOCK_K // 16
    rn = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k0 = tl.program_id(1) * BLOCK_K
    n_ok = rn < N
    rw = k0 // 8 + tl.arange(0, WORDS)
    rb = k0 // 16 + tl.arange(0, NB)
    words = tl.load(w_ptr + rn[:, None] * stride_wn + rw[None, :], mask=n_ok[:, None] & (rw < KW)[None, :], other=0)
    sc = tl.load(s_ptr + rn[:, None] * stride_sn + rb[None, :], mask=n_ok[:, None] & (rb < KS)[None, :], other=0.0)
    h0 = ((words << 9) & 0x0E000E00) | ((words << 12) & _SIGN2)
    h1 = ((words << 5) & 0x0E000E00) | ((words << 8) & _SIGN2)
    h2 = ((words << 1) & 0x0E000E00) | ((words << 4) & _SIGN2)
    h3 = ((words >> 3) & 0x0E000E00) | (words & _SIGN2)
    p0 = tl.join(h0.to(tl.int16).to(tl.float16, bitcast=True), (h0 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
    p1 = tl.join(h1.to(tl.int16).to(tl.float16, bitcast=True), (h1 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
    p2 = tl.join(h2.to(tl.int16).to(tl.float16, bitcast=True), (h2 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
    p3 = tl.join(h3.to(tl.int16).to(tl.float16, bitcast=True), (h3 >> 16).to(tl.int16).to(tl.float16, bitcast=True))
    w16 = tl.reshape(tl.join(tl.join(p0, p2), tl.join(p1, p3)), (BLOCK_N, BLOCK_K))
    g = tl.load(g_ptr)
    scale = g * (sc.to(tl.float32) * 16384.0)
    w = tl.reshape(tl.reshape(w16.to(tl.float32), (BLOCK_N, NB, 16)) * scale[:, :, None], (BLOCK_N, BLOCK_K))
    rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
    tl.store(out_ptr + rn[:, None] * stride_on + rk[None, :] * stride_ok, w.to(out_ptr.dtype.element_ty),
             mask=n_ok[:, None] & (rk < K)[None, :])


#: Real GEMMs (label, tokens M, in-features K, out-features N): Wan2.1-1.3B at 480p x 81 frames (32,760 tokens;
#: q/k/v/o and FFN up take K = 1536, FFN down K = 8960) and CogVideoX-5B (2 x 17,776 tokens with CFG; K/N 3072,
#: FFN 12288). Small M: single-prompt, short or tiled calls.
STATIC_GEMMS = (
    ("wan1.3b/qkvo", 32760, 1536, 1536), ("wan1.3b/ffn_up", 32760, 1536, 8960),
    ("wan1.3b/ffn_down", 32760, 8960, 1536), ("cogvideox5b/qkvo", 35552, 3072, 3072),
    ("cogvideox5b/ffn_up", 35552, 3072, 12288), ("cogvideox5b/ffn_down", 35552, 12288, 3072),
)
STATIC_SMALL_M = (1, 64, 256)


def static_cases() -> list:
    """Every launch the wrapper can pick at real shapes: the fused W4A16 GEMM with :func:`launch_config` for each
    token count and arch (Wan2.1-1.3B GEMMs at M = 32,760, 1, 64, 256; CogVideoX-5B at M = 35,552) and the
    dequantize kernel of the ``dequant`` backend; see :mod:`vidaccel.kernels.static`."""
    import torch

    from ..static import StaticCase, T
    from .wrapper import launch_config

    cases = []
    for label, m_real, k, n in STATIC_GEMMS:
        kp = -(-k // 16) * 16
        token_counts = (m_real,) + (STATIC_SMALL_M if label.startswith("wan") else ())
        for m in token_counts:
            by_config: dict = {}
            for arch in (90, 100):
                c = launch_config(m, arch)
                key = tuple(sorted(c.items()))
                by_config.setdefault(key, (c, []))[1].append(arch)
            for c, archs in by_config.values():
                c = dict(c)
                warps, stages = c.pop("num_warps"), c.pop("num_stages")
                words = (kp // 16) % 4 == 0 and c["BLOCK_K"] % 64 == 0  # as the wrapper decides
                args = (T(torch.bfloat16), T(torch.int32), T(torch.int32 if words else torch.float8_e4m3fn),
                        T(torch.float32), T(torch.bfloat16), T(torch.bfloat16), m, n, k, kp // 8, kp // 16, k, 1,
                        kp // 8, kp // 64 if words else kp // 16, n, 1)
                kwargs = dict(HAS_BIAS=True, EVEN_K=k % c["BLOCK_K"] == 0, SCALE_WORDS=words, DOT_F32=False, **c,
                              num_warps=warps, num_stages=stages)
                main = label == "wan1.3b/ffn_up" and m == m_real
                cases.append(StaticCase(
                    name=f"nvfp4/w4a16/{label}/M{m}/bm{c['BLOCK_M']}n{c['BLOCK_N']}k{c['BLOCK_K']}w{warps}s{stages}",
                    kernel=nvfp4_w4a16_kernel, args=args, kwargs=kwargs, archs=tuple(archs), main=main,
                    expect=dict(no_spills=True, mma=True, no_byte_loads=True, stages_ahead=2, max_issue_tensor=1.5)
                    if main else {},
                    shape=f"M={m} K={k} N={n}, x bf16"))
        args = (T(torch.int32), T(torch.float8_e4m3fn), T(torch.float32), T(torch.bfloat16), n, k, kp // 8, kp // 16,
                kp // 8, kp // 16, k, 1)
        cases.append(StaticCase(
            name=f"nvfp4/dequant/{label}/bn32k256", kernel=nvfp4_dequant_kernel, args=args,
            kwargs=dict(BLOCK_N=32, BLOCK_K=256), shape=f"N={n} K={k} -> bf16 (the dequant backend)"))
    return cases
