"""One block-sparse flash-attention forward in Triton (dense attention is the case "visit every block").

* online softmax in the exp2 domain, fp32 accumulation; fp16 / bf16 / fp32 inputs;
* any head dim: the block is padded to a power of two ≥ 16 and masked (D = 60, 64, 128 ...);
* ragged lengths: rows and columns beyond ``Lq`` / ``Lk`` are masked; in sparse mode padding keys of the
  tile layout are masked by a per-key validity vector;
* int64 offsets (75,600 tokens × heads × 128 overflows int32);
* sparse mode: query block ``m`` lies in unit ``u = m*BLOCK_M // UNIT`` and visits only the key units
  ``table[u, :counts[u]]``; skipped blocks are never loaded;
* ``AUTOTUNE_CONFIGS`` is data, pruned by :func:`prune_configs`; under the interpreter the first surviving
  config is used without autotuning.

Under ``TRITON_INTERPRET=1`` (CPU) ``tl.dot`` on bf16 is wrong, so operands are upcast to fp32 there.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting

__all__ = ["AUTOTUNE_CONFIGS", "prune_configs", "block_sparse_attention_triton"]

#: Candidate launch configs (data). Sparse mode keeps those whose blocks divide the unit size.
AUTOTUNE_CONFIGS: list[dict] = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=2),
]


def prune_configs(configs: list[dict], unit: int, block_d: int) -> list[dict]:
    """Configs usable for a unit size (0 = dense) and padded head dim: blocks must divide the unit;
    128×128 blocks are dropped for head dims above 128 (shared memory)."""
    out = []
    for c in configs:
        if unit and (unit % c["BLOCK_M"] or unit % c["BLOCK_N"]):
            continue
        if block_d > 128 and c["BLOCK_M"] * c["BLOCK_N"] > 128 * 64:
            continue
        out.append(c)
    if not out:
        raise ValueError(f"no Triton config fits unit={unit} (a multiple of 16 is needed) and head dim {block_d}")
    return out


# Reductions and zeros use only Triton builtins: triton.language's own @jit helpers (tl.max, tl.sum,
# tl.zeros) are bound to the compiler or the interpreter when triton is first imported, which in a test
# process may happen before TRITON_INTERPRET=1 is set. tl.reduce with the standard combine functions is
# what tl.max / tl.sum expand to, and the interpreter runs those combine functions vectorised.
_max_combine = tl.standard._elementwise_max
_sum_combine = tl.standard._sum_combine


@triton.jit
def _load_rows(ptrs, rows_in, offs_d, D, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile; masks only what may be out of bounds (unmasked loads vectorise)."""
    if EVEN_D:
        if MASK_ROWS:
            return tl.load(ptrs, mask=rows_in[:, None], other=0.0)
        else:
            return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=rows_in[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _attend_block(acc, l_i, m_i, q, K, V, KValid, k_base, v_base, start_n, stride_kl, stride_vl, Lk, D,
                  qk_scale, HAS_VALID: tl.constexpr, MASK_K: tl.constexpr, EVEN_D: tl.constexpr,
                  UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_k = cols < Lk
    rows = cols.to(tl.int64)[:, None]
    k = _load_rows(K + k_base + rows * stride_kl + offs_d[None, :], in_k, offs_d, D, MASK_K, EVEN_D)
    v = _load_rows(V + v_base + rows * stride_vl + offs_d[None, :], in_k, offs_d, D, MASK_K, EVEN_D)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if HAS_VALID:
        s = tl.where((tl.load(KValid + cols, mask=in_k, other=0) != 0)[None, :], s, -1.0e30)
    if MASK_K:
        s = tl.where(in_k[None, :], s, -1.0e30)
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KValid, Table, Counts,
              stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
              stride_vb, stride_vl, stride_vh, stride_ob, stride_ol, stride_oh,
              H, Lq, Lk, D, table_stride, qk_scale,
              UNIT: tl.constexpr, SPARSE: tl.constexpr, HAS_VALID: tl.constexpr, EVEN_D: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, RETURN_LSE: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.static_assert(BLOCK_D >= 16)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    o_base = b * stride_ob + h * stride_oh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_q = offs_m < Lq
    q_rows = offs_m.to(tl.int64)[:, None]
    # sparse mode works on the padded tile layout: lengths are whole blocks, nothing to mask but D
    q = _load_rows(Q + q_base + q_rows * stride_ql + offs_d[None, :], in_q, offs_d, D, not SPARSE, EVEN_D)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    if SPARSE:
        tl.static_assert(UNIT % BLOCK_M == 0)
        tl.static_assert(UNIT % BLOCK_N == 0)
        unit = (pid_m * BLOCK_M) // UNIT
        BLOCKS_PER_UNIT: tl.constexpr = UNIT // BLOCK_N
        row = Table + unit.to(tl.int64) * table_stride
        # one flat loop over the visited key blocks (pipelines better than a nested loop)
        for it in range(0, tl.load(Counts + unit) * BLOCKS_PER_UNIT):
            key_unit = tl.load(row + it // BLOCKS_PER_UNIT).to(tl.int64)
            start_n = key_unit * UNIT + (it % BLOCKS_PER_UNIT) * BLOCK_N
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, KValid, k_base, v_base, start_n,
                                          stride_kl, stride_vl, Lk, D, qk_scale, HAS_VALID, False, EVEN_D,
                                          UPCAST, DOT_PREC, BLOCK_N, BLOCK_D)
    else:
        for start_n in range(0, Lk, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, KValid, k_base, v_base, start_n,
                                          stride_kl, stride_vl, Lk, D, qk_scale, HAS_VALID, True, EVEN_D,
                                          UPCAST, DOT_PREC, BLOCK_N, BLOCK_D)
    acc = acc / l_i[:, None]
    if RETURN_LSE:  # natural-log log-sum-exp of the scaled scores, [B, H, Lq] fp32 (m_i is in log2 units)
        tl.store(LSE + pid_bh.to(tl.int64) * Lq + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=in_q)
    out_ptrs = O + o_base + q_rows * stride_ol + offs_d[None, :]
    out = acc.to(O.dtype.element_ty)
    if EVEN_D:
        if SPARSE:
            tl.store(out_ptrs, out)
        else:
            tl.store(out_ptrs, out, mask=in_q[:, None])
    else:
        tl.store(out_ptrs, out, mask=in_q[:, None] & (offs_d[None, :] < D))


def _early_prune(configs, named_args, **kwargs):
    unit = named_args.get("UNIT", kwargs.get("UNIT", 0))
    block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    keep = prune_configs([dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs],
                         unit, block_d)
    return [c for c in configs if any(c.kwargs["BLOCK_M"] == k["BLOCK_M"] and c.kwargs["BLOCK_N"] == k["BLOCK_N"]
                                      and c.num_warps == k["num_warps"] and c.num_stages == k["num_stages"]
                                      for k in keep)]


def _split(c: dict):
    c = dict(c)
    return c, c.pop("num_warps"), c.pop("num_stages")


_attn_fwd_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                           num_stages=c["num_stages"]) for c in AUTOTUNE_CONFIGS],
    key=["Lq", "Lk", "D", "UNIT", "SPARSE", "BLOCK_D", "DOT_PREC", "EVEN_D"],
    prune_configs_by={"early_config_prune": _early_prune},
)(_attn_fwd)


def block_sparse_attention_triton(q, k, v, *, table=None, counts=None, unit: int = 0, key_valid=None,
                                  scale: float | None = None, config: dict | None = None, return_lse: bool = False):
    """Launch the kernel. ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]`` (last dim contiguous).

    Sparse when ``table`` is given: then ``Lq == Lk == n_units * unit`` and query unit ``u`` visits the key
    units ``table[u, :counts[u]]``. ``key_valid`` (``[Lk]`` bool) masks padding keys. ``config`` forces one
    launch config (else: autotune on a GPU, the first pruned config under the interpreter). With
    ``return_lse`` also returns the log-sum-exp ``[B, H, Lq]`` (fp32, natural log).
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device) if return_lse else o
    block_d = max(16, triton.next_power_of_2(D))
    scale = D**-0.5 if scale is None else scale
    interpreting = triton_interpreting()
    sparse = table is not None
    if sparse:
        assert Lq == Lk and Lq % unit == 0, "sparse mode needs the padded tile layout"
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
    kvalid = key_valid.to(torch.int8) if key_valid is not None else dummy
    table_t = table if sparse else dummy
    counts_t = counts if sparse else dummy
    args = (q, k, v, o, lse, kvalid, table_t, counts_t,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            H, Lq, Lk, D, table_t.stride(0) if sparse else 0, scale * math.log2(math.e))
    meta = dict(UNIT=unit if sparse else 0, SPARSE=sparse, HAS_VALID=key_valid is not None, EVEN_D=D == block_d,
                UPCAST=interpreting or q.dtype == torch.float32, RETURN_LSE=return_lse,
                DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_D=block_d)
    if config is None and interpreting:
        config = prune_configs(AUTOTUNE_CONFIGS, meta["UNIT"], block_d)[0]
    if config is not None:
        c, warps, stages = _split(config)
        grid = (triton.cdiv(Lq, c["BLOCK_M"]), B * H)
        _attn_fwd[grid](*args, **meta, **c, num_warps=warps, num_stages=stages)
    else:
        grid = lambda META: (triton.cdiv(Lq, META["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd_autotuned[grid](*args, **meta)
    return (o, lse) if return_lse else o


def aot_compile(dtype: str = "bf16", *, sparse: bool = True, unit: int = 256, head_dim: int = 128,
                config: dict | None = None, arch: int = 90):
    """Compile the kernel ahead of time for a CUDA target (no GPU needed; not under the interpreter).

    Used by the tests to check that the GPU path compiles on a CPU-only machine. ``dtype`` is a Triton
    type name (``"bf16"``, ``"fp16"``, ``"fp32"``). Returns the compiled kernel (``.asm``, ``.metadata``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if triton_interpreting():
        raise RuntimeError("aot_compile needs TRITON_INTERPRET unset (the interpreter replaces the compiler)")
    block_d = max(16, triton.next_power_of_2(head_dim))
    c, warps, stages = _split(config or prune_configs(AUTOTUNE_CONFIGS, unit if sparse else 0, block_d)[0])
    constexprs = dict(UNIT=unit if sparse else 0, SPARSE=sparse, HAS_VALID=True, EVEN_D=head_dim == block_d,
                      UPCAST=dtype == "fp32", RETURN_LSE=False,
                      DOT_PREC="ieee" if dtype == "fp32" else "tf32", BLOCK_D=block_d, **c)
    signature = {}
    for name in _attn_fwd.arg_names:
        if name in ("Q", "K", "V", "O"):
            signature[name] = "*" + dtype
        elif name == "LSE":
            signature[name] = "*fp32"
        elif name == "KValid":
            signature[name] = "*i8"
        elif name in ("Table", "Counts"):
            signature[name] = "*i32"
        elif name.startswith("stride"):
            signature[name] = "i64"
        elif name == "qk_scale":
            signature[name] = "fp32"
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    names = list(_attn_fwd.arg_names)
    src = ASTSource(fn=_attn_fwd, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))


# -- static GPU report (vidaccel.kernels.static) -------------------------------------------------------------------
#: Real shapes: (label, batch, heads, head dim, token grid after patching, text tokens, window in tokens).
STATIC_MODELS = (
    ("wan480p", 1, 12, 128, (21, 30, 52), 0, (12, 16, 24)),    # Wan2.1-1.3B, 480x832 x 81 frames
    ("wan720p", 1, 12, 128, (21, 45, 80), 0, (12, 24, 32)),    # Wan2.1, 720x1280 x 81 frames
    ("cogvideox5b", 2, 48, 64, (13, 30, 45), 226, (8, 16, 24)),  # CogVideoX-5B, 480x720 x 49 frames, CFG batch 2
)


def _contiguous_strides(shape):
    out, s = [], 1
    for n in reversed(shape):
        out.append(s)
        s *= n
    return tuple(reversed(out))


def static_cases() -> list:
    """Every config the wrapper's autotuner can pick, dense and block-sparse, at Wan 480p / 720p and CogVideoX-5B
    shapes (bf16), plus the fp32 and log-sum-exp launches; see :mod:`vidaccel.kernels.static`."""
    from ..static import StaticCase, T
    from .layout import tile_plan
    from .wrapper import default_tile

    cases = []
    for label, B, H, D, grid, text, window in STATIC_MODELS:
        block_d = max(16, triton.next_power_of_2(D))
        for sparse in (False, True):
            if sparse:
                plan = tile_plan(grid, window, default_tile(grid), text, align=64)
                L, unit, has_valid, table_stride = plan.length, plan.unit, plan.has_padding, plan.table.stride(0)
                shape = (f"B={B} H={H} D={D} grid={grid} text={text}: tile {plan.tile}, {L} positions for "
                         f"{text + math.prod(grid)} tokens, window {window}")
            else:
                L, unit, has_valid, table_stride = text + math.prod(grid), 0, False, 0
                shape = f"B={B} L={L} H={H} D={D}"
            for dtype in ((torch.bfloat16, torch.float32) if label == "wan480p" else (torch.bfloat16,)):
                s = _contiguous_strides((B, L, H, D))[:3]
                x = T(dtype)
                args = (x, x, x, x, T(torch.float32), T(torch.int8) if has_valid else T(torch.int32),
                        T(torch.int32), T(torch.int32), *s, *s, *s, *s, H, L, L, D, table_stride,
                        D**-0.5 * math.log2(math.e))
                fp32 = dtype == torch.float32
                meta = dict(UNIT=unit, SPARSE=sparse, HAS_VALID=has_valid, EVEN_D=D == block_d, UPCAST=fp32,
                            RETURN_LSE=False, DOT_PREC="ieee" if fp32 else "tf32", BLOCK_D=block_d)
                configs = prune_configs(AUTOTUNE_CONFIGS, unit, block_d)
                for i, c in enumerate(configs[:1] if fp32 else configs):
                    c, warps, stages = _split(c)
                    kind = "block_sparse" if sparse else "dense"
                    name = (f"attention/{kind}/{label}/bm{c['BLOCK_M']}n{c['BLOCK_N']}w{warps}s{stages}"
                            + ("/fp32" if fp32 else ""))
                    main = label == "wan480p" and i == 0 and not fp32
                    cases.append(StaticCase(
                        name=name, kernel=_attn_fwd, args=args,
                        kwargs=dict(meta, **c, num_warps=warps, num_stages=stages), main=main,
                        expect=dict(no_spills=True, mma=True, stages_ahead=2) if main else {},
                        shape=shape + (" fp32" if fp32 else " bf16")))
    return cases


def static_notes() -> str:
    """Markdown: tile padding of the block-sparse layout at the default tile of each real grid."""
    from .layout import tile_plan
    from .wrapper import default_tile

    lines = ["### Tile padding (block-sparse layout, CUDA alignment 64)\n",
             "| model | grid | text | tile | unit | positions | tokens | padding |", "|---|---|---|---|---|---|---|---|"]
    for label, _, _, _, grid, text, window in STATIC_MODELS:
        plan = tile_plan(grid, window, default_tile(grid), text, align=64)
        tokens = text + math.prod(grid)
        lines.append(f"| {label} | {'×'.join(map(str, grid))} | {text} | {'×'.join(map(str, plan.tile))} | {plan.unit} "
                     f"| {plan.length:,} | {tokens:,} | +{100 * (plan.length / tokens - 1):.1f} % |")
    return "\n".join(lines) + "\n"
